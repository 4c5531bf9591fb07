package etcdmeta

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/wormhole-fs/wormhole/chunker/chunk"
	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
)

// maxAttempts bounds the optimistic retry loop of one operation.
const maxAttempts = 64

// pageSize is how many keys one range read returns at most.
const pageSize = 4096

// errContention is returned when an operation lost the race maxAttempts
// times in a row.
var errContention = errors.New("too much contention, transaction retried too often")

// errRetry is returned by a read inside a transaction attempt when the
// attempt must start over (its snapshot revision was compacted away).
var errRetry = errors.New("retry transaction")

// etcdErr wraps an etcd or transport error with the operation, mapping
// etcd's quota alarm to meta.ErrNoSpace.
func etcdErr(op string, err error) error {
	if errors.Is(err, rpctypes.ErrNoSpace) || errors.Is(err, rpctypes.ErrGRPCNoSpace) {
		return fmt.Errorf("%s: %w (etcd: %w)", op, meta.ErrNoSpace, err)
	}
	if unavailable(err) {
		return fmt.Errorf("%s: %w (etcd: %w)", op, meta.ErrUnavailable, err)
	}
	return fmt.Errorf("%s: etcd: %w", op, err)
}

// unavailable reports an etcd error that says "not now": no leader, a
// leader change, a proposal that timed out, a member that cannot be
// reached (gRPC's Unavailable).
func unavailable(err error) bool {
	if ee, ok := errors.AsType[rpctypes.EtcdError](err); ok {
		return ee.Code() == codes.Unavailable
	}
	return status.Code(err) == codes.Unavailable
}

// backoff waits a short random time that grows with attempt, or until ctx
// is done.
func backoff(ctx context.Context, attempt int) error {
	if attempt == 0 {
		return ctx.Err()
	}
	d := time.Duration(rand.Int64N(int64(min(attempt, 20)) * int64(time.Millisecond)))
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// pendingOps returns the writes commit would send: the operations added
// and the inodes changed or deleted.
func (t *tx) pendingOps() []clientv3.Op {
	ops := slices.Clip(t.ops)
	for _, ino := range t.order {
		st := t.inodes[ino]
		switch {
		case st.deleted:
			ops = append(ops, clientv3.OpDelete(t.s.keys.ino(ino)))
		case st.dirty:
			ops = append(ops, clientv3.OpPut(t.s.keys.ino(ino), string(encodeInode(st.attr))))
		}
	}
	return ops
}

// kv is one key as a transaction attempt read it. modRev 0 means absent.
type kv struct {
	val    []byte
	modRev int64
}

// tx is one attempt of an optimistic transaction: every read is made at
// one snapshot revision and recorded, and the commit succeeds only if no
// key read has changed since (compare on mod revision). Attributes are
// loaded and modified in place, then written back by commit.
type tx struct {
	s       *Store
	attempt int   // 0 for the first attempt of an operation
	rev     int64 // snapshot revision; 0 until the first read
	// read holds every key read (or assumed absent); commit makes the
	// transaction conditional on each still having the mod revision
	// read. A read-only attempt builds no conditions.
	read map[string]kv
	cmps []clientv3.Cmp // conditions beyond read's (new inodes' absence)
	ops  []clientv3.Op
	// optimistic makes the attempt's current reads serializable: the
	// member the client talks to answers from what it has applied,
	// without a round of raft's read index to confirm it is current
	// (runWrite).
	optimistic bool

	inodes map[meta.Ino]*inodeState
	order  []meta.Ino // inodes in load order, for deterministic commits
}

type inodeState struct {
	attr    meta.Attr
	exists  bool
	dirty   bool
	deleted bool
}

func (s *Store) newTx() *tx {
	return &tx{s: s, read: map[string]kv{}, inodes: map[meta.Ino]*inodeState{}}
}

// run executes attempt until it commits, fails, or maxAttempts is hit.
// attempt builds its reads and writes on the tx it gets and returns the
// error to give up with (run prefixes it with op), or nil to commit.
func (s *Store) run(ctx context.Context, op string, attempt func(t *tx) error) error {
	for i := 0; i < maxAttempts; i++ {
		t := s.newTx()
		t.attempt = i
		err := attempt(t)
		if errors.Is(err, errRetry) {
			if err := backoff(ctx, i); err != nil {
				return fmt.Errorf("%s: %w", op, err)
			}
			continue
		}
		if err != nil {
			return fmt.Errorf("%s: %w", op, err)
		}
		ok, err := t.commit(ctx)
		if err != nil {
			return etcdErr(op, err)
		}
		if ok {
			return nil
		}
		if err := backoff(ctx, i); err != nil {
			return fmt.Errorf("%s: %w", op, err)
		}
	}
	return fmt.Errorf("%s: %w", op, errContention)
}

// runWrite is run for operations that change the namespace. On a cluster
// (more than one etcd member, no cache) their first attempt reads
// optimistically: the local member's applied state (serializable reads,
// no read-index round trip, which costs a heartbeat exchange with the
// leader). A member that lags can only make the commit's conditions fail,
// since they hold every key read at its mod revision. Such an attempt
// counts only if its conditional commit succeeds: one that ends any other
// way (an error decided from what it read, like "exists" or "not found",
// or nothing to write, whose result would be returned unchecked) is done
// again with current reads, at once, as are the attempts after it. A
// member that took a write answers it only once it has applied it, so
// this node reads its own writes.
func (s *Store) runWrite(ctx context.Context, op string, attempt func(t *tx) error) error {
	if s.soleMember || s.cache != nil {
		return s.run(ctx, op, attempt) // current reads are local already
	}
	t := s.newTx()
	t.optimistic = true
	if err := attempt(t); err == nil && len(t.pendingOps()) > 0 {
		ok, err := t.commit(ctx)
		if err != nil {
			return etcdErr(op, err)
		}
		if ok {
			return nil
		}
	}
	return s.run(ctx, op, attempt)
}

// load reads the keys not read yet, all in one round trip at the snapshot
// revision (the first load picks it), and records them in t.read (on
// which commit conditions a write).
func (t *tx) load(ctx context.Context, keys ...string) error {
	var want []string
	for _, k := range keys {
		if _, ok := t.read[k]; !ok {
			want = append(want, k)
		}
	}
	if len(want) == 0 {
		return nil
	}
	if t.s.cache != nil {
		// Straight from a single node's cache when it holds them all,
		// current (first read) or as they were at the snapshot: what
		// the read sent to etcd through the cache would answer, without
		// building it.
		if es, rev, ok := t.s.cache.find(want, t.rev); ok {
			if t.rev == 0 {
				t.rev = rev
			}
			for i, e := range es {
				t.read[want[i]] = kv{val: e.val, modRev: e.modRev}
			}
			return nil
		}
	}
	ops := make([]clientv3.Op, 0, len(want))
	for _, k := range want {
		switch {
		case t.rev == 0 && t.optimistic:
			ops = append(ops, clientv3.OpGet(k, clientv3.WithSerializable()))
		case t.rev == 0:
			ops = append(ops, clientv3.OpGet(k))
		default:
			ops = append(ops, clientv3.OpGet(k, clientv3.WithRev(t.rev), clientv3.WithSerializable()))
		}
	}
	resp, err := t.s.kv.Txn(ctx).Then(ops...).Commit()
	if err != nil {
		return t.readErr(err)
	}
	if t.rev == 0 {
		t.rev = resp.Header.Revision
	}
	for i, r := range resp.Responses {
		k := want[i]
		var v kv
		if kvs := r.GetResponseRange().GetKvs(); len(kvs) == 1 {
			v = kv{val: kvs[0].Value, modRev: kvs[0].ModRevision}
		}
		t.read[k] = v
	}
	return nil
}

// assumeAbsent records key as read and absent, without reading it, and
// makes the commit conditional on that: when the key exists, the commit
// fails and the operation's next attempt reads it. It spares an etcd read
// where the key is all but certainly absent (the entry of a name being
// created: clients look a name up before they create it). Only a first
// attempt assumes; later ones read.
func (t *tx) assumeAbsent(key string) {
	if t.attempt > 0 {
		return
	}
	if _, ok := t.read[key]; ok {
		return
	}
	t.read[key] = kv{}
}

func (t *tx) readErr(err error) error {
	if errors.Is(err, rpctypes.ErrCompacted) || errors.Is(err, rpctypes.ErrGRPCCompacted) ||
		// A member behind the pinned revision (external etcd with several
		// endpoints): try again rather than fail the operation.
		errors.Is(err, rpctypes.ErrFutureRev) || errors.Is(err, rpctypes.ErrGRPCFutureRev) {
		return errRetry
	}
	return fmt.Errorf("etcd read: %w", err)
}

// rangeRead reads up to limit keys (all when limit <= 0) in [from, end) at
// the snapshot revision, page by page. It records no compares: callers
// guard ranges through a record that every change of the range rewrites
// (the directory inode for entries, the file inode for chunk refs).
func (t *tx) rangeRead(ctx context.Context, from, end string, limit int, fn func(key string, val []byte) error) error {
	if t.rev == 0 {
		// Pin the snapshot with a cheap linearizable read (serializable
		// when the attempt is optimistic).
		opts := []clientv3.OpOption{clientv3.WithCountOnly()}
		if t.optimistic {
			opts = append(opts, clientv3.WithSerializable())
		}
		resp, err := t.s.kv.Get(ctx, t.s.keys.nextIno(), opts...)
		if err != nil {
			return t.readErr(err)
		}
		t.rev = resp.Header.Revision
	}
	n := 0
	for {
		page := int64(pageSize)
		if limit > 0 && limit-n < pageSize {
			page = int64(limit - n)
		}
		resp, err := t.s.kv.Get(ctx, from, clientv3.WithRange(end), clientv3.WithLimit(page),
			clientv3.WithRev(t.rev), clientv3.WithSerializable())
		if err != nil {
			return t.readErr(err)
		}
		for _, kv := range resp.Kvs {
			if err := fn(string(kv.Key), kv.Value); err != nil {
				return err
			}
		}
		n += len(resp.Kvs)
		if !resp.More || len(resp.Kvs) == 0 || (limit > 0 && n >= limit) {
			return nil
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// inode loads the attributes of ino. ok is false if it does not exist; the
// returned pointer may then be filled in and marked with put.
func (t *tx) inode(ctx context.Context, ino meta.Ino) (*meta.Attr, bool, error) {
	if st, ok := t.inodes[ino]; ok {
		return &st.attr, st.exists && !st.deleted, nil
	}
	k := t.s.keys.ino(ino)
	if err := t.load(ctx, k); err != nil {
		return nil, false, err
	}
	st := &inodeState{}
	t.inodes[ino] = st
	t.order = append(t.order, ino)
	v := t.read[k]
	if v.modRev == 0 {
		st.attr = meta.Attr{Ino: ino}
		return &st.attr, false, nil
	}
	a, err := decodeInode(ino, v.val)
	if err != nil {
		return nil, false, err
	}
	st.attr, st.exists = a, true
	return &st.attr, true, nil
}

// loadInodes loads several inodes in one round trip.
func (t *tx) loadInodes(ctx context.Context, inos ...meta.Ino) error {
	ks := make([]string, len(inos))
	for i, ino := range inos {
		ks[i] = t.s.keys.ino(ino)
	}
	return t.load(ctx, ks...)
}

// put marks ino (loaded or created with inode) to be written at commit.
func (t *tx) put(a *meta.Attr) {
	st, ok := t.inodes[a.Ino]
	if !ok {
		st = &inodeState{attr: *a}
		t.inodes[a.Ino] = st
		t.order = append(t.order, a.Ino)
	}
	st.dirty, st.deleted = true, false
}

// create adds a new inode (not read from etcd) to be written at commit,
// guarded by a compare that its key does not exist.
func (t *tx) create(a meta.Attr) {
	k := t.s.keys.ino(a.Ino)
	t.cmps = append(t.cmps, clientv3.Compare(clientv3.ModRevision(k), "=", 0))
	t.inodes[a.Ino] = &inodeState{attr: a, dirty: true}
	t.order = append(t.order, a.Ino)
}

// remove marks ino and its chunk map to be deleted at commit.
func (t *tx) remove(a *meta.Attr) {
	st := t.inodes[a.Ino]
	st.deleted = true
	t.ops = append(t.ops, clientv3.OpDelete(t.s.keys.chunkPrefix(a.Ino), clientv3.WithPrefix()))
}

// entryInode returns the inode that entry e points to. An entry and its
// inode change in one transaction, so an inode that is gone is
// corruption (errMalformed).
func (t *tx) entryInode(ctx context.Context, e dentry) (*meta.Attr, error) {
	a, ok, err := t.inode(ctx, e.Ino)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("entry points to missing inode %d: %w", e.Ino, errMalformed)
	}
	return a, nil
}

// dentry loads the entry name of dir.
func (t *tx) dentry(ctx context.Context, dir meta.Ino, name string) (dentry, bool, error) {
	k := t.s.keys.dentry(dir, name)
	if err := t.load(ctx, k); err != nil {
		return dentry{}, false, err
	}
	v := t.read[k]
	if v.modRev == 0 {
		return dentry{}, false, nil
	}
	e, err := decodeDentry(v.val)
	if err != nil {
		return dentry{}, false, fmt.Errorf("entry %q of %d: %w", name, dir, err)
	}
	return e, true, nil
}

// chunkRefs reads ino's chunk references with first <= Index <= last.
func (t *tx) chunkRefs(ctx context.Context, ino meta.Ino, first, last uint64) ([]chunk.Ref, error) {
	if first > last {
		return nil, nil
	}
	from := t.s.keys.chunk(ino, first)
	end := prefixEnd(t.s.keys.chunkPrefix(ino))
	if last != ^uint64(0) {
		end = t.s.keys.chunk(ino, last+1)
	}
	var refs []chunk.Ref
	err := t.rangeRead(ctx, from, end, 0, func(key string, val []byte) error {
		idx, err := t.s.keys.chunkIndex(ino, key)
		if err != nil {
			return err
		}
		r, err := decodeChunkRef(idx, val)
		if err != nil {
			return fmt.Errorf("inode %d: %w", ino, err)
		}
		refs = append(refs, r)
		return nil
	})
	return refs, err
}

// isEmptyDir reports whether directory dir has no entries.
func (t *tx) isEmptyDir(ctx context.Context, dir meta.Ino) (bool, error) {
	p := t.s.keys.dirPrefix(dir)
	empty := true
	err := t.rangeRead(ctx, p, prefixEnd(p), 1, func(string, []byte) error {
		empty = false
		return nil
	})
	return empty, err
}

// then adds raw write operations.
func (t *tx) then(ops ...clientv3.Op) { t.ops = append(t.ops, ops...) }

// commit writes the changes if nothing read has changed.
func (t *tx) commit(ctx context.Context) (bool, error) {
	ops := t.pendingOps()
	if len(ops) == 0 {
		return true, nil
	}
	cmps := slices.Clip(t.cmps)
	for _, k := range slices.Sorted(maps.Keys(t.read)) {
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(k), "=", t.read[k].modRev))
	}
	resp, err := t.s.kv.Txn(ctx).If(cmps...).Then(ops...).Commit()
	if err != nil {
		return false, err
	}
	return resp.Succeeded, nil
}
