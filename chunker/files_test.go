package chunker

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/wormhole-fs/wormhole/chunker/chunkertest"

	"github.com/wormhole-fs/wormhole/chunker/chunk"
	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
)

// checkRefs verifies that no chunk holds bytes past the file size and that
// every referenced chunk exists with its recorded length and checksum.
func checkRefs(t *testing.T, n *chunkertest.Namespace, s *LocalStore, ino meta.Ino) int {
	t.Helper()
	refs := n.Refs(ino)
	for _, r := range refs {
		data, err := s.Get(t.Context(), r.ID)
		if err != nil {
			t.Fatalf("chunk %d: %v", r.Index, err)
		}
		if len(data) != int(r.Len) || sumOf(data) != r.Sum {
			t.Fatalf("chunk %d: ref does not match stored chunk", r.Index)
		}
	}
	return len(refs)
}

const testChunkSize = 4096

func newTestFiles(t *testing.T) (*Files, *chunkertest.Namespace, *LocalStore) {
	t.Helper()
	s := openTestStore(t)
	ns := chunkertest.NewNamespace()
	return NewFiles(ns, s, testChunkSize, testLogger(t)), ns, s
}

// readAll reads the whole file through ReadAt and checks io.EOF semantics.
func readAll(t *testing.T, f *Files, ino meta.Ino, size uint64) []byte {
	t.Helper()
	p := make([]byte, size+10)
	n, err := f.ReadAt(t.Context(), ino, size, p, 0)
	if uint64(n) != size || err != io.EOF {
		t.Fatalf("ReadAt whole file: n=%d err=%v, want %d, io.EOF", n, err, size)
	}
	return p[:n]
}

// TestFilesModel runs random writes, truncates and reads against an
// in-memory model: with chunks smaller than a verification block, with
// chunks of several blocks (so partial reads verify some blocks of a
// chunk), and over a store that offers no range reads.
func TestFilesModel(t *testing.T) {
	for _, tt := range []struct {
		name      string
		chunkSize int
		noRange   bool
	}{
		{"small chunks", testChunkSize, false},
		{"multi-block chunks", 2*BlockSize + 1000, false},
		{"small chunks, no range reads", testChunkSize, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := openTestStore(t)
			var blobs Blobs = s
			if tt.noRange {
				blobs = struct{ Blobs }{s} // hides ReadRange
			}
			ns := chunkertest.NewNamespace()
			testFilesModel(t, NewFiles(ns, blobs, tt.chunkSize, testLogger(t)), ns, s, tt.chunkSize)
		})
	}
}

func testFilesModel(t *testing.T, f *Files, ns *chunkertest.Namespace, s *LocalStore, testChunkSize int) {
	ctx := t.Context()
	const ino = meta.Ino(7)
	maxSize := 6*testChunkSize + 123
	rng := rand.New(rand.NewPCG(1, 2))
	var model []byte
	for op := range 400 {
		switch k := rng.IntN(10); {
		case k < 5: // write
			off := rng.IntN(maxSize)
			n := rng.IntN(min(maxSize-off, 2*testChunkSize+100) + 1)
			if rng.IntN(4) == 0 { // an aligned, chunk-sized write
				off = rng.IntN(maxSize/testChunkSize) * testChunkSize
				n = testChunkSize
			}
			p := make([]byte, n)
			for i := range p {
				p[i] = byte(rng.Uint32())
			}
			attr, err := f.WriteAt(ctx, ino, p, int64(off))
			if err != nil {
				t.Fatalf("op %d: WriteAt(%d, %d): %v", op, off, n, err)
			}
			if end := off + n; end > len(model) {
				model = append(model, make([]byte, end-len(model))...)
			}
			copy(model[off:], p)
			if attr.Size != uint64(len(model)) {
				t.Fatalf("op %d: WriteAt size %d, model %d", op, attr.Size, len(model))
			}
		case k < 7: // truncate
			size := rng.IntN(maxSize)
			attr, err := f.Truncate(ctx, ino, uint64(len(model)), uint64(size))
			if err != nil {
				t.Fatalf("op %d: Truncate(%d): %v", op, size, err)
			}
			if size < len(model) {
				model = model[:size]
			} else {
				model = append(model, make([]byte, size-len(model))...)
			}
			if attr.Size != uint64(size) {
				t.Fatalf("op %d: Truncate size %d, want %d", op, attr.Size, size)
			}
		default: // read a random range, possibly past the end
			off := rng.IntN(maxSize + 100)
			// A buffer that is not zeroed: holes must come back as
			// zeros all the same.
			p := bytes.Repeat([]byte{0xa5}, rng.IntN(3*testChunkSize))
			n, err := f.ReadAt(ctx, ino, uint64(len(model)), p, int64(off))
			want := 0
			if off < len(model) {
				want = min(len(p), len(model)-off)
			}
			switch {
			case n != want:
				t.Fatalf("op %d: ReadAt(%d, %d) = %d, want %d", op, off, len(p), n, want)
			case n < len(p) && err != io.EOF:
				t.Fatalf("op %d: short ReadAt err = %v, want io.EOF", op, err)
			case n == len(p) && n > 0 && err != nil:
				t.Fatalf("op %d: full ReadAt err = %v", op, err)
			case want > 0 && !bytes.Equal(p[:n], model[off:off+n]):
				t.Fatalf("op %d: ReadAt(%d, %d) differs from model", op, off, len(p))
			}
		}
		if got := ns.Size(ino); got != uint64(len(model)) {
			t.Fatalf("op %d: namespace size %d, model %d", op, got, len(model))
		}
	}
	if got := readAll(t, f, ino, uint64(len(model))); !bytes.Equal(got, model) {
		t.Fatal("final content differs from model")
	}
	// Every replaced chunk was deleted: the store holds exactly the
	// referenced chunks.
	refs := checkRefs(t, ns, s, ino)
	if files := countChunkFiles(t, s.Dir()); files != refs {
		t.Fatalf("store holds %d chunks, chunk map references %d", files, refs)
	}
}

func TestFilesUnalignedAcrossChunks(t *testing.T) {
	ctx := t.Context()
	f, ns, s := newTestFiles(t)
	const ino = meta.Ino(2)
	p := bytes.Repeat([]byte("0123456789abcdef"), 3*testChunkSize/16) // 3 chunks of bytes
	off := int64(testChunkSize/2 + 3)
	if _, err := f.WriteAt(ctx, ino, p, off); err != nil {
		t.Fatal(err)
	}
	want := append(make([]byte, off), p...)
	if got := readAll(t, f, ino, uint64(len(want))); !bytes.Equal(got, want) {
		t.Fatal("content differs")
	}
	if n := checkRefs(t, ns, s, ino); n != 4 {
		t.Fatalf("%d chunks, want 4", n)
	}
	// The last chunk holds only the bytes written into it.
	refs, _ := ns.Chunks(ctx, ino, 3, 3)
	if len(refs) != 1 || uint64(refs[0].Len) != uint64(len(want))%testChunkSize {
		t.Fatalf("last ref %+v, want Len %d", refs, len(want)%testChunkSize)
	}
}

func TestFilesLargeWrite(t *testing.T) {
	ctx := t.Context()
	s := openTestStore(t)
	ns := chunkertest.NewNamespace()
	f := NewFiles(ns, s, 0, testLogger(t)) // DefaultChunkSize
	const ino = meta.Ino(3)
	p := make([]byte, 3<<20+17)
	for i := range p {
		p[i] = byte(i * 7)
	}
	off := int64(DefaultChunkSize - 5)
	if _, err := f.WriteAt(ctx, ino, p, off); err != nil {
		t.Fatal(err)
	}
	if ns.Commits() != 1 {
		t.Errorf("%d commits, want 1", ns.Commits())
	}
	got := make([]byte, len(p))
	if n, err := f.ReadAt(ctx, ino, ns.Size(ino), got, off); n != len(p) || (err != nil && err != io.EOF) {
		t.Fatalf("ReadAt = %d, %v", n, err)
	}
	if !bytes.Equal(got, p) {
		t.Fatal("content differs")
	}
	if n := countChunkFiles(t, s.Dir()); n != 5 {
		t.Errorf("%d chunk files, want 5", n)
	}
}

func TestFilesSparseBeyond4GiB(t *testing.T) {
	ctx := t.Context()
	f, _, s := newTestFiles(t)
	const ino = meta.Ino(4)
	const off = 5 << 30
	p := []byte("data at five gibibytes")
	attr, err := f.WriteAt(ctx, ino, p, off)
	if err != nil {
		t.Fatal(err)
	}
	if attr.Size != off+uint64(len(p)) {
		t.Fatalf("size %d, want %d", attr.Size, off+len(p))
	}
	if n := countChunkFiles(t, s.Dir()); n != 1 {
		t.Fatalf("%d chunk files, want 1 (sparse)", n)
	}
	got := make([]byte, len(p)+8)
	n, err := f.ReadAt(ctx, ino, attr.Size, got, off)
	if n != len(p) || err != io.EOF || !bytes.Equal(got[:n], p) {
		t.Fatalf("ReadAt at 5 GiB = %d, %v, %q", n, err, got[:n])
	}
	// Holes, including one spanning the 4 GiB boundary, read as zeros.
	for _, holeOff := range []int64{0, 1 << 30, 4<<30 - 100, off - 10} {
		hole := bytes.Repeat([]byte{0xFF}, 3*testChunkSize)
		if holeOff == off-10 {
			hole = hole[:10]
		}
		n, err := f.ReadAt(ctx, ino, attr.Size, hole, holeOff)
		if n != len(hole) || err != nil {
			t.Fatalf("ReadAt hole at %d = %d, %v", holeOff, n, err)
		}
		if !bytes.Equal(hole, make([]byte, len(hole))) {
			t.Fatalf("hole at %d is not zeros", holeOff)
		}
	}
}

func TestFilesTruncateThenExtendReadsZeros(t *testing.T) {
	ctx := t.Context()
	f, ns, s := newTestFiles(t)
	const ino = meta.Ino(5)
	p := bytes.Repeat([]byte{0xAB}, 3*testChunkSize)
	if _, err := f.WriteAt(ctx, ino, p, 0); err != nil {
		t.Fatal(err)
	}
	cut := uint64(testChunkSize + 100)
	if _, err := f.Truncate(ctx, ino, uint64(len(p)), cut); err != nil {
		t.Fatal(err)
	}
	// Extend by truncate, then by writing one byte far out.
	if _, err := f.Truncate(ctx, ino, cut, 2*testChunkSize); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(ctx, ino, []byte{1}, 4*testChunkSize); err != nil {
		t.Fatal(err)
	}
	got := readAll(t, f, ino, ns.Size(ino))
	want := make([]byte, 4*testChunkSize+1)
	copy(want, p[:cut])
	want[len(want)-1] = 1
	if !bytes.Equal(got, want) {
		i := 0
		for i < len(got) && got[i] == want[i] {
			i++
		}
		t.Fatalf("content differs from byte %d", i)
	}
	// The tail chunk was rewritten short; old chunks past the cut are gone.
	refs, _ := ns.Chunks(ctx, ino, 1, 1)
	if len(refs) != 1 || refs[0].Len != 100 {
		t.Fatalf("tail ref %+v, want Len 100", refs)
	}
	if files, refs := countChunkFiles(t, s.Dir()), checkRefs(t, ns, s, ino); files != refs || refs != 3 {
		t.Fatalf("%d chunk files, %d refs, want 3", files, refs)
	}
}

func TestFilesConcurrentWritesToOneChunk(t *testing.T) {
	ctx := t.Context()
	f, ns, s := newTestFiles(t)
	const ino = meta.Ino(6)
	const writers, piece = 8, testChunkSize / 8
	var wg sync.WaitGroup
	for g := range writers {
		wg.Go(func() {
			// Each writer fills its own piece of chunk 0 and of
			// chunk 2, a few bytes at a time.
			for _, base := range []int64{0, 2 * testChunkSize} {
				for i := 0; i < piece; i += piece / 4 {
					p := bytes.Repeat([]byte{byte(g + 1)}, piece/4)
					if _, err := f.WriteAt(ctx, ino, p, base+int64(g*piece+i)); err != nil {
						t.Error(err)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	got := readAll(t, f, ino, ns.Size(ino))
	for g := range writers {
		for _, base := range []int{0, 2 * testChunkSize} {
			part := got[base+g*piece : base+(g+1)*piece]
			if !bytes.Equal(part, bytes.Repeat([]byte{byte(g + 1)}, piece)) {
				t.Errorf("writer %d's bytes at %d lost", g, base)
			}
		}
	}
	if files := countChunkFiles(t, s.Dir()); files != 2 {
		t.Errorf("%d chunk files, want 2 (replaced chunks deleted)", files)
	}
}

func TestFilesConcurrentReadDuringWrites(t *testing.T) {
	ctx := t.Context()
	f, ns, _ := newTestFiles(t)
	const ino = meta.Ino(8)
	if _, err := f.WriteAt(ctx, ino, make([]byte, testChunkSize), 0); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := range 50 {
			if _, err := f.WriteAt(ctx, ino, bytes.Repeat([]byte{byte(i)}, 10), 100); err != nil {
				t.Error(err)
				return
			}
		}
	})
	wg.Go(func() {
		p := make([]byte, 10)
		for range 200 {
			if _, err := f.ReadAt(ctx, ino, ns.Size(ino), p, 100); err != nil {
				t.Errorf("ReadAt during writes: %v", err)
				return
			}
			if bytes.Count(p, p[:1]) != len(p) {
				t.Errorf("torn read %v", p)
				return
			}
		}
	})
	wg.Wait()
}

func TestFilesReadCorruptChunk(t *testing.T) {
	ctx := t.Context()
	f, ns, s := newTestFiles(t)
	const ino = meta.Ino(9)
	if _, err := f.WriteAt(ctx, ino, []byte("precious"), 0); err != nil {
		t.Fatal(err)
	}
	refs, _ := ns.Chunks(ctx, ino, 0, 0)
	path := s.Path(refs[0].ID)
	b := readFile(t, path)
	b[dataOffset(8)] ^= 1 // first data byte
	writeFile(t, path, b)
	p := make([]byte, 8)
	if n, err := f.ReadAt(ctx, ino, 8, p, 0); !errors.Is(err, chunk.ErrCorrupt) || n != 0 {
		t.Fatalf("ReadAt corrupt chunk = %d, %v; want 0, ErrCorrupt", n, err)
	}
	// A partial write over a corrupt chunk fails rather than spreading it.
	if _, err := f.WriteAt(ctx, ino, []byte("x"), 3); !errors.Is(err, chunk.ErrCorrupt) {
		t.Fatalf("WriteAt over corrupt chunk: %v", err)
	}
}

func TestFilesEdgeCases(t *testing.T) {
	ctx := t.Context()
	f, ns, _ := newTestFiles(t)
	const ino = meta.Ino(10)
	if _, err := f.WriteAt(ctx, ino, []byte("x"), -1); !errors.Is(err, meta.ErrInvalid) {
		t.Errorf("negative write offset: %v", err)
	}
	if _, err := f.ReadAt(ctx, ino, 0, make([]byte, 1), -1); !errors.Is(err, meta.ErrInvalid) {
		t.Errorf("negative read offset: %v", err)
	}
	if _, err := f.WriteAt(ctx, ino, make([]byte, 2), 1<<63-1); !errors.Is(err, meta.ErrInvalid) {
		t.Errorf("write past max size: %v", err)
	}
	attr, err := f.WriteAt(ctx, ino, nil, 1000)
	if err != nil || attr.Size != 0 {
		t.Errorf("zero-length write: size %d, %v", attr.Size, err)
	}
	if n, err := f.ReadAt(ctx, ino, 0, make([]byte, 4), 0); n != 0 || err != io.EOF {
		t.Errorf("read of empty file = %d, %v", n, err)
	}
	if n, err := f.ReadAt(ctx, ino, 0, nil, 0); n != 0 || err != nil {
		t.Errorf("zero-length read = %d, %v", n, err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := f.WriteAt(cctx, ino, []byte("x"), 0); err == nil {
		t.Error("write with cancelled context succeeded")
	}
	if ns.Size(ino) != 0 {
		t.Errorf("size %d after failed writes", ns.Size(ino))
	}
}

var _ Namespace = (*chunkertest.Namespace)(nil)

func BenchmarkWriteAt1MiB(b *testing.B) {
	s, err := OpenLocal(b.TempDir(), testLogger(b))
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	f := NewFiles(chunkertest.NewNamespace(), s, DefaultChunkSize, testLogger(b))
	p := make([]byte, DefaultChunkSize)
	b.SetBytes(int64(len(p)))
	for i := 0; b.Loop(); i++ {
		if _, err := f.WriteAt(b.Context(), 1, p, int64(i%64)*DefaultChunkSize); err != nil {
			b.Fatal(err)
		}
	}
}

// TestFilesWritersOnTwoNodes runs writers through two Files (two nodes:
// their per-inode locks do not see each other) over one namespace and
// store, each filling its own piece of the same chunks. The namespace
// refuses commits merged from a stale chunk, so no acknowledged piece is
// lost.
func TestFilesWritersOnTwoNodes(t *testing.T) {
	ctx := t.Context()
	f1, ns, s := newTestFiles(t)
	f2 := NewFiles(ns, s, testChunkSize, testLogger(t))
	const ino = meta.Ino(11)
	const writers, piece = 4, testChunkSize / 4
	var wg sync.WaitGroup
	for g := range writers {
		f := f1
		if g%2 == 1 {
			f = f2
		}
		wg.Go(func() {
			for _, base := range []int64{0, testChunkSize} {
				for i := 0; i < piece; i += piece / 4 {
					p := bytes.Repeat([]byte{byte(g + 1)}, piece/4)
					if _, err := f.WriteAt(ctx, ino, p, base+int64(g*piece+i)); err != nil {
						t.Error(err)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	got := readAll(t, f1, ino, ns.Size(ino))
	for g := range writers {
		for _, base := range []int{0, testChunkSize} {
			if part := got[base+g*piece : base+(g+1)*piece]; !bytes.Equal(part, bytes.Repeat([]byte{byte(g + 1)}, piece)) {
				t.Errorf("writer %d's acknowledged bytes at %d were lost", g, base)
			}
		}
	}
	checkRefs(t, ns, s, ino)
}

// replicaNamespace answers chunk map reads with the map as it was (a
// metadata replica that has not applied the latest write) unless the
// caller asks for current reads.
type replicaNamespace struct {
	*chunkertest.Namespace
	stale []chunk.Ref
}

func (n *replicaNamespace) Chunks(ctx context.Context, ino meta.Ino, first, last uint64) ([]chunk.Ref, error) {
	if meta.CurrentReads(ctx) {
		return n.Namespace.Chunks(ctx, ino, first, last)
	}
	return n.stale, nil
}

// A read whose chunk map came from a replica that had not seen the write
// replacing (and deleting) the chunk is read again with a current map,
// and returns the written bytes.
func TestFilesReadAfterReplicaLag(t *testing.T) {
	ctx := t.Context()
	f, ns, s := newTestFiles(t)
	const ino = meta.Ino(12)
	if _, err := f.WriteAt(ctx, ino, bytes.Repeat([]byte{1}, 100), 0); err != nil {
		t.Fatal(err)
	}
	stale := ns.Refs(ino)
	if _, err := f.WriteAt(ctx, ino, bytes.Repeat([]byte{2}, 100), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctx, stale[0].ID); !errors.Is(err, chunk.ErrNotFound) {
		t.Fatalf("the replaced chunk is still there (%v): the test would test nothing", err)
	}
	lagging := NewFiles(&replicaNamespace{Namespace: ns, stale: stale}, s, testChunkSize, testLogger(t))
	if got := readAll(t, lagging, ino, ns.Size(ino)); !bytes.Equal(got, bytes.Repeat([]byte{2}, 100)) {
		t.Errorf("read %v..., want the second write's bytes", got[:4])
	}
}
