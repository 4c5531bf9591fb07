package protocol

import (
	"context"
	"encoding/binary"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/wormhole-fs/wormhole/tests/testnode"
)

// TestMalformedRPCsLeaveServerAnswering throws hostile records at a node:
// record marks claiming huge sizes, truncated records, calls whose
// lengths claim gigabytes, garbage. The node must keep answering, and its
// heap must not grow with what the records claim.
func TestMalformedRPCsLeaveServerAnswering(t *testing.T) {
	n := testnode.InProcess(t, "", nil)
	addr := n.NFSAddr().String()

	word := func(b []byte, v ...uint32) []byte {
		for _, x := range v {
			b = binary.BigEndian.AppendUint32(b, x)
		}
		return b
	}
	call := func(prog, vers, proc uint32, args ...uint32) []byte {
		body := word(nil, 7, 0, 2, prog, vers, proc, 0, 0, 0, 0)
		body = word(body, args...)
		return append(word(nil, 0x80000000|uint32(len(body))), body...)
	}
	attacks := map[string][]byte{
		"record mark of 2 GiB":            word(nil, 0xFFFFFFFF, 1, 2, 3),
		"fragments adding up past limits": word(nil, 0x00FFFFFF, 1, 2, 3),
		"truncated call header":           word(nil, 0x80000010, 7, 0),
		"handle claiming 4 GiB (GETATTR)": call(100003, 3, 1, 0xFFFFFFF0),
		"handle claiming 4 GiB (COMMIT)":  call(100003, 3, 21, 0xFFFFFFF0),
		"name claiming 4 GiB (LOOKUP)":    call(100003, 3, 3, 0, 0xFFFFFFF0),
		"mount path claiming 4 GiB":       call(100005, 3, 1, 0xFFFFFFF0),
		"AUTH_SYS with 1,000 groups":      append(word(nil, 0x80000000|60), word(nil, 7, 0, 2, 100003, 3, 0, 1, 20, 0, 0, 0, 0, 1000, 0, 0)...),
		"not a call":                      word(nil, 0x80000000|8, 7, 1),
	}
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for round := 0; round < 20; round++ {
		for name, rec := range attacks {
			c, err := net.DialTimeout("tcp", addr, 5*time.Second)
			if err != nil {
				t.Fatalf("%s: dial: %v", name, err)
			}
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			_, _ = c.Write(rec)
			c.Close()
		}
	}
	// The node may refuse connections until it has reaped the 180 closed
	// ones (its per-client limit is 64); it must answer again soon after.
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := testnode.PingUntil(ctx, addr); err != nil {
		t.Fatalf("node stopped answering after malformed records: %v", err)
	}
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	// 180 hostile records claimed terabytes in all; a node that allocated
	// what they claimed would have grown by gigabytes. Allow the largest
	// legitimate record (4 MiB) a few times over for buffers in flight.
	const slack = 64 << 20
	if grew := int64(after.HeapInuse) - int64(before.HeapInuse); grew > slack {
		t.Fatalf("heap in use grew by %d MiB after malformed records", grew>>20)
	}
}
