package chunker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/wormhole-fs/wormhole/chunker/chunk"
	"github.com/wormhole-fs/wormhole/chunker/chunkertest"
	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
)

// copiesBlobs is a Blobs that records the copy count each Put's context
// carries (-1 for none).
type copiesBlobs struct {
	Blobs
	mu   sync.Mutex
	puts []int
}

func (b *copiesBlobs) Put(ctx context.Context, id chunk.ID, data []byte) (chunk.Sum, error) {
	n, ok := chunk.CopiesFrom(ctx)
	if !ok {
		n = -1
	}
	b.mu.Lock()
	b.puts = append(b.puts, n)
	b.mu.Unlock()
	return b.Blobs.Put(ctx, id, data)
}

// take returns the counts recorded since the last call.
func (b *copiesBlobs) take() []int {
	b.mu.Lock()
	defer b.mu.Unlock()
	p := b.puts
	b.puts = nil
	return p
}

func checkPuts(t *testing.T, b *copiesBlobs, wantPuts, copies int) {
	t.Helper()
	got := b.take()
	if len(got) != wantPuts {
		t.Fatalf("%d puts, want %d", len(got), wantPuts)
	}
	for _, n := range got {
		if n != copies {
			t.Fatalf("puts carried copies %v, want %d", got, copies)
		}
	}
}

// TestFilesPutWithInodeCopies checks that writes and truncates store
// chunks with the inode's redundancy, read from the namespace once per call
// unless the caller's context carries it.
func TestFilesPutWithInodeCopies(t *testing.T) {
	ctx := t.Context()
	blobs := &copiesBlobs{Blobs: openTestStore(t)}
	ns := chunkertest.NewNamespace()
	f := NewFiles(ns, blobs, testChunkSize, testLogger(t))
	const ino, plain = meta.Ino(5), meta.Ino(6)
	ns.SetCopies(ino, 3)

	// Two full chunks and a partial third (a merge): one attribute read.
	reads := ns.AttrReads()
	if _, err := f.WriteAt(ctx, ino, make([]byte, 2*testChunkSize+10), 0); err != nil {
		t.Fatal(err)
	}
	checkPuts(t, blobs, 3, 3)
	if _, err := f.WriteAt(ctx, ino, []byte("patch"), testChunkSize-2); err != nil {
		t.Fatal(err)
	}
	checkPuts(t, blobs, 2, 3)
	if got := ns.AttrReads() - reads; got != 2 {
		t.Fatalf("%d attribute reads for two writes, want 2", got)
	}

	// Truncating into a chunk rewrites it with the inode's copies.
	if _, err := f.Truncate(ctx, ino, 2*testChunkSize+10, testChunkSize+5); err != nil {
		t.Fatal(err)
	}
	checkPuts(t, blobs, 1, 3)
	// Truncating on a chunk boundary stores nothing and reads nothing.
	reads = ns.AttrReads()
	if _, err := f.Truncate(ctx, ino, testChunkSize+5, testChunkSize); err != nil {
		t.Fatal(err)
	}
	checkPuts(t, blobs, 0, 0)
	// So does a zero-length write.
	if _, err := f.WriteAt(ctx, ino, nil, 0); err != nil {
		t.Fatal(err)
	}
	if got := ns.AttrReads() - reads; got != 0 {
		t.Fatalf("%d attribute reads for no stored chunk", got)
	}

	// A caller that has the attributes passes the count: no read.
	if _, err := f.WriteAt(chunk.WithCopies(ctx, 1), ino, []byte("x"), 0); err != nil {
		t.Fatal(err)
	}
	checkPuts(t, blobs, 1, 1)
	if _, err := f.Truncate(chunk.WithCopies(ctx, 2), ino, testChunkSize, 3); err != nil {
		t.Fatal(err)
	}
	checkPuts(t, blobs, 1, 2)
	if got := ns.AttrReads() - reads; got != 0 {
		t.Fatalf("%d attribute reads with the count in the context", got)
	}

	// The cluster default: the context says so (0), not nothing.
	if _, err := f.WriteAt(ctx, plain, []byte("default"), 0); err != nil {
		t.Fatal(err)
	}
	checkPuts(t, blobs, 1, 0)
}

// goneNamespace is a namespace whose every inode has been removed.
type goneNamespace struct{ *chunkertest.Namespace }

func (goneNamespace) GetAttr(_ context.Context, ino meta.Ino) (meta.Attr, error) {
	return meta.Attr{}, fmt.Errorf("getattr %d: %w", ino, meta.ErrNotFound)
}

func TestFilesWriteToGoneInode(t *testing.T) {
	blobs := &copiesBlobs{Blobs: openTestStore(t)}
	f := NewFiles(goneNamespace{chunkertest.NewNamespace()}, blobs, testChunkSize, testLogger(t))
	if _, err := f.WriteAt(t.Context(), 7, []byte("x"), 0); !errors.Is(err, meta.ErrStale) {
		t.Fatalf("write to a removed inode = %v, want ErrStale", err)
	}
	checkPuts(t, blobs, 0, 0)
}

// A write that finds the write-back table over its limit commits other
// files to make room; each is stored with its own redundancy, not that of
// the file being written.
func TestWriteBackReliefKeepsEachFilesCopies(t *testing.T) {
	ctx := t.Context()
	blobs := &copiesBlobs{Blobs: openTestStore(t)}
	ns := chunkertest.NewNamespace()
	f := NewFiles(ns, blobs, testChunkSize, testLogger(t))
	f.SetWriteBack(2 * testChunkSize)
	const three, one = meta.Ino(5), meta.Ino(6)
	ns.SetCopies(three, 3)
	ns.SetCopies(one, 1)
	// Three chunks of the 3-copy file fill the table past its limit.
	if _, stable, err := f.WriteUnstable(ctx, three, make([]byte, 2*testChunkSize+1), 0); err != nil || stable {
		t.Fatalf("WriteUnstable: stable %v, %v", stable, err)
	}
	checkPuts(t, blobs, 0, 0)
	// A write to the 1-copy file makes room by committing the other.
	if _, _, err := f.WriteUnstable(ctx, one, []byte("x"), 0); err != nil {
		t.Fatal(err)
	}
	checkPuts(t, blobs, 3, 3)
	if _, ok, err := f.Commit(ctx, one); err != nil || !ok {
		t.Fatalf("Commit of the 1-copy file: %v, %v", ok, err)
	}
	checkPuts(t, blobs, 1, 1)
}
