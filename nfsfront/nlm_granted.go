package nfsfront

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
)

// Blocked locks and the NLM_GRANTED callback. A blocking LOCK that
// conflicts is answered NLM4_BLOCKED and its request kept as a waiter. When
// a lock on that file is released through this node (UNLOCK, CANCEL,
// FREE_ALL, SM_NOTIFY), and every grantRetry while waiters remain (locks
// released through other nodes of a cluster), the server takes the lock on
// the waiter's behalf and calls the client back: it asks the client's
// portmapper (port 111 at the address the LOCK came from) for its NLM v4
// over UDP and sends it NLM_GRANTED (the synchronous call, from the address
// the client reached us on: the Linux client matches a callback by the
// server's address, file handle, svid and range). The client then sends
// its LOCK again, which is granted (its owner holds the lock) and retires
// the waiter. A client that answers the callback with anything but
// NLM4_GRANTED no longer waits: its lock is released.
//
// The callback is a shortcut, not a requirement: a client that cannot be
// reached (behind NAT, say) keeps sending its LOCK every 30 s
// (NLMCLNT_POLL_TIMEOUT on Linux) and gets the lock taken on its behalf.
// A waiter whose client has not asked again for waiterTTL is dropped; a
// CANCEL drops it too, and releases the lock if it was already taken for it
// (the owner's whole range: a shared lock the owner held there while
// waiting to upgrade it goes too).
// Waiters live in the memory of the node the client calls.

// Grant timings and bounds.
const (
	// grantRetry is how often waiters are tried while there are any.
	grantRetry = 2 * time.Second
	// waiterTTL drops a waiter whose client stopped asking.
	waiterTTL = 75 * time.Second
	// callbackTimeout bounds one NLM_GRANTED attempt (portmapper lookup
	// and call); callbackTries attempts are made.
	callbackTimeout = 2 * time.Second
	callbackTries   = 3
	// maxWaiters bounds the waiters kept; past it, blocked requests are
	// answered NLM4_BLOCKED without being kept (the client polls).
	maxWaiters = 4096
	// pmapPort is the portmapper's port on a client.
	pmapPort = 111
)

// waiterKey identifies a blocked request: the file, the owner and the
// range asked for. The kind (shared or exclusive) is left out, so that a
// CANCEL or a new request of the owner for the range matches whatever it
// asked before.
type waiterKey struct {
	ino        meta.Ino
	owner      LockOwner
	start, end uint64
}

func keyOf(ino meta.Ino, l Lock) waiterKey {
	return waiterKey{ino: ino, owner: l.Owner, start: l.Start, end: l.End}
}

// nlmWaiter is a blocked LOCK request.
type nlmWaiter struct {
	key     waiterKey
	lock    Lock
	arg     nlmLockArg // as the client sent it, for the callback
	cookie  []byte
	client  net.IP // where the LOCK came from
	local   net.IP // the address it reached, the callback's source; nil if unknown
	ownPort int    // this server's NFS port, to recognise a callback to itself
	seen    time.Time
	granted bool // taken on the client's behalf, not yet confirmed by its LOCK
	// confirmed is set when the client's own LOCK was granted (the waiter
	// then leaves the table): a grant pass that took the lock meanwhile
	// must not release it.
	confirmed bool
}

// nlmGrants holds a server's waiters.
type nlmGrants struct {
	mu      sync.Mutex
	waiters map[waiterKey]*nlmWaiter
	looping bool // the retry loop runs

	tryMu  sync.Mutex  // one grant pass at a time
	waking atomic.Bool // a woken grant pass is queued

	// callback sends NLM_GRANTED to w's client and returns its nlm4_stat
	// answer; nil means (*Server).sendGranted. Tests replace it.
	callback func(ctx context.Context, w nlmWaiter) (uint32, error)
	// pmapPort is the client's portmapper port (pmapPort unless a test
	// changes it).
	pmapPort int
}

// nlmBlocked keeps the blocking request of c for l on ino (or refreshes
// it, as the client asks again), and starts the retry loop.
func (s *Server) nlmBlocked(c call, ino meta.Ino, l Lock, a nlmLockArg, cookie []byte) {
	g := &s.grants
	key := keyOf(ino, l)
	g.mu.Lock()
	defer g.mu.Unlock()
	if w, ok := g.waiters[key]; ok && !w.granted {
		w.seen = time.Now()
		w.cookie = cookie
		w.lock = l
		w.arg = a
		return
	}
	if len(g.waiters) >= maxWaiters {
		return
	}
	if g.waiters == nil {
		g.waiters = make(map[waiterKey]*nlmWaiter)
	}
	w := &nlmWaiter{key: key, lock: l, arg: a, cookie: cookie, client: hostOf(c.remote), seen: time.Now()}
	if ip := hostOf(c.local); ip != nil && !ip.IsUnspecified() {
		w.local = ip
	}
	if c.ep != nil {
		w.ownPort = c.ep.nfsPort
	}
	g.waiters[key] = w
	if !g.looping {
		g.looping = true
		go s.grantLoop()
	}
}

// nlmConfirmed retires the waiter for l on ino: its LOCK was granted.
func (s *Server) nlmConfirmed(ino meta.Ino, l Lock) {
	g := &s.grants
	g.mu.Lock()
	if w, ok := g.waiters[keyOf(ino, l)]; ok {
		w.confirmed = true
		delete(g.waiters, w.key)
	}
	g.mu.Unlock()
}

// nlmCancelWaiter drops the waiter for l on ino and, if its lock was
// already taken on the client's behalf, releases it.
func (s *Server) nlmCancelWaiter(ctx context.Context, ino meta.Ino, l Lock) {
	g := &s.grants
	key := keyOf(ino, l)
	g.mu.Lock()
	w, ok := g.waiters[key]
	delete(g.waiters, key)
	g.mu.Unlock()
	if ok && w.granted {
		s.releaseForWaiter(ctx, *w, "cancelled")
	}
}

// nlmDropClient drops the waiters of the owners id matches: the client
// restarted or freed everything.
func (s *Server) nlmDropClient(id ClientID) {
	g := &s.grants
	g.mu.Lock()
	defer g.mu.Unlock()
	for k := range g.waiters {
		if id.Matches(k.owner) {
			delete(g.waiters, k)
		}
	}
}

// nlmWake tries, in the background, to grant the waiters on ino (all
// waiters when ino is 0): a lock there was released.
func (s *Server) nlmWake(ino meta.Ino) {
	g := &s.grants
	g.mu.Lock()
	any := false
	for k := range g.waiters {
		if ino == 0 || k.ino == ino {
			any = true
			break
		}
	}
	g.mu.Unlock()
	// One pass at a time tries every waiter, so a wake that finds a pass
	// already queued has nothing to add: releases in a burst cost at most
	// one running and one queued pass, not a goroutine each.
	if any && g.waking.CompareAndSwap(false, true) {
		go func() {
			ctx := s.serveCtx()
			g.tryMu.Lock()
			g.waking.Store(false) // wakes from now on queue another pass
			g.tryMu.Unlock()
			s.tryGrants(ctx, 0)
		}()
	}
}

// serveCtx is the context the server serves under (Background before
// Serve).
func (s *Server) serveCtx() context.Context { return s.handler.fs.ctx }

// grantLoop tries every waiter each grantRetry and drops stale ones, until
// none remain or the server stops.
func (s *Server) grantLoop() {
	g := &s.grants
	ctx := s.serveCtx()
	tick := time.NewTicker(grantRetry)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			g.mu.Lock()
			g.looping = false
			g.mu.Unlock()
			return
		case <-tick.C:
		}
		g.mu.Lock()
		var abandoned []nlmWaiter
		for k, w := range g.waiters {
			if time.Since(w.seen) > waiterTTL {
				delete(g.waiters, k)
				if w.granted {
					// Taken for a client that neither took the callback
					// nor asked again: it is gone, free the lock.
					abandoned = append(abandoned, *w)
				}
			}
		}
		empty := len(g.waiters) == 0
		if empty {
			g.looping = false
		}
		g.mu.Unlock()
		for _, w := range abandoned {
			s.releaseForWaiter(ctx, w, "abandoned by the client")
		}
		if empty {
			return
		}
		s.tryGrants(ctx, 0)
	}
}

// tryGrants takes the lock of each waiting request on ino (every file when
// ino is 0) that no longer conflicts, and calls its client back.
func (s *Server) tryGrants(ctx context.Context, ino meta.Ino) {
	g := &s.grants
	g.tryMu.Lock()
	defer g.tryMu.Unlock()
	g.mu.Lock()
	var todo []*nlmWaiter
	for k, w := range g.waiters {
		if !w.granted && (ino == 0 || k.ino == ino) {
			todo = append(todo, w)
		}
	}
	g.mu.Unlock()
	for _, wp := range todo {
		g.mu.Lock()
		w := *wp
		g.mu.Unlock()
		if ctx.Err() != nil {
			return
		}
		lctx, cancel := context.WithTimeout(ctx, s.cfg.OpTimeout)
		conflict, err := s.cfg.Locks.Lock(lctx, w.key.ino, w.lock)
		cancel()
		if err != nil {
			s.log.Warn().Err(err).Uint64("ino", uint64(w.key.ino)).Msg("nlm: lock for a waiting client")
			continue
		}
		if conflict != nil {
			continue
		}
		g.mu.Lock()
		cur, ok := g.waiters[w.key]
		mine := ok && cur == wp && cur.lock == w.lock
		if mine {
			cur.granted = true
		}
		confirmed := wp.confirmed
		g.mu.Unlock()
		switch {
		case mine:
			go s.callBack(ctx, w)
		case confirmed:
			// The client's own LOCK got it meanwhile and was answered
			// GRANTED: the lock is the client's, leave it.
		default:
			// Cancelled or changed meanwhile: nobody wants this lock.
			s.releaseForWaiter(ctx, w, "cancelled while granted")
		}
	}
}

// callBack sends w's client NLM_GRANTED; a client that answers that it no
// longer waits gets its lock released.
func (s *Server) callBack(ctx context.Context, w nlmWaiter) {
	send := s.grants.callback
	if send == nil {
		send = s.sendGranted
	}
	var stat uint32
	var err error
	for try := 1; try <= callbackTries; try++ {
		if stat, err = send(ctx, w); err == nil || errors.Is(err, errNoCallback) || ctx.Err() != nil {
			break
		}
	}
	log := s.log.Debug().Str("client", w.client.String()).Str("caller", w.key.owner.Caller).Uint64("ino", uint64(w.key.ino))
	switch {
	case err != nil:
		// The client polls again and confirms the lock taken for it.
		log.Err(err).Msg("nlm: GRANTED callback not delivered")
	case stat != nlm4Granted:
		log.Uint32("stat", stat).Msg("nlm: client refused the GRANTED callback")
		g := &s.grants
		g.mu.Lock()
		cur, ok := g.waiters[w.key]
		if ok && cur.granted {
			delete(g.waiters, w.key)
		}
		g.mu.Unlock()
		if ok && cur.granted {
			s.releaseForWaiter(ctx, w, "refused by the client")
		}
	default:
		log.Msg("nlm: GRANTED callback delivered")
		// The client holds the lock now and will not ask again.
		g := &s.grants
		g.mu.Lock()
		if cur, ok := g.waiters[w.key]; ok && cur.granted {
			cur.confirmed = true
			delete(g.waiters, w.key)
		}
		g.mu.Unlock()
	}
}

// releaseForWaiter releases the lock taken for w, which its client does
// not want, and wakes the other waiters on the file.
func (s *Server) releaseForWaiter(ctx context.Context, w nlmWaiter, why string) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.OpTimeout)
	defer cancel()
	if err := s.cfg.Locks.Unlock(ctx, w.key.ino, w.lock); err != nil {
		s.log.Warn().Err(err).Uint64("ino", uint64(w.key.ino)).Str("why", why).Msg("nlm: release a waiter's lock")
		return
	}
	s.nlmWake(w.key.ino)
}

// errNoCallback means a client cannot be called back at all (no NLM
// registered, or the callback would reach this server itself): not
// worth retrying.
var errNoCallback = errors.New("no NLM service to call back")

// sendGranted finds w's client's NLM v4 over UDP through its portmapper and
// calls its GRANTED procedure (nlm4_testargs → nlm4_res).
func (s *Server) sendGranted(ctx context.Context, w nlmWaiter) (uint32, error) {
	port := s.grants.pmapPort
	if port == 0 {
		port = pmapPort
	}
	ctx, cancel := context.WithTimeout(ctx, callbackTimeout)
	defer cancel()
	e := &xdrEncoder{}
	e.u32(progNLM)
	e.u32(nlmVers)
	e.u32(ipProtoUDP)
	e.u32(0)
	d, err := udpCall(ctx, w.local, &net.UDPAddr{IP: w.client, Port: port}, progPortmap, 2, pmapProcGetport, e.b)
	if err != nil {
		return 0, fmt.Errorf("client portmapper: %w", err)
	}
	nlmPort := int(d.u32())
	if d.err != nil {
		return 0, fmt.Errorf("client portmapper reply: %w", d.err)
	}
	if nlmPort == 0 {
		return 0, fmt.Errorf("client %s: %w (NLM v4 over UDP not registered)", w.client, errNoCallback)
	}
	if w.client.IsLoopback() && nlmPort == w.ownPort {
		return 0, fmt.Errorf("client %s: %w (its portmapper is ours)", w.client, errNoCallback)
	}
	e = &xdrEncoder{}
	e.opaque(w.cookie)
	e.bool(w.lock.Exclusive)
	e.str(serverName())
	e.opaque(w.arg.fh)
	e.opaque(w.arg.oh)
	e.u32(uint32(w.arg.svid))
	e.u64(w.arg.offset)
	e.u64(w.arg.length)
	d, err = udpCall(ctx, w.local, &net.UDPAddr{IP: w.client, Port: nlmPort}, progNLM, nlmVers, nlmProcGranted, e.b)
	if err != nil {
		return 0, fmt.Errorf("client NLM on port %d: %w", nlmPort, err)
	}
	_ = d.opaque(maxNetObj) // cookie
	stat := d.u32()
	if d.err != nil {
		return 0, fmt.Errorf("GRANTED reply: %w", d.err)
	}
	return stat, nil
}

// serverName is the caller_name of our callbacks: the host name.
func serverName() string {
	if h, err := os.Hostname(); err == nil && h != "" {
		return h
	}
	return "wormhole"
}

// udpCall sends one RPC call with AUTH_NONE over UDP from local (any
// address when nil) to addr, resending every half second, and returns a
// decoder at the results of a SUCCESS reply. It stops at ctx's deadline.
func udpCall(ctx context.Context, local net.IP, addr *net.UDPAddr, prog, vers, proc uint32, args []byte) (*xdrDecoder, error) {
	var laddr *net.UDPAddr
	if local != nil {
		laddr = &net.UDPAddr{IP: local}
	}
	conn, err := net.DialUDP("udp", laddr, addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()

	var xidb [4]byte
	if _, err := rand.Read(xidb[:]); err != nil {
		return nil, err
	}
	xid := binary.BigEndian.Uint32(xidb[:])
	e := &xdrEncoder{}
	for _, v := range []uint32{xid, rpcCall, rpcVersion, prog, vers, proc, authNone, 0, authNone, 0} {
		e.u32(v)
	}
	e.b = append(e.b, args...)
	buf := make([]byte, 64<<10)
	for {
		if _, err := conn.Write(e.b); err != nil {
			return nil, fmt.Errorf("call %s: %w", addr, err)
		}
		if err := conn.SetReadDeadline(time.Now().Add(500 * time.Millisecond)); err != nil {
			return nil, err
		}
		for {
			n, err := conn.Read(buf)
			if err != nil {
				if ctx.Err() != nil {
					return nil, fmt.Errorf("call %s: %w", addr, ctx.Err())
				}
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					break // resend
				}
				return nil, fmt.Errorf("call %s: %w", addr, err)
			}
			if d, ok, err := parseReply(buf[:n], xid); ok {
				if err != nil {
					return nil, fmt.Errorf("call %s: %w", addr, err)
				}
				return d, nil
			}
		}
	}
}

// parseReply checks that rec is the reply to xid (ok false when it is
// not: a stray datagram), and returns a decoder at its results, or an
// error unless it is an accepted SUCCESS.
func parseReply(rec []byte, xid uint32) (*xdrDecoder, bool, error) {
	d := &xdrDecoder{b: rec}
	if d.u32() != xid || d.u32() != rpcReply || d.err != nil {
		return nil, false, nil
	}
	if st := d.u32(); st != msgAccepted {
		return nil, true, fmt.Errorf("call denied (reply_stat %d)", st)
	}
	_ = d.u32()       // verifier flavor
	_ = d.opaque(400) // verifier body
	if st := d.u32(); st != acceptSuccess || d.err != nil {
		return nil, true, fmt.Errorf("call not accepted: accept_stat %s (%v)", strconv.Itoa(int(st)), d.err)
	}
	return d, true, nil
}
