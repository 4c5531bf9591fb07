package chunker

import (
	"bytes"
	"math/rand/v2"
	"testing"

	"github.com/wormhole-fs/wormhole/chunker/chunkertest"
	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
)

// TestWriteBack checks UNSTABLE writes against a model file: they are
// read back (and sized by Pending) before Commit, are not in the namespace
// until Commit (a Files over the same namespace and store, as after a
// restart, does not see them), and are after it; a stable write or a
// truncate commits them first; a small limit makes writes commit by
// themselves.
func TestWriteBack(t *testing.T) {
	ctx := t.Context()
	s, err := OpenLocal(t.TempDir(), testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	ns := chunkertest.NewNamespace()
	const cs = 64 << 10
	f := NewFiles(ns, s, cs, testLogger(t))
	f.SetWriteBack(16 * cs)
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
