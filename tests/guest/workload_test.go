package guest

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

// TestTreeWorkload creates a tree of small files with deterministic pseudo-random
// content, verifies every checksum after dropping caches, renames the top-level
// directories, verifies again, and removes the tree.
func TestTreeWorkload(t *testing.T) {
	dir := workDir(t)
	files := envInt(t, "WH_TREE_FILES", 3000)
	const dirs = 30
	rng := rand.New(rand.NewPCG(1, 2))

	want := make(map[string][sha256.Size]byte, files) // path relative to dir -> sum
	for d := range dirs {
		if err := os.MkdirAll(filepath.Join(dir, dirName(d), "nested"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for i := range files {
		d := i % dirs
		sub := ""
		if i%3 == 0 {
			sub = "nested"
		}
		rel := filepath.Join(dirName(d), sub, fmt.Sprintf("file-%05d", i))
		data := make([]byte, rng.IntN(16<<10))
		for j := range data {
			data[j] = byte(rng.Uint32())
		}
		writeFile(t, filepath.Join(dir, rel), data)
		want[rel] = sha256.Sum256(data)
	}

	verifyTree(t, dir, want, func(rel string) string { return rel })

	// Rename every top-level directory, then verify under the new names.
	for d := range dirs {
		if err := os.Rename(filepath.Join(dir, dirName(d)), filepath.Join(dir, "renamed-"+dirName(d))); err != nil {
			t.Fatalf("rename %s: %v", dirName(d), err)
		}
	}
	verifyTree(t, dir, want, func(rel string) string { return "renamed-" + rel })

	if err := os.RemoveAll(dir); err != nil {
		t.Fatalf("remove tree: %v", err)
	}
	if _, err := os.Lstat(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("tree still there after RemoveAll: %v", err)
	}
}

// dirName names top-level directory d of the tree workload.
func dirName(d int) string { return fmt.Sprintf("dir-%02d", d) }

// verifyTree drops caches, then walks dir and checks that it holds exactly the files
// in want, under the names given by rename, with the same SHA-256 sums.
func verifyTree(t *testing.T, dir string, want map[string][sha256.Size]byte, rename func(string) string) {
	t.Helper()
	dropCaches(t)
	expect := make(map[string][sha256.Size]byte, len(want))
	for rel, sum := range want {
		expect[rename(rel)] = sum
	}
	seen, bad := 0, 0
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		name := rel(dir, path)
		sum, ok := expect[name]
		if !ok {
			t.Errorf("unexpected file %s", name)
			return nil
		}
		seen++
		if got := sha256.Sum256(readFile(t, path)); got != sum && bad < 10 {
			bad++
			t.Errorf("%s: checksum %x, want %x", name, got[:8], sum[:8])
		}
		delete(expect, name)
		return nil
	})
	if err != nil {
		t.Fatalf("walk: %v", err)
	}
	for name := range expect {
		t.Errorf("%d files missing, for example %s", len(expect), name)
		break
	}
	t.Logf("verified %d files", seen)
}
