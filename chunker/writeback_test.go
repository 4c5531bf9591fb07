package chunker

import (
	"bytes"
	"math/rand/v2"
	"runtime"
	"testing"
	"time"

	"github.com/wormhole-fs/wormhole/chunker/chunkertest"
	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
)

// writeBackChunk is the chunk size of writeBackFiles.
const writeBackChunk = 64 << 10

// writeBackFiles returns Files with write-back on (16 chunks) and
// write-behind on, as a node runs, over a fake namespace and a local
// store, with them.
func writeBackFiles(t *testing.T) (*Files, *chunkertest.Namespace, *LocalStore) {
	t.Helper()
	s, err := OpenLocal(t.TempDir(), testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	ns := chunkertest.NewNamespace()
	f := NewFiles(ns, s, writeBackChunk, testLogger(t))
	f.SetWriteBack(16 * writeBackChunk)
	f.SetWriteBehind(time.Hour)
	return f, ns, s
}

// TestWriteBack checks UNSTABLE writes against a model file: they are
// read back (and sized by Pending) before Commit, are not in the namespace
// until Commit (a Files over the same namespace and store, as after a
// restart, does not see them), and are after it; a stable write or a
// truncate commits them first; a small limit makes writes commit by
// themselves.
func TestWriteBack(t *testing.T) {
	const cs = writeBackChunk
	ctx := t.Context()
	f, ns, s := writeBackFiles(t)
	const ino = meta.Ino(5)
	rng := rand.New(rand.NewPCG(7, 9))
	var model []byte
	write := func(off, n int) {
		p := make([]byte, n)
		for i := range p {
			p[i] = byte(rng.Uint32())
		}
		if _, stable, err := f.WriteUnstable(ctx, ino, p, int64(off)); err != nil || stable {
			t.Fatalf("WriteUnstable %d at %d: stable %v, %v", n, off, stable, err)
		}
		if len(model) < off+n {
			model = append(model, make([]byte, off+n-len(model))...)
		}
		copy(model[off:], p)
	}
	check := func(what string, ff *Files, want []byte) {
		t.Helper()
		size := uint64(len(want))
		if sz, _, ok := ff.Pending(ino); ok {
			size = max(size, sz)
		}
		got := make([]byte, size)
		if n, err := ff.ReadAt(ctx, ino, size, got, 0); uint64(n) != size || err != nil && size > 0 {
			t.Fatalf("%s: read %d of %d: %v", what, n, size, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("%s: content differs from the model", what)
		}
	}

	// Small writes, overlapping and adjacent, over a few chunks.
	for range 200 {
		write(rng.IntN(6*cs), 1+rng.IntN(5000))
	}
	write(0, cs)         // a whole chunk
	write(cs/2, 2*cs+17) // across chunks
	check("before commit", f, model)
	if size, _, ok := f.Pending(ino); !ok || size != uint64(len(model)) {
		t.Fatalf("Pending: %d, %v; want %d", size, ok, len(model))
	}
	check("another node, before commit", NewFiles(ns, s, cs, testLogger(t)), nil)

	attr, ok, err := f.Commit(ctx, ino)
	if err != nil || !ok || attr.Size != uint64(len(model)) {
		t.Fatalf("Commit: %+v, %v, %v", attr, ok, err)
	}
	if _, _, ok := f.Pending(ino); ok {
		t.Fatal("Pending after Commit")
	}
	check("after commit", NewFiles(ns, s, cs, testLogger(t)), model)

	// A stable write lands on top of uncommitted ones.
	write(100, 300)
	p := bytes.Repeat([]byte{0xaa}, 50)
	if _, err := f.WriteAt(ctx, ino, p, 120); err != nil {
		t.Fatal(err)
	}
	copy(model[120:], p)
	check("after stable write", NewFiles(ns, s, cs, testLogger(t)), model)

	// A truncate cuts uncommitted writes too.
	write(3*cs, 1000)
	if _, err := f.Truncate(ctx, ino, uint64(len(model)), 3*cs+10); err != nil {
		t.Fatal(err)
	}
	model = model[:3*cs+10]
	check("after truncate", NewFiles(ns, s, cs, testLogger(t)), model)

	// Over the limit, writes commit by themselves.
	for i := range 40 {
		write(i*cs, cs)
	}
	f.wb.mu.Lock()
	held := f.wb.bytes
	f.wb.mu.Unlock()
	if held > 17*cs {
		t.Fatalf("table holds %d bytes, limit %d", held, 16*cs)
	}
	check("over the limit", f, model)
	if _, _, err := f.Commit(ctx, ino); err != nil {
		t.Fatal(err)
	}
	check("all committed", NewFiles(ns, s, cs, testLogger(t)), model)
	if err := f.CommitAll(ctx); err != nil {
		t.Fatal(err)
	}
	// Early copies were used or deleted: none is left behind.
	onlyReferenced(t, ns, s, ino)
}

// TestDirtyChunkExtents checks the extent list against a byte model.
func TestDirtyChunkExtents(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for round := range 50 {
		var dc dirtyChunk
		model := make([]byte, 4096)
		written := make([]bool, 4096)
		for i := range 30 {
			lo := rng.IntN(4000)
			n := 1 + rng.IntN(min(300, 4096-lo))
			src := bytes.Repeat([]byte{byte(round*31 + i + 1)}, n)
			dc.add(uint64(lo), src)
			copy(model[lo:], src)
			for j := lo; j < lo+n; j++ {
				written[j] = true
			}
		}
		got := make([]byte, 4096)
		dc.apply(got)
		for j := range got {
			if written[j] && got[j] != model[j] || !written[j] && got[j] != 0 {
				t.Fatalf("round %d: byte %d is %d, want %d", round, j, got[j], model[j])
			}
		}
		for i := 1; i < len(dc.ext); i++ {
			if dc.ext[i-1].hi() >= dc.ext[i].lo {
				t.Fatalf("round %d: extents %d and %d touch", round, i-1, i)
			}
		}
	}
}

// TestCommitOlder checks the age flush: files first written before the
// cutoff are committed (another Files over the same namespace and store
// reads them), files first written after it stay uncommitted, and an
// empty table commits nothing.
func TestCommitOlder(t *testing.T) {
	ctx := t.Context()
	f, ns, s := writeBackFiles(t)
	if n, err := f.CommitOlder(ctx, time.Now()); n != 0 || err != nil {
		t.Fatalf("CommitOlder on an empty table: %d, %v", n, err)
	}
	oldData, newData := bytes.Repeat([]byte("old "), 3000), bytes.Repeat([]byte("new "), 3000)
	const oldIno, newIno = meta.Ino(7), meta.Ino(8)
	if _, stable, err := f.WriteUnstable(ctx, oldIno, oldData, 100); err != nil || stable {
		t.Fatalf("WriteUnstable: stable %v, %v", stable, err)
	}
	cutoff := time.Now()
	// The clock must move past the cutoff before the second file's first
	// write (a coarse clock could give both the same reading).
	for !time.Now().After(cutoff) {
		runtime.Gosched()
	}
	if _, stable, err := f.WriteUnstable(ctx, newIno, newData, 0); err != nil || stable {
		t.Fatalf("WriteUnstable: stable %v, %v", stable, err)
	}
	// A later write to the old file does not make it young again.
	if _, _, err := f.WriteUnstable(ctx, oldIno, []byte("tail"), 100+int64(len(oldData))); err != nil {
		t.Fatal(err)
	}
	oldData = append(oldData, "tail"...)

	n, err := f.CommitOlder(ctx, cutoff)
	if err != nil || n != 1 {
		t.Fatalf("CommitOlder: %d files, %v; want 1", n, err)
	}
	if _, _, ok := f.Pending(oldIno); ok {
		t.Fatal("the old file is still pending")
	}
	if _, _, ok := f.Pending(newIno); !ok {
		t.Fatal("the file written after the cutoff was committed")
	}
	other := NewFiles(ns, s, writeBackChunk, testLogger(t))
	got := make([]byte, 100+len(oldData))
	if n, err := other.ReadAt(ctx, oldIno, uint64(len(got)), got, 0); n != len(got) || err != nil {
		t.Fatalf("read of the committed file from another Files: %d, %v", n, err)
	}
	if !bytes.Equal(got[100:], oldData) || !bytes.Equal(got[:100], make([]byte, 100)) {
		t.Fatal("the committed file reads back wrong")
	}
	if n, err := f.CommitOlder(ctx, time.Now().Add(time.Hour)); n != 1 || err != nil {
		t.Fatalf("CommitOlder of the rest: %d, %v; want 1", n, err)
	}
	if _, _, ok := f.Pending(newIno); ok {
		t.Fatal("the second file is still pending")
	}
}
