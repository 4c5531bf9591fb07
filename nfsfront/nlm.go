package nfsfront

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
)

// The Network Lock Manager, version 4 (program 100021; X/Open XNFS
// chapter 10, RFC 1813 section 6 for the 64-bit types), and the minimal
// Network Status Monitor (program 100024) a client's statd talks to,
// served on the NFS port over TCP and UDP when Config.Locks is set. They
// give clients fcntl and flock locks without the `nolock` mount option.
//
// Locks are held in Config.Locks, keyed by inode; a lock's owner is the
// client address, its caller_name, svid and owner handle. Only the
// synchronous procedures are served (the Linux client uses no others);
// the _MSG and _RES variants get PROC_UNAVAIL. A blocking LOCK that
// conflicts is answered NLM4_BLOCKED and kept: once the lock is free the
// server takes it for the client and calls it back with NLM_GRANTED
// (nlm_granted.go). A client the callback does not reach still gets the
// lock when it sends its LOCK again, which the Linux client does every
// 30 s (NLMCLNT_POLL_TIMEOUT). CANCEL drops the waiting request.
// There is no grace period: a server restart loses an in-memory table,
// and clients are not told (no SM_NOTIFY is sent).

// Programs and versions.
const (
	progNLM = 100021
	nlmVers = 4
	progNSM = 100024
	nsmVers = 1
)

// NLM version 4 procedures.
const (
	nlmProcNull    = 0
	nlmProcTest    = 1
	nlmProcLock    = 2
	nlmProcCancel  = 3
	nlmProcUnlock  = 4
	nlmProcGranted = 5
	nlmProcShare   = 20
	nlmProcUnshare = 21
	nlmProcNMLock  = 22
	nlmProcFreeAll = 23
)

// The nlm4_stat values sent. The others are DENIED_GRACE_PERIOD 4,
// DEADLCK 5, ROFS 6 and FBIG 8.
const (
	nlm4Granted       = 0
	nlm4Denied        = 1
	nlm4DeniedNoLocks = 2
	nlm4Blocked       = 3
	nlm4StaleFH       = 7
	nlm4Failed        = 9
)

// NLM limits: LM_MAXSTRLEN and MAXNETOBJ_SZ.
const (
	lmMaxStrLen = 1024
	maxNetObj   = 1024
)

var nlmV4 = map[uint32]svcProc{
	nlmProcNull:    (*Server).nlmNull,
	nlmProcTest:    (*Server).nlmTest,
	nlmProcLock:    (*Server).nlmLock,
	nlmProcCancel:  (*Server).nlmCancel,
	nlmProcUnlock:  (*Server).nlmUnlock,
	nlmProcGranted: (*Server).nlmGranted,
	nlmProcShare:   (*Server).nlmShare,
	nlmProcUnshare: (*Server).nlmShare,
	nlmProcNMLock:  (*Server).nlmLock,
	nlmProcFreeAll: (*Server).nlmFreeAll,
}

// nlmProgram is NLM's read-only procedure table.
var nlmProgram = program{
	low: nlmVers, high: nlmVers,
	versions: map[uint32]map[uint32]svcProc{nlmVers: nlmV4},
}

// serveLocks answers a call of NLM or NSM, or PROG_UNAVAIL when the
// server keeps no locks.
func (s *Server) serveLocks(ctx context.Context, c call) []byte {
	if s.cfg.Locks == nil {
		return acceptedReply(c.xid, acceptProgUnavail)
	}
	if c.prog == progNSM {
		return s.serveProgram(ctx, &nsmProgram, c)
	}
	return s.serveProgram(ctx, &nlmProgram, c)
}

// nlmLockArg is an nlm4_lock.
type nlmLockArg struct {
	caller string
	fh     []byte
	oh     []byte
	svid   int32
	offset uint64
	length uint64
}

func decodeNLMLock(d *xdrDecoder) nlmLockArg {
	return nlmLockArg{
		caller: string(d.opaque(lmMaxStrLen)),
		fh:     d.opaque(maxNetObj),
		oh:     d.opaque(maxNetObj),
		svid:   int32(d.u32()),
		offset: d.u64(),
		length: d.u64(),
	}
}

// lock is the Lock a of the client of c asks for.
func (a nlmLockArg) lock(c call, exclusive bool) Lock {
	start, end := RangeOf(a.offset, a.length)
	return Lock{
		Owner:     LockOwner{Host: clientName(c.remote), Caller: a.caller, Svid: a.svid, OH: string(a.oh)},
		Exclusive: exclusive,
		Start:     start,
		End:       end,
	}
}

// nlmFile resolves a lock's file handle to its inode, or returns the
// nlm4_stat refusing it: a handle that does not verify or names a removed
// file is stale; one of an export that does not admit the client is
// denied.
func (s *Server) nlmFile(ctx context.Context, c call, fh []byte) (meta.Ino, uint32) {
	hd, err := s.handler.codec.Decode(fh)
	if err != nil {
		s.log.Debug().Err(err).Str("client", addrString(c.remote)).Msg("nlm: bad file handle")
		return 0, nlm4StaleFH
	}
	if idx, ok := s.exportFor(c.remote); !ok || idx != hd.Export {
		s.log.Info().Str("client", addrString(c.remote)).Uint8("export", hd.Export).Msg("nlm: client not admitted by the handle's export")
		return 0, nlm4Denied
	}
	if _, _, err := s.handler.attrOf(ctx, fh); err != nil {
		if errors.Is(err, meta.ErrStale) {
			return 0, nlm4StaleFH
		}
		s.log.Warn().Err(err).Msg("nlm: file attributes")
		return 0, nlm4Failed
	}
	return hd.Ino, nlm4Granted
}

// nlmStatOf maps a LockTable error to an nlm4_stat.
func nlmStatOf(err error) uint32 {
	switch {
	case err == nil:
		return nlm4Granted
	case errors.Is(err, ErrTooManyLocks):
		return nlm4DeniedNoLocks
	}
	return nlm4Failed
}

func (s *Server) nlmNull(context.Context, call, *xdrDecoder, *xdrEncoder) {}

// nlmTest answers TEST (nlm4_testargs → nlm4_testres).
func (s *Server) nlmTest(ctx context.Context, c call, d *xdrDecoder, e *xdrEncoder) {
	cookie := d.opaque(maxNetObj)
	exclusive := d.bool()
	a := decodeNLMLock(d)
	if d.err != nil {
		return
	}
	e.opaque(cookie)
	ino, stat := s.nlmFile(ctx, c, a.fh)
	if stat != nlm4Granted {
		e.u32(stat)
		return
	}
	conflict, err := s.cfg.Locks.Test(ctx, ino, a.lock(c, exclusive))
	if err != nil {
		s.log.Warn().Err(err).Uint64("ino", uint64(ino)).Msg("nlm: test lock")
		e.u32(nlmStatOf(err))
		return
	}
	if conflict == nil {
		e.u32(nlm4Granted)
		return
	}
	e.u32(nlm4Denied)
	e.bool(conflict.Exclusive) // nlm4_holder
	e.u32(uint32(conflict.Owner.Svid))
	e.opaque([]byte(conflict.Owner.OH))
	e.u64(conflict.Start)
	e.u64(conflict.Length())
}

// nlmLock answers LOCK and NM_LOCK (nlm4_lockargs → nlm4_res).
func (s *Server) nlmLock(ctx context.Context, c call, d *xdrDecoder, e *xdrEncoder) {
	cookie := d.opaque(maxNetObj)
	block := d.bool()
	exclusive := d.bool()
	a := decodeNLMLock(d)
	_ = d.bool() // reclaim: without a grace period, a reclaim is a lock
	_ = d.u32()  // state: the client's NSM state
	if d.err != nil {
		return
	}
	e.opaque(cookie)
	ino, stat := s.nlmFile(ctx, c, a.fh)
	if stat != nlm4Granted {
		e.u32(stat)
		return
	}
	l := a.lock(c, exclusive)
	conflict, err := s.cfg.Locks.Lock(ctx, ino, l)
	switch {
	case err != nil:
		s.log.Warn().Err(err).Uint64("ino", uint64(ino)).Msg("nlm: lock")
		e.u32(nlmStatOf(err))
	case conflict == nil:
		s.nlmConfirmed(ino, l)
		s.nlmWake(ino) // a downgrade may free waiters
		e.u32(nlm4Granted)
	case block:
		s.nlmBlocked(c, ino, l, a, cookie)
		e.u32(nlm4Blocked)
	default:
		e.u32(nlm4Denied)
	}
}

// nlmCancel answers CANCEL (nlm4_cancargs → nlm4_res): the blocked
// request is dropped, and its lock released if it was already taken for
// the client.
func (s *Server) nlmCancel(ctx context.Context, c call, d *xdrDecoder, e *xdrEncoder) {
	cookie := d.opaque(maxNetObj)
	_ = d.bool() // block
	exclusive := d.bool()
	a := decodeNLMLock(d)
	if d.err != nil {
		return
	}
	e.opaque(cookie)
	ino, stat := s.nlmFile(ctx, c, a.fh)
	if stat == nlm4Granted {
		s.nlmCancelWaiter(ctx, ino, a.lock(c, exclusive))
	}
	e.u32(stat)
}

// nlmUnlock answers UNLOCK (nlm4_unlockargs → nlm4_res).
func (s *Server) nlmUnlock(ctx context.Context, c call, d *xdrDecoder, e *xdrEncoder) {
	cookie := d.opaque(maxNetObj)
	a := decodeNLMLock(d)
	if d.err != nil {
		return
	}
	e.opaque(cookie)
	ino, stat := s.nlmFile(ctx, c, a.fh)
	if stat != nlm4Granted {
		e.u32(stat)
		return
	}
	err := s.cfg.Locks.Unlock(ctx, ino, a.lock(c, false))
	if err != nil {
		s.log.Warn().Err(err).Uint64("ino", uint64(ino)).Msg("nlm: unlock")
	} else {
		s.nlmWake(ino)
	}
	e.u32(nlmStatOf(err))
}

// nlmGranted answers GRANTED (nlm4_testargs → nlm4_res), a callback
// only a server sends: acknowledge it.
func (s *Server) nlmGranted(_ context.Context, _ call, d *xdrDecoder, e *xdrEncoder) {
	cookie := d.opaque(maxNetObj)
	_ = d.bool()
	_ = decodeNLMLock(d)
	if d.err != nil {
		return
	}
	e.opaque(cookie)
	e.u32(nlm4Granted)
}

// nlmShare answers SHARE and UNSHARE (nlm4_shareargs → nlm4_shareres).
// DOS share reservations are not enforced: every request is granted for
// a valid handle.
func (s *Server) nlmShare(ctx context.Context, c call, d *xdrDecoder, e *xdrEncoder) {
	cookie := d.opaque(maxNetObj)
	_ = d.opaque(lmMaxStrLen) // caller_name
	fh := d.opaque(maxNetObj)
	_ = d.opaque(maxNetObj) // oh
	_ = d.u32()             // mode
	_ = d.u32()             // access
	_ = d.bool()            // reclaim
	if d.err != nil {
		return
	}
	e.opaque(cookie)
	_, stat := s.nlmFile(ctx, c, fh)
	e.u32(stat)
	e.u32(0) // sequence
}

// nlmFreeAll answers FREE_ALL (nlm4_notify → void): release every lock
// of the calling client under that name.
func (s *Server) nlmFreeAll(ctx context.Context, c call, d *xdrDecoder, _ *xdrEncoder) {
	name := string(d.opaque(lmMaxStrLen))
	_ = d.u32() // state
	if d.err != nil {
		return
	}
	s.releaseClient(ctx, c, ClientID{Host: clientName(c.remote), Caller: name}, "FREE_ALL")
}

// releaseClient releases the locks of id for a call of c, when an export
// admits c's client.
func (s *Server) releaseClient(ctx context.Context, c call, id ClientID, why string) {
	if _, ok := s.exportFor(c.remote); !ok {
		s.log.Info().Str("client", addrString(c.remote)).Str("call", why).Msg("nlm: release from a client no export admits ignored")
		return
	}
	s.nlmDropClient(id)
	if err := s.cfg.Locks.ReleaseClient(ctx, id); err != nil {
		s.log.Warn().Err(err).Str("host", id.Host).Str("caller", id.Caller).Str("call", why).Msg("nlm: release client locks")
		return
	}
	s.nlmWake(0)
	s.log.Info().Str("host", id.Host).Str("caller", id.Caller).Str("call", why).Msg("nlm: released client locks")
}

// nsmState is this server's NSM state number: odd (up), and larger
// after each restart as long as the clock moves forward.
type nsmState struct {
	once  sync.Once
	state uint32
}

func (n *nsmState) get() uint32 {
	n.once.Do(func() { n.state = uint32(time.Now().Unix()) | 1 })
	return n.state
}
