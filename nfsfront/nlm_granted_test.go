package nfsfront

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
)

// fakeLockd is the client side of an NLM_GRANTED callback on loopback: a
// portmapper (UDP) that knows one program, NLM v4 over UDP, and that NLM
// service, which records the GRANTED calls it gets and answers them with
// stat.
type fakeLockd struct {
	pmap, nlm *net.UDPConn
	stat      uint32

	mu      sync.Mutex
	granted []nlmLockArg
	got     chan struct{} // a GRANTED call arrived
}

func newFakeLockd(t *testing.T, stat uint32) *fakeLockd {
	t.Helper()
	listen := func() *net.UDPConn {
		c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	f := &fakeLockd{pmap: listen(), nlm: listen(), stat: stat, got: make(chan struct{}, 16)}
	nlmPort := uint32(f.nlm.LocalAddr().(*net.UDPAddr).Port)
	go f.serve(f.pmap, func(h rpcCallHeader, d *xdrDecoder, e *xdrEncoder) {
		prog, vers, proto := d.u32(), d.u32(), d.u32()
		if h.prog == progPortmap && h.proc == pmapProcGetport && prog == progNLM && vers == nlmVers && proto == ipProtoUDP {
			e.u32(nlmPort)
			return
		}
		e.u32(0)
	})
	go f.serve(f.nlm, func(h rpcCallHeader, d *xdrDecoder, e *xdrEncoder) {
		cookie := d.opaque(maxNetObj)
		_ = d.bool()
		a := decodeNLMLock(d)
		if h.prog != progNLM || h.proc != nlmProcGranted || d.err != nil {
			return
		}
		f.mu.Lock()
		f.granted = append(f.granted, a)
		f.mu.Unlock()
		f.got <- struct{}{}
		e.opaque(cookie)
		e.u32(f.stat)
	})
	return f
}

// serve answers the calls arriving on c with body's results.
func (f *fakeLockd) serve(c *net.UDPConn, body func(rpcCallHeader, *xdrDecoder, *xdrEncoder)) {
	buf := make([]byte, 64<<10)
	for {
		n, from, err := c.ReadFromUDP(buf)
		if err != nil {
			return
		}
		h, err := parseCall(buf[:n])
		if err != nil {
			continue
		}
		e := &xdrEncoder{}
		acceptedHeader(e, h.xid, acceptSuccess)
		body(h, &xdrDecoder{b: h.args}, e)
		c.WriteToUDP(e.b, from)
	}
}

// waitGranted waits for a GRANTED call and returns its lock.
func (f *fakeLockd) waitGranted(t *testing.T) nlmLockArg {
	t.Helper()
	select {
	case <-f.got:
	case <-time.After(10 * time.Second):
		t.Fatal("no GRANTED callback within 10s")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.granted[len(f.granted)-1]
}

// loopbackLockServer is a lock test server that calls clients back through
// f's portmapper.
func loopbackLockServer(t *testing.T, f *fakeLockd) (*Server, *MemLocks) {
	t.Helper()
	s, locks := newLockTestServer(t)
	s.grants.callback = nil
	s.grants.pmapPort = f.pmap.LocalAddr().(*net.UDPAddr).Port
	return s, locks
}

// loopbackOrigin is a call over TCP from ip to 127.0.0.1:2049.
func loopbackOrigin(ip string) origin {
	return origin{
		svc:    allServices | svcLock,
		local:  &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 2049},
		remote: &net.TCPAddr{IP: net.ParseIP(ip), Port: 800},
		ep:     testEndpoints(),
	}
}

// eventually polls cond until it holds or fails the test after 10 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10s", what)
		}
		time.Sleep(10 * time.Millisecond) // poll interval: a goroutine of the server acts
	}
}

func (s *Server) waiterCount() int {
	s.grants.mu.Lock()
	defer s.grants.mu.Unlock()
	return len(s.grants.waiters)
}

// holds reports whether svid holds a lock on the root inode.
func holds(locks *MemLocks, svid int32) bool {
	for _, l := range locks.locks(meta.RootIno) {
		if l.Owner.Svid == svid {
			return true
		}
	}
	return false
}

// A blocked request is granted when the holder unlocks: the server takes the
// lock for the waiter and calls its lockd back with the waiter's lock; the
// client's LOCK then confirms it.
func TestNLMGrantedCallback(t *testing.T) {
	f := newFakeLockd(t, nlm4Granted)
	s, locks := loopbackLockServer(t, f)
	fh := s.handleFor(creds{export: 0}, rootAttr)
	a := &lockClient{t: t, s: s, o: loopbackOrigin("127.0.0.1")}
	b := &lockClient{t: t, s: s, o: loopbackOrigin("127.0.0.1")}
	la := nlmLockSpec{caller: "alpha", fh: fh, oh: "1@alpha", svid: 1, offset: 0, len: 100}
	lb := nlmLockSpec{caller: "beta", fh: fh, oh: "2@beta", svid: 2, offset: 10, len: 20}

	if st := a.stat(nlmProcLock, nlmLockArgs("ck", false, true, la)); st != nlm4Granted {
		t.Fatalf("LOCK a: %d", st)
	}
	if st := b.stat(nlmProcLock, nlmLockArgs("ck", true, true, lb)); st != nlm4Blocked {
		t.Fatalf("blocking LOCK b: %d", st)
	}
	if st := a.stat(nlmProcUnlock, nlmUnlockArgs("ck", la)); st != nlm4Granted {
		t.Fatalf("UNLOCK a: %d", st)
	}
	got := f.waitGranted(t)
	if got.svid != 2 || string(got.oh) != "2@beta" || string(got.fh) != string(fh) || got.offset != 10 || got.length != 20 {
		t.Errorf("GRANTED for svid %d oh %q offset %d length %d, want b's lock", got.svid, got.oh, got.offset, got.length)
	}
	if !holds(locks, 2) {
		t.Errorf("b does not hold the lock it was called back for: %v", locks.locks(meta.RootIno))
	}
	// The client sends its LOCK again: granted, and the waiter retired.
	if st := b.stat(nlmProcLock, nlmLockArgs("ck", true, true, lb)); st != nlm4Granted {
		t.Errorf("LOCK b after the callback: %d", st)
	}
	if n := s.waiterCount(); n != 0 {
		t.Errorf("%d waiters left", n)
	}
}

// A client that answers the callback with DENIED no longer waits: the lock
// taken for it is released.
func TestNLMGrantedRefused(t *testing.T) {
	f := newFakeLockd(t, nlm4Denied)
	s, locks := loopbackLockServer(t, f)
	fh := s.handleFor(creds{export: 0}, rootAttr)
	a := &lockClient{t: t, s: s, o: loopbackOrigin("127.0.0.1")}
	la := nlmLockSpec{caller: "alpha", fh: fh, oh: "1@alpha", svid: 1}
	lb := nlmLockSpec{caller: "beta", fh: fh, oh: "2@beta", svid: 2}
	a.stat(nlmProcLock, nlmLockArgs("ck", false, true, la))
	if st := a.stat(nlmProcLock, nlmLockArgs("ck", true, true, lb)); st != nlm4Blocked {
		t.Fatalf("blocking LOCK b: %d", st)
	}
	a.stat(nlmProcUnlock, nlmUnlockArgs("ck", la))
	f.waitGranted(t)
	eventually(t, "release of the refused lock", func() bool { return !holds(locks, 2) && s.waiterCount() == 0 })
}

// Without a reachable client, the lock is still taken for the waiter when
// it is freed, also by a release the server did not see (another node of a
// cluster): the retry loop finds it. CANCEL then releases it.
func TestNLMGrantedUnreachableThenCancel(t *testing.T) {
	s, locks := newLockTestServer(t)
	var calls sync.WaitGroup
	calls.Add(1)
	var once sync.Once
	s.grants.callback = func(context.Context, nlmWaiter) (uint32, error) {
		once.Do(calls.Done)
		return 0, errors.New("unreachable")
	}
	fh := s.handleFor(creds{export: 0}, rootAttr)
	a := &lockClient{t: t, s: s, o: lockOrigin("10.1.2.3", false)}
	la := nlmLockSpec{caller: "alpha", fh: fh, oh: "1@alpha", svid: 1}
	lb := nlmLockSpec{caller: "beta", fh: fh, oh: "2@beta", svid: 2}
	a.stat(nlmProcLock, nlmLockArgs("ck", false, true, la))
	if st := a.stat(nlmProcLock, nlmLockArgs("ck", true, true, lb)); st != nlm4Blocked {
		t.Fatalf("blocking LOCK b: %d", st)
	}
	// Released behind the server's back.
	aLock := nlmLockArg{caller: "alpha", oh: []byte("1@alpha"), svid: 1}.lock(call{origin: a.o}, true)
	if err := locks.Unlock(context.Background(), meta.RootIno, aLock); err != nil {
		t.Fatal(err)
	}
	eventually(t, "lock taken for the waiter by the retry loop", func() bool { return holds(locks, 2) })
	calls.Wait()
	if st := a.stat(nlmProcCancel, nlmCancelArgs("ck", lb)); st != nlm4Granted {
		t.Fatalf("CANCEL b: %d", st)
	}
	if holds(locks, 2) || s.waiterCount() != 0 {
		t.Errorf("after CANCEL: locks %v, %d waiters", locks.locks(meta.RootIno), s.waiterCount())
	}
}

// SM_NOTIFY from a waiting client drops its waiter: nothing is taken for a
// client that restarted.
func TestNLMGrantedDroppedOnNotify(t *testing.T) {
	s, locks := newLockTestServer(t)
	fh := s.handleFor(creds{export: 0}, rootAttr)
	a := &lockClient{t: t, s: s, o: lockOrigin("10.1.2.3", false)}
	b := &lockClient{t: t, s: s, o: lockOrigin("10.1.2.4", true)}
	la := nlmLockSpec{caller: "alpha", fh: fh, oh: "1@alpha", svid: 1}
	lb := nlmLockSpec{caller: "beta", fh: fh, oh: "2@beta", svid: 2}
	a.stat(nlmProcLock, nlmLockArgs("ck", false, true, la))
	b.stat(nlmProcLock, nlmLockArgs("ck", true, true, lb))
	if s.waiterCount() != 1 {
		t.Fatalf("%d waiters, want 1", s.waiterCount())
	}
	b.call(progNSM, nsmVers, nsmProcNotify, nameState("beta", 5))
	if s.waiterCount() != 0 {
		t.Errorf("%d waiters after beta's SM_NOTIFY", s.waiterCount())
	}
	a.stat(nlmProcUnlock, nlmUnlockArgs("ck", la))
	if holds(locks, 2) {
		t.Errorf("lock taken for a client that restarted")
	}
}

// gatedLocks holds up the first Lock of svid once armed, until released:
// it lets a test interleave a grant pass with a client's own LOCK.
type gatedLocks struct {
	LockTable
	svid     int32
	mu       sync.Mutex
	armed    bool
	entered  chan struct{}
	released chan struct{}
}

func (g *gatedLocks) Lock(ctx context.Context, ino meta.Ino, l Lock) (*Lock, error) {
	g.mu.Lock()
	hold := g.armed && l.Owner.Svid == g.svid
	if hold {
		g.armed = false
	}
	g.mu.Unlock()
	if hold {
		close(g.entered)
		<-g.released
	}
	return g.LockTable.Lock(ctx, ino, l)
}

// A grant pass that takes a lock for a waiter whose own LOCK was granted
// meanwhile (the client's re-poll) must leave the lock to the client, not
// release it as if the waiter had cancelled.
func TestNLMGrantPassRacingClientLock(t *testing.T) {
	s, locks := newLockTestServer(t)
	g := &gatedLocks{LockTable: s.cfg.Locks, svid: 2, entered: make(chan struct{}), released: make(chan struct{})}
	s.cfg.Locks = g
	s.grants.callback = func(context.Context, nlmWaiter) (uint32, error) { return nlm4Granted, nil }
	fh := s.handleFor(creds{export: 0}, rootAttr)
	a := &lockClient{t: t, s: s, o: lockOrigin("10.1.2.3", false)}
	b := &lockClient{t: t, s: s, o: lockOrigin("10.1.2.4", false)}
	la := nlmLockSpec{caller: "alpha", fh: fh, oh: "1@alpha", svid: 1}
	lb := nlmLockSpec{caller: "beta", fh: fh, oh: "2@beta", svid: 2}
	a.stat(nlmProcLock, nlmLockArgs("ck", false, true, la))
	if st := b.stat(nlmProcLock, nlmLockArgs("ck", true, true, lb)); st != nlm4Blocked {
		t.Fatalf("blocking LOCK b: %d", st)
	}
	// a's lock goes away behind the server's back (another node), and a
	// grant pass starts: it stops inside its Lock for b.
	aLock := nlmLockArg{caller: "alpha", oh: []byte("1@alpha"), svid: 1}.lock(call{origin: a.o}, true)
	if err := locks.Unlock(context.Background(), meta.RootIno, aLock); err != nil {
		t.Fatal(err)
	}
	g.mu.Lock()
	g.armed = true
	g.mu.Unlock()
	pass := make(chan struct{})
	go func() {
		defer close(pass)
		s.tryGrants(context.Background(), 0)
	}()
	select {
	case <-g.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the grant pass never tried to lock for b")
	}
	// Meanwhile b's re-poll is granted.
	if st := b.stat(nlmProcLock, nlmLockArgs("ck", true, true, lb)); st != nlm4Granted {
		t.Fatalf("b's LOCK again: %d", st)
	}
	close(g.released)
	select {
	case <-pass:
	case <-time.After(10 * time.Second):
		t.Fatal("the grant pass did not end")
	}
	if !holds(locks, 2) {
		t.Errorf("b was answered GRANTED but no longer holds the lock: %v", locks.locks(meta.RootIno))
	}
}
