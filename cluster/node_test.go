package cluster

import (
	"errors"
	"strings"
	"testing"
)

func TestMetaRoundTrip(t *testing.T) {
	for _, n := range []Node{
		{},
		{NFSAddr: "10.0.0.1:2049", DataAddr: "10.0.0.1:7070", Zone: "rack-a", Tier: "ssd",
			Capacity: 4 << 40, Free: 1 << 40, Version: "v0.3.0"},
		{Capacity: ^uint64(0), Free: ^uint64(0)},
	} {
		b, err := encodeMeta(n)
		if err != nil {
			t.Fatalf("encode %+v: %v", n, err)
		}
		got, err := decodeMeta(b)
		if err != nil {
			t.Fatalf("decode %+v: %v", n, err)
		}
		if got != n {
			t.Errorf("round trip: got %+v, want %+v", got, n)
		}
	}
}

// TestMetaSize checks that realistic facts at their longest fit in the
// memberlist limit and that oversized facts are refused, not truncated.
func TestMetaSize(t *testing.T) {
	longAddr := "[ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255]:65535" // 53 bytes
	big := Node{NFSAddr: longAddr, DataAddr: longAddr, Zone: strings.Repeat("z", 64),
		Tier: strings.Repeat("t", 32), Version: strings.Repeat("v", 64),
		Capacity: ^uint64(0), Free: ^uint64(0)}
	b, err := encodeMeta(big)
	if err != nil {
		t.Fatalf("realistic worst case: %v", err)
	}
	t.Logf("worst realistic facts encode to %d of %d bytes", len(b), MaxMetaSize)

	big.Zone = strings.Repeat("z", MaxMetaSize)
	if _, err := encodeMeta(big); !errors.Is(err, ErrMetaTooLarge) {
		t.Fatalf("oversized facts: err %v, want ErrMetaTooLarge", err)
	}
}

func TestMetaDecodeRejects(t *testing.T) {
	good, err := encodeMeta(Node{Zone: "a", Free: 300})
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{
		"empty":       nil,
		"version":     append([]byte{2}, good[1:]...),
		"truncated":   good[:len(good)-1],
		"trailing":    append(append([]byte(nil), good...), 0),
		"long string": {1, 9, 'a'},
		"overlong":    {1, 0x80, 0x00, 0, 0, 0, 0, 0, 0},
	} {
		if _, err := decodeMeta(b); !errors.Is(err, errBadMeta) {
			t.Errorf("%s: err %v, want errBadMeta", name, err)
		}
	}
}

func FuzzMetaDecode(f *testing.F) {
	for _, n := range []Node{{}, {NFSAddr: "1.2.3.4:2049", Zone: "z", Tier: "ssd", Capacity: 1 << 40, Free: 12345, Version: "v1"}} {
		b, err := encodeMeta(n)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Fuzz(func(t *testing.T, b []byte) {
		n, err := decodeMeta(b)
		if err != nil {
			return
		}
		b2, err := encodeMeta(n)
		if err != nil {
			t.Fatalf("re-encode %+v: %v", n, err)
		}
		if string(b2) != string(b) {
			t.Fatalf("re-encoding differs:\n got %x\nwant %x", b2, b)
		}
	})
}

func TestMsgRoundTrip(t *testing.T) {
	kind, node, ok := decodeMsg(encodeMsg(msgLeaving, "node-1"))
	if !ok || kind != msgLeaving || node != "node-1" {
		t.Fatalf("got %d %q %v", kind, node, ok)
	}
	for _, b := range [][]byte{nil, {1}, {1, 5, 'a'}, {1, 1, 'a', 'b'}} {
		if _, _, ok := decodeMsg(b); ok {
			t.Errorf("decodeMsg(%x) accepted", b)
		}
	}
}
