package etcdmeta

import (
	"container/list"
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Option configures a Store.
type Option func(*Store)

// WithExclusiveCache keeps up to entries inode, directory-entry and
// chunk-reference records in memory and answers point reads of them
// without a round trip to etcd. It is correct only while this Store is the only writer of the
// namespace, as a single node on its own embedded etcd is: the cache
// learns of changes from the writes that pass through it, not from
// watches, so a second writer would leave it stale. Nodes of a cluster
// must not use it. entries <= 0 leaves the cache off.
func WithExclusiveCache(entries int) Option {
	return func(s *Store) { s.cacheEntries = entries }
}

// CacheStats reports the exclusive cache's hits, misses and entries (all
// zero without one).
func (s *Store) CacheStats() (hits, misses uint64, entries int) {
	if s.cache == nil {
		return 0, 0, 0
	}
	return s.cache.hits.Load(), s.cache.misses.Load(), s.cache.len()
}

// attrCache holds the latest value of recently read keys under the cached
// prefixes, with two rules that keep it exact for a single writer:
//
//   - A key with a write in flight (begun, not ended) is never served: it
//     was evicted when the write began, and reads of it go to etcd.
//
//   - A value read from etcd is kept only if no write began or ended
//     since the read was issued (gen unchanged) and the key is not being
//     written: otherwise the value may predate a write already answered.
//
//   - A write's own values are kept when it succeeded, nothing is
//     distrusted, and no other write of the same key (nor a range write
//     over it) was in flight at the same time: then no write of the key
//     can be ordered after it in etcd.
//
//   - A range write evicts what it may touch: the keys of its scope when
//     it stays within one (one file's chunk references, one directory's
//     entries), else everything; keys it may touch are not served or
//     filled while it is in flight.
//
// So a cached key has had no write begin since its value was read (or
// written), and its value is the one etcd holds now. rev is the highest
// revision seen in any answer from etcd: every cached value is current at rev, which is
// the revision a read served from the cache reports.
type attrCache struct {
	prefixes []string
	max      int

	mu      sync.Mutex
	entries map[string]*list.Element // of *cacheEntry
	lru     list.List                // most recently used first
	pending map[string]int           // writes in flight per key
	// overlapped holds the pending keys that two writes had in flight
	// at once: etcd may order them either way, so neither's value is
	// kept. A key leaves it when its last write ends.
	overlapped map[string]bool
	rangedGen  uint64 // gen at the last begin or end of a range write
	// A range write within one scope (the keys of one file's chunk map,
	// or of one directory's entries) evicts that scope's keys only:
	// byScope indexes the cached keys by scope, pendingScope counts such
	// writes in flight per scope, and scopedGen is gen at the last begin
	// or end of any of them (no write of a scoped key that overlapped
	// one keeps its value).
	byScope       map[string]map[string]struct{}
	pendingScope  map[string]int
	pendingScoped int
	scopedGen     uint64
	pendingAll    int    // range writes in flight over cached keys
	gen           uint64 // counts write beginnings and ends
	rev           int64
	// distrust is set when a write failed: etcd may still apply it (a
	// timed-out request was already proposed), so nothing is cached or
	// served until a write begun after the failure succeeds, which etcd
	// orders after it (the embedded member's requests are proposed in
	// the order they are made).
	distrust    bool
	distrustGen uint64

	hits, misses atomic.Uint64
}

// cacheEntry is a key's value, or its absence (val nil, modRev 0).
type cacheEntry struct {
	key    string
	val    []byte
	modRev int64
}

func newAttrCache(max int, prefixes ...string) *attrCache {
	return &attrCache{prefixes: prefixes, max: max, entries: map[string]*list.Element{}, pending: map[string]int{}, overlapped: map[string]bool{},
		byScope: map[string]map[string]struct{}{}, pendingScope: map[string]int{}}
}

func (c *attrCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}

// cacheable says whether key lies under a cached prefix.
func (c *attrCache) cacheable(key string) bool {
	for _, p := range c.prefixes {
		if strings.HasPrefix(key, p) {
			return true
		}
	}
	return false
}

// overlaps says whether the range [key, end) may hold cached keys.
func (c *attrCache) overlaps(key, end string) bool {
	for _, p := range c.prefixes {
		pend := prefixEnd(p)
		if (end == "\x00" || end > p) && key < pend {
			return true
		}
	}
	return false
}

// scopeOf returns the scope of a cached key: the key up to its last "/"
// when that is longer than its cached prefix ("chunk/<ino>/",
// "ent/<dir>/"), else "" (inodes have no scope).
func (c *attrCache) scopeOf(key string) string {
	i := strings.LastIndexByte(key, '/')
	if i < 0 {
		return ""
	}
	for _, p := range c.prefixes {
		if strings.HasPrefix(key, p) && i+1 > len(p) {
			return key[:i+1]
		}
	}
	return ""
}

// rangeScope returns the scope that holds the whole range [key, end), or
// "" when it spans more than one.
func (c *attrCache) rangeScope(key, end string) string {
	sc := c.scopeOf(key)
	if sc == "" || end <= key || end > prefixEnd(sc) {
		return ""
	}
	return sc
}

// lookup returns the cached entries of keys and the revision they are
// current at, or ok false if any is missing or being written. at, when
// not zero, asks for the values at that past revision instead: an entry
// answers for it when its value was already there at at (a present value
// written at or before it, or an absence when at is the current
// revision).
func (c *attrCache) lookup(keys []string, at int64) (es []cacheEntry, rev int64, ok bool) {
	es, rev, ok = c.find(keys, at)
	if !ok {
		c.misses.Add(1)
	}
	return es, rev, ok
}

// find is lookup without counting a miss (a hit counts): for a caller that
// goes on to read through the cache, which counts the miss then.
func (c *attrCache) find(keys []string, at int64) (es []cacheEntry, rev int64, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pendingAll > 0 || c.distrust || at > c.rev {
		return nil, 0, false
	}
	es = make([]cacheEntry, len(keys))
	for i, k := range keys {
		el, found := c.entries[k]
		if !found || c.pending[k] > 0 || c.pendingScope[c.scopeOf(k)] > 0 {
			return nil, 0, false
		}
		e := el.Value.(*cacheEntry)
		if at != 0 && at != c.rev && (e.val == nil || e.modRev > at) {
			return nil, 0, false
		}
		c.lru.MoveToFront(el)
		es[i] = *e
	}
	c.hits.Add(1)
	if at != 0 {
		return es, at, true
	}
	return es, c.rev, true
}

// generation returns the write generation, to pass to fill, and the
// revision every cached value is current at.
func (c *attrCache) generation() (uint64, int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gen, c.rev
}

// fill records what a read issued at write generation gen returned for
// key (kv nil: absent), at revision rev.
func (c *attrCache) fill(gen uint64, key string, kv *mvccpb.KeyValue, rev int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.rev = max(c.rev, rev)
	if gen != c.gen || c.pending[key] > 0 || c.pendingAll > 0 || c.distrust || c.pendingScope[c.scopeOf(key)] > 0 {
		return
	}
	e := &cacheEntry{key: key}
	if kv != nil {
		// A copy, never nil: a present key with an empty value is not
		// an absent one, and the caller keeps its response.
		e.val, e.modRev = append([]byte{}, kv.Value...), kv.ModRevision
	}
	c.insert(e)
}

// insert keeps e as its key's entry, evicting the least recently used
// beyond the limit.
func (c *attrCache) insert(e *cacheEntry) {
	if el, found := c.entries[e.key]; found {
		el.Value = e
		c.lru.MoveToFront(el)
		return
	}
	c.entries[e.key] = c.lru.PushFront(e)
	if sc := c.scopeOf(e.key); sc != "" {
		keys := c.byScope[sc]
		if keys == nil {
			keys = map[string]struct{}{}
			c.byScope[sc] = keys
		}
		keys[e.key] = struct{}{}
	}
	for len(c.entries) > c.max {
		c.evict(c.lru.Back().Value.(*cacheEntry).key)
	}
}

// writes is what one write touches: keys and ranges under cached
// prefixes, and the values it leaves on those keys when they are known
// (plain puts and deletes of single keys, in a branch known to run).
type writes struct {
	keys   []string
	ranged bool
	// scopes are the scopes of range writes that stay within one.
	scopes []string
	// vals are the values the write leaves, by key (nil val: deleted);
	// nil when they are not all known.
	vals map[string][]byte
}

func (w writes) empty() bool { return len(w.keys) == 0 && !w.ranged && len(w.scopes) == 0 }

// begin marks w in flight and evicts what it touches. It returns the
// write's start, for end.
func (c *attrCache) begin(w writes) uint64 {
	if w.empty() {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	for _, k := range w.keys {
		if c.pending[k] > 0 {
			c.overlapped[k] = true
		}
		c.pending[k]++
		c.evict(k)
	}
	for _, sc := range w.scopes {
		c.pendingScope[sc]++
		c.pendingScoped++
		c.scopedGen = c.gen
		c.evictScope(sc)
	}
	if w.ranged {
		c.pendingAll++
		c.rangedGen = c.gen
		c.clear()
	}
	return c.gen
}

// end marks w, begun at start, done. rev is the revision of etcd's
// answer; failed says the write returned an error (it may still happen).
// The values w left are kept for the keys no other write had in flight
// at the same time (so none can be ordered after it).
func (c *attrCache) end(w writes, start uint64, rev int64, failed bool) {
	if w.empty() {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	c.rev = max(c.rev, rev)
	switch {
	case failed:
		c.distrust, c.distrustGen = true, c.gen
		c.clear()
	case c.distrust && start > c.distrustGen:
		c.distrust = false
	}
	overlapped := map[string]bool{}
	for _, k := range w.keys {
		if c.overlapped[k] {
			overlapped[k] = true
		}
		if c.pending[k]--; c.pending[k] <= 0 {
			delete(c.pending, k)
			delete(c.overlapped, k)
		}
		c.evict(k)
	}
	for _, sc := range w.scopes {
		if c.pendingScope[sc]--; c.pendingScope[sc] <= 0 {
			delete(c.pendingScope, sc)
		}
		c.pendingScoped--
		c.scopedGen = c.gen
		c.evictScope(sc)
	}
	if w.ranged {
		c.pendingAll--
		c.rangedGen = c.gen
		c.clear()
	}
	if failed || w.ranged || w.vals == nil || c.distrust || c.pendingAll > 0 || c.rangedGen > start || rev == 0 {
		return
	}
	scopedRace := c.pendingScoped > 0 || c.scopedGen > start
	for k, v := range w.vals {
		if overlapped[k] || c.pending[k] > 0 || (scopedRace && c.scopeOf(k) != "") {
			continue
		}
		e := &cacheEntry{key: k}
		if v != nil {
			e.val, e.modRev = v, rev
		}
		c.insert(e)
	}
}

// compacted forgets everything: rev, reported by cached reads, may now be
// compacted away, and reads at it would keep failing.
func (c *attrCache) compacted() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	c.clear()
}

func (c *attrCache) evict(key string) {
	if el, found := c.entries[key]; found {
		c.lru.Remove(el)
		delete(c.entries, key)
		if sc := c.scopeOf(key); sc != "" {
			delete(c.byScope[sc], key)
			if len(c.byScope[sc]) == 0 {
				delete(c.byScope, sc)
			}
		}
	}
}

// evictScope evicts every cached key of scope sc.
func (c *attrCache) evictScope(sc string) {
	for k := range c.byScope[sc] {
		c.evict(k)
	}
}

func (c *attrCache) clear() {
	c.entries = map[string]*list.Element{}
	c.byScope = map[string]map[string]struct{}{}
	c.lru.Init()
}

// writesOf collects what ops write under the cached prefixes, nested
// transactions included.
func (c *attrCache) writesOf(w *writes, ops []clientv3.Op) {
	for _, op := range ops {
		switch {
		case op.IsPut(), op.IsDelete():
			k, end := string(op.KeyBytes()), string(op.RangeBytes())
			switch {
			case end == "":
				if c.cacheable(k) && !slices.Contains(w.keys, k) {
					w.keys = append(w.keys, k)
				}
			case !c.overlaps(k, end):
			case c.rangeScope(k, end) != "":
				w.scopes = append(w.scopes, c.rangeScope(k, end))
			default:
				w.ranged = true
			}
		case op.IsTxn():
			_, thenOps, elseOps := op.Txn()
			c.writesOf(w, thenOps)
			c.writesOf(w, elseOps)
		}
	}
}

// valuesOf records in w the values the puts and deletes of single keys
// among ops leave on cached keys; with a nested transaction w keeps no
// values. It assumes puts carry their value and no lease (the Store uses
// neither WithIgnoreValue nor leases on inode and entry keys).
func (c *attrCache) valuesOf(w *writes, ops []clientv3.Op) {
	vals := map[string][]byte{}
	for _, op := range ops {
		switch {
		case op.IsTxn():
			return
		case op.IsPut(), op.IsDelete():
			if len(op.RangeBytes()) != 0 {
				continue // end keeps nothing a range write may touch
			}
			k := string(op.KeyBytes())
			if !c.cacheable(k) {
				continue
			}
			if op.IsPut() {
				vals[k] = append([]byte{}, op.ValueBytes()...)
			} else {
				vals[k] = nil
			}
		}
	}
	if len(vals) > 0 {
		w.vals = vals
	}
}

// pointGet says whether op is a plain linearizable read of one cacheable
// key, the only reads the cache answers.
func (c *attrCache) pointGet(op clientv3.Op) bool {
	return plainGet(op) && op.Rev() == 0 && !op.IsSerializable() && c.cacheable(string(op.KeyBytes()))
}

// pinnedGet says whether op is a read of one cacheable key at a past
// revision (serializable: a revision read needs no quorum), which the
// cache answers when its entry was already current then.
func (c *attrCache) pinnedGet(op clientv3.Op) bool {
	return plainGet(op) && op.Rev() > 0 && op.IsSerializable() && c.cacheable(string(op.KeyBytes()))
}

// plainGet reports whether op reads one key whole, with at most a
// revision and a consistency level: no range, filter or projection.
// Such a read is answered by the key's value alone (a cache entry), and
// OpGet with the key and those two options rebuilds it exactly.
func plainGet(op clientv3.Op) bool {
	return op.IsGet() && len(op.RangeBytes()) == 0 && !op.IsCountOnly() && !op.IsKeysOnly() &&
		op.MinModRev() == 0 && op.MaxModRev() == 0 && op.MinCreateRev() == 0 && op.MaxCreateRev() == 0
}

func isCompacted(err error) bool {
	return errors.Is(err, rpctypes.ErrCompacted) || errors.Is(err, rpctypes.ErrGRPCCompacted)
}

// rangeResponse is what etcd answers a point read of e.
func (e cacheEntry) rangeResponse(rev int64) *etcdserverpb.RangeResponse {
	r := &etcdserverpb.RangeResponse{Header: &etcdserverpb.ResponseHeader{Revision: rev}}
	if e.val != nil {
		r.Kvs = []*mvccpb.KeyValue{{Key: []byte(e.key), Value: e.val, ModRevision: e.modRev}}
		r.Count = 1
	}
	return r
}

// cachedKV is a KV whose plain point reads of cached keys may be answered
// from an attrCache, and whose writes keep it exact.
type cachedKV struct {
	clientv3.KV
	c *attrCache
}

// Get answers a plain read of a cached key from the cache when it can.
func (kv *cachedKV) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	op := clientv3.OpGet(key, opts...)
	if !kv.c.pointGet(op) {
		resp, err := kv.KV.Get(ctx, key, opts...)
		if isCompacted(err) {
			kv.c.compacted()
		}
		return resp, err
	}
	if es, rev, ok := kv.c.lookup([]string{key}, 0); ok {
		return (*clientv3.GetResponse)(es[0].rangeResponse(rev)), nil
	}
	gen, _ := kv.c.generation()
	resp, err := kv.KV.Get(ctx, key)
	if err != nil {
		return nil, err
	}
	var found *mvccpb.KeyValue
	if len(resp.Kvs) == 1 {
		found = resp.Kvs[0]
	}
	kv.c.fill(gen, key, found, resp.Header.Revision)
	return resp, nil
}

// Put keeps the cache exact around a write.
func (kv *cachedKV) Put(ctx context.Context, key, val string, opts ...clientv3.OpOption) (*clientv3.PutResponse, error) {
	var w writes
	ops := []clientv3.Op{clientv3.OpPut(key, val, opts...)}
	kv.c.writesOf(&w, ops)
	if len(opts) == 0 {
		kv.c.valuesOf(&w, ops)
	}
	start := kv.c.begin(w)
	resp, err := kv.KV.Put(ctx, key, val, opts...)
	kv.c.end(w, start, revOf(err, func() int64 { return resp.Header.Revision }), err != nil)
	return resp, err
}

// Delete keeps the cache exact around a write.
func (kv *cachedKV) Delete(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.DeleteResponse, error) {
	var w writes
	ops := []clientv3.Op{clientv3.OpDelete(key, opts...)}
	kv.c.writesOf(&w, ops)
	kv.c.valuesOf(&w, ops)
	start := kv.c.begin(w)
	resp, err := kv.KV.Delete(ctx, key, opts...)
	kv.c.end(w, start, revOf(err, func() int64 { return resp.Header.Revision }), err != nil)
	return resp, err
}

// Do keeps the cache exact around a write; reads pass through.
func (kv *cachedKV) Do(ctx context.Context, op clientv3.Op) (clientv3.OpResponse, error) {
	var w writes
	kv.c.writesOf(&w, []clientv3.Op{op})
	start := kv.c.begin(w)
	resp, err := kv.KV.Do(ctx, op)
	rev := int64(0)
	if err == nil {
		switch {
		case resp.Put() != nil:
			rev = resp.Put().Header.Revision
		case resp.Del() != nil:
			rev = resp.Del().Header.Revision
		case resp.Txn() != nil:
			rev = resp.Txn().Header.Revision
		}
	}
	if isCompacted(err) {
		kv.c.compacted()
	}
	kv.c.end(w, start, rev, err != nil)
	return resp, err
}

// Txn returns a transaction that reads from and keeps the cache.
func (kv *cachedKV) Txn(ctx context.Context) clientv3.Txn {
	return &cachedTxn{ctx: ctx, kv: kv, txn: kv.KV.Txn(ctx)}
}

func revOf(err error, rev func() int64) int64 {
	if err != nil {
		return 0
	}
	return rev()
}

// cachedTxn records a transaction's parts on their way to etcd. A
// transaction of plain point reads of cached keys, without conditions, is
// answered from the cache when every key is there; any other is sent, its
// writes bracketed by begin and end, its point reads filling the cache.
type cachedTxn struct {
	ctx     context.Context
	kv      *cachedKV
	txn     clientv3.Txn
	cmps    int
	thenOps []clientv3.Op
	elseOps []clientv3.Op
}

func (t *cachedTxn) If(cs ...clientv3.Cmp) clientv3.Txn {
	t.cmps += len(cs)
	t.txn = t.txn.If(cs...)
	return t
}

func (t *cachedTxn) Then(ops ...clientv3.Op) clientv3.Txn {
	t.thenOps = append(t.thenOps, ops...)
	t.txn = t.txn.Then(ops...)
	return t
}

func (t *cachedTxn) Else(ops ...clientv3.Op) clientv3.Txn {
	t.elseOps = append(t.elseOps, ops...)
	t.txn = t.txn.Else(ops...)
	return t
}

func (t *cachedTxn) Commit() (*clientv3.TxnResponse, error) {
	c := t.kv.c
	var w writes
	c.writesOf(&w, t.thenOps)
	c.writesOf(&w, t.elseOps)
	// A transaction of point reads only, all current or all at one past
	// revision, may be answered from the cache.
	reads := t.cmps == 0 && len(t.elseOps) == 0 && w.empty() && len(t.thenOps) > 0
	var keys []string
	at := int64(-1)
	for _, op := range t.thenOps {
		if !reads {
			break
		}
		switch {
		case c.pointGet(op) && at <= 0:
			at = 0
		case c.pinnedGet(op) && (at == -1 || at == op.Rev()):
			at = op.Rev()
		default:
			reads = false
		}
		keys = append(keys, string(op.KeyBytes()))
	}
	if reads {
		if es, rev, ok := c.lookup(keys, at); ok {
			resp := &clientv3.TxnResponse{Header: &etcdserverpb.ResponseHeader{Revision: rev}, Succeeded: true}
			for _, e := range es {
				resp.Responses = append(resp.Responses, &etcdserverpb.ResponseOp{
					Response: &etcdserverpb.ResponseOp_ResponseRange{ResponseRange: e.rangeResponse(rev)},
				})
			}
			return resp, nil
		}
	}
	gen, issueRev := c.generation()
	start := c.begin(w)
	resp, err := t.txn.Commit()
	if isCompacted(err) {
		c.compacted()
	}
	if err == nil && !w.empty() {
		// The values left are those of the branch that ran.
		if t.cmps == 0 || resp.Succeeded {
			c.valuesOf(&w, t.thenOps)
		} else {
			c.valuesOf(&w, t.elseOps)
		}
	}
	c.end(w, start, revOf(err, func() int64 { return resp.Header.Revision }), err != nil)
	// A read at a past revision fills too when that revision is no older
	// than every write ended before it was sent: its values are current.
	if err != nil || !reads || (at != 0 && at < issueRev) {
		return resp, err
	}
	for i, r := range resp.Responses {
		var found *mvccpb.KeyValue
		if kvs := r.GetResponseRange().GetKvs(); len(kvs) == 1 {
			found = kvs[0]
		}
		c.fill(gen, keys[i], found, resp.Header.Revision)
	}
	return resp, nil
}
