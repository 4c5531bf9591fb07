package replica_test

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/wormhole-fs/wormhole/chunker/chunkertest"

	"github.com/wormhole-fs/wormhole/chunker"
	"github.com/wormhole-fs/wormhole/chunker/replica"
	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
)

// TestFilesOverReplicas writes a file through chunker.Files on one node and
// reads it back through another: every chunk lands on two of three nodes,
// where placement puts it, and replaced chunks are deleted everywhere.
func TestFilesOverReplicas(t *testing.T) {
	const chunkSize = 4096
	ctx := t.Context()
	c := newCluster(t, 3)
	ns := chunkertest.NewNamespace()
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

	refs := ns.Refs(ino)
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
