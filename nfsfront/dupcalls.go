package nfsfront

import (
	"bytes"
	"encoding/binary"
	"sync"
	"sync/atomic"
	"time"

	nfs "github.com/willscott/go-nfs"
	"github.com/zeebo/xxh3"
)

// A client that gets no reply in time sends its call again with the same
// xid (go-nfs-client after 5 s; the Linux client after timeo). If the
// first is still being served (waiting on etcd, say), serving the second
// too would run it twice, and the later run could land after calls the
// client made once it had a reply: a WRITE of version 5 over the version
// 6 written since. Like the duplicate request caches of other NFS
// servers, a connection therefore drops a call identical to one still in
// progress from the same client address: the first one's reply answers
// both.
//
// A call retransmitted after its reply was sent (the reply was lost) is
// served again, which for reads is the same to the client as the first
// time. A call that changes something is not safe to run twice that way:
// a REMOVE whose reply was lost (the connection broke) and that the client
// sends again once reconnected would fail with NOENT, a CREATE with EXIST,
// though both did what was asked; a WRITE run again would put its bytes
// back over what other clients wrote since. So the replies of such calls
// (SETATTR, CREATE, MKDIR, SYMLINK, REMOVE, RMDIR, RENAME, LINK, WRITE, as
// the Linux server keeps them) are kept for a while, and a call identical
// to one of them is answered with the same reply instead of being run
// again. Clients resend from the same address and port (the Linux client
// binds the same source port when it reconnects, for this very reason); a
// reply is kept completedTTL at most, and only the completedMax most
// recent ones. The cache is in memory: a call sent again to a restarted
// server runs again, as with other NFSv3 servers (a stopping server first
// answers the calls in flight, which leaves few such calls).

// callKey identifies a call: the client's address, the xid, the record's
// length and a hash of its first hashedPrefix bytes (program, procedure,
// credentials, the file handle and offsets), so that a reused xid with
// other arguments is a new call.
type callKey struct {
	client string
	xid    uint32
	n      int
	sum    uint64
}

// hashedPrefix bounds the bytes of a record callKey hashes: a 1 MiB WRITE
// costs no more to track than a GETATTR.
const hashedPrefix = 4 << 10

// inProgress is the set of calls being served.
type inProgress struct {
	mu      sync.Mutex
	calls   map[callKey]struct{}
	dropped atomic.Uint64 // retransmissions dropped, for tests and logs
}

// callKeyOf returns the key of the call rec from client; the zero key for a
// record too short to hold an xid, which is not tracked.
func callKeyOf(client string, rec []byte) callKey {
	if len(rec) < 4 {
		return callKey{}
	}
	return callKey{client: client, xid: binary.BigEndian.Uint32(rec), n: len(rec), sum: xxh3.Hash(rec[:min(len(rec), hashedPrefix)])}
}

// begin records that the call of key starts and returns true; false when
// the same call is already in progress (the caller drops it, and does not
// end it). The zero key is not tracked.
func (p *inProgress) begin(key callKey) bool {
	if key == (callKey{}) {
		return true
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, busy := p.calls[key]; busy {
		p.dropped.Add(1)
		return false
	}
	if p.calls == nil {
		p.calls = map[callKey]struct{}{}
	}
	p.calls[key] = struct{}{}
	return true
}

// end records that the call of key (from begin) is done.
func (p *inProgress) end(key callKey) {
	if key == (callKey{}) {
		return
	}
	p.mu.Lock()
	delete(p.calls, key)
	p.mu.Unlock()
}

// Bounds of the replies kept for calls that change the namespace.
const (
	completedMax = 16384           // replies, a few hundred bytes each (WRITEs come in thousands a second)
	completedTTL = 2 * time.Minute // longer than clients wait to resend
)

// completed holds the replies of recently completed calls that change the
// namespace, by call, the oldest dropped first.
type completed struct {
	mu      sync.Mutex
	replies map[callKey]completedReply
	ring    []callKey // insertion order; ring[next] is the oldest
	next    int
	// replays counts the calls answered from here, for tests and logs.
	replays atomic.Uint64
}

type completedReply struct {
	reply []byte
	at    time.Time
}

// lookup returns the kept reply of the call of key, or nil.
func (c *completed) lookup(key callKey, now time.Time) []byte {
	if key == (callKey{}) {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	r, ok := c.replies[key]
	if !ok || now.Sub(r.at) > completedTTL {
		return nil
	}
	c.replays.Add(1)
	return r.reply
}

// add keeps a copy of reply as the reply of the call of key. A reply
// that is no answer to the call (the RPC was not accepted) or says to try
// again later (JUKEBOX, SERVERFAULT) is not kept: running the call again
// then is what the client wants.
func (c *completed) add(key callKey, reply []byte, now time.Time) {
	if key == (callKey{}) || !final(reply) {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.replies == nil {
		c.replies = make(map[callKey]completedReply, completedMax)
		c.ring = make([]callKey, completedMax)
	}
	if _, ok := c.replies[key]; ok {
		return // kept already; its place in the ring stays
	}
	if old := c.ring[c.next]; old != (callKey{}) {
		delete(c.replies, old)
	}
	c.ring[c.next] = key
	c.next = (c.next + 1) % len(c.ring)
	c.replies[key] = completedReply{reply: bytes.Clone(reply), at: now}
}

// final reports whether reply, a whole reply record, is an accepted NFS
// reply with a status other than JUKEBOX and SERVERFAULT.
func final(reply []byte) bool {
	d := xdrDecoder{b: reply}
	_ = d.u32() // xid
	if d.u32() != rpcReply || d.u32() != msgAccepted {
		return false
	}
	_ = d.u32()               // verifier flavor
	_ = d.opaque(maxAuthBody) // verifier body
	if d.u32() != acceptSuccess {
		return false
	}
	status := nfs.NFSStatus(d.u32())
	return d.err == nil && status != nfs.NFSStatusJukebox && status != nfs.NFSStatusServerFault
}
