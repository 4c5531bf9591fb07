package etcdmeta

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/wormhole-fs/wormhole/chunker/chunk"
	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
	"github.com/wormhole-fs/wormhole/etcdmeta/metatest"
)

// newCachedStore returns a Store as a single node has it: with the
// exclusive cache, over its one etcd member (the tests' shared one).
func newCachedStore(t *testing.T, entries int) *Store {
	t.Helper()
	id := fmt.Sprintf("test-%d", clusterSeq.Add(1))
	s, err := New(t.Context(), shared.Client(), id, testLog(t), WithExclusiveCache(entries), WithSoleMember())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// The whole namespace contract holds with the cache, roomy or so small
// that it evicts all the time.
func TestConformanceCached(t *testing.T) {
	metatest.Run(t, func(t *testing.T) meta.Store { return newCachedStore(t, 4096) })
}

func TestConformanceCachedTiny(t *testing.T) {
	metatest.Run(t, func(t *testing.T) meta.Store { return newCachedStore(t, 3) })
}

// Repeated reads are answered from memory, and a change made through the
// store is seen by the very next read.
func TestCacheHitsAndReadsOwnWrites(t *testing.T) {
	ctx := t.Context()
	s := newCachedStore(t, 1024)
	a, err := s.Create(ctx, meta.RootIno, "f", meta.CreateArgs{Type: meta.TypeRegular, Mode: 0o644})
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := s.GetAttr(ctx, a.Ino); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Lookup(ctx, meta.RootIno, "f"); err != nil {
			t.Fatal(err)
		}
	}
	hits, _, entries := s.CacheStats()
	if hits < 4 || entries == 0 {
		t.Fatalf("after repeated reads: %d hits, %d entries; want the repeats answered from the cache", hits, entries)
	}
	mode := uint32(0o600)
	if _, err := s.SetAttr(ctx, a.Ino, meta.SetAttrArgs{Mode: &mode}); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetAttr(ctx, a.Ino)
	if err != nil || got.Mode != mode {
		t.Fatalf("GetAttr after chmod = mode %o, %v; want %o", got.Mode, err, mode)
	}
	if _, err := s.Unlink(ctx, meta.RootIno, "f"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Lookup(ctx, meta.RootIno, "f"); !errors.Is(err, meta.ErrNotFound) {
		t.Fatalf("Lookup after remove = %v, want not found", err)
	}
}

// Writers and readers race: every writer reads its own last write back,
// and no reader sees a file's mode go back to an older value.
func TestCacheConcurrentWritersAndReaders(t *testing.T) {
	ctx := t.Context()
	s := newCachedStore(t, 64)
	const files, rounds = 4, 60
	var inos []meta.Ino
	for i := range files {
		a, err := s.Create(ctx, meta.RootIno, fmt.Sprint("f", i), meta.CreateArgs{Type: meta.TypeRegular, Mode: 0})
		if err != nil {
			t.Fatal(err)
		}
		inos = append(inos, a.Ino)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var readers sync.WaitGroup
	errs := make(chan error, 16)
	for range 2 {
		readers.Go(func() {
			last := make([]uint32, files)
			for ctx.Err() == nil {
				for i, ino := range inos {
					a, err := s.GetAttr(ctx, ino)
					if err != nil {
						if ctx.Err() == nil {
							errs <- err
						}
						return
					}
					if a.Mode < last[i] {
						errs <- fmt.Errorf("file %d: mode went back from %o to %o", i, last[i], a.Mode)
						return
					}
					last[i] = a.Mode
				}
			}
		})
	}
	var writers sync.WaitGroup
	for i, ino := range inos {
		writers.Go(func() {
			for m := uint32(1); m <= rounds; m++ {
				if _, err := s.SetAttr(ctx, ino, meta.SetAttrArgs{Mode: &m}); err != nil {
					errs <- err
					return
				}
				a, err := s.GetAttr(ctx, ino)
				if err != nil || a.Mode != m {
					errs <- fmt.Errorf("file %d: GetAttr right after setting mode %o = %o, %v", i, m, a.Mode, err)
					return
				}
			}
		})
	}
	writers.Wait()
	cancel()
	readers.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// The cache never holds more than its limit.
func TestCacheBounded(t *testing.T) {
	ctx := t.Context()
	s := newCachedStore(t, 10)
	for i := range 40 {
		if _, err := s.Create(ctx, meta.RootIno, fmt.Sprint("f", i), meta.CreateArgs{Type: meta.TypeRegular, Mode: 0o644}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 40 {
		if _, err := s.Lookup(ctx, meta.RootIno, fmt.Sprint("f", i)); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, n := s.CacheStats(); n > 10 {
		t.Fatalf("cache holds %d entries, limit 10", n)
	}
}

// A revision the cache reports may be compacted away by the time a
// transaction reads more at it: the store retries, and the cache starts
// over instead of failing every later read.
func TestCacheAfterCompaction(t *testing.T) {
	ctx := t.Context()
	s := newCachedStore(t, 1024)
	if _, err := s.Create(ctx, meta.RootIno, "f", meta.CreateArgs{Type: meta.TypeRegular, Mode: 0o644}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Lookup(ctx, meta.RootIno, "f"); err != nil { // fills the cache
		t.Fatal(err)
	}
	// Another client moves the revision on (keys the store never reads)
	// and compacts up to it.
	raw := shared.Client()
	var rev int64
	for i := range 3 {
		r, err := raw.Put(ctx, fmt.Sprintf("/cache-test/%s/%d", s.keys.prefix, i), "x")
		if err != nil {
			t.Fatal(err)
		}
		rev = r.Header.Revision
	}
	if _, err := raw.Compact(ctx, rev); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := s.Lookup(ctx, meta.RootIno, "f"); err != nil {
			t.Fatalf("Lookup after compaction: %v", err)
		}
	}
}

// A write that fails may still be applied by etcd later: until a write
// begun after it succeeds, nothing is answered from the cache.
func TestCacheDistrustsAfterFailedWrite(t *testing.T) {
	ctx := t.Context()
	s := newCachedStore(t, 1024)
	a, err := s.Create(ctx, meta.RootIno, "f", meta.CreateArgs{Type: meta.TypeRegular, Mode: 0o644})
	if err != nil {
		t.Fatal(err)
	}
	getTwice := func() (hits uint64) {
		t.Helper()
		before, _, _ := s.CacheStats()
		for range 2 {
			if _, err := s.GetAttr(ctx, a.Ino); err != nil {
				t.Fatal(err)
			}
		}
		after, _, _ := s.CacheStats()
		return after - before
	}
	if h := getTwice(); h == 0 {
		t.Fatal("no cache hit before the failed write")
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	mode := uint32(0o600)
	if _, err := s.SetAttr(cancelled, a.Ino, meta.SetAttrArgs{Mode: &mode}); err == nil {
		t.Fatal("SetAttr with a cancelled context succeeded")
	}
	if h := getTwice(); h != 0 {
		t.Fatalf("%d cache hits after a failed write, want none until a later write succeeds", h)
	}
	if _, err := s.SetAttr(ctx, a.Ino, meta.SetAttrArgs{Mode: &mode}); err != nil {
		t.Fatal(err)
	}
	if h := getTwice(); h == 0 {
		t.Fatal("no cache hit after a later write succeeded")
	}
}

// What the store writes is served from memory right away: a file looked
// up and stat'ed just after its creation costs no read from etcd.
func TestCacheKeepsOwnWrites(t *testing.T) {
	ctx := t.Context()
	s := newCachedStore(t, 1024)
	a, err := s.Create(ctx, meta.RootIno, "f", meta.CreateArgs{Type: meta.TypeRegular, Mode: 0o644})
	if err != nil {
		t.Fatal(err)
	}
	_, missesBefore, _ := s.CacheStats()
	got, err := s.Lookup(ctx, meta.RootIno, "f")
	if err != nil || got.Ino != a.Ino {
		t.Fatalf("Lookup = %+v, %v; want inode %d", got, err, a.Ino)
	}
	if got, err = s.GetAttr(ctx, a.Ino); err != nil || got.Mode != 0o644 {
		t.Fatalf("GetAttr = %+v, %v", got, err)
	}
	if _, misses, _ := s.CacheStats(); misses != missesBefore {
		t.Fatalf("%d cache misses for a file just created, want none", misses-missesBefore)
	}
	// A change made through the store replaces the kept value.
	mode := uint32(0o600)
	if _, err := s.SetAttr(ctx, a.Ino, meta.SetAttrArgs{Mode: &mode}); err != nil {
		t.Fatal(err)
	}
	if got, err = s.GetAttr(ctx, a.Ino); err != nil || got.Mode != mode {
		t.Fatalf("GetAttr after chmod = mode %o, %v; want %o", got.Mode, err, mode)
	}
}

// A conditional transaction leaves the values of the branch that ran,
// and reads at a past revision see the value of that revision.
func TestCacheConditionalWritesAndPastRevisions(t *testing.T) {
	ctx := t.Context()
	s := newCachedStore(t, 1024)
	k := s.keys.ino(meta.Ino(1 << 40))
	get := func(opts ...clientv3.OpOption) string {
		t.Helper()
		resp, err := s.kv.Txn(ctx).Then(clientv3.OpGet(k, opts...)).Commit()
		if err != nil {
			t.Fatal(err)
		}
		kvs := resp.Responses[0].GetResponseRange().GetKvs()
		if len(kvs) == 0 {
			return "<absent>"
		}
		return string(kvs[0].Value)
	}
	put := func(cond bool, then, els string) int64 {
		t.Helper()
		cmp := clientv3.Compare(clientv3.ModRevision(k), ">", -1) // always true
		if !cond {
			cmp = clientv3.Compare(clientv3.ModRevision(k), "=", -1) // never
		}
		txn := s.kv.Txn(ctx).If(cmp).Then(clientv3.OpPut(k, then))
		if els != "" {
			txn = txn.Else(clientv3.OpPut(k, els))
		}
		resp, err := txn.Commit()
		if err != nil {
			t.Fatal(err)
		}
		return resp.Header.Revision
	}
	rev1 := put(true, "v1", "")
	if v := get(); v != "v1" {
		t.Fatalf("after the then branch: %q, want v1", v)
	}
	put(false, "never", "")
	if v := get(); v != "v1" {
		t.Fatalf("after a transaction whose condition failed: %q, want v1", v)
	}
	rev3 := put(false, "never", "v3")
	if v := get(); v != "v3" {
		t.Fatalf("after the else branch: %q, want v3", v)
	}
	if v := get(clientv3.WithRev(rev1), clientv3.WithSerializable()); v != "v1" {
		t.Fatalf("at revision %d: %q, want v1", rev1, v)
	}
	if v := get(clientv3.WithRev(rev3), clientv3.WithSerializable()); v != "v3" {
		t.Fatalf("at revision %d: %q, want v3", rev3, v)
	}
	// A filtered read is etcd's to answer, though the cache holds the
	// key: v3 was not written after rev3, so nothing matches.
	if v := get(clientv3.WithMinModRev(rev3 + 1)); v != "<absent>" {
		t.Fatalf("read of versions after revision %d: %q, want nothing", rev3, v)
	}
	if _, err := s.kv.Delete(ctx, k); err != nil {
		t.Fatal(err)
	}
	if v := get(); v != "<absent>" {
		t.Fatalf("after delete: %q, want absent", v)
	}
	if v := get(clientv3.WithRev(rev3), clientv3.WithSerializable()); v != "v3" {
		t.Fatalf("at revision %d after delete: %q, want v3", rev3, v)
	}
}

// Two writes of one key in flight at once may reach etcd in either
// order: neither value is kept, while a key written alone is.
func TestCacheOverlappingWritesKeepNothing(t *testing.T) {
	c := newAttrCache(16, "/i/")
	write := func(k, v string) writes {
		return writes{keys: []string{k}, vals: map[string][]byte{k: []byte(v)}}
	}
	cached := func(k string) bool {
		_, _, ok := c.lookup([]string{k}, 0)
		return ok
	}
	w1, w2 := write("/i/a", "1"), write("/i/a", "2")
	s1 := c.begin(w1)
	s2 := c.begin(w2)
	c.end(w1, s1, 10, false)
	c.end(w2, s2, 11, false)
	if cached("/i/a") {
		t.Fatal("a key written twice at once is cached")
	}
	w3 := write("/i/a", "3")
	c.end(w3, c.begin(w3), 12, false)
	es, _, ok := c.lookup([]string{"/i/a"}, 0)
	if !ok || string(es[0].val) != "3" || es[0].modRev != 12 {
		t.Fatalf("after a write alone: %+v, %v; want value 3 at revision 12", es, ok)
	}
	// A range write in flight meanwhile keeps a point write's value out.
	w4, r := write("/i/b", "4"), writes{ranged: true}
	s4 := c.begin(w4)
	c.end(r, c.begin(r), 13, false)
	c.end(w4, s4, 14, false)
	if cached("/i/b") {
		t.Fatal("a key written while a range write ran is cached")
	}
}

// A READ's chunk map comes from memory once written or read: the
// references of a few chunks, holes included, are answered without etcd,
// and an overwrite or truncation is seen by the next read.
func TestCacheServesChunkMaps(t *testing.T) {
	ctx := t.Context()
	s := newCachedStore(t, 1024)
	a, err := s.Create(ctx, meta.RootIno, "f", meta.CreateArgs{Type: meta.TypeRegular, Mode: 0o644})
	if err != nil {
		t.Fatal(err)
	}
	ref := func(index uint64, id byte) chunk.Ref {
		r := chunk.Ref{Index: index, Len: 100}
		r.ID[0], r.ID[1] = id, byte(index)
		return r
	}
	if _, _, err := s.CommitWrite(ctx, a.Ino, []chunk.Ref{ref(0, 1), ref(2, 1)}, nil, 300); err != nil {
		t.Fatal(err)
	}
	check := func(first, last uint64, want ...chunk.Ref) {
		t.Helper()
		got, err := s.Chunks(ctx, a.Ino, first, last)
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("Chunks(%d, %d) = %v, want %v", first, last, got, want)
		}
	}
	check(0, 2, ref(0, 1), ref(2, 1)) // the hole at 1 is read once
	_, missesBefore, _ := s.CacheStats()
	check(0, 2, ref(0, 1), ref(2, 1))
	check(1, 1)
	check(2, 3, ref(2, 1))
	if _, misses, _ := s.CacheStats(); misses > missesBefore+1 { // index 3, never read
		t.Fatalf("%d cache misses reading a chunk map already read", misses-missesBefore)
	}
	if _, _, err := s.CommitWrite(ctx, a.Ino, []chunk.Ref{ref(0, 2)}, nil, 300); err != nil {
		t.Fatal(err)
	}
	check(0, 2, ref(0, 2), ref(2, 1))
	if _, _, err := s.Truncate(ctx, a.Ino, 100, 100, nil, nil); err != nil {
		t.Fatal(err)
	}
	check(0, 2, ref(0, 2))
	// A wide range is read by range, with the same answer.
	check(0, 100, ref(0, 2))
}

// Removing or truncating a file evicts its own chunk map only: what the
// cache holds of other files keeps being served.
func TestCacheRemoveEvictsOnlyThatFile(t *testing.T) {
	ctx := t.Context()
	s := newCachedStore(t, 1024)
	var inos []meta.Ino
	for _, name := range []string{"keep", "gone"} {
		a, err := s.Create(ctx, meta.RootIno, name, meta.CreateArgs{Type: meta.TypeRegular, Mode: 0o644})
		if err != nil {
			t.Fatal(err)
		}
		r := chunk.Ref{Index: 0, Len: 10}
		r.ID[0] = byte(len(inos) + 1)
		if _, _, err := s.CommitWrite(ctx, a.Ino, []chunk.Ref{r}, nil, 10); err != nil {
			t.Fatal(err)
		}
		inos = append(inos, a.Ino)
	}
	read := func() {
		t.Helper()
		if _, err := s.GetAttr(ctx, inos[0]); err != nil {
			t.Fatal(err)
		}
		if refs, err := s.Chunks(ctx, inos[0], 0, 0); err != nil || len(refs) != 1 {
			t.Fatalf("Chunks of keep = %v, %v", refs, err)
		}
	}
	read()
	if _, err := s.Unlink(ctx, meta.RootIno, "gone"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Truncate(ctx, inos[1], 0, 10, nil, nil); !errors.Is(err, meta.ErrStale) {
		t.Fatalf("Truncate of a removed file = %v, want stale", err)
	}
	_, missesBefore, _ := s.CacheStats()
	read()
	if _, misses, _ := s.CacheStats(); misses != missesBefore {
		t.Fatalf("%d cache misses on a file the removal of another did not touch", misses-missesBefore)
	}
	if _, err := s.Chunks(ctx, inos[1], 0, 0); !errors.Is(err, meta.ErrStale) {
		t.Fatalf("Chunks of the removed file = %v, want stale", err)
	}
}

// A range write within one scope hides that scope's keys while it is in
// flight, and keeps a point write of the scope that overlapped it from
// caching its value; keys of other scopes are served throughout.
func TestCacheScopedRangeWrite(t *testing.T) {
	c := newAttrCache(16, "/c/")
	put := func(k, v string) {
		w := writes{keys: []string{k}, vals: map[string][]byte{k: []byte(v)}}
		c.end(w, c.begin(w), 10, false)
	}
	cached := func(k string) bool {
		_, _, ok := c.lookup([]string{k}, 0)
		return ok
	}
	put("/c/1/a", "x")
	put("/c/2/a", "y")
	var rw writes
	c.writesOf(&rw, []clientv3.Op{clientv3.OpDelete("/c/1/", clientv3.WithPrefix())})
	if len(rw.scopes) != 1 || rw.scopes[0] != "/c/1/" || rw.ranged {
		t.Fatalf("a prefix delete of one file's keys: %+v, want scope /c/1/", rw)
	}
	start := c.begin(rw)
	if cached("/c/1/a") || !cached("/c/2/a") {
		t.Fatal("while the range write runs: its scope must miss, another scope must hit")
	}
	w := writes{keys: []string{"/c/1/b"}, vals: map[string][]byte{"/c/1/b": []byte("z")}}
	ws := c.begin(w)
	c.end(rw, start, 11, false)
	c.end(w, ws, 12, false)
	if cached("/c/1/a") || cached("/c/1/b") || !cached("/c/2/a") {
		t.Fatal("after the range write: its scope's keys must be gone, the overlapping write not cached, the other scope kept")
	}
	var all writes
	c.writesOf(&all, []clientv3.Op{clientv3.OpDelete("/c/", clientv3.WithPrefix())})
	if !all.ranged {
		t.Fatalf("a delete over several scopes: %+v, want a plain range write", all)
	}
}
