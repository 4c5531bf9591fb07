package nfsfront

import (
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/rs/zerolog"
)

// exportTestServer has export 0 read-write for 10.0.0.0/8 with root
// squashed, and export 1 read-only for 192.168.0.0/16 with everyone
// squashed to 1000:1000.
func exportTestServer(t *testing.T) *Server {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Exports = []Export{
		{Path: "/", Clients: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, Squash: SquashRoot, AnonUID: 65534, AnonGID: 65534},
		{Path: "/", Clients: []netip.Prefix{netip.MustParsePrefix("192.168.0.0/16")}, ReadOnly: true, Squash: SquashAll, AnonUID: 1000, AnonGID: 1000},
	}
	s, err := New(cfg, rootOnlyNS{}, nopData{}, []byte(strings.Repeat("k", 32)), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func originFrom(ip string) origin {
	return origin{svc: allServices, local: &net.TCPAddr{IP: net.IPv4(10, 9, 9, 9), Port: 2049},
		remote: &net.TCPAddr{IP: net.ParseIP(ip), Port: 800}, ep: testEndpoints()}
}

// sysCall builds a call record with AUTH_SYS credentials for uid:gid.
func sysCall(xid, prog, vers, proc, uid, gid uint32, args []byte) []byte {
	var body []byte
	for _, v := range []uint32{0, 0, uid, gid, 0} { // stamp, empty machine name, uid, gid, no groups
		body = binary.BigEndian.AppendUint32(body, v)
	}
	b := binary.BigEndian.AppendUint32(nil, xid)
	for _, v := range []uint32{rpcCall, rpcVersion, prog, vers, proc, authSys, uint32(len(body))} {
		b = binary.BigEndian.AppendUint32(b, v)
	}
	b = append(b, body...)
	b = binary.BigEndian.AppendUint32(b, authNone)
	b = binary.BigEndian.AppendUint32(b, 0)
	return append(b, args...)
}

func opaqueArg(b []byte) []byte {
	e := &xdrEncoder{}
	e.opaque(b)
	return e.b
}

// nfsStatus is the NFS status word of an accepted reply.
func nfsStatus(t *testing.T, reply []byte) uint32 {
	t.Helper()
	if len(reply) < 28 || binary.BigEndian.Uint32(reply[20:]) != acceptSuccess {
		t.Fatalf("not an accepted SUCCESS reply: %x", reply)
	}
	return binary.BigEndian.Uint32(reply[24:])
}

func TestMountPicksExportByClient(t *testing.T) {
	s := exportTestServer(t)
	ctx := context.Background()
	for _, c := range []struct {
		ip     string
		status uint32
		export uint8
	}{
		{"10.1.2.3", mnt3OK, 0},
		{"192.168.7.7", mnt3OK, 1},
		{"172.16.0.1", mnt3ErrAccess, 0},
		{"::ffff:10.0.0.5", mnt3OK, 0}, // v4-mapped v6 is the v4 client
	} {
		reply, _ := s.dispatch(ctx, callRecord(1, progMount, 3, mountProcMnt, opaqueArg([]byte("/"))), originFrom(c.ip))
		if got := nfsStatus(t, reply); got != c.status {
			t.Errorf("MNT from %s: status %d, want %d", c.ip, got, c.status)
			continue
		}
		if c.status != mnt3OK {
			continue
		}
		d := xdrDecoder{b: reply[28:]}
		hd, err := s.handler.codec.Decode(d.opaque(maxFHSize))
		if err != nil || hd.Export != c.export {
			t.Errorf("MNT from %s: handle export %d (%v), want %d", c.ip, hd.Export, err, c.export)
		}
	}
}

func TestHandlesOnlyWorkForAdmittedClients(t *testing.T) {
	s := exportTestServer(t)
	ctx := context.Background()
	rw := s.handleFor(creds{export: 0}, rootAttr)
	ro := s.handleFor(creds{export: 1}, rootAttr)
	getattr := func(ip string, fh []byte) uint32 {
		reply, _ := s.dispatch(ctx, callRecord(2, progNFS, 3, procGetattr, opaqueArg(fh)), originFrom(ip))
		return nfsStatus(t, reply)
	}
	if got := getattr("10.1.2.3", rw); got != 0 {
		t.Errorf("admitted client: GETATTR status %d", got)
	}
	// A client of the read-only export replaying a read-write handle.
	if got := getattr("192.168.7.7", rw); got != 13 {
		t.Errorf("handle of another export: GETATTR status %d, want NFS3ERR_ACCES", got)
	}
	if got := getattr("172.16.0.1", ro); got != 13 {
		t.Errorf("client in no export: GETATTR status %d, want NFS3ERR_ACCES", got)
	}
	// Procedures go-nfs serves are refused before they reach it.
	reply, forward := s.dispatch(ctx, callRecord(3, progNFS, 3, 18 /* FSSTAT */, opaqueArg(rw)), originFrom("172.16.0.1"))
	if forward || len(reply) < 20 || binary.BigEndian.Uint32(reply[8:]) != 1 /* MSG_DENIED */ {
		t.Errorf("FSSTAT from a client in no export: forwarded %v, reply %x", forward, reply)
	}
}

func TestReadOnlyExportRefusesChanges(t *testing.T) {
	s := exportTestServer(t)
	ro := s.handleFor(creds{export: 1}, rootAttr)
	// SETATTR mode 0700, no guard.
	args := opaqueArg(ro)
	for _, v := range []uint32{1, 0o700, 0, 0, 0, 0, 0, 0} {
		args = binary.BigEndian.AppendUint32(args, v)
	}
	reply, _ := s.dispatch(context.Background(), sysCall(4, progNFS, 3, procSetattr, 0, 0, args), originFrom("192.168.7.7"))
	if got := nfsStatus(t, reply); got != 30 {
		t.Errorf("SETATTR on a read-only export: status %d, want NFS3ERR_ROFS", got)
	}
}

func TestSquash(t *testing.T) {
	s := exportTestServer(t)
	rw := s.handleFor(creds{export: 0}, rootAttr)
	ro := s.handleFor(creds{export: 1}, rootAttr)
	credsOf := func(ip string, fh []byte, uid, gid uint32) creds {
		h, err := parseCall(sysCall(5, progNFS, 3, procGetattr, uid, gid, opaqueArg(fh)))
		if err != nil {
			t.Fatal(err)
		}
		return s.callerCreds(call{h, originFrom(ip)})
	}
	if c := credsOf("10.1.2.3", rw, 0, 0); c.uid != 65534 || c.gid != 65534 {
		t.Errorf("root_squash: root became %d:%d", c.uid, c.gid)
	}
	if c := credsOf("10.1.2.3", rw, 500, 500); c.uid != 500 || c.gid != 500 {
		t.Errorf("root_squash: user 500 became %d:%d", c.uid, c.gid)
	}
	if c := credsOf("192.168.1.1", ro, 500, 500); c.uid != 1000 || c.gid != 1000 || !c.readOnly {
		t.Errorf("all_squash read-only: user 500 became %+v", c)
	}
}

func TestOverlappingExportsRefuseReplayedHandles(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Exports = []Export{
		{Path: "/", Clients: []netip.Prefix{netip.MustParsePrefix("10.0.0.5/32")}, ReadOnly: true, Squash: SquashAll, AnonUID: 65534, AnonGID: 65534},
		{Path: "/", Clients: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, Squash: SquashNone},
	}
	s, err := New(cfg, rootOnlyNS{}, nopData{}, []byte(strings.Repeat("k", 32)), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	generous := s.handleFor(creds{export: 1}, rootAttr)
	reply, _ := s.dispatch(context.Background(), callRecord(1, progNFS, 3, procGetattr, opaqueArg(generous)), originFrom("10.0.0.5"))
	if got := nfsStatus(t, reply); got != 13 {
		t.Fatalf("10.0.0.5 replaying a handle of the read-write export: status %d, want NFS3ERR_ACCES", got)
	}
	reply, _ = s.dispatch(context.Background(), callRecord(2, progNFS, 3, procGetattr, opaqueArg(generous)), originFrom("10.0.0.6"))
	if got := nfsStatus(t, reply); got != 0 {
		t.Fatalf("10.0.0.6 with its own export's handle: status %d", got)
	}
}

func TestRootSquashMapsSupplementaryGroupZero(t *testing.T) {
	s := exportTestServer(t)
	rw := s.handleFor(creds{export: 0}, rootAttr)
	var body []byte
	for _, v := range []uint32{0, 0, 1000, 1000, 2, 0, 27} { // stamp, name, uid, gid, groups [0 27]
		body = binary.BigEndian.AppendUint32(body, v)
	}
	rec := binary.BigEndian.AppendUint32(nil, 9)
	for _, v := range []uint32{rpcCall, rpcVersion, progNFS, 3, procGetattr, authSys, uint32(len(body))} {
		rec = binary.BigEndian.AppendUint32(rec, v)
	}
	rec = append(rec, body...)
	rec = binary.BigEndian.AppendUint32(rec, authNone)
	rec = binary.BigEndian.AppendUint32(rec, 0)
	h, err := parseCall(append(rec, opaqueArg(rw)...))
	if err != nil {
		t.Fatal(err)
	}
	c := s.callerCreds(call{h, originFrom("10.1.2.3")})
	if c.inGroup(0) || !c.inGroup(27) {
		t.Fatalf("root_squash left groups %v (gid %d)", c.gids, c.gid)
	}
}

func TestForwardedProcedureNeedsValidHandle(t *testing.T) {
	s := exportTestServer(t)
	// An FSSTAT (served by go-nfs) whose handle claims 4 GiB: never handed to go-nfs, which
	// would allocate it.
	args := binary.BigEndian.AppendUint32(nil, 0xFFFFFFF0)
	reply, forward := s.dispatch(context.Background(), callRecord(3, progNFS, 3, procFSStat, args), originFrom("10.1.2.3"))
	if forward || len(reply) < 12 || binary.BigEndian.Uint32(reply[8:]) != 1 /* MSG_DENIED */ {
		t.Fatalf("FSSTAT with a bogus handle: forwarded %v, reply %x", forward, reply)
	}
	good := s.handleFor(creds{export: 0}, rootAttr)
	if _, forward := s.dispatch(context.Background(), callRecord(4, progNFS, 3, procFSStat, opaqueArg(good)), originFrom("10.1.2.3")); !forward {
		t.Fatal("FSSTAT with a valid handle from an admitted client was not forwarded to go-nfs")
	}
}

func TestAuthNullIsTheExportsAnonymousUser(t *testing.T) {
	s := exportTestServer(t)
	ro := s.handleFor(creds{export: 1}, rootAttr)
	h, err := parseCall(callRecord(5, progNFS, 3, procGetattr, opaqueArg(ro))) // AUTH_NONE
	if err != nil {
		t.Fatal(err)
	}
	if c := s.callerCreds(call{h, originFrom("192.168.1.1")}); c.uid != 1000 || c.gid != 1000 {
		t.Fatalf("AUTH_NULL caller became %d:%d, want the export's 1000:1000", c.uid, c.gid)
	}
}

func TestOnlyOwnerSetsExplicitTimes(t *testing.T) {
	s := exportTestServer(t)
	rw := s.handleFor(creds{export: 0}, rootAttr)
	// SETATTR: no mode, uid, gid or size; atime unchanged; mtime set to a
	// client time (time_how 2); no guard.
	args := opaqueArg(rw)
	for _, v := range []uint32{0, 0, 0, 0, 0, 2, 1000000000, 0, 0} {
		args = binary.BigEndian.AppendUint32(args, v)
	}
	reply, _ := s.dispatch(context.Background(), sysCall(6, progNFS, 3, procSetattr, 500, 500, args), originFrom("10.1.2.3"))
	if got := nfsStatus(t, reply); got != 1 {
		t.Fatalf("non-owner setting an explicit mtime: status %d, want NFS3ERR_PERM", got)
	}
}

// TestSecureExport: a secure export admits callers from ports below 1024
// only, and the next export rule then applies to the others.
func TestSecureExport(t *testing.T) {
	lan := netip.MustParsePrefix("10.0.0.0/8")
	secure := Export{Path: "/", Clients: []netip.Prefix{lan}, Secure: true}
	open := Export{Path: "/", Clients: []netip.Prefix{lan}}
	for _, c := range []struct {
		x    Export
		port int
		want bool
	}{
		{secure, 800, true},
		{secure, 1023, true},
		{secure, 1024, false},
		{secure, 40000, false},
		{open, 40000, true},
	} {
		tcp := &net.TCPAddr{IP: net.IPv4(10, 1, 2, 3), Port: c.port}
		udp := &net.UDPAddr{IP: net.IPv4(10, 1, 2, 3), Port: c.port}
		if got := c.x.admits(tcp); got != c.want {
			t.Errorf("secure=%v, TCP port %d: admitted %v, want %v", c.x.Secure, c.port, got, c.want)
		}
		if got := c.x.admits(udp); got != c.want {
			t.Errorf("secure=%v, UDP port %d: admitted %v, want %v", c.x.Secure, c.port, got, c.want)
		}
	}
	// A mount from an unprivileged port of a machine only the secure rule
	// admits is refused.
	cfg := DefaultConfig()
	cfg.Exports = []Export{secure}
	s, err := New(cfg, rootOnlyNS{}, nopData{}, []byte(strings.Repeat("k", 32)), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := s.exportFor(&net.TCPAddr{IP: net.IPv4(10, 1, 2, 3), Port: 50000}); ok {
		t.Error("unprivileged port admitted by a secure export")
	}
	if _, ok := s.exportFor(&net.TCPAddr{IP: net.IPv4(10, 1, 2, 3), Port: 700}); !ok {
		t.Error("privileged port refused by a secure export")
	}
}
