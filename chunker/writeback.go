package chunker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/wormhole-fs/wormhole/chunker/chunk"
	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
)

// Write-back: the table behind NFS UNSTABLE writes.
//
// WriteUnstable keeps the bytes written in memory, per chunk, as sorted
// extents: a run of writes costs no chunk read and no chunk store each.
// Commit merges each dirty chunk's extents onto the chunk the chunk map
// holds then (read and verified once), stores the merged chunks (several
// at once, so their fsyncs overlap) and records all their references and
// the file's new size in one namespace transaction, which expects the
// chunks it merged onto: if another node replaced one meanwhile, the merge
// is redone. Until Commit the data lives only in this process: ReadAt and
// Pending show it on this node, other nodes see it after Commit, and a
// crash loses it (the NFS front changes its write verifier on every
// start, so clients send it again). The table is bounded by
// SetWriteBack's limit: a write that finds it over the limit first
// commits its own file, then whatever other files it can lock without
// waiting. And by age: CommitOlder, run periodically by the node, commits
// the files written to that long ago, so that data a client never commits
// (it crashed, or went away) neither waits in memory nor stays at risk
// for long, and other nodes see it.
//
// Write-behind: a chunk that a run of writes has filled whole (the
// sequential case) is stored at once, in the background, while the client
// goes on writing; Commit then only waits for that store and records the
// reference, instead of storing the chunk itself. Such an early copy is a
// chunk no file refers to until Commit, like any chunk between its store
// and its commit, so it is used only if Commit comes within
// SetWriteBehind's age of its store (below the orphan collector's grace),
// and deleted when the chunk is written again or the file is gone. The
// bytes stay in the table until Commit, so nothing is lost if the early
// store fails: Commit stores the chunk again.

// maxCommitRefs bounds the chunk references of one namespace transaction
// of Commit (far below etcd's operation limit); a file with more dirty
// chunks is committed in several transactions.
const maxCommitRefs = 1024

// commitParallel is how many dirty chunks Commit merges and stores at
// once: their reads and fsyncs overlap.
const commitParallel = 8

// extent is bytes written at offset lo of a chunk.
type extent struct {
	lo uint64
	b  []byte
}

func (x extent) hi() uint64 { return x.lo + uint64(len(x.b)) }

// dirtyChunk is what was written to one chunk of a file: sorted,
// disjoint extents, none touching the next.
type dirtyChunk struct {
	ext []extent
	gen uint64 // counts the writes applied
	// early is the background store of the chunk written whole, if one
	// was started and not used or deleted yet. While it is set the
	// extents' bytes are never changed in place (the store reads them).
	early *earlyCopy
}

// earlyCopy is the background store of a dirty chunk written whole
// (write-behind). Its fields other than done are set before done closes.
type earlyCopy struct {
	gen     uint64    // the chunk's gen when the store started
	started time.Time // when the store started
	done    chan struct{}
	ref     chunk.Ref // the stored chunk, when err is nil
	err     error
}

// wait waits for the store to end and returns its reference, or false
// when it failed.
func (e *earlyCopy) wait() (chunk.Ref, bool) {
	<-e.done
	return e.ref, e.err == nil
}

// dirtyFile is the uncommitted state of one file. Its chunks change only
// under the file's write lock (Files.lock) and mu; readers hold mu.
type dirtyFile struct {
	mu     sync.Mutex
	chunks map[uint64]*dirtyChunk
	size   uint64 // the end of the furthest write
	mtime  int64  // Unix ns of the last write
	since  int64  // Unix ns of the first write not committed
	copies int    // the inode's redundancy, for a commit from elsewhere
}

// writeBack is the table of dirty files.
type writeBack struct {
	mu    sync.Mutex
	files map[meta.Ino]*dirtyFile
	bytes int64 // memory held by extents
	limit int64 // 0: write-back off
	// earlyAge is how old an early copy may be when Commit uses it; 0
	// turns write-behind off (SetWriteBehind).
	earlyAge time.Duration
	// earlySlots bounds the early stores in flight: a chunk filled when
	// all are taken waits for Commit.
	earlySlots chan struct{}
	early      sync.WaitGroup // early stores in flight
}

// SetWriteBack sets how many bytes of UNSTABLE data may be held in memory
// (counted in whole chunks); 0, the default, turns write-back off, so
// WriteUnstable writes stably. Set it before serving.
func (f *Files) SetWriteBack(limit int64) {
	f.wb.mu.Lock()
	f.wb.limit = max(limit, 0)
	f.wb.mu.Unlock()
}

// SetWriteBehind turns write-behind on (maxAge > 0) or off (0): each
// chunk that UNSTABLE writes fill whole is stored at once in the
// background, and Commit uses that copy if it comes within maxAge of its
// store. maxAge must stay well below the time after which the node's
// orphan collection deletes a chunk no file refers to (half of it is
// safe). Set it before serving.
func (f *Files) SetWriteBehind(maxAge time.Duration) {
	f.wb.mu.Lock()
	f.wb.earlyAge = max(maxAge, 0)
	if f.wb.earlySlots == nil {
		f.wb.earlySlots = make(chan struct{}, commitParallel)
	}
	f.wb.mu.Unlock()
}

// Pending reports the uncommitted writes of ino: the end of the furthest
// one and the time of the last one. ok is false when there are none.
func (f *Files) Pending(ino meta.Ino) (size uint64, mtime int64, ok bool) {
	f.wb.mu.Lock()
	df := f.wb.files[ino]
	f.wb.mu.Unlock()
	if df == nil {
		return 0, 0, false
	}
	df.mu.Lock()
	defer df.mu.Unlock()
	return df.size, df.mtime, len(df.chunks) > 0
}

// WriteUnstable writes p to file ino at offset off into the write-back
// table. It returns stable true, with the new attributes, when it wrote
// durably instead (write-back off); otherwise the write is held in memory
// until Commit (or the table's limit) stores it. The chunk being partly
// overwritten is read and verified when the table first takes it.
func (f *Files) WriteUnstable(ctx context.Context, ino meta.Ino, p []byte, off int64) (attr meta.Attr, stable bool, err error) {
	f.wb.mu.Lock()
	on := f.wb.limit > 0
	f.wb.mu.Unlock()
	if !on || len(p) == 0 {
		attr, err = f.WriteAt(ctx, ino, p, off)
		return attr, true, err
	}
	if err := checkWriteRange(ino, p, off); err != nil {
		return meta.Attr{}, false, err
	}
	unlock, err := f.lock(ctx, ino)
	if err != nil {
		return meta.Attr{}, false, fmt.Errorf("write inode %d: %w", ino, err)
	}
	defer unlock()
	if ctx, err = f.withCopies(ctx, ino); err != nil {
		return meta.Attr{}, false, fmt.Errorf("write inode %d: %w", ino, err)
	}
	// Make room before taking the bytes: when commits keep failing (etcd
	// away, disks full), writes fail here instead of growing the table
	// past its limit. Concurrent writers may each overshoot by one write.
	if err := f.relieve(ctx, ino); err != nil {
		return meta.Attr{}, false, err
	}
	copies, _ := chunk.CopiesFrom(ctx)
	f.buffer(ctx, ino, copies, p, uint64(off))
	return meta.Attr{}, false, nil
}

// buffer applies a write to the table, under ino's lock, and starts the
// early store of the chunks it fills whole (write-behind).
func (f *Files) buffer(ctx context.Context, ino meta.Ino, copies int, p []byte, start uint64) {
	cs := f.chunkSize
	end := start + uint64(len(p))
	first, last := start/cs, (end-1)/cs

	f.wb.mu.Lock()
	df := f.wb.files[ino]
	if df == nil {
		df = &dirtyFile{chunks: make(map[uint64]*dirtyChunk), since: time.Now().UnixNano()}
		if f.wb.files == nil {
			f.wb.files = make(map[meta.Ino]*dirtyFile)
		}
		f.wb.files[ino] = df
	}
	behind := f.wb.earlyAge > 0
	f.wb.mu.Unlock()

	var grown int64
	var whole []uint64
	df.mu.Lock()
	for idx := first; idx <= last; idx++ {
		cStart := idx * cs
		lo := max(start, cStart) - cStart
		hi := min(end, cStart+cs) - cStart
		dc := df.chunks[idx]
		if dc == nil {
			dc = &dirtyChunk{}
			df.chunks[idx] = dc
		}
		grown += dc.add(lo, p[cStart+lo-start:cStart+hi-start])
		if behind && dc.early == nil && dc.whole(cs) {
			whole = append(whole, idx)
		}
	}
	df.size = max(df.size, end)
	df.mtime = time.Now().UnixNano()
	df.copies = copies
	df.mu.Unlock()
	f.wb.mu.Lock()
	f.wb.bytes += grown
	f.wb.mu.Unlock()
	for _, idx := range whole {
		f.storeEarly(ctx, ino, df, idx)
	}
}

// storeEarly starts the background store of chunk idx of df, written
// whole, if a slot is free; otherwise Commit stores it. The caller holds
// ino's lock. The store runs with ctx's values (the copy count) but not
// its end: the write it came from is answered before the store ends.
func (f *Files) storeEarly(ctx context.Context, ino meta.Ino, df *dirtyFile, idx uint64) {
	select {
	case f.wb.earlySlots <- struct{}{}:
	default:
		return
	}
	df.mu.Lock()
	dc := df.chunks[idx]
	e := &earlyCopy{gen: dc.gen, started: time.Now(), done: make(chan struct{})}
	dc.early = e
	data := dc.ext[0].b // not changed in place from now on (add)
	df.mu.Unlock()
	e.ref = chunk.Ref{Index: idx, ID: chunk.NewID(), Len: uint32(len(data))}
	ctx = context.WithoutCancel(ctx)
	f.wb.early.Go(func() {
		defer func() { <-f.wb.earlySlots }()
		defer close(e.done)
		e.ref.Sum, e.err = f.blobs.Put(ctx, e.ref.ID, data)
		if e.err != nil {
			f.log.Warn().Err(e.err).Uint64("ino", uint64(ino)).Uint64("index", idx).
				Msg("write-behind: chunk not stored early; the commit stores it")
		}
	})
}

// whole reports whether the extents cover the chunk [0, cs) in one.
func (dc *dirtyChunk) whole(cs uint64) bool {
	return len(dc.ext) == 1 && dc.ext[0].lo == 0 && uint64(len(dc.ext[0].b)) == cs
}

// add records src written at lo and returns how many bytes of memory the
// extents grew by. A write that continues the extent before it (the
// common sequential case) is appended to it, in place unless an early
// store may be reading it.
func (dc *dirtyChunk) add(lo uint64, src []byte) int64 {
	dc.gen++
	hi := lo + uint64(len(src))
	before := dc.capacity()
	// The extents that overlap or touch [lo, hi) are replaced by one.
	i := sort.Search(len(dc.ext), func(i int) bool { return dc.ext[i].hi() >= lo })
	j := i
	for j < len(dc.ext) && dc.ext[j].lo <= hi {
		j++
	}
	if i == j {
		dc.ext = slices.Insert(dc.ext, i, extent{lo, bytes.Clone(src)})
		return dc.capacity() - before
	}
	nlo, nhi := min(lo, dc.ext[i].lo), max(hi, dc.ext[j-1].hi())
	var b []byte
	if first := dc.ext[i]; dc.early == nil && first.lo == nlo && uint64(cap(first.b)) >= nhi-nlo {
		b = first.b[:nhi-nlo] // grows in place; the old bytes stay put
	} else {
		b = make([]byte, nhi-nlo, max(nhi-nlo, 2*uint64(len(first.b))))
		copy(b[first.lo-nlo:], first.b)
	}
	for _, x := range dc.ext[i+1 : j] {
		copy(b[x.lo-nlo:], x.b)
	}
	copy(b[lo-nlo:], src)
	dc.ext = slices.Replace(dc.ext, i, j, extent{nlo, b})
	return dc.capacity() - before
}

// capacity is the memory the extents hold.
func (dc *dirtyChunk) capacity() int64 {
	var n int64
	for _, x := range dc.ext {
		n += int64(cap(x.b))
	}
	return n
}

// apply copies the extents over data (the chunk's bytes from offset 0),
// which must be long enough.
func (dc *dirtyChunk) apply(data []byte) {
	for _, x := range dc.ext {
		copy(data[x.lo:], x.b)
	}
}

// end is where the last extent ends.
func (dc *dirtyChunk) end() uint64 {
	if len(dc.ext) == 0 {
		return 0
	}
	return dc.ext[len(dc.ext)-1].hi()
}

// relieve brings the table back under its limit before a write to ino,
// whose lock the caller holds: ino first, then other files whose lock is
// free. A failure to commit ino is returned; other files' failures only
// leave them dirty (their own Commit reports them).
func (f *Files) relieve(ctx context.Context, ino meta.Ino) error {
	if !f.overLimit() {
		return nil
	}
	if _, _, err := f.commitLocked(ctx, ino); err != nil {
		return err
	}
	f.wb.mu.Lock()
	others := slices.Collect(maps.Keys(f.wb.files))
	f.wb.mu.Unlock()
	for _, o := range others {
		if !f.overLimit() {
			return nil
		}
		c := f.stripe(o)
		select {
		case c <- struct{}{}:
		default:
			continue // busy (or ino's own stripe): its writer relieves
		}
		if _, _, err := f.commitLocked(ctx, o); err != nil {
			f.log.Warn().Err(err).Uint64("ino", uint64(o)).Msg("write-back: commit to free memory")
		}
		<-c
	}
	return nil
}

// overLimit reports whether the table holds more than its limit.
func (f *Files) overLimit() bool {
	f.wb.mu.Lock()
	defer f.wb.mu.Unlock()
	return f.wb.bytes > f.wb.limit
}

// Commit makes the uncommitted writes of ino durable: their chunks stored
// with the inode's redundancy and referenced, with the new size, in the
// namespace. It returns the attributes after the commit, or, with nothing
// to commit, ok false and zero attributes. An inode removed meanwhile
// fails with meta.ErrStale and its writes are dropped; after any other
// error they stay in the table for the next Commit.
func (f *Files) Commit(ctx context.Context, ino meta.Ino) (attr meta.Attr, ok bool, err error) {
	unlock, err := f.lock(ctx, ino)
	if err != nil {
		return meta.Attr{}, false, fmt.Errorf("commit inode %d: %w", ino, err)
	}
	defer unlock()
	return f.commitLocked(ctx, ino)
}

// CommitAll commits every file of the table, as on shutdown, and waits
// for the early stores in flight; it returns the failures joined.
func (f *Files) CommitAll(ctx context.Context) error {
	f.wb.mu.Lock()
	inos := slices.Collect(maps.Keys(f.wb.files))
	f.wb.mu.Unlock()
	var errs []error
	for _, ino := range inos {
		if _, _, err := f.Commit(ctx, ino); err != nil && !errors.Is(err, meta.ErrStale) {
			errs = append(errs, err)
		}
	}
	// Early stores of files that failed to commit end too (their copies
	// stay for the next Commit, or the orphan collection).
	f.wb.early.Wait()
	return errors.Join(errs...)
}

// CommitOlder commits the files of the table whose oldest uncommitted
// write was made before t, and returns how many it committed and the
// failures joined (a file removed meanwhile is no failure).
func (f *Files) CommitOlder(ctx context.Context, t time.Time) (int, error) {
	before := t.UnixNano()
	var old []meta.Ino
	f.wb.mu.Lock()
	for ino, df := range f.wb.files {
		if df.since < before {
			old = append(old, ino)
		}
	}
	f.wb.mu.Unlock()
	n := 0
	var errs []error
	for _, ino := range old {
		_, ok, err := f.Commit(ctx, ino)
		switch {
		case err != nil && !errors.Is(err, meta.ErrStale):
			errs = append(errs, err)
		case ok:
			n++
		}
	}
	return n, errors.Join(errs...)
}

// commitLocked is Commit under ino's lock.
func (f *Files) commitLocked(ctx context.Context, ino meta.Ino) (meta.Attr, bool, error) {
	f.wb.mu.Lock()
	df := f.wb.files[ino]
	f.wb.mu.Unlock()
	if df == nil {
		return meta.Attr{}, false, nil
	}
	df.mu.Lock()
	idxs := slices.Sorted(maps.Keys(df.chunks))
	copies, size := df.copies, df.size
	df.mu.Unlock()
	if _, ok := chunk.CopiesFrom(ctx); !ok || copies > 0 {
		// The file's own redundancy, even when ctx carries another's: a
		// commit that frees memory runs under the context of a write to
		// some other file.
		ctx = chunk.WithCopies(ctx, copies)
	}
	var attr meta.Attr
	for len(idxs) > 0 {
		batch := idxs[:min(len(idxs), maxCommitRefs)]
		idxs = idxs[len(batch):]
		var err error
		if attr, err = f.commitBatch(ctx, ino, df, batch, size); err != nil {
			if errors.Is(err, meta.ErrStale) || errors.Is(err, meta.ErrNotFound) {
				f.forget(ctx, ino, df, nil)
			}
			return meta.Attr{}, false, fmt.Errorf("commit inode %d: %w", ino, err)
		}
	}
	f.forget(ctx, ino, df, nil)
	return attr, true, nil
}

// commitBatch merges, stores and commits the dirty chunks idxs of df,
// redoing it all when another node replaced one of the chunks merged onto
// meanwhile. The committed chunks leave the table.
func (f *Files) commitBatch(ctx context.Context, ino meta.Ino, df *dirtyFile, idxs []uint64, size uint64) (meta.Attr, error) {
	for attempt := 1; ; attempt++ {
		refs, expect, err := f.storeDirty(ctx, ino, df, idxs)
		if err != nil {
			if raced(err) && attempt < maxConflictRetries {
				// A chunk merged onto was replaced and deleted
				// meanwhile: read the map current (as WriteAt).
				ctx = meta.WithCurrentReads(ctx)
				continue
			}
			return meta.Attr{}, err
		}
		attr, freed, err := f.ns.CommitWrite(ctx, ino, refs, expect, size)
		if err == nil {
			f.forget(ctx, ino, df, idxs)
			f.deleteFreed(ctx, ino, freed)
			return attr, nil
		}
		f.discardIfGone(ctx, ino, err, refs...)
		if !raced(err) || attempt == maxConflictRetries {
			return meta.Attr{}, fmt.Errorf("commit %d chunks: %w", len(refs), err)
		}
		ctx = meta.WithCurrentReads(ctx)
	}
}

// storeDirty merges the chunks idxs of df onto the chunks the chunk map
// holds now and stores them under new IDs, a few at once. It returns
// their references and what the commit expects. On error the chunks
// stored are deleted.
func (f *Files) storeDirty(ctx context.Context, ino meta.Ino, df *dirtyFile, idxs []uint64) ([]chunk.Ref, []meta.Expect, error) {
	cur, err := f.ns.Chunks(ctx, ino, idxs[0], idxs[len(idxs)-1])
	if err != nil {
		return nil, nil, fmt.Errorf("chunk map [%d, %d]: %w", idxs[0], idxs[len(idxs)-1], err)
	}
	base := make(map[uint64]chunk.Ref, len(idxs))
	for _, r := range cur {
		base[r.Index] = r
	}
	refs := make([]chunk.Ref, len(idxs))
	expect := make([]meta.Expect, len(idxs))
	errs := make([]error, len(idxs))
	sem := make(chan struct{}, commitParallel)
	var wg sync.WaitGroup
	var stale []chunk.Ref // early copies not used
	for i, idx := range idxs {
		df.mu.Lock()
		dc := df.chunks[idx]
		e := dc.early
		dc.early = nil // used below, or deleted
		df.mu.Unlock()
		old := base[idx]
		expect[i] = meta.Expect{Index: idx, ID: old.ID}
		if e != nil {
			ref, ok := e.wait()
			if ok && e.gen == dc.gen && time.Since(e.started) < f.earlyAge() {
				refs[i] = ref // the chunk as it is now, stored: no merge to do
				continue
			}
			if ok {
				stale = append(stale, ref) // written again since, or too old
			}
		}
		refs[i] = chunk.Ref{Index: idx, ID: chunk.NewID()}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			// Writers are held off by the file's lock: dc is stable.
			data, err := f.mergeDirty(ctx, ino, old, dc)
			if err == nil {
				refs[i].Len = uint32(len(data))
				refs[i].Sum, err = f.blobs.Put(ctx, refs[i].ID, data)
			}
			errs[i] = err
		})
	}
	wg.Wait()
	f.discard(ctx, ino, stale)
	if err := errors.Join(errs...); err != nil {
		f.discard(ctx, ino, refs)
		return nil, nil, fmt.Errorf("store %d chunks: %w", len(refs), err)
	}
	return refs, expect, nil
}

// earlyAge is SetWriteBehind's maxAge.
func (f *Files) earlyAge() time.Duration {
	f.wb.mu.Lock()
	defer f.wb.mu.Unlock()
	return f.wb.earlyAge
}

// mergeDirty returns the new content of a chunk: the verified bytes of
// old (when the extents do not cover them all) with dc's extents over
// them.
func (f *Files) mergeDirty(ctx context.Context, ino meta.Ino, old chunk.Ref, dc *dirtyChunk) ([]byte, error) {
	n := max(uint64(old.Len), dc.end())
	if len(dc.ext) == 1 && dc.ext[0].lo == 0 && uint64(len(dc.ext[0].b)) == n {
		return dc.ext[0].b, nil // written whole: nothing to merge
	}
	data := make([]byte, n)
	if !old.ID.IsZero() && old.Len > 0 {
		prev, err := f.getChunk(ctx, ino, old)
		if err != nil {
			return nil, err
		}
		copy(data, prev)
	}
	dc.apply(data)
	return data, nil
}

// forget removes the chunks idxs of df from the table (all of them when
// idxs is nil), and the file when none is left. The caller holds ino's
// lock. Early copies of the chunks removed that no commit used are
// deleted (after their store ends).
func (f *Files) forget(ctx context.Context, ino meta.Ino, df *dirtyFile, idxs []uint64) {
	var early []*earlyCopy
	f.wb.mu.Lock()
	df.mu.Lock()
	if idxs == nil {
		idxs = slices.Collect(maps.Keys(df.chunks))
	}
	for _, idx := range idxs {
		if dc := df.chunks[idx]; dc != nil {
			f.wb.bytes -= dc.capacity()
			delete(df.chunks, idx)
			if dc.early != nil {
				early = append(early, dc.early)
			}
		}
	}
	if len(df.chunks) == 0 && f.wb.files[ino] == df {
		delete(f.wb.files, ino)
	}
	df.mu.Unlock()
	f.wb.mu.Unlock()
	var unused []chunk.Ref
	for _, e := range early {
		if ref, ok := e.wait(); ok {
			unused = append(unused, ref)
		}
	}
	f.discard(ctx, ino, unused)
}

// pendingIn returns copies of the uncommitted bytes of ino within [start,
// end), as extents at file offsets, for ReadAt to lay over what it reads
// from the store; nil when there are none.
func (f *Files) pendingIn(ino meta.Ino, start, end uint64) []extent {
	f.wb.mu.Lock()
	df := f.wb.files[ino]
	f.wb.mu.Unlock()
	if df == nil {
		return nil
	}
	cs := f.chunkSize
	first, last := start/cs, (end-1)/cs
	df.mu.Lock()
	defer df.mu.Unlock()
	var out []extent
	for idx, dc := range df.chunks {
		if idx < first || idx > last {
			continue
		}
		for _, x := range dc.ext {
			lo, hi := max(idx*cs+x.lo, start), min(idx*cs+x.hi(), end)
			if lo < hi {
				b := x.b[lo-idx*cs-x.lo : hi-idx*cs-x.lo]
				out = append(out, extent{lo, bytes.Clone(b)})
			}
		}
	}
	return out
}
