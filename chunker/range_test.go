package chunker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"strings"
	"testing"

	"github.com/wormhole-fs/wormhole/chunker/chunkertest"

	"github.com/rs/zerolog"

	"github.com/wormhole-fs/wormhole/chunker/chunk"
	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
)

// getRange returns bytes [off, off+n) of chunk id of s, clamped to the
// chunk's length, in a new slice, read and verified as ReadRange reads
// them (through readBlocks, the reader of unaligned ranges), for tests
// that ask for ranges larger than a buffer they would allocate; nil with
// an error.
func getRange(s *LocalStore, ctx context.Context, id chunk.ID, off, n int64) ([]byte, error) {
	if off < 0 || n < 0 {
		return nil, fmt.Errorf("invalid range of %d bytes at %d", n, off)
	}
	var data []byte
	err := s.readCached(ctx, id, off, n, func(h *header, f io.ReaderAt) (err error) {
		data, err = h.readBlocks(f, off, n)
		return err
	}, func(f io.ReaderAt, size int64) (err error) {
		data, err = readRange(f, size, id, off, n)
		return err
	})
	if err != nil {
		return nil, err
	}
	return data, nil
}

// checkRange checks that getRange(off, n) of chunk id returns the clamped
// range of data, and that ReadRange into an n-byte buffer (when n is not
// absurdly large) reads the same bytes and leaves the rest of the buffer
// alone.
func checkRange(t *testing.T, s *LocalStore, id chunk.ID, data []byte, off, n int64) {
	t.Helper()
	got, err := getRange(s, t.Context(), id, off, n)
	if err != nil {
		t.Fatalf("getRange(%d, %d) of %d bytes: %v", off, n, len(data), err)
	}
	lo, hi := clampRange(off, n, int64(len(data)))
	if !bytes.Equal(got, data[lo:hi]) {
		t.Fatalf("getRange(%d, %d) of %d bytes: got %d bytes, want %d (data differs)", off, n, len(data), len(got), hi-lo)
	}
	if n > 1<<24 {
		return
	}
	p := bytes.Repeat([]byte{0xee}, int(n))
	k, err := s.ReadRange(t.Context(), id, p, off)
	if err != nil {
		t.Fatalf("ReadRange(%d bytes at %d) of %d bytes: %v", n, off, len(data), err)
	}
	if !bytes.Equal(p[:k], data[lo:hi]) {
		t.Fatalf("ReadRange(%d bytes at %d) of %d bytes: got %d bytes, want %d (data differs)", n, off, len(data), k, hi-lo)
	}
	if rest := p[k:]; len(bytes.Trim(rest, "\xee")) != 0 {
		t.Fatalf("ReadRange(%d bytes at %d) of %d bytes wrote past the %d bytes it read", n, off, len(data), k)
	}
	v, release, err := s.ViewRange(t.Context(), id, off, int(n))
	if errors.Is(err, chunk.ErrNoView) && v == nil && release == nil {
		return // a version 1 chunk (TestLocalReadsVersion1 checks it is refused)
	}
	if err != nil {
		t.Fatalf("ViewRange(%d bytes at %d) of %d bytes: %v", n, off, len(data), err)
	}
	if !bytes.Equal(v, data[lo:hi]) {
		t.Fatalf("ViewRange(%d bytes at %d) of %d bytes: got %d bytes, want %d (data differs)", n, off, len(data), len(v), hi-lo)
	}
	release()
}

func TestLocalRangeRoundTrip(t *testing.T) {
	s := openTestStore(t)
	rng := rand.New(rand.NewPCG(7, 8))
	for _, size := range []int{0, 1, 4096, BlockSize - 1, BlockSize, BlockSize + 1, 3*BlockSize + 123, 1 << 20} {
		id := chunk.NewID()
		data := pattern(size, byte(size))
		if _, err := s.Put(t.Context(), id, data); err != nil {
			t.Fatal(err)
		}
		n := int64(size)
		// Edges: empty ranges, whole chunk, block boundaries, the last
		// (short) block, ranges past the end.
		edges := [][2]int64{
			{0, 0}, {0, 1}, {0, n}, {0, n + 1}, {0, 1 << 40}, {n, 0}, {n, 5}, {n + 10, 5},
			{n - 1, 1}, {n - 1, 100}, {BlockSize - 1, 1}, {BlockSize - 1, 2}, {BlockSize, 1},
			{BlockSize, BlockSize}, {BlockSize - 10, BlockSize + 20}, {n / 2, 0},
			{(n - 1) / BlockSize * BlockSize, BlockSize}, {1, n - 2},
		}
		for _, e := range edges {
			checkRange(t, s, id, data, max(e[0], 0), max(e[1], 0))
		}
		for range 200 {
			off := rng.Int64N(n + 2)
			k := rng.Int64N(min(n+2, 3*BlockSize))
			checkRange(t, s, id, data, off, k)
		}
	}
}

func TestLocalReadRangeErrors(t *testing.T) {
	ctx := t.Context()
	s := openTestStore(t)
	p := make([]byte, 10)
	if _, err := s.ReadRange(ctx, chunk.NewID(), p, 0); !errors.Is(err, chunk.ErrNotFound) {
		t.Errorf("ReadRange of a missing chunk: %v, want ErrNotFound", err)
	}
	id := chunk.NewID()
	if _, err := s.Put(ctx, id, []byte("data")); err != nil {
		t.Fatal(err)
	}
	if k, err := s.ReadRange(ctx, id, p, -1); err == nil || errors.Is(err, chunk.ErrCorrupt) || k != 0 {
		t.Errorf("ReadRange at -1 = %d, %v; want a plain error", k, err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := s.ReadRange(cctx, id, p, 0); !errors.Is(err, context.Canceled) {
		t.Errorf("ReadRange with a cancelled context: %v", err)
	}
}

// corruptStore puts data as a new chunk in a store logging to logs, applies
// corrupt to its file and returns the store and chunk ID.
func corruptStore(t *testing.T, logs *logBuffer, data []byte, corrupt func(b []byte) []byte) (*LocalStore, chunk.ID) {
	t.Helper()
	s, err := OpenLocal(t.TempDir(), zerolog.New(logs))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	id := chunk.NewID()
	if _, err := s.Put(t.Context(), id, data); err != nil {
		t.Fatal(err)
	}
	writeFile(t, s.Path(id), corrupt(readFile(t, s.Path(id))))
	// Damaged while the store does not have it open (as after a restart):
	// a chunk kept open since its Put answers range reads from the header
	// it wrote (TestPutKeepsChunkOpen).
	s.cache.drop(id)
	return s, id
}

// wantCorrupt checks that err wraps ErrCorrupt, names the chunk, its path
// and the words in also, and that no bytes came with it.
func wantCorrupt(t *testing.T, s *LocalStore, id chunk.ID, got []byte, err error, also ...string) {
	t.Helper()
	if !errors.Is(err, chunk.ErrCorrupt) || got != nil {
		t.Fatalf("got %d bytes, %v; want no bytes and ErrCorrupt", len(got), err)
	}
	for _, want := range append([]string{id.String(), s.Path(id)}, also...) {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
}

func TestLocalRangeCorruptBlock(t *testing.T) {
	ctx := t.Context()
	data := pattern(4*BlockSize+500, 9) // blocks 0..3 and a short block 4
	for _, bad := range []int64{0, 2, 4} {
		t.Run(fmt.Sprintf("block %d", bad), func(t *testing.T) {
			var logs logBuffer
			s, id := corruptStore(t, &logs, data, func(b []byte) []byte {
				b[dataOffset(len(data))+int(bad)*BlockSize+123] ^= 0x08
				return b
			})
			badName := fmt.Sprintf("block %d", bad)
			// Ranges touching the bad block fail and name it.
			for _, r := range [][2]int64{
				{bad * BlockSize, 1},
				{bad*BlockSize + 123, 1},
				{max(bad*BlockSize-10, 0), 20},
				{0, int64(len(data))},
			} {
				got, err := getRange(s, ctx, id, r[0], r[1])
				wantCorrupt(t, s, id, got, err, badName)
				k, err := s.ReadRange(ctx, id, make([]byte, r[1]), r[0])
				wantCorrupt(t, s, id, nil, err, badName)
				if k != 0 {
					t.Fatalf("ReadRange(%d bytes at %d) of a corrupt block read %d bytes", r[1], r[0], k)
				}
				v, _, err := s.ViewRange(ctx, id, r[0], int(r[1]))
				wantCorrupt(t, s, id, v, err, badName)
			}
			// A read of whole blocks (read in place, not through a
			// buffer of its own) fails as well.
			k, err := s.ReadRange(ctx, id, make([]byte, 2*BlockSize), bad/2*2*BlockSize)
			wantCorrupt(t, s, id, nil, err, badName)
			if k != 0 {
				t.Fatalf("aligned ReadRange over corrupt block %d read %d bytes", bad, k)
			}
			// Ranges in other blocks still read.
			for _, other := range []int64{0, 1, 3, 4} {
				if other != bad {
					checkRange(t, s, id, data, other*BlockSize+7, 4096)
				}
			}
			// Get checks every block.
			got, err := s.Get(ctx, id)
			wantCorrupt(t, s, id, got, err)
			if l := logs.String(); !strings.Contains(l, `"level":"error"`) || !strings.Contains(l, id.String()) {
				t.Errorf("corruption not logged at error level: %s", l)
			}
		})
	}
}

func TestLocalRangeCorruptHeader(t *testing.T) {
	data := pattern(3*BlockSize+10, 1)
	dataOff := dataOffset(len(data))
	flip := func(i int) func([]byte) []byte {
		return func(b []byte) []byte { b[i] ^= 0x01; return b }
	}
	tests := []struct {
		name    string
		corrupt func([]byte) []byte
	}{
		{"block-sum table, entry of another block", flip(headerSizeV2 + 5)},
		{"block-sum table, entry of the block read", flip(headerSizeV2 + 2*blockSumSizeV3 + 15)},
		{"header sum", flip(70)},
		{"whole-chunk sum", flip(40)},
		{"length", flip(9)},
		{"chunk ID", flip(20)},
		{"block size", flip(5)},
		{"version", flip(4)},
		{"magic", flip(0)},
		{"truncated by one byte", func(b []byte) []byte { return b[:len(b)-1] }},
		{"truncated into the data of an earlier block", func(b []byte) []byte { return b[:dataOff+BlockSize] }},
		{"truncated into the table", func(b []byte) []byte { return b[:headerSizeV2+40] }},
		{"truncated into the header", func(b []byte) []byte { return b[:headerSizeV2-1] }},
		{"empty", func(b []byte) []byte { return nil }},
		{"extra byte", func(b []byte) []byte { return append(b, 0) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var logs logBuffer
			s, id := corruptStore(t, &logs, data, tt.corrupt)
			for _, r := range [][2]int64{{0, 1}, {2*BlockSize + 5, 100}, {int64(len(data)), 0}} {
				got, err := getRange(s, t.Context(), id, r[0], r[1])
				wantCorrupt(t, s, id, got, err)
			}
			got, err := s.Get(t.Context(), id)
			wantCorrupt(t, s, id, got, err)
		})
	}
}

func TestLocalRangeDirectory(t *testing.T) {
	s := openTestStore(t)
	id := chunk.NewID()
	if err := os.Mkdir(s.Path(id), 0o755); err != nil {
		t.Fatal(err)
	}
	got, err := getRange(s, t.Context(), id, 0, 1)
	wantCorrupt(t, s, id, got, err)
}

// TestLocalReadsVersion1 checks that chunk files written in format version
// 1, before block sums, still read through Get and the range readers, and that their
// corruption is still caught.
func TestLocalReadsVersion1(t *testing.T) {
	ctx := t.Context()
	s := openTestStore(t)
	for _, size := range []int{0, 15, BlockSize + 3, 1 << 20} {
		id := chunk.NewID()
		data := pattern(size, 2)
		writeFile(t, s.Path(id), encodeChunkV1(id, data))
		got, err := s.Get(ctx, id)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("Get of a version 1 chunk of %d bytes: %d bytes, %v", size, len(got), err)
		}
		n := int64(size)
		for _, r := range [][2]int64{{0, 0}, {0, n}, {n / 3, 10}, {BlockSize - 1, 2}, {n - 1, 5}, {n + 1, 1}} {
			checkRange(t, s, id, data, max(r[0], 0), r[1])
		}
		// One checksum over all the data: nothing to verify a part
		// against in place.
		if v, _, err := s.ViewRange(ctx, id, 0, size); !errors.Is(err, chunk.ErrNoView) || v != nil {
			t.Fatalf("ViewRange of a version 1 chunk: %d bytes, %v; want chunk.ErrNoView", len(v), err)
		}
		if size == 0 {
			continue
		}
		b := readFile(t, s.Path(id))
		b[headerSizeV1+size-1] ^= 0x80
		writeFile(t, s.Path(id), b)
		got, err = getRange(s, ctx, id, 0, 1) // one checksum covers all the data
		wantCorrupt(t, s, id, got, err)
		got, err = s.Get(ctx, id)
		wantCorrupt(t, s, id, got, err)
	}
}

// countingBlobs counts the Get and ReadRange calls that reach a LocalStore
// and the bytes they return.
type countingBlobs struct {
	*LocalStore
	gets, ranges, bytes int
}

func (c *countingBlobs) Get(ctx context.Context, id chunk.ID) ([]byte, error) {
	c.gets++
	b, err := c.LocalStore.Get(ctx, id)
	c.bytes += len(b)
	return b, err
}

func (c *countingBlobs) ReadRange(ctx context.Context, id chunk.ID, p []byte, off int64) (int, error) {
	c.ranges++
	k, err := c.LocalStore.ReadRange(ctx, id, p, off)
	c.bytes += k
	return k, err
}

// TestFilesPartialReadUsesRange checks that a read of part of a chunk
// fetches only that part, and that a corrupt block fails only the reads
// that touch it.
func TestFilesPartialReadUsesRange(t *testing.T) {
	ctx := t.Context()
	s := openTestStore(t)
	blobs := &countingBlobs{LocalStore: s}
	ns := chunkertest.NewNamespace()
	f := NewFiles(ns, blobs, DefaultChunkSize, testLogger(t))
	const ino = meta.Ino(3)
	const size = 2*DefaultChunkSize + 5000
	data := pattern(size, 6)
	if _, err := f.WriteAt(ctx, ino, data, 0); err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 4096)
	for _, off := range []int64{0, 12345, DefaultChunkSize - 2000, 2*DefaultChunkSize + 1000} {
		blobs.gets, blobs.ranges, blobs.bytes = 0, 0, 0
		n, err := f.ReadAt(ctx, ino, size, p, off)
		want := min(int64(len(p)), size-off)
		if int64(n) != want || !bytes.Equal(p[:n], data[off:off+want]) {
			t.Fatalf("ReadAt(%d) = %d, %v; want %d bytes of the file", off, n, err, want)
		}
		if blobs.gets != 0 || blobs.bytes != n {
			t.Errorf("ReadAt(%d) of %d bytes: %d Gets, %d ReadRanges, %d bytes fetched; want only range reads of the bytes asked",
				off, n, blobs.gets, blobs.ranges, blobs.bytes)
		}
	}
	// Damage block 5 of chunk 0: reads elsewhere in the chunk still work.
	refs, _ := ns.Chunks(ctx, ino, 0, 0)
	path := s.Path(refs[0].ID)
	b := readFile(t, path)
	b[dataOffset(DefaultChunkSize)+5*BlockSize+100] ^= 0x02
	writeFile(t, path, b)
	if n, err := f.ReadAt(ctx, ino, size, p, 0); err != nil || !bytes.Equal(p[:n], data[:len(p)]) {
		t.Errorf("ReadAt of a good block of a damaged chunk: %d, %v", n, err)
	}
	if n, err := f.ReadAt(ctx, ino, size, p, 5*BlockSize+50); !errors.Is(err, chunk.ErrCorrupt) || n != 0 {
		t.Errorf("ReadAt of the damaged block = %d, %v; want 0, ErrCorrupt", n, err)
	}
	whole := make([]byte, DefaultChunkSize)
	if n, err := f.ReadAt(ctx, ino, size, whole, 0); !errors.Is(err, chunk.ErrCorrupt) || n != 0 {
		t.Errorf("ReadAt of the damaged chunk = %d, %v; want 0, ErrCorrupt", n, err)
	}
}

// TestFilesRangeShorterThanMap checks that a chunk shorter than its chunk
// map entry fails a partial read with ErrCorrupt rather than returning
// zeros for the missing bytes.
func TestFilesRangeShorterThanMap(t *testing.T) {
	ctx := t.Context()
	s := openTestStore(t)
	ns := chunkertest.NewNamespace()
	f := NewFiles(ns, s, DefaultChunkSize, testLogger(t))
	const ino = meta.Ino(4)
	if _, err := f.WriteAt(ctx, ino, pattern(10000, 1), 0); err != nil {
		t.Fatal(err)
	}
	refs, _ := ns.Chunks(ctx, ino, 0, 0)
	short := chunk.NewID()
	if _, err := s.Put(ctx, short, pattern(5000, 1)); err != nil {
		t.Fatal(err)
	}
	r := refs[0]
	r.ID = short
	ns.SetRef(ino, r)
	p := make([]byte, 100)
	if n, err := f.ReadAt(ctx, ino, 10000, p, 4950); !errors.Is(err, chunk.ErrCorrupt) || n != 0 {
		t.Errorf("ReadAt past a short chunk's end = %d, %v; want 0, ErrCorrupt", n, err)
	}
}

// TestLocalReadsVersion2 checks that chunk files written before version 3
// (BLAKE3 block sums) are still served by every read path, verified, and
// that damage in one of their blocks is still caught.
func TestLocalReadsVersion2(t *testing.T) {
	ctx := t.Context()
	s := openTestStore(t)
	id := chunk.NewID()
	data := pattern(3*BlockSize+100, 6)
	file := encodeChunkV2(id, data)
	writeFile(t, s.Path(id), file)
	if got, err := s.Get(ctx, id); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("Get of a version 2 chunk = %d bytes, %v", len(got), err)
	}
	if n, err := s.Verify(ctx, id); err != nil || n != int64(len(file)) {
		t.Fatalf("Verify of a version 2 chunk = %d, %v", n, err)
	}
	n := int64(len(data))
	for _, r := range [][2]int64{{0, n}, {BlockSize, BlockSize}, {BlockSize - 3, 10}, {n - 5, 100}, {3 * BlockSize, 100}} {
		checkRange(t, s, id, data, r[0], r[1])
	}

	bad := bytes.Clone(file)
	bad[len(file)-len(data)+2*BlockSize+9] ^= 0x20 // a byte of block 2
	writeFile(t, s.Path(id), bad)
	s.cache.drop(id) // as a Put or a repair of the file would
	k, err := s.ReadRange(ctx, id, make([]byte, BlockSize), 2*BlockSize)
	wantCorrupt(t, s, id, nil, err, "block 2")
	if k != 0 {
		t.Fatalf("ReadRange of a damaged version 2 block read %d bytes", k)
	}
	checkRange(t, s, id, data, 0, 2*BlockSize) // blocks 0 and 1 still read
}
