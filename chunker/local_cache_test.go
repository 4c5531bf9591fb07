package chunker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"

	"github.com/wormhole-fs/wormhole/chunker/chunk"
	"github.com/wormhole-fs/wormhole/chunker/chunkertest"
	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
)

// flipOnDisk flips one bit of the file at path in place (same inode, so a
// descriptor the store keeps open sees it).
func flipOnDisk(t *testing.T, path string, at int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	b := []byte{0}
	if _, err := f.ReadAt(b, at); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x10
	if _, err := f.WriteAt(b, at); err != nil {
		t.Fatal(err)
	}
}

// TestOpenCacheFlipAfterCached checks that a bit flipped on disk after the
// chunk file is in the open-file cache still fails the reads of its block
// with ErrCorrupt and no bytes, while the other blocks read.
func TestOpenCacheFlipAfterCached(t *testing.T) {
	ctx := t.Context()
	s := openTestStore(t)
	data := pattern(3*BlockSize+77, 4)
	id := chunk.NewID()
	if _, err := s.Put(ctx, id, data); err != nil {
		t.Fatal(err)
	}
	checkRange(t, s, id, data, 10, 4096) // opens and caches the file
	checkRange(t, s, id, data, BlockSize+10, 4096)
	hits, _, files := s.OpenCacheStats()
	if files != 1 || hits == 0 {
		t.Fatalf("after two reads: %d hits, %d files open; want the file cached and hit", hits, files)
	}
	flipOnDisk(t, s.Path(id), int64(dataOffset(len(data))+BlockSize+500))
	for _, r := range [][2]int64{{BlockSize + 500, 1}, {BlockSize, 4096}, {0, int64(len(data))}} {
		got, err := getRange(s, ctx, id, r[0], r[1])
		wantCorrupt(t, s, id, got, err, "block 1")
	}
	// Small reads in a block next to the bad one, through the reused
	// buffer, are unaffected by it.
	checkRange(t, s, id, data, 5, 4096)
	checkRange(t, s, id, data, 2*BlockSize+3, 100)
	// The flip is found again after the file was re-cached.
	got, err := getRange(s, ctx, id, BlockSize+500, 10)
	wantCorrupt(t, s, id, got, err, "block 1")
}

// TestPutKeepsChunkOpen checks that a chunk just stored is read back from
// the open-file cache (no open, no header read), and still verified.
func TestPutKeepsChunkOpen(t *testing.T) {
	ctx := t.Context()
	s := openTestStore(t)
	data := pattern(2*BlockSize+5, 6)
	id := chunk.NewID()
	if _, err := s.Put(ctx, id, data); err != nil {
		t.Fatal(err)
	}
	if _, _, files := s.OpenCacheStats(); files != 1 {
		t.Fatalf("%d files open after a Put, want 1", files)
	}
	checkRange(t, s, id, data, BlockSize-3, 10)
	if hits, misses, _ := s.OpenCacheStats(); hits == 0 || misses != 0 {
		t.Errorf("reads after Put: %d hits, %d misses; want hits only", hits, misses)
	}
	flipOnDisk(t, s.Path(id), int64(dataOffset(len(data))+2*BlockSize+1))
	got, err := getRange(s, ctx, id, 2*BlockSize, 5)
	wantCorrupt(t, s, id, got, err, "block 2")

	// With the cache off, a Put keeps nothing open.
	s.SetOpenCache(0, 0)
	if _, err := s.Put(ctx, chunk.NewID(), data); err != nil {
		t.Fatal(err)
	}
	if _, _, files := s.OpenCacheStats(); files != 0 {
		t.Errorf("%d files open after a Put with the cache off, want 0", files)
	}
}

// TestOpenCacheInvalidation checks that Delete, Quarantine and a Put over a
// cached chunk take its file out of the cache.
func TestOpenCacheInvalidation(t *testing.T) {
	ctx := t.Context()
	s := openTestStore(t)
	data := pattern(2*BlockSize, 8)
	id := chunk.NewID()
	if _, err := s.Put(ctx, id, data); err != nil {
		t.Fatal(err)
	}
	checkRange(t, s, id, data, 0, 100)

	// A Put (a repair) replaces a damaged cached copy: reads see the new
	// file, not the descriptor of the old one.
	flipOnDisk(t, s.Path(id), int64(dataOffset(len(data))+10))
	if _, err := s.Put(ctx, id, data); err != nil {
		t.Fatal(err)
	}
	checkRange(t, s, id, data, 0, 100)

	if err := s.Delete(ctx, id); err != nil {
		t.Fatal(err)
	}
	if _, err := getRange(s, ctx, id, 0, 10); !errors.Is(err, chunk.ErrNotFound) {
		t.Fatalf("getRange after Delete of a cached chunk: %v, want ErrNotFound", err)
	}
	if _, err := s.Put(ctx, id, data); err != nil {
		t.Fatal(err)
	}
	checkRange(t, s, id, data, 0, 100)
	if err := s.Quarantine(ctx, id); err != nil {
		t.Fatal(err)
	}
	if _, err := getRange(s, ctx, id, 0, 10); !errors.Is(err, chunk.ErrNotFound) {
		t.Fatalf("getRange after Quarantine of a cached chunk: %v, want ErrNotFound", err)
	}
	if _, _, files := s.OpenCacheStats(); files != 0 {
		t.Errorf("%d files open after the chunk went away, want 0", files)
	}
}

// TestOpenCacheBounds checks that the cache keeps at most its number of
// files and its bytes of headers, that reads beyond them still work, and
// that a limit of 0 turns it off.
func TestOpenCacheBounds(t *testing.T) {
	ctx := t.Context()
	s := openTestStore(t)
	var ids []chunk.ID
	var datas [][]byte
	for i := range 6 {
		d := pattern(BlockSize+i, byte(i))
		id := chunk.NewID()
		if _, err := s.Put(ctx, id, d); err != nil {
			t.Fatal(err)
		}
		ids, datas = append(ids, id), append(datas, d)
	}
	readAll := func() {
		for round := range 2 {
			for i, id := range ids {
				checkRange(t, s, id, datas[i], int64(round), 1000)
			}
		}
	}
	for _, tc := range []struct {
		files     int
		bytes     int64
		wantFiles int
	}{
		{files: 3, bytes: 1 << 20, wantFiles: 3},
		// Each entry costs its header and table plus openEntryOverhead.
		{files: 100, bytes: 2 * (openEntryOverhead + 2*blockSumSizeV3), wantFiles: 2},
		{files: 0, bytes: 1 << 20, wantFiles: 0},
		{files: 100, bytes: 0, wantFiles: 0},
	} {
		t.Run(fmt.Sprintf("%d files %d bytes", tc.files, tc.bytes), func(t *testing.T) {
			s.SetOpenCache(tc.files, tc.bytes)
			readAll()
			if _, _, files := s.OpenCacheStats(); files != tc.wantFiles {
				t.Errorf("%d files open, want %d", files, tc.wantFiles)
			}
		})
	}
}

// TestOpenCacheConcurrentDelete races range reads of chunks against their
// deletion and re-creation: every read returns the right bytes or
// ErrNotFound, and once a chunk is deleted for good no read finds it.
func TestOpenCacheConcurrentDelete(t *testing.T) {
	ctx := t.Context()
	s := openTestStore(t)
	s.SetOpenCache(2, 1<<20) // small, so evictions race too
	const n = 4
	ids := make([]chunk.ID, n)
	datas := make([][]byte, n)
	for i := range ids {
		ids[i], datas[i] = chunk.NewID(), pattern(BlockSize+100*i, byte(i))
		if _, err := s.Put(ctx, ids[i], datas[i]); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for r := range 4 {
		wg.Go(func() {
			for k := 0; ; k++ {
				select {
				case <-stop:
					return
				default:
				}
				i := (k + r) % n
				got, err := getRange(s, ctx, ids[i], 50, 4000)
				if err != nil && !errors.Is(err, chunk.ErrNotFound) {
					t.Errorf("getRange: %v", err)
					return
				}
				if err == nil && !bytes.Equal(got, datas[i][50:4050]) {
					t.Errorf("getRange of chunk %d: wrong bytes", i)
					return
				}
			}
		})
	}
	for k := range 200 {
		i := k % n
		if err := s.Delete(ctx, ids[i]); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Put(ctx, ids[i], datas[i]); err != nil {
			t.Fatal(err)
		}
	}
	for i := range ids {
		if err := s.Delete(ctx, ids[i]); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	for i := range ids {
		if _, err := getRange(s, ctx, ids[i], 0, 10); !errors.Is(err, chunk.ErrNotFound) {
			t.Errorf("chunk %d after its deletion: %v, want ErrNotFound", i, err)
		}
	}
	if _, _, files := s.OpenCacheStats(); files != 0 {
		t.Errorf("%d files open after every chunk was deleted, want 0", files)
	}
}

// TestFilesRewriteSkipsOldChunk checks that a write covering all of a
// chunk's old data from its start does not read the old chunk, and that
// one covering only part of it still merges.
func TestFilesRewriteSkipsOldChunk(t *testing.T) {
	ctx := t.Context()
	s := openTestStore(t)
	blobs := &countingBlobs{LocalStore: s}
	ns := chunkertest.NewNamespace()
	f := NewFiles(ns, blobs, DefaultChunkSize, testLogger(t))
	const ino = meta.Ino(5)
	if _, err := f.WriteAt(ctx, ino, pattern(4096, 1), 0); err != nil {
		t.Fatal(err)
	}
	want := pattern(5000, 2)
	blobs.gets, blobs.ranges = 0, 0
	if _, err := f.WriteAt(ctx, ino, want, 0); err != nil {
		t.Fatal(err)
	}
	if blobs.gets+blobs.ranges != 0 {
		t.Errorf("rewrite covering the old data: %d Gets, %d ReadRanges; want none", blobs.gets, blobs.ranges)
	}
	if _, err := f.WriteAt(ctx, ino, []byte("xyz"), 100); err != nil {
		t.Fatal(err)
	}
	copy(want[100:], "xyz")
	p := make([]byte, len(want))
	if n, err := f.ReadAt(ctx, ino, uint64(len(want)), p, 0); err != nil || !bytes.Equal(p[:n], want) {
		t.Fatalf("ReadAt after the writes: %d, %v; bytes differ", n, err)
	}
}

// countingNS counts the chunk-map reads that reach a Namespace.
type countingNS struct {
	*chunkertest.Namespace
	chunkReads int
}

func (c *countingNS) Chunks(ctx context.Context, ino meta.Ino, first, last uint64) ([]chunk.Ref, error) {
	c.chunkReads++
	return c.Namespace.Chunks(ctx, ino, first, last)
}

// TestFilesWriteSizeHint checks that a size hint spares the chunk-map read
// of a write past the end of the file, and that a stale hint (a chunk
// exists where it said none could) costs a retry, never the old bytes.
func TestFilesWriteSizeHint(t *testing.T) {
	ctx := t.Context()
	s := openTestStore(t)
	ns := &countingNS{Namespace: chunkertest.NewNamespace()}
	f := NewFiles(ns, s, DefaultChunkSize, testLogger(t))
	const ino = meta.Ino(9)

	// A new file: nothing to read.
	want := pattern(4096, 3)
	if _, err := f.WriteAt(chunk.WithSizeHint(ctx, 0), ino, want, 0); err != nil {
		t.Fatal(err)
	}
	if ns.chunkReads != 0 {
		t.Errorf("write to an empty file with a size hint read the chunk map %d times, want 0", ns.chunkReads)
	}

	// A stale hint: the file has 4096 bytes in chunk 0, the hint says 0.
	if _, err := f.WriteAt(chunk.WithSizeHint(ctx, 0), ino, []byte("abc"), 5000); err != nil {
		t.Fatal(err)
	}
	want = append(want, make([]byte, 5003-4096)...)
	copy(want[5000:], "abc")
	p := make([]byte, len(want))
	if n, err := f.ReadAt(ctx, ino, uint64(len(want)), p, 0); err != nil || !bytes.Equal(p[:n], want) {
		t.Fatalf("ReadAt after a write with a stale hint: %d, %v; bytes differ", n, err)
	}

	// Appending into the next chunk with a current hint reads nothing.
	ns.chunkReads = 0
	if _, err := f.WriteAt(chunk.WithSizeHint(ctx, uint64(len(want))), ino, []byte("z"), DefaultChunkSize+10); err != nil {
		t.Fatal(err)
	}
	if ns.chunkReads != 0 {
		t.Errorf("append into a new chunk read the chunk map %d times, want 0", ns.chunkReads)
	}

	// A whole chunk written where a stale hint says the file ends: the
	// commit expected no chunk there and finds one, so the write is redone
	// from the chunk map, and the chunk it replaces is freed.
	before, err := ns.Chunks(ctx, ino, 1, 1)
	if err != nil || len(before) != 1 {
		t.Fatalf("chunk map of chunk 1: %v, %v", before, err)
	}
	whole := pattern(DefaultChunkSize, 7)
	if _, err := f.WriteAt(chunk.WithSizeHint(ctx, 0), ino, whole, DefaultChunkSize); err != nil {
		t.Fatal(err)
	}
	p = make([]byte, DefaultChunkSize)
	if n, err := f.ReadAt(ctx, ino, 2*DefaultChunkSize, p, DefaultChunkSize); err != nil || !bytes.Equal(p[:n], whole) {
		t.Fatalf("ReadAt of a whole chunk written past a stale hint: %d, %v; bytes differ", n, err)
	}
	if _, err := s.Get(ctx, before[0].ID); !errors.Is(err, chunk.ErrNotFound) {
		t.Errorf("the replaced chunk %s: Get says %v, want chunk.ErrNotFound (freed)", before[0].ID, err)
	}
}
