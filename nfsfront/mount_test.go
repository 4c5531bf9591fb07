package nfsfront

import (
	"context"
	"encoding/hex"
	"fmt"
	"net"
	"syscall"
	"testing"

	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
)

// xdrString is the golden XDR form of a short string: length, bytes, pad.
func xdrString(s string) string {
	b := []byte(s)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return fmt.Sprintf("%08x %x", len(s), b)
}

func TestMountGolden(t *testing.T) {
	s := newRPCTestServer(t)
	ctx := context.Background()
	o := tcpOrigin(allServices, testEndpoints())
	root := hex.EncodeToString(s.handleFor(creds{}, rootAttr)) // 34 bytes
	mnt := func(xid uint32, vers uint32, dir string) []byte {
		reply, _ := s.dispatch(ctx, callRecord(xid, progMount, vers, mountProcMnt, unhex(t, xdrString(dir))), o)
		return reply
	}
	dump := func(xid uint32) []byte {
		reply, _ := s.dispatch(ctx, callRecord(xid, progMount, 3, mountProcDump, nil), o)
		return reply
	}

	wantBytes(t, "NULL", must(s.dispatch(ctx, callRecord(1, progMount, 3, mountProcNull, nil), o)), unhex(t, successHeader("00000001")))
	wantBytes(t, "DUMP before any MNT", dump(2), unhex(t, successHeader("00000002")+" 00000000"))

	// mountres3: MNT3_OK, fhandle3 (34 bytes + 2 pad), auth_flavors
	// [AUTH_UNIX, AUTH_NULL].
	wantOK := unhex(t, successHeader("00000003")+" 00000000 00000022 "+root+"0000 00000002 00000001 00000000")
	wantBytes(t, "MNT /", mnt(3, 3, "/"), wantOK)
	for _, dir := range []string{"", "//", "/.", "/a/.."} {
		if r := mnt(3, 3, dir); string(r) != string(wantOK) {
			t.Errorf("MNT %q: %x", dir, r)
		}
	}
	wantBytes(t, "MNT /nope", mnt(4, 3, "/nope"), unhex(t, successHeader("00000004")+" 00000002"))
	wantBytes(t, "MNT relative", mnt(5, 3, "a"), unhex(t, successHeader("00000005")+" 00000002"))

	// mountlist: one entry, the client's IP and "/".
	wantBytes(t, "DUMP after MNT", dump(6),
		unhex(t, successHeader("00000006")+" 00000001 "+xdrString("10.1.2.3")+" "+xdrString("/")+" 00000000"))

	umnt, _ := s.dispatch(ctx, callRecord(7, progMount, 3, mountProcUmnt, unhex(t, xdrString("/"))), o)
	wantBytes(t, "UMNT", umnt, unhex(t, successHeader("00000007")))
	wantBytes(t, "DUMP after UMNT", dump(8), unhex(t, successHeader("00000008")+" 00000000"))

	mnt(9, 3, "/")
	all, _ := s.dispatch(ctx, callRecord(10, progMount, 3, mountProcUmntAll, nil), o)
	wantBytes(t, "UMNTALL", all, unhex(t, successHeader("0000000a")))
	wantBytes(t, "DUMP after UMNTALL", dump(11), unhex(t, successHeader("0000000b")+" 00000000"))

	// exports: one exportnode "/" with the admitted networks as groups.
	for _, vers := range []uint32{1, 2, 3} {
		reply, _ := s.dispatch(ctx, callRecord(12, progMount, vers, mountProcExport, nil), o)
		wantBytes(t, fmt.Sprintf("EXPORT v%d", vers), reply,
			unhex(t, successHeader("0000000c")+" 00000001 "+xdrString("/")+
				" 00000001 "+xdrString("127.0.0.0/8")+" 00000001 "+xdrString("::1/128")+
				" 00000001 "+xdrString("10.0.0.0/8")+" 00000001 "+xdrString("fd00::/8")+" 00000000 00000000"))
	}

	wantBytes(t, "MNT v1 (NFSv2 handles)", mnt(13, 1, "/"), unhex(t, "0000000d 00000001 00000000 00000000 00000000 00000003"))
	wantBytes(t, "MOUNT v4", mnt(14, 4, "/"), unhex(t, "0000000e 00000001 00000000 00000000 00000000 00000002 00000001 00000003"))
	garbage, _ := s.dispatch(ctx, callRecord(15, progMount, 3, mountProcMnt, unhex(t, "00000401")), o)
	wantBytes(t, "MNT path over 1024 bytes", garbage, unhex(t, "0000000f 00000001 00000000 00000000 00000000 00000004"))
	wantBytes(t, "MOUNT procedure 9", must(s.dispatch(ctx, callRecord(16, progMount, 3, 9, nil), o)),
		unhex(t, "00000010 00000001 00000000 00000000 00000000 00000003"))
}

func must(reply []byte, _ bool) []byte { return reply }

func TestMountOverUDPRecordsClient(t *testing.T) {
	s := newRPCTestServer(t)
	o := origin{svc: svcMount | svcPortmap, udp: true, local: &net.UDPAddr{IP: net.IPv4zero, Port: 2049},
		remote: &net.UDPAddr{IP: net.ParseIP("fd00::7"), Port: 800}, ep: testEndpoints()}
	s.dispatch(context.Background(), callRecord(1, progMount, 3, mountProcMnt, unhex(t, xdrString("/"))), o)
	if got := s.mounts.list(); len(got) != 1 || got[0] != "fd00::7" {
		t.Errorf("mount list %q", got)
	}
}

func TestMountTableBounded(t *testing.T) {
	var m mountTable
	for i := range maxMountRecords + 10 {
		m.add(fmt.Sprintf("10.0.%d.%d", i/256, i%256))
	}
	m.add("10.0.0.10") // again: moves to newest, no duplicate
	got := m.list()
	if len(got) != maxMountRecords {
		t.Fatalf("%d records, want %d", len(got), maxMountRecords)
	}
	seen := map[string]bool{}
	for _, h := range got {
		if seen[h] {
			t.Errorf("duplicate %s", h)
		}
		seen[h] = true
	}
	if seen["10.0.0.0"] || !seen["10.0.0.10"] || !seen["10.0.1.9"] {
		t.Errorf("oldest not evicted or newest lost: %v", got[:3])
	}
}

func TestMountStatusOf(t *testing.T) {
	cases := []struct {
		err  error
		want uint32
	}{
		{nil, mnt3OK},
		{fmt.Errorf("export: %w", meta.ErrNotFound), mnt3ErrNoEnt},
		{errAccess, mnt3ErrAccess},
		{errPerm, mnt3ErrPerm},
		{meta.ErrNotDir, mnt3ErrNotDir},
		{meta.ErrNameTooLong, mnt3ErrNameTooLong},
		{errNotSupported, mnt3ErrNotSupp},
		{syscall.EFAULT, mnt3ErrServerFault},
		{fmt.Errorf("surprise"), mnt3ErrIO},
	}
	for _, c := range cases {
		if got := mountStatusOf(c.err); got != c.want {
			t.Errorf("mountStatusOf(%v) = %d, want %d", c.err, got, c.want)
		}
	}
}
