package chunker

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/wormhole-fs/wormhole/chunker/chunk"
	"github.com/wormhole-fs/wormhole/chunker/chunkertest"
	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
)

// TestFilesReadView checks that a read within one stored chunk is lent in
// place with the file's bytes, that every other read is left to ReadAt
// (ok false, nothing read), and that damage is still an error.
func TestFilesReadView(t *testing.T) {
	ctx := t.Context()
	s := openTestStore(t)
	ns := chunkertest.NewNamespace()
	f := NewFiles(ns, s, DefaultChunkSize, testLogger(t))
	f.SetWriteBack(64 << 20)
	const cs = DefaultChunkSize
	const ino = meta.Ino(3)
	const size = 2*cs + 5000
	data := pattern(size, 4)
	if _, err := f.WriteAt(ctx, ino, data, 0); err != nil {
		t.Fatal(err)
	}
	view := func(size uint64, off int64, n int) ([]byte, bool, error) {
		t.Helper()
		b, release, ok, err := f.ReadView(ctx, ino, size, off, n)
		if !ok || err != nil {
			if b != nil || release != nil {
				t.Fatalf("ReadView(%d, %d) = %v, %v with bytes or a release", off, n, ok, err)
			}
			return nil, ok, err
		}
		out := bytes.Clone(b)
		release()
		return out, true, nil
	}
	for _, r := range [][2]int64{{0, cs}, {12345, 64 << 10}, {cs, cs}, {cs + 1, cs - 1}, {2 * cs, cs}, {2*cs + 100, 10}} {
		got, ok, err := view(size, r[0], int(r[1]))
		want := data[r[0]:min(r[0]+r[1], size)]
		if !ok || err != nil || !bytes.Equal(got, want) {
			t.Errorf("ReadView(%d bytes at %d) = %d bytes, %v, %v; want the file's %d bytes", r[1], r[0], len(got), ok, err, len(want))
		}
	}
	for _, c := range []struct {
		what string
		size uint64
		off  int64
		n    int
	}{
		{"across two chunks", size, cs - 100, 200},
		{"past the end of the file", size, size, 10},
		{"bytes past the last chunk's data (a file extended by truncate)", size + 1000, 2 * cs, 6000},
		{"nothing", size, 0, 0},
	} {
		if _, ok, err := view(c.size, c.off, c.n); ok || err != nil {
			t.Errorf("ReadView %s: %v, %v; want not lent", c.what, ok, err)
		}
	}
	// A hole, and an uncommitted write over the range, are not lent.
	const sparse = meta.Ino(4)
	if _, err := f.WriteAt(ctx, sparse, data[:100], 2*cs); err != nil {
		t.Fatal(err)
	}
	if _, _, ok, err := f.ReadView(ctx, sparse, 2*cs+100, 0, 4096); ok || err != nil {
		t.Errorf("ReadView of a hole: %v, %v; want not lent", ok, err)
	}
	if _, stable, err := f.WriteUnstable(ctx, ino, []byte("new"), 10); err != nil || stable {
		t.Fatalf("unstable write: stable %v, %v", stable, err)
	}
	if _, ok, err := view(size, 0, 4096); ok || err != nil {
		t.Errorf("ReadView over an uncommitted write: %v, %v; want not lent", ok, err)
	}
	if got, ok, err := view(size, cs, 4096); !ok || err != nil || !bytes.Equal(got, data[cs:cs+4096]) {
		t.Errorf("ReadView of another chunk while one has an uncommitted write: %v, %v", ok, err)
	}
	// A damaged block is an error, as for ReadAt.
	refs, _ := ns.Chunks(ctx, ino, 1, 1)
	flipOnDisk(t, s.Path(refs[0].ID), int64(dataOffset(cs)+3*BlockSize+7))
	if _, ok, err := view(size, cs+3*BlockSize, 100); ok || !errors.Is(err, chunk.ErrCorrupt) {
		t.Errorf("ReadView of a damaged block: %v, %v; want ErrCorrupt", ok, err)
	}
}

// noViewStore is a LocalStore that lends nothing, like a cluster node
// without a copy of the chunk.
type noViewStore struct{ *LocalStore }

func (noViewStore) ViewRange(context.Context, chunk.ID, int64, int) ([]byte, func(), error) {
	return nil, nil, chunk.ErrNoView
}

// A chunk the store cannot lend is read by ReadView itself, with the chunk
// map it already read, rather than left to ReadAt to look up again.
func TestFilesReadViewReadsWhatIsNotLent(t *testing.T) {
	ctx := t.Context()
	s := noViewStore{openTestStore(t)}
	f := NewFiles(chunkertest.NewNamespace(), s, DefaultChunkSize, testLogger(t))
	const ino = meta.Ino(3)
	data := pattern(DefaultChunkSize+100, 5)
	if _, err := f.WriteAt(ctx, ino, data, 0); err != nil {
		t.Fatal(err)
	}
	got, release, ok, err := f.ReadView(ctx, ino, uint64(len(data)), 1000, 70000)
	if !ok || err != nil || !bytes.Equal(got, data[1000:71000]) {
		t.Fatalf("ReadView of a chunk not lent: %d bytes, %v, %v; want the file's 70000 bytes", len(got), ok, err)
	}
	release()
}
