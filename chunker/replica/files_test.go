package replica_test

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/wormhole-fs/wormhole/chunker"
	"github.com/wormhole-fs/wormhole/chunker/chunk"
	"github.com/wormhole-fs/wormhole/chunker/replica"
	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
)

// fakeNS is an in-memory chunker.Namespace (the pattern of
// chunker/files_test.go): per inode, a chunk map and a size.
type fakeNS struct {
	mu    sync.Mutex
	files map[meta.Ino]*fakeFile
}

type fakeFile struct {
	refs map[uint64]chunk.Ref
	size uint64
}

var _ chunker.Namespace = (*fakeNS)(nil)

func newFakeNS() *fakeNS { return &fakeNS{files: make(map[meta.Ino]*fakeFile)} }

func (n *fakeNS) file(ino meta.Ino) *fakeFile {
	f := n.files[ino]
	if f == nil {
		f = &fakeFile{refs: make(map[uint64]chunk.Ref)}
		n.files[ino] = f
	}
	return f
}

func (n *fakeNS) refs(ino meta.Ino) []chunk.Ref {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []chunk.Ref
	for _, r := range n.file(ino).refs {
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b chunk.Ref) int { return cmp.Compare(a.Index, b.Index) })
	return out
}

func (n *fakeNS) Chunks(ctx context.Context, ino meta.Ino, first, last uint64) ([]chunk.Ref, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []chunk.Ref
	for idx, r := range n.file(ino).refs {
		if idx >= first && idx <= last {
			out = append(out, r)
		}
	}
	slices.SortFunc(out, func(a, b chunk.Ref) int { return cmp.Compare(a.Index, b.Index) })
	return out, nil
}

func (n *fakeNS) CommitWrite(ctx context.Context, ino meta.Ino, refs []chunk.Ref, expect []meta.Expect, size uint64) (meta.Attr, meta.Freed, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if err := n.check(ino, expect); err != nil {
		return meta.Attr{}, nil, err
	}
	f := n.file(ino)
	var freed meta.Freed
	for _, r := range refs {
		if old, ok := f.refs[r.Index]; ok {
			freed = append(freed, old)
		}
		f.refs[r.Index] = r
	}
	f.size = max(f.size, size)
	return meta.Attr{Ino: ino, Type: meta.TypeRegular, Size: f.size}, freed, nil
}

// check fails with meta.ErrConflict if an expected entry changed.
func (n *fakeNS) check(ino meta.Ino, expect []meta.Expect) error {
	for _, e := range expect {
		if n.file(ino).refs[e.Index].ID != e.ID {
			return meta.ErrConflict
		}
	}
	return nil
}

func (n *fakeNS) Truncate(ctx context.Context, ino meta.Ino, size, chunkSize uint64, tail *chunk.Ref, expect []meta.Expect) (meta.Attr, meta.Freed, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if err := n.check(ino, expect); err != nil {
		return meta.Attr{}, nil, err
	}
	f := n.file(ino)
	var freed meta.Freed
	for idx, r := range f.refs {
		if idx*chunkSize >= size {
			freed = append(freed, r)
			delete(f.refs, idx)
		}
	}
	if tail != nil {
		if old, ok := f.refs[tail.Index]; ok {
			freed = append(freed, old)
		}
		f.refs[tail.Index] = *tail
	}
	f.size = size
	return meta.Attr{Ino: ino, Type: meta.TypeRegular, Size: f.size}, freed, nil
}

// TestFilesOverReplicas writes a file through chunker.Files on one node and
// reads it back through another: every chunk lands on two of three nodes,
// where placement puts it, and replaced chunks are deleted everywhere.
func TestFilesOverReplicas(t *testing.T) {
	const chunkSize = 4096
	ctx := t.Context()
	c := newCluster(t, 3)
	ns := newFakeNS()
	cfg := replica.Config{Copies: 2}
	writer := chunker.NewFiles(ns, c.replicaStore("n1", cfg), chunkSize, testLogger(t))
	reader := chunker.NewFiles(ns, c.replicaStore("n3", cfg), chunkSize, testLogger(t))

	const ino = meta.Ino(42)
	rng := rand.New(rand.NewPCG(4, 2))
	content := randomData(rng, 3*chunkSize+700)
	attr, err := writer.WriteAt(ctx, ino, content, 0)
	if err != nil {
		t.Fatalf("WriteAt: %v", err)
	}
	if attr.Size != uint64(len(content)) {
		t.Fatalf("size %d, want %d", attr.Size, len(content))
	}
	// Overwrite across a chunk boundary: a read-modify-write of two chunks.
	patch := randomData(rng, 1000)
	if _, err := writer.WriteAt(ctx, ino, patch, chunkSize-500); err != nil {
		t.Fatalf("WriteAt patch: %v", err)
	}
	copy(content[chunkSize-500:], patch)

	got := make([]byte, len(content)+10)
	n, err := reader.ReadAt(ctx, ino, uint64(len(content)), got, 0)
	if n != len(content) || err != io.EOF {
		t.Fatalf("ReadAt = %d, %v; want %d, io.EOF", n, err, len(content))
	}
	if !bytes.Equal(got[:n], content) {
		t.Fatal("read back different bytes")
	}

	refs := ns.refs(ino)
	if len(refs) != 4 {
		t.Fatalf("%d chunks in the map, want 4", len(refs))
	}
	live := map[string]int{}
	for _, r := range refs {
		want := sorted(c.ranking(r.ID)[:2])
		if got := c.holding(r.ID); !slices.Equal(got, want) {
			t.Fatalf("chunk %d on %v, placement says %v", r.Index, got, want)
		}
		for _, node := range want {
			live[node]++
		}
	}
	// The two chunks the patch replaced are gone from every node.
	for node, st := range c.stores {
		if files := countChunks(t, st); files != live[node] {
			t.Errorf("node %s holds %d chunks, want %d", node, files, live[node])
		}
	}
}

// countChunks counts the chunk files of a store.
func countChunks(t *testing.T, st *chunker.LocalStore) int {
	t.Helper()
	n := 0
	for i := range 256 {
		entries, err := os.ReadDir(filepath.Join(st.Dir(), fmt.Sprintf("%02x", i)))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			if !strings.HasPrefix(e.Name(), ".") {
				n++
			}
		}
	}
	return n
}
