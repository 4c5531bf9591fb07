package nfsfront

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
)

// newLockTestServer is newRPCTestServer with an in-memory lock table and
// a second export, for 192.168.0.0/16.
func newLockTestServer(t testing.TB) (*Server, *MemLocks) {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Exports[0].Clients = append(cfg.Exports[0].Clients, netip.MustParsePrefix("10.0.0.0/8"))
	other := LoopbackExport()
	other.Clients = []netip.Prefix{netip.MustParsePrefix("192.168.0.0/16")}
	cfg.Exports = append(cfg.Exports, other)
	locks := NewMemLocks(0)
	cfg.Locks = locks
	s, err := New(cfg, rootOnlyNS{}, nopData{}, []byte(strings.Repeat("k", 32)), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	// No callbacks to the made-up client addresses; nlm_granted_test.go
	// calls a client on loopback.
	s.grants.callback = func(context.Context, nlmWaiter) (uint32, error) { return 0, errNoCallback }
	return s, locks
}

// lockOrigin is a call from ip over TCP or UDP to the NFS port.
func lockOrigin(ip string, udp bool) origin {
	o := origin{svc: allServices | svcLock, udp: udp, ep: testEndpoints()}
	if udp {
		o.local = &net.UDPAddr{IP: net.IPv4(192, 168, 1, 5), Port: 2049}
		o.remote = &net.UDPAddr{IP: net.ParseIP(ip), Port: 800}
	} else {
		o.local = &net.TCPAddr{IP: net.IPv4(192, 168, 1, 5), Port: 2049}
		o.remote = &net.TCPAddr{IP: net.ParseIP(ip), Port: 800}
	}
	return o
}

// nlmLockSpec is an nlm4_lock to encode.
type nlmLockSpec struct {
	caller      string
	fh          []byte
	oh          string
	svid        int32
	offset, len uint64
}

func (l nlmLockSpec) encode(e *xdrEncoder) {
	e.str(l.caller)
	e.opaque(l.fh)
	e.str(l.oh)
	e.u32(uint32(l.svid))
	e.u64(l.offset)
	e.u64(l.len)
}

// Argument records of TEST, LOCK, CANCEL and UNLOCK.
func nlmTestArgs(cookie string, excl bool, l nlmLockSpec) []byte {
	e := &xdrEncoder{}
	e.str(cookie)
	e.bool(excl)
	l.encode(e)
	return e.b
}

func nlmLockArgs(cookie string, block, excl bool, l nlmLockSpec) []byte {
	e := &xdrEncoder{}
	e.str(cookie)
	e.bool(block)
	e.bool(excl)
	l.encode(e)
	e.bool(false) // reclaim
	e.u32(3)      // state
	return e.b
}

func nlmCancelArgs(cookie string, l nlmLockSpec) []byte {
	e := &xdrEncoder{}
	e.str(cookie)
	e.bool(true)
	e.bool(true)
	l.encode(e)
	return e.b
}

func nlmUnlockArgs(cookie string, l nlmLockSpec) []byte {
	e := &xdrEncoder{}
	e.str(cookie)
	l.encode(e)
	return e.b
}

// nameState encodes nlm4_notify and stat_chge: a name and a state.
func nameState(name string, state uint32) []byte {
	e := &xdrEncoder{}
	e.str(name)
	e.u32(state)
	return e.b
}

// nlmStat checks an nlm4_res (or the start of an nlm4_testres) and
// returns its status and a decoder at what follows.
func nlmStat(t *testing.T, reply []byte, cookie string) (uint32, *xdrDecoder) {
	t.Helper()
	if len(reply) < 24 || binary.BigEndian.Uint32(reply[20:]) != acceptSuccess {
		t.Fatalf("reply not SUCCESS: %x", reply)
	}
	d := &xdrDecoder{b: reply[24:]}
	if c := string(d.opaque(maxNetObj)); c != cookie {
		t.Errorf("cookie %q, want %q", c, cookie)
	}
	stat := d.u32()
	if d.err != nil {
		t.Fatalf("reply %x: %v", reply, d.err)
	}
	return stat, d
}

// lockClient sends NLM calls from one address to a Server's dispatch.
type lockClient struct {
	t   *testing.T
	s   *Server
	o   origin
	xid uint32
}

func (c *lockClient) call(prog, vers, proc uint32, args []byte) []byte {
	c.xid++
	reply, fwd := c.s.dispatch(context.Background(), callRecord(c.xid, prog, vers, proc, args), c.o)
	if fwd {
		c.t.Fatalf("call %d/%d/%d forwarded to go-nfs", prog, vers, proc)
	}
	return reply
}

func (c *lockClient) stat(proc uint32, args []byte) uint32 {
	c.t.Helper()
	st, _ := nlmStat(c.t, c.call(progNLM, nlmVers, proc, args), "ck")
	return st
}

func TestNLMLockTestUnlock(t *testing.T) {
	for _, udp := range []bool{false, true} {
		t.Run(fmt.Sprintf("udp=%v", udp), func(t *testing.T) {
			s, locks := newLockTestServer(t)
			fh := s.handleFor(creds{export: 0}, rootAttr)
			a := &lockClient{t: t, s: s, o: lockOrigin("10.1.2.3", udp)}
			b := &lockClient{t: t, s: s, o: lockOrigin("10.1.2.4", udp)}
			la := nlmLockSpec{caller: "alpha", fh: fh, oh: "17@alpha", svid: 17, offset: 0, len: 100}
			lb := nlmLockSpec{caller: "beta", fh: fh, oh: "9@beta", svid: 9, offset: 50, len: 0}

			if st := a.stat(nlmProcLock, nlmLockArgs("ck", false, true, la)); st != nlm4Granted {
				t.Fatalf("LOCK a: %d", st)
			}
			if st := b.stat(nlmProcLock, nlmLockArgs("ck", false, false, lb)); st != nlm4Denied {
				t.Errorf("LOCK b over a's exclusive lock: %d", st)
			}
			if st := b.stat(nlmProcLock, nlmLockArgs("ck", true, false, lb)); st != nlm4Blocked {
				t.Errorf("blocking LOCK b: %d", st)
			}
			if st := b.stat(nlmProcCancel, nlmCancelArgs("ck", lb)); st != nlm4Granted {
				t.Errorf("CANCEL b: %d", st)
			}

			// TEST names the holder: exclusive, svid 17, oh, 0 for 100.
			st, d := nlmStat(t, b.call(progNLM, nlmVers, nlmProcTest, nlmTestArgs("ck", false, lb)), "ck")
			excl, svid, oh, off, n := d.bool(), d.u32(), string(d.opaque(maxNetObj)), d.u64(), d.u64()
			if st != nlm4Denied || d.err != nil || !excl || svid != 17 || oh != "17@alpha" || off != 0 || n != 100 {
				t.Errorf("TEST b: stat %d holder %v %d %q %d+%d (%v)", st, excl, svid, oh, off, n, d.err)
			}
			if st := a.stat(nlmProcTest, nlmTestArgs("ck", true, la)); st != nlm4Granted {
				t.Errorf("TEST a against its own lock: %d", st)
			}
			if st := b.stat(nlmProcTest, nlmTestArgs("ck", true, nlmLockSpec{caller: "beta", fh: fh, oh: "9@beta", svid: 9, offset: 100, len: 5})); st != nlm4Granted {
				t.Errorf("TEST b past a's range: %d", st)
			}

			// a unlocks its first half: b still conflicts at 50-99.
			if st := a.stat(nlmProcUnlock, nlmUnlockArgs("ck", nlmLockSpec{caller: "alpha", fh: fh, oh: "17@alpha", svid: 17, offset: 0, len: 50})); st != nlm4Granted {
				t.Fatalf("UNLOCK a half: %d", st)
			}
			if st := b.stat(nlmProcLock, nlmLockArgs("ck", false, false, lb)); st != nlm4Denied {
				t.Errorf("LOCK b over a's second half: %d", st)
			}
			if st := b.stat(nlmProcLock, nlmLockArgs("ck", false, false, nlmLockSpec{caller: "beta", fh: fh, oh: "9@beta", svid: 9, offset: 0, len: 50})); st != nlm4Granted {
				t.Errorf("LOCK b on the freed half: %d", st)
			}
			if st := a.stat(nlmProcUnlock, nlmUnlockArgs("ck", la)); st != nlm4Granted {
				t.Fatalf("UNLOCK a: %d", st)
			}
			if st := b.stat(nlmProcLock, nlmLockArgs("ck", true, true, lb)); st != nlm4Granted {
				t.Errorf("blocking LOCK b once free: %d", st)
			}
			if got := locks.locks(meta.RootIno); len(got) != 2 || got[0].Owner.Host != "10.1.2.4" {
				t.Errorf("table: %v", got)
			}
			// Unlocking what is not held succeeds.
			if st := a.stat(nlmProcUnlock, nlmUnlockArgs("ck", la)); st != nlm4Granted {
				t.Errorf("UNLOCK again: %d", st)
			}
			// NM_LOCK is LOCK.
			if st := a.stat(nlmProcNMLock, nlmLockArgs("ck", false, false, la)); st != nlm4Denied {
				t.Errorf("NM_LOCK a over b: %d", st)
			}
		})
	}
}

// Golden bytes of a denied TEST (nlm4_testres with an nlm4_holder).
func TestNLMTestGolden(t *testing.T) {
	s, _ := newLockTestServer(t)
	fh := s.handleFor(creds{export: 0}, rootAttr)
	a := &lockClient{t: t, s: s, o: lockOrigin("10.1.2.3", false)}
	a.call(progNLM, nlmVers, nlmProcLock, nlmLockArgs("c", false, false, nlmLockSpec{caller: "alpha", fh: fh, oh: "o", svid: 5, offset: 1 << 40, len: 0}))
	b := &lockClient{t: t, s: s, o: lockOrigin("10.1.2.4", false), xid: 0x40}
	reply := b.call(progNLM, nlmVers, nlmProcTest, nlmTestArgs("cookie", true, nlmLockSpec{caller: "beta", fh: fh, oh: "p", svid: 6, offset: 0, len: 0}))
	wantBytes(t, "TEST denied", reply, unhex(t, successHeader("00000041")+" "+xdrString("cookie")+
		" 00000001"+ // NLM4_DENIED
		" 00000000 00000005 "+xdrString("o")+" 00000100 00000000 00000000 00000000"))
}

func TestNLMBadHandles(t *testing.T) {
	s, locks := newLockTestServer(t)
	a := &lockClient{t: t, s: s, o: lockOrigin("10.1.2.3", false)}
	good := s.handleFor(creds{export: 0}, rootAttr)
	forged := append([]byte(nil), good...)
	forged[len(forged)-1] ^= 1
	gone := s.handler.codec.Encode(Handle{Export: 0, Ino: 99, Gen: 1})
	oldGen := s.handler.codec.Encode(Handle{Export: 0, Ino: meta.RootIno, Gen: 7})
	foreign := s.handleFor(creds{export: 1}, rootAttr)
	for _, c := range []struct {
		name string
		fh   []byte
		want uint32
	}{
		{"forged", forged, nlm4StaleFH},
		{"short", good[:10], nlm4StaleFH},
		{"removed inode", gone, nlm4StaleFH},
		{"old generation", oldGen, nlm4StaleFH},
		{"another export's", foreign, nlm4Denied},
	} {
		l := nlmLockSpec{caller: "alpha", fh: c.fh, oh: "1@alpha", svid: 1}
		if st := a.stat(nlmProcLock, nlmLockArgs("ck", false, true, l)); st != c.want {
			t.Errorf("LOCK with %s handle: %d, want %d", c.name, st, c.want)
		}
		if st := a.stat(nlmProcTest, nlmTestArgs("ck", true, l)); st != c.want {
			t.Errorf("TEST with %s handle: %d, want %d", c.name, st, c.want)
		}
		if st := a.stat(nlmProcUnlock, nlmUnlockArgs("ck", l)); st != c.want {
			t.Errorf("UNLOCK with %s handle: %d, want %d", c.name, st, c.want)
		}
	}
	// A client no export admits is denied even with a good handle.
	stranger := &lockClient{t: t, s: s, o: lockOrigin("172.16.0.1", false)}
	if st := stranger.stat(nlmProcLock, nlmLockArgs("ck", false, true, nlmLockSpec{caller: "x", fh: good})); st != nlm4Denied {
		t.Errorf("LOCK from a stranger: %d", st)
	}
	if n := locks.n; n != 0 {
		t.Errorf("%d locks held", n)
	}
}

func TestNLMFreeAllAndNotify(t *testing.T) {
	s, locks := newLockTestServer(t)
	fh := s.handleFor(creds{export: 0}, rootAttr)
	a := &lockClient{t: t, s: s, o: lockOrigin("10.1.2.3", false)}
	b := &lockClient{t: t, s: s, o: lockOrigin("10.1.2.4", true)}
	lock := func(c *lockClient, caller string, off uint64) {
		t.Helper()
		l := nlmLockSpec{caller: caller, fh: fh, oh: "1@" + caller, svid: 1, offset: off, len: 1}
		if st := c.stat(nlmProcLock, nlmLockArgs("ck", false, true, l)); st != nlm4Granted {
			t.Fatalf("LOCK %s at %d: %d", caller, off, st)
		}
	}
	held := func() (out []string) {
		for _, l := range locks.locks(meta.RootIno) {
			out = append(out, fmt.Sprintf("%s/%s@%d", l.Owner.Host, l.Owner.Caller, l.Start))
		}
		return out
	}
	lock(a, "alpha", 0)
	lock(a, "alpha2", 1)
	lock(b, "beta", 2)
	lock(b, "alpha", 3)

	// FREE_ALL releases the caller's name at the caller's address only.
	if r := a.call(progNLM, nlmVers, nlmProcFreeAll, nameState("alpha", 5)); string(r) != string(unhex(t, successHeader(fmt.Sprintf("%08x", a.xid)))) {
		t.Errorf("FREE_ALL reply %x", r)
	}
	if got := fmt.Sprint(held()); got != "[10.1.2.3/alpha2@1 10.1.2.4/alpha@3 10.1.2.4/beta@2]" {
		t.Errorf("after FREE_ALL alpha: %s", got)
	}

	// SM_NOTIFY by host name releases that name from any address; by
	// address, everything of that address.
	nsm := func(c *lockClient, name string) {
		t.Helper()
		r := c.call(progNSM, nsmVers, nsmProcNotify, nameState(name, 7))
		wantBytes(t, "SM_NOTIFY "+name, r, unhex(t, successHeader(fmt.Sprintf("%08x", c.xid))))
	}
	nsm(a, "alpha")
	if got := fmt.Sprint(held()); got != "[10.1.2.3/alpha2@1 10.1.2.4/beta@2]" {
		t.Errorf("after SM_NOTIFY alpha: %s", got)
	}
	nsm(b, "10.1.2.4")
	if got := fmt.Sprint(held()); got != "[10.1.2.3/alpha2@1]" {
		t.Errorf("after SM_NOTIFY 10.1.2.4: %s", got)
	}
	// From a client no export admits: ignored.
	stranger := &lockClient{t: t, s: s, o: lockOrigin("172.16.0.1", true)}
	nsm(stranger, "alpha2")
	if got := fmt.Sprint(held()); got != "[10.1.2.3/alpha2@1]" {
		t.Errorf("after a stranger's SM_NOTIFY: %s", got)
	}
}

func TestNSMAndNLMMisc(t *testing.T) {
	s, _ := newLockTestServer(t)
	c := &lockClient{t: t, s: s, o: lockOrigin("10.1.2.3", true)}
	state := s.nsm.get()
	if state%2 != 1 {
		t.Errorf("NSM state %d is even", state)
	}
	st := fmt.Sprintf("%08x", state)
	hdr := func() string { return successHeader(fmt.Sprintf("%08x", c.xid)) }
	myID := func(e *xdrEncoder) { e.str("server"); e.u32(100021); e.u32(4); e.u32(16) }

	r := c.call(progNSM, nsmVers, nsmProcNull, nil)
	wantBytes(t, "SM_NULL", r, unhex(t, hdr()))
	r = c.call(progNSM, nsmVers, nsmProcStat, unhex(t, xdrString("client")))
	wantBytes(t, "SM_STAT", r, unhex(t, hdr()+" 00000000 "+st))
	e := &xdrEncoder{}
	e.str("client")
	myID(e)
	e.b = append(e.b, make([]byte, 16)...)
	r = c.call(progNSM, nsmVers, nsmProcMon, e.b)
	wantBytes(t, "SM_MON", r, unhex(t, hdr()+" 00000000 "+st))
	r = c.call(progNSM, nsmVers, nsmProcUnmon, e.b[:len(e.b)-16])
	wantBytes(t, "SM_UNMON", r, unhex(t, hdr()+" "+st))
	e = &xdrEncoder{}
	myID(e)
	r = c.call(progNSM, nsmVers, nsmProcUnmonAll, e.b)
	wantBytes(t, "SM_UNMON_ALL", r, unhex(t, hdr()+" "+st))
	r = c.call(progNSM, 2, nsmProcNull, nil)
	wantBytes(t, "NSM v2", r, unhex(t, fmt.Sprintf("%08x", c.xid)+" 00000001 00000000 00000000 00000000 00000002 00000001 00000001"))

	r = c.call(progNLM, nlmVers, nlmProcNull, nil)
	wantBytes(t, "NLM NULL", r, unhex(t, hdr()))
	for _, v := range []uint32{1, 3} {
		r = c.call(progNLM, v, nlmProcNull, nil)
		wantBytes(t, fmt.Sprintf("NLM v%d", v), r, unhex(t, fmt.Sprintf("%08x", c.xid)+" 00000001 00000000 00000000 00000000 00000002 00000004 00000004"))
	}
	r = c.call(progNLM, nlmVers, 7, nil) // LOCK_MSG
	wantBytes(t, "LOCK_MSG", r, unhex(t, fmt.Sprintf("%08x", c.xid)+" 00000001 00000000 00000000 00000000 00000003"))
	r = c.call(progNLM, nlmVers, nlmProcLock, []byte{0, 0, 0})
	wantBytes(t, "LOCK short", r, unhex(t, fmt.Sprintf("%08x", c.xid)+" 00000001 00000000 00000000 00000000 00000004"))

	fh := s.handleFor(creds{export: 0}, rootAttr)
	if st := c.stat(nlmProcGranted, nlmTestArgs("ck", true, nlmLockSpec{caller: "x", fh: fh})); st != nlm4Granted {
		t.Errorf("GRANTED: %d", st)
	}
	share := func(fh []byte) []byte {
		e := &xdrEncoder{}
		e.str("ck")
		e.str("alpha")
		e.opaque(fh)
		e.str("oh")
		e.u32(1)
		e.u32(3)
		e.bool(false)
		return e.b
	}
	for _, proc := range []uint32{nlmProcShare, nlmProcUnshare} {
		stat, d := nlmStat(t, c.call(progNLM, nlmVers, proc, share(fh)), "ck")
		if seq := d.u32(); stat != nlm4Granted || d.err != nil {
			t.Errorf("SHARE/UNSHARE %d: stat %d seq %d %v", proc, stat, seq, d.err)
		}
		if stat, _ := nlmStat(t, c.call(progNLM, nlmVers, proc, share(fh[:5])), "ck"); stat != nlm4StaleFH {
			t.Errorf("SHARE/UNSHARE %d bad handle: %d", proc, stat)
		}
	}

	// Without a lock table, NLM and NSM do not exist.
	plain := newRPCTestServer(t)
	p := &lockClient{t: t, s: plain, o: lockOrigin("10.1.2.3", false)}
	r = p.call(progNLM, nlmVers, nlmProcNull, nil)
	wantBytes(t, "NLM without locks", r, unhex(t, fmt.Sprintf("%08x", p.xid)+" 00000001 00000000 00000000 00000000 00000001"))
}

// Over real sockets: the portmapper finds NLM and NSM on the NFS port, and
// locks taken over TCP conflict with tests over UDP.
func TestNLMLive(t *testing.T) {
	s, _ := newLockTestServer(t)
	ls, _ := startServing(t, s)
	nfsPort := ls.Addr().(*net.TCPAddr).Port
	fh := s.handleFor(creds{export: 0}, rootAttr)

	udpCall := func(addr string, rec []byte) []byte {
		t.Helper()
		conn, err := net.Dial("udp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := conn.Write(rec); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 64<<10)
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("udp call to %s: %v", addr, err)
		}
		return buf[:n]
	}
	port := func(p int) []byte { return unhex(t, successHeader("00000001")+fmt.Sprintf(" %08x", p)) }
	for _, m := range [][3]uint32{
		{progNLM, 4, ipProtoTCP}, {progNLM, 4, ipProtoUDP}, {progNSM, 1, ipProtoUDP}, {progNSM, 1, ipProtoTCP},
	} {
		got := udpCall(ls.PortmapAddr().String(), callRecord(1, progPortmap, 2, pmapProcGetport, pmapArgs(m[0], m[1], m[2])))
		wantBytes(t, fmt.Sprintf("GETPORT %v", m), got, port(nfsPort))
	}
	pm := dialRPC(t, ls.PortmapAddr().String())
	wantBytes(t, "GETADDR NLM tcp", pm.call(t, callRecord(2, progPortmap, 4, rpcbProcVersAdr, rpcbArgs(t, progNLM, 4, "tcp"))),
		unhex(t, successHeader("00000002")+" "+xdrString(universalAddr(net.IPv4(127, 0, 0, 1), nfsPort))))
	pm.Close()

	conn := dialRPC(t, ls.Addr().String())
	defer conn.Close()
	la := nlmLockSpec{caller: "alpha", fh: fh, oh: "1@alpha", svid: 1, offset: 10, len: 10}
	st, _ := nlmStat(t, conn.call(t, callRecord(3, progNLM, 4, nlmProcLock, nlmLockArgs("ck", false, true, la))), "ck")
	if st != nlm4Granted {
		t.Fatalf("LOCK over TCP: %d", st)
	}
	lb := nlmLockSpec{caller: "beta", fh: fh, oh: "1@beta", svid: 1, offset: 0, len: 11}
	st, _ = nlmStat(t, udpCall(ls.Addr().String(), callRecord(4, progNLM, 4, nlmProcTest, nlmTestArgs("ck", false, lb))), "ck")
	if st != nlm4Denied {
		t.Errorf("TEST over UDP: %d", st)
	}
	wantBytes(t, "FREE_ALL over UDP", udpCall(ls.Addr().String(), callRecord(5, progNLM, 4, nlmProcFreeAll, nameState("alpha", 1))),
		unhex(t, successHeader("00000005")))
	st, _ = nlmStat(t, udpCall(ls.Addr().String(), callRecord(6, progNLM, 4, nlmProcLock, nlmLockArgs("ck", false, true, lb))), "ck")
	if st != nlm4Granted {
		t.Errorf("LOCK over UDP after FREE_ALL: %d", st)
	}
}
