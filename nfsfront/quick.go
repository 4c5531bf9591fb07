package nfsfront

import (
	"sync/atomic"
	"time"
)

// A call that reads attributes, looks a name up or reads a few kilobytes
// is usually answered from memory in tens of microseconds, less than it
// costs to hand it to a goroutine of its own and wake a thread to run it.
// A connection therefore serves such a call on its reader goroutine when
// no other record is waiting in its buffer and its recent quick calls were
// fast; while the call runs, the connection reads nothing more, so a
// record that arrives meanwhile waits for it. Each connection keeps a
// moving average of its quick calls' times, and serves them on goroutines
// of their own again when it passes inlineLimit (a cluster node whose
// every lookup is an etcd round trip, or an etcd that stalls): the most a
// slow quick call can hold up is the calls that arrive while it runs.

// inlineLimit is the average time of a connection's quick calls above
// which they are no longer served on its reader goroutine.
const inlineLimit = 200 * time.Microsecond

// quickReadMax is the largest READ that counts as a quick call.
const quickReadMax = 64 << 10

// callTraits is what a connection decides about a record before dispatch
// parses it.
type callTraits struct {
	// quick: an NFSv3 GETATTR, LOOKUP or ACCESS, or a READ of at most
	// quickReadMax bytes (NULL is not: go-nfs answers it), served on the
	// reader goroutine while such calls stay fast.
	quick bool
	// keep: a call that changes the namespace, whose reply is kept for
	// a client that sends it again (see completed in dupcalls.go).
	keep bool
}

// traitsOf returns the traits of rec, reading its procedure once. A
// record that does not parse has none (dispatch answers it).
func traitsOf(rec []byte) callTraits {
	proc, d, ok := nfs3Proc(rec)
	if !ok {
		return callTraits{}
	}
	switch proc {
	case procGetattr, procLookup, procAccess:
		return callTraits{quick: true}
	case procRead:
		_ = d.opaque(maxFHSize)
		_ = d.u64() // offset
		count := d.u32()
		return callTraits{quick: d.err == nil && count <= quickReadMax}
	case procSetattr, procCreate, procMkdir, procSymlink, procRemove, procRmdir, procRename, procLink, procWrite:
		return callTraits{keep: true}
	}
	return callTraits{}
}

// quickTimes is a connection's moving average of the time its quick calls
// take. It starts at inlineLimit: a connection's first quick calls run on
// goroutines of their own until they have shown to be fast.
type quickTimes struct {
	avg atomic.Int64 // nanoseconds; zero means not started (inlineLimit)
}

// inline reports whether a quick call may run on the reader goroutine.
func (q *quickTimes) inline() bool {
	avg := q.avg.Load()
	return avg != 0 && time.Duration(avg) < inlineLimit
}

// note records that a quick call took d: the average moves an eighth of
// the way to it. Concurrent notes may lose one another; the average
// stays a fair one.
func (q *quickTimes) note(d time.Duration) {
	avg := q.avg.Load()
	if avg == 0 {
		avg = int64(inlineLimit)
	}
	q.avg.Store(max(avg+(int64(d)-avg)/8, 1))
}

// nfs3Proc returns the procedure of rec if it is an NFSv3 call, and a
// decoder at its arguments. It reads only the fields needed, without the
// credentials parseCall builds: it runs for every record, before dispatch
// parses it.
func nfs3Proc(rec []byte) (proc uint32, args xdrDecoder, ok bool) {
	d := xdrDecoder{b: rec}
	_ = d.u32() // xid
	if d.u32() != rpcCall || d.u32() != rpcVersion || d.u32() != progNFS || d.u32() != nfsVers {
		return 0, d, false
	}
	proc = d.u32()
	_ = d.u32()               // credential flavor
	_ = d.opaque(maxAuthBody) // credential body
	_ = d.u32()               // verifier flavor
	_ = d.opaque(maxAuthBody) // verifier body
	return proc, d, d.err == nil
}
