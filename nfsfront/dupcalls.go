package nfsfront

import (
	"encoding/binary"
	"sync"
	"sync/atomic"

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
// both. (A call retransmitted after its reply was sent is served again,
// which for the client is the same as the first time: it has made no
// call since.)

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

// begin records that the call rec from client starts and returns its key
// and ok true; ok is false when the same call is already in progress (the
// caller drops it, and does not end it). A record too short to hold an
// xid is not tracked (ok, zero key).
func (p *inProgress) begin(client string, rec []byte) (key callKey, ok bool) {
	if len(rec) < 4 {
		return callKey{}, true
	}
	key = callKey{client: client, xid: binary.BigEndian.Uint32(rec), n: len(rec), sum: xxh3.Hash(rec[:min(len(rec), hashedPrefix)])}
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, busy := p.calls[key]; busy {
		p.dropped.Add(1)
		return key, false
	}
	if p.calls == nil {
		p.calls = map[callKey]struct{}{}
	}
	p.calls[key] = struct{}{}
	return key, true
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
