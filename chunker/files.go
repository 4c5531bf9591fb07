package chunker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"

	"github.com/rs/zerolog"

	"github.com/wormhole-fs/wormhole/chunker/chunk"
	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
)

// DefaultChunkSize is the chunk size of file data: file bytes
// [i*DefaultChunkSize, (i+1)*DefaultChunkSize) live in chunk i.
const DefaultChunkSize = 1 << 20

// MaxChunkSize is the largest chunk size NewFiles accepts.
const MaxChunkSize = 64 << 20

// lockStripes is the number of per-inode write locks.
const lockStripes = 256

// readAttempts bounds how often ReadAt re-reads the chunk map when a chunk
// it was about to read was replaced and deleted by a concurrent write.
const readAttempts = 3

// Namespace is the part of meta.Store that Files needs.
type Namespace interface {
	// GetAttr is read for the inode's redundancy (meta.Attr.Copies) when
	// a write's context does not carry it; see Files.WriteAt.
	GetAttr(ctx context.Context, ino meta.Ino) (meta.Attr, error)
	Chunks(ctx context.Context, ino meta.Ino, first, last uint64) ([]chunk.Ref, error)
	CommitWrite(ctx context.Context, ino meta.Ino, refs []chunk.Ref, expect []meta.Expect, size uint64) (meta.Attr, meta.Freed, error)
	Truncate(ctx context.Context, ino meta.Ino, size, chunkSize uint64, tail *chunk.Ref, expect []meta.Expect) (meta.Attr, meta.Freed, error)
}

// Blobs stores immutable chunks by ID. LocalStore implements it; a
// replicated store can take its place. Implementations must be safe for
// concurrent use and idempotent.
type Blobs interface {
	// Put stores data as chunk id, durably when it returns, and returns
	// its checksum. It must not keep data after returning.
	Put(ctx context.Context, id chunk.ID, data []byte) (chunk.Sum, error)
	// Get returns the verified data of chunk id: an error wrapping
	// chunk.ErrNotFound if it is missing, chunk.ErrCorrupt if it fails
	// verification. The caller may modify the returned slice.
	Get(ctx context.Context, id chunk.ID) ([]byte, error)
	// Delete removes chunk id; a missing chunk is not an error.
	Delete(ctx context.Context, id chunk.ID) error
}

// RangeReader is implemented by Blobs that can read part of a chunk
// without fetching and verifying all of it, into the caller's buffer;
// LocalStore and replica.Store do. Files uses it, when its Blobs offers
// it, for every read.
type RangeReader interface {
	// ReadRange reads bytes [off, off+len(p)) of chunk id into p, clamped
	// to the chunk's length, and returns how many it read (fewer than
	// len(p), possibly none, when the range passes the end). Every byte
	// read is verified, as by Get; errors wrap chunk.ErrNotFound and
	// chunk.ErrCorrupt as Get's do. After an error the contents of p are
	// unspecified. off must not be negative.
	ReadRange(ctx context.Context, id chunk.ID, p []byte, off int64) (int, error)
}

// RangeViewer is implemented by Blobs that can lend verified chunk bytes
// in place, without copying them into a caller's buffer: LocalStore does,
// from a read-only mapping of the chunk file.
type RangeViewer interface {
	// ViewRange returns bytes [off, off+n) of chunk id, clamped to the
	// chunk's length, every byte verified as by ReadRange, and a release
	// function the caller must call once it no longer reads them (the
	// bytes are invalid after). Errors wrap chunk.ErrNotFound and
	// chunk.ErrCorrupt as ReadRange's do, and chunk.ErrNoView when this chunk
	// cannot be lent (ReadRange can still read it).
	ViewRange(ctx context.Context, id chunk.ID, off int64, n int) (data []byte, release func(), err error)
}

var (
	_ Blobs       = (*LocalStore)(nil)
	_ RangeReader = (*LocalStore)(nil)
	_ RangeViewer = (*LocalStore)(nil)
)

// Files maps byte ranges of files onto fixed-size chunks: reads fetch the
// chunks a range covers, writes store new chunks and commit them to the
// namespace in one transaction, and replaced chunks are deleted afterwards.
//
// Files is safe for concurrent use. Writes and truncates of one inode are
// serialized (by a striped lock) so concurrent read-modify-writes of one
// chunk never lose an update; reads take no lock and see either the old or
// the new chunk of a concurrent write.
type Files struct {
	ns        Namespace
	blobs     Blobs
	chunkSize uint64
	log       zerolog.Logger
	// locks are binary semaphores (capacity 1), so that waiting for one
	// honours the caller's context.
	locks [lockStripes]chan struct{}
	// wb holds UNSTABLE writes not yet committed (writeback.go).
	wb writeBack
}

// NewFiles returns a Files over the namespace ns and chunk store blobs.
// chunkSize must stay the same for the life of the data; chunkSize <= 0
// selects DefaultChunkSize. NewFiles panics if chunkSize exceeds
// MaxChunkSize (a configuration error that Config validation catches).
func NewFiles(ns Namespace, blobs Blobs, chunkSize int, log zerolog.Logger) *Files {
	if chunkSize <= 0 {
		chunkSize = DefaultChunkSize
	}
	if chunkSize > MaxChunkSize {
		panic(fmt.Sprintf("chunker: chunk size %d exceeds the maximum %d", chunkSize, MaxChunkSize))
	}
	f := &Files{ns: ns, blobs: blobs, chunkSize: uint64(chunkSize), log: log}
	for i := range f.locks {
		f.locks[i] = make(chan struct{}, 1)
	}
	return f
}

// ChunkSize returns the chunk size in bytes.
func (f *Files) ChunkSize() int { return int(f.chunkSize) }

// lock takes the write lock stripe of ino and returns its unlock function.
func (f *Files) lock(ctx context.Context, ino meta.Ino) (func(), error) {
	// Fibonacci hashing spreads consecutive inode numbers over stripes.
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	c := f.stripe(ino)
	select {
	case c <- struct{}{}:
		return func() { <-c }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// stripe returns the write lock of ino.
func (f *Files) stripe(ino meta.Ino) chan struct{} {
	// Fibonacci hashing spreads consecutive inode numbers over stripes.
	return f.locks[(uint64(ino)*0x9E3779B97F4A7C15)>>56]
}

// ReadAt reads len(p) bytes of file ino at offset off into p, like
// io.ReaderAt: it returns n < len(p) only with an error, io.EOF when the read
// reaches size, the file size the caller has from the attributes. Holes, and
// bytes past a chunk's length within the file, read as zeros. Chunks are
// verified by the chunk store; a corrupt chunk fails the read with an error
// wrapping chunk.ErrCorrupt. When the chunk store is a RangeReader, a read
// of part of a chunk fetches (and verifies) only that part, so its cost
// follows len(p), not the chunk size. Uncommitted writes (WriteUnstable)
// are read from the write-back table; size should then include them
// (Pending).
func (f *Files) ReadAt(ctx context.Context, ino meta.Ino, size uint64, p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("read inode %d at %d: negative offset: %w", ino, off, meta.ErrInvalid)
	}
	if len(p) == 0 {
		return 0, nil
	}
	start := uint64(off)
	if start >= size {
		return 0, io.EOF
	}
	end := min(start+uint64(len(p)), size)
	n := int(end - start)
	// Uncommitted writes are copied first and laid over what the store
	// gives: if they are committed meanwhile, the store has them too.
	pending := f.pendingIn(ino, start, end)
	var err error
	for range readAttempts {
		if err = f.readRange(ctx, ino, p[:n], start); !errors.Is(err, chunk.ErrNotFound) {
			break
		}
		// A concurrent write or truncate may have replaced and deleted
		// a chunk between reading the map and the chunk: read again,
		// current (the map may have come from a replica that had not
		// seen the change).
		ctx = meta.WithCurrentReads(ctx)
	}
	if err != nil {
		return 0, err
	}
	for _, x := range pending {
		copy(p[x.lo-start:], x.b)
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// ReadView reads n bytes of file ino at off like ReadAt, but lends them in
// place instead of copying them: when the range lies within one chunk,
// whole (no hole, no bytes past the chunk's end), with no uncommitted write
// over it, and the Blobs is a RangeViewer, it returns the verified bytes
// and a function to call once they have been used, and ok. A chunk the
// Blobs cannot lend (chunk.ErrNoView) is read into a new buffer instead,
// with the chunk map already read. Otherwise ok is false and nothing was
// read: the caller reads with ReadAt. n is clamped to the file's size, as
// ReadAt clamps.
func (f *Files) ReadView(ctx context.Context, ino meta.Ino, size uint64, off int64, n int) (data []byte, release func(), ok bool, err error) {
	v, isViewer := f.blobs.(RangeViewer)
	if !isViewer || off < 0 || n <= 0 || uint64(off) >= size {
		return nil, nil, false, nil
	}
	start := uint64(off)
	end := min(start+uint64(n), size)
	cs := f.chunkSize
	idx := start / cs
	if (end-1)/cs != idx || len(f.pendingIn(ino, start, end)) > 0 {
		return nil, nil, false, nil
	}
	refs, err := f.ns.Chunks(ctx, ino, idx, idx)
	if err != nil {
		return nil, nil, false, fmt.Errorf("read inode %d: chunk map [%d, %d]: %w", ino, idx, idx, err)
	}
	i := slices.IndexFunc(refs, func(r chunk.Ref) bool { return r.Index == idx })
	if i < 0 || idx*cs+uint64(refs[i].Len) < end {
		return nil, nil, false, nil // a hole, or zeros past the chunk's end
	}
	ref := refs[i]
	data, release, err = v.ViewRange(ctx, ref.ID, int64(start-idx*cs), int(end-start))
	if rr, isReader := f.blobs.(RangeReader); isReader && errors.Is(err, chunk.ErrNoView) {
		// Not lendable (a copy on another node, an old format): read
		// it here with the reference in hand, rather than have the
		// caller read the chunk map again (in a cluster, an etcd
		// round trip).
		data = make([]byte, end-start)
		var k int
		k, err = rr.ReadRange(ctx, ref.ID, data, int64(start-idx*cs))
		data, release = data[:k], func() {}
	}
	switch {
	case errors.Is(err, chunk.ErrNoView) || errors.Is(err, chunk.ErrNotFound):
		// Not lendable, or replaced since the map was read (ReadAt
		// reads the map again).
		return nil, nil, false, nil
	case err != nil:
		return nil, nil, false, fmt.Errorf("inode %d chunk %d: %w", ino, ref.Index, err)
	case uint64(len(data)) != end-start:
		release()
		return nil, nil, false, fmt.Errorf("inode %d chunk %d: chunk %s ends before byte %d, chunk map says it has %d: %w",
			ino, ref.Index, ref.ID, end-idx*cs, ref.Len, chunk.ErrCorrupt)
	}
	return data, release, true, nil
}

// readRange fills p with the file bytes at start, all within the file size.
func (f *Files) readRange(ctx context.Context, ino meta.Ino, p []byte, start uint64) error {
	cs := f.chunkSize
	end := start + uint64(len(p))
	first, last := start/cs, (end-1)/cs
	refs, err := f.ns.Chunks(ctx, ino, first, last)
	if err != nil {
		return fmt.Errorf("read inode %d: chunk map [%d, %d]: %w", ino, first, last, err)
	}
	// Only what no chunk fills is zeroed (holes, and bytes past a short
	// chunk's end): a 1 MiB read of a written file clears nothing. The
	// references come in index order (meta.Store's Chunks promises it).
	filled := start // p is final up to here
	for _, ref := range refs {
		if ref.Index < first || ref.Index > last {
			continue
		}
		cStart := ref.Index * cs
		lo := max(start, cStart) // file offsets of the wanted part of this chunk
		hi := min(end, cStart+uint64(ref.Len))
		if lo >= hi {
			continue // the wanted part lies past the chunk's data: zeros
		}
		if lo < filled {
			return fmt.Errorf("read inode %d: chunk map out of index order at chunk %d", ino, ref.Index)
		}
		clear(p[filled-start : lo-start])
		filled = hi
		if rr, ok := f.blobs.(RangeReader); ok {
			// Read and verify only the wanted part, straight into p.
			// For a whole chunk this is one pass over the data (block
			// sums under the verified header sum) where Get makes two
			// (block sums and the whole-chunk sum).
			k, err := rr.ReadRange(ctx, ref.ID, p[lo-start:hi-start], int64(lo-cStart))
			if err != nil {
				return fmt.Errorf("inode %d chunk %d: %w", ino, ref.Index, err)
			}
			if uint64(k) != hi-lo {
				return fmt.Errorf("inode %d chunk %d: chunk %s ends before byte %d, chunk map says it has %d: %w",
					ino, ref.Index, ref.ID, hi-cStart, ref.Len, chunk.ErrCorrupt)
			}
			continue
		}
		data, err := f.getChunk(ctx, ino, ref)
		if err != nil {
			return err
		}
		copy(p[lo-start:hi-start], data[lo-cStart:hi-cStart])
	}
	clear(p[filled-start:])
	return nil
}

// getChunk fetches the verified data of ref and checks its length. A
// RangeReader verifies every byte in one pass over the data.
func (f *Files) getChunk(ctx context.Context, ino meta.Ino, ref chunk.Ref) ([]byte, error) {
	var data []byte
	var err error
	if rr, ok := f.blobs.(RangeReader); ok {
		data = make([]byte, ref.Len)
		var k int
		k, err = rr.ReadRange(ctx, ref.ID, data, 0)
		data = data[:k]
	} else {
		data, err = f.blobs.Get(ctx, ref.ID)
	}
	if err != nil {
		return nil, fmt.Errorf("inode %d chunk %d: %w", ino, ref.Index, err)
	}
	if uint64(len(data)) != uint64(ref.Len) {
		return nil, fmt.Errorf("inode %d chunk %d: chunk %s has %d bytes, chunk map says %d: %w",
			ino, ref.Index, ref.ID, len(data), ref.Len, chunk.ErrCorrupt)
	}
	return data, nil
}

// WriteAt writes p to file ino at offset off and returns the new attributes.
// Each chunk the range touches is replaced by a new chunk (merged with the
// old bytes when only partly covered); all new chunks are stored durably,
// then committed to the namespace in one transaction that also raises the
// size to off+len(p), and only then are the replaced chunks deleted. The
// write is durable when WriteAt returns. On error nothing of the write is
// visible. A zero-length write changes nothing but mtime and ctime.
//
// Chunks are stored with the inode's redundancy: the copy count ctx
// carries (chunk.WithCopies, set by a caller that has the attributes at
// hand: int(attr.Copies)), or else the one GetAttr reads, at the cost of a
// metadata round trip. Truncate does the same for the chunk it rewrites.
//
// A size hint in ctx (chunk.WithSizeHint) spares the chunk-map read of a
// partly written chunk that lies past the file's end; see writeOnce.
func (f *Files) WriteAt(ctx context.Context, ino meta.Ino, p []byte, off int64) (meta.Attr, error) {
	if err := checkWriteRange(ino, p, off); err != nil {
		return meta.Attr{}, err
	}
	unlock, err := f.lock(ctx, ino)
	if err != nil {
		return meta.Attr{}, fmt.Errorf("write inode %d: %w", ino, err)
	}
	defer unlock()
	// Uncommitted writes go first, so this one lands on top of them.
	hint, hinted := chunk.SizeHintFrom(ctx)
	if ca, committed, err := f.commitLocked(ctx, ino); err != nil {
		return meta.Attr{}, fmt.Errorf("write inode %d: %w", ino, err)
	} else if committed {
		hint, hinted = ca.Size, true // what the commit made: current
	}
	if len(p) > 0 {
		if ctx, err = f.withCopies(ctx, ino); err != nil {
			return meta.Attr{}, fmt.Errorf("write inode %d: %w", ino, err)
		}
	}
	// The lock serializes this process's writers; writers on other nodes
	// are caught by the namespace (ErrConflict) and the write is redone
	// from the chunk map as it now is.
	for attempt := 1; ; attempt++ {
		attr, err := f.writeOnce(ctx, ino, p, off, hint, hinted)
		if !raced(err) || attempt == maxConflictRetries {
			return attr, err
		}
		hinted = false // the hint may be what was wrong
		// The map read may have come from a replica that had not seen
		// the change that raced this one: read it current from now on.
		ctx = meta.WithCurrentReads(ctx)
	}
}

// checkWriteRange refuses a negative offset and a write past the maximum
// file size.
func checkWriteRange(ino meta.Ino, p []byte, off int64) error {
	if off < 0 {
		return fmt.Errorf("write inode %d at %d: negative offset: %w", ino, off, meta.ErrInvalid)
	}
	if uint64(len(p)) > math.MaxInt64-uint64(off) {
		return fmt.Errorf("write inode %d at %d: %d bytes would pass the maximum file size: %w", ino, off, len(p), meta.ErrInvalid)
	}
	return nil
}

// withCopies returns ctx carrying the copy count for the chunks of ino
// (chunk.WithCopies): ctx itself if it carries one, else ctx with the
// inode's Copies read from the namespace. An inode that is gone is
// meta.ErrStale, as the commit would have said.
func (f *Files) withCopies(ctx context.Context, ino meta.Ino) (context.Context, error) {
	if _, ok := chunk.CopiesFrom(ctx); ok {
		return ctx, nil
	}
	a, err := f.ns.GetAttr(ctx, ino)
	if errors.Is(err, meta.ErrNotFound) || errors.Is(err, meta.ErrStale) {
		return nil, fmt.Errorf("inode %d is gone: %w", ino, meta.ErrStale)
	}
	if err != nil {
		return nil, fmt.Errorf("redundancy of inode %d: %w", ino, err)
	}
	return chunk.WithCopies(ctx, int(a.Copies)), nil
}

// raced reports an error that another node's change to the same chunks
// explains: the namespace refused a stale commit, or the chunk being
// merged was replaced (and deleted) after it was looked up. Redoing the
// operation from the current chunk map resolves both.
func raced(err error) bool {
	return errors.Is(err, meta.ErrConflict) || errors.Is(err, chunk.ErrNotFound)
}

// maxConflictRetries bounds how often a write or truncate is redone after
// another node changed the same chunk.
const maxConflictRetries = 16

// writeOnce is one attempt of WriteAt, under the inode's lock. When hinted,
// the partly covered chunks that start at or past hint (the file size the
// caller saw, chunk.WithSizeHint) are taken to be holes without reading the
// chunk map; the commit expects them absent, so a wrong hint fails it with
// ErrConflict.
func (f *Files) writeOnce(ctx context.Context, ino meta.Ino, p []byte, off int64, hint uint64, hinted bool) (meta.Attr, error) {
	var err error
	if len(p) == 0 {
		attr, _, err := f.ns.CommitWrite(ctx, ino, nil, nil, 0)
		if err != nil {
			return meta.Attr{}, fmt.Errorf("write inode %d: commit: %w", ino, err)
		}
		return attr, nil
	}

	cs := f.chunkSize
	start := uint64(off)
	end := start + uint64(len(p))
	first, last := start/cs, (end-1)/cs

	// Only the first and last chunks can be partly covered; fetch the
	// old references of those to merge with.
	old := make(map[uint64]chunk.Ref, 2)
	var partials []uint64
	for _, idx := range []uint64{first, last} {
		partial := max(start, idx*cs) != idx*cs || min(end, (idx+1)*cs) != (idx+1)*cs
		if len(partials) > 0 && partials[0] == idx || !partial {
			continue
		}
		partials = append(partials, idx)
		if hinted && idx*cs >= hint {
			continue // past the end the caller saw: a hole, expected so
		}
		refs, err := f.ns.Chunks(ctx, ino, idx, idx)
		if err != nil {
			return meta.Attr{}, fmt.Errorf("write inode %d: chunk map [%d]: %w", ino, idx, err)
		}
		for _, r := range refs {
			if r.Index == idx {
				old[idx] = r
			}
		}
	}

	// The merged chunks were computed from these entries; the chunks
	// wholly past the end the caller saw are expected absent, so the
	// commit need not read their entries (and a wrong hint fails it).
	expect := make([]meta.Expect, 0, len(partials))
	for _, idx := range partials {
		expect = append(expect, meta.Expect{Index: idx, ID: old[idx].ID})
	}
	if hinted {
		for idx := max(first, (hint+cs-1)/cs); idx <= last; idx++ {
			if !slices.Contains(partials, idx) {
				expect = append(expect, meta.Expect{Index: idx})
			}
		}
	}

	refs := make([]chunk.Ref, 0, last-first+1)
	for idx := first; idx <= last; idx++ {
		cStart := idx * cs
		lo := max(start, cStart) - cStart // range within the chunk
		hi := min(end, cStart+cs) - cStart
		src := p[cStart+lo-start : cStart+hi-start]
		data := src
		if lo != 0 || hi != cs {
			data, err = f.merge(ctx, ino, old[idx], src, lo, hi)
			if err != nil {
				f.discard(ctx, ino, refs)
				return meta.Attr{}, fmt.Errorf("write inode %d: %w", ino, err)
			}
		}
		ref := chunk.Ref{Index: idx, ID: chunk.NewID(), Len: uint32(len(data))}
		ref.Sum, err = f.blobs.Put(ctx, ref.ID, data)
		if err != nil {
			f.discard(ctx, ino, refs)
			return meta.Attr{}, fmt.Errorf("write inode %d: chunk %d: %w", ino, idx, err)
		}
		refs = append(refs, ref)
	}

	attr, freed, err := f.ns.CommitWrite(ctx, ino, refs, expect, end)
	if err != nil {
		f.discardIfGone(ctx, ino, err, refs...)
		return meta.Attr{}, fmt.Errorf("write inode %d: commit %d chunks: %w", ino, len(refs), err)
	}
	f.deleteFreed(ctx, ino, freed)
	return attr, nil
}

// merge returns the new content of a chunk whose bytes [lo, hi) are replaced
// by src: the old chunk's data (if any) with src copied over, zero-filled
// between the old end and lo. Its length is the higher of the old length and
// hi. When src covers all the old data from the chunk's start, the old chunk
// is not read and src itself is returned.
func (f *Files) merge(ctx context.Context, ino meta.Ino, old chunk.Ref, src []byte, lo, hi uint64) ([]byte, error) {
	if lo == 0 && hi >= uint64(old.Len) {
		// The write covers all the old data (or there is none): nothing
		// to read, verify or copy.
		return src, nil
	}
	var prev []byte
	if !old.ID.IsZero() && old.Len > 0 {
		var err error
		if prev, err = f.getChunk(ctx, ino, old); err != nil {
			return nil, err
		}
	}
	n := max(uint64(len(prev)), hi)
	var data []byte
	if uint64(cap(prev)) >= n {
		data = prev[:n]
		clear(data[len(prev):]) // spare capacity may hold a reader's scratch bytes
	} else {
		data = make([]byte, n)
		copy(data, prev)
	}
	copy(data[lo:hi], src)
	return data, nil
}

// discard deletes chunks stored for a write that is not going to be
// committed. Failures are only logged: the chunks are orphans at worst.
func (f *Files) discard(ctx context.Context, ino meta.Ino, refs []chunk.Ref) {
	ctx = context.WithoutCancel(ctx)
	for _, r := range refs {
		if err := f.blobs.Delete(ctx, r.ID); err != nil {
			f.log.Warn().Err(err).Uint64("ino", uint64(ino)).Str("chunk", r.ID.String()).Msg("delete uncommitted chunk")
		}
	}
}

// discardIfGone deletes the chunks of a failed commit when err says the
// inode no longer exists, so they cannot be referenced. After any other
// error the commit may have been applied all the same (a lost reply), so
// the chunks are left in place: an orphan wastes space, a deleted
// referenced chunk loses data.
func (f *Files) discardIfGone(ctx context.Context, ino meta.Ino, err error, refs ...chunk.Ref) {
	if errors.Is(err, meta.ErrStale) || errors.Is(err, meta.ErrNotFound) || errors.Is(err, meta.ErrConflict) {
		f.discard(ctx, ino, refs)
		return
	}
	f.log.Warn().Err(err).Uint64("ino", uint64(ino)).Int("chunks", len(refs)).Msg("commit failed; its chunks may be orphans")
}

// Release deletes chunks that a committed namespace change (an unlink, or
// a rename over a file) removed from every chunk map. Failures are logged:
// an undeleted chunk is an orphan, never lost data.
func (f *Files) Release(ctx context.Context, freed []chunk.Ref) {
	f.deleteFreed(ctx, 0, freed)
}

// deleteFreed deletes chunks a committed change removed from the chunk map.
// It runs even if ctx was cancelled after the commit; failures are logged,
// not returned, since the change itself succeeded.
func (f *Files) deleteFreed(ctx context.Context, ino meta.Ino, freed meta.Freed) {
	ctx = context.WithoutCancel(ctx)
	seen := make(map[chunk.ID]bool, len(freed))
	for _, r := range freed {
		if r.ID.IsZero() || seen[r.ID] {
			continue
		}
		seen[r.ID] = true
		if err := f.blobs.Delete(ctx, r.ID); err != nil {
			f.log.Warn().Err(err).Uint64("ino", uint64(ino)).Uint64("index", r.Index).
				Str("chunk", r.ID.String()).Msg("delete freed chunk")
		}
	}
}

// Truncate sets the size of file ino to newSize and returns the new
// attributes. When newSize falls inside a chunk that holds bytes past it,
// that chunk is rewritten with only its first newSize%chunkSize bytes and
// committed as the tail, so a later extension reads zeros, never the old
// bytes. Chunks removed or replaced are deleted after the commit. oldSize
// is the size the caller knows; it is only used in log messages, since
// the chunk map, not the caller's attributes, decides what to rewrite.
func (f *Files) Truncate(ctx context.Context, ino meta.Ino, oldSize, newSize uint64) (meta.Attr, error) {
	if newSize > math.MaxInt64 {
		return meta.Attr{}, fmt.Errorf("truncate inode %d to %d: size too large: %w", ino, newSize, meta.ErrInvalid)
	}
	unlock, err := f.lock(ctx, ino)
	if err != nil {
		return meta.Attr{}, fmt.Errorf("truncate inode %d: %w", ino, err)
	}
	defer unlock()
	// Uncommitted writes go first, so the truncation cuts them too.
	if _, _, err := f.commitLocked(ctx, ino); err != nil {
		return meta.Attr{}, fmt.Errorf("truncate inode %d: %w", ino, err)
	}
	for attempt := 1; ; attempt++ {
		attr, err := f.truncateOnce(ctx, ino, oldSize, newSize)
		if !raced(err) || attempt == maxConflictRetries {
			return attr, err
		}
		ctx = meta.WithCurrentReads(ctx) // as WriteAt
	}
}

// truncateOnce is one attempt of Truncate, under the inode's lock.
func (f *Files) truncateOnce(ctx context.Context, ino meta.Ino, oldSize, newSize uint64) (meta.Attr, error) {
	cs := f.chunkSize
	var tail *chunk.Ref
	var oldTail chunk.Ref
	var expect []meta.Expect
	if keep := newSize % cs; keep != 0 {
		idx := newSize / cs
		refs, err := f.ns.Chunks(ctx, ino, idx, idx)
		if err != nil {
			return meta.Attr{}, fmt.Errorf("truncate inode %d: chunk map [%d]: %w", ino, idx, err)
		}
		// Whether the chunk holding the new end is trimmed was decided
		// from what it is now: pin it.
		var cur chunk.ID
		for _, r := range refs {
			if r.Index == idx {
				cur = r.ID
				if uint64(r.Len) > keep {
					oldTail = r
				}
			}
		}
		expect = []meta.Expect{{Index: idx, ID: cur}}
		if !oldTail.ID.IsZero() {
			data, err := f.getChunk(ctx, ino, oldTail)
			if err != nil {
				return meta.Attr{}, fmt.Errorf("truncate inode %d: %w", ino, err)
			}
			pctx, err := f.withCopies(ctx, ino)
			if err != nil {
				return meta.Attr{}, fmt.Errorf("truncate inode %d: %w", ino, err)
			}
			t := chunk.Ref{Index: idx, ID: chunk.NewID(), Len: uint32(keep)}
			if t.Sum, err = f.blobs.Put(pctx, t.ID, data[:keep]); err != nil {
				return meta.Attr{}, fmt.Errorf("truncate inode %d: chunk %d: %w", ino, idx, err)
			}
			tail = &t
		}
	}

	attr, freed, err := f.ns.Truncate(ctx, ino, newSize, cs, tail, expect)
	if err != nil {
		if tail != nil {
			f.discardIfGone(ctx, ino, err, *tail)
		}
		return meta.Attr{}, fmt.Errorf("truncate inode %d from %d to %d: %w", ino, oldSize, newSize, err)
	}
	if tail != nil {
		// The replaced tail is unreferenced now, whether or not the
		// namespace lists it in freed (writes to ino are serialized, so
		// it was still the current reference).
		freed = append(freed, oldTail)
	}
	f.deleteFreed(ctx, ino, freed)
	return attr, nil
}
