// Package protocol tests a real Wormhole node (embedded etcd, chunk store,
// NFS front on a loopback socket) through go-nfs-client, an independent
// NFSv3 client.
package protocol

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	nfsc "github.com/willscott/go-nfs-client/nfs"

	"github.com/wormhole-fs/wormhole/appliance"
	"github.com/wormhole-fs/wormhole/tests/testnode"
)

// node runs an in-process node on dataDir until the test ends or stop is
// called.
type node struct {
	addr string
	stop func()
}

func startNode(t *testing.T, dataDir string) *node {
	t.Helper()
	n := testnode.InProcess(t, dataDir, func(cfg *appliance.Config) {
		cfg.Chunks.Size = 64 << 10 // small chunks so tests cross boundaries
	})
	return &node{addr: n.NFSAddr().String(), stop: n.Stop}
}

func mount(t *testing.T, addr string, uid, gid uint32) *nfsc.Target {
	t.Helper()
	target, closeFn, err := testnode.Mount(addr, uid, gid)
	if err != nil {
		t.Fatalf("mount %s: %v", addr, err)
	}
	t.Cleanup(closeFn)
	return target
}

func writeFile(t *testing.T, v *nfsc.Target, name string, data []byte) []byte {
	t.Helper()
	fh, err := v.Create(name, 0o644)
	if err != nil {
		t.Fatalf("create %s: %v", name, err)
	}
	f, err := v.OpenFile(name, 0o644)
	if err != nil {
		t.Fatalf("open %s: %v", name, err)
	}
	if err := testnode.WriteFile(f, data); err != nil {
		t.Fatalf("write %s: %v", name, err)
	}
	if err := f.Close(); err != nil {
		t.Fatalf("close %s: %v", name, err)
	}
	return fh
}

func readFile(t *testing.T, v *nfsc.Target, name string) []byte {
	t.Helper()
	f, err := v.Open(name)
	if err != nil {
		t.Fatalf("open %s: %v", name, err)
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		t.Fatalf("read %s: %v", name, err)
	}
	return b
}

func randomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func TestWriteReadAcrossChunks(t *testing.T) {
	n := startNode(t, t.TempDir())
	v := mount(t, n.addr, 0, 0)
	data := randomBytes(1, 300<<10+17) // several 64 KiB chunks and a tail
	writeFile(t, v, "/data.bin", data)
	if got := readFile(t, v, "/data.bin"); !bytes.Equal(got, data) {
		t.Fatalf("read back %d bytes, differs from the %d written", len(got), len(data))
	}
	attr, err := v.Getattr("/data.bin")
	if err != nil {
		t.Fatal(err)
	}
	if attr.Filesize != uint64(len(data)) {
		t.Errorf("size %d, want %d", attr.Filesize, len(data))
	}
}

func TestNamespaceOperations(t *testing.T) {
	n := startNode(t, t.TempDir())
	v := mount(t, n.addr, 0, 0)
	if _, err := v.Mkdir("/d", 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, v, "/d/a", []byte("alpha"))
	writeFile(t, v, "/b", []byte("beta"))

	// RMDIR of a non-empty directory is NOTEMPTY, not an I/O error.
	err := v.RmDir("/d")
	var nerr *nfsc.Error
	if !errors.As(err, &nerr) || nerr.ErrorNum != nfsc.NFS3ErrNotEmpty {
		t.Fatalf("rmdir of non-empty dir: %v, want NFS3ERR_NOTEMPTY", err)
	}
	// Rename over an existing file replaces it.
	if err := v.Rename("/b", "/d/a"); err != nil {
		t.Fatalf("rename over existing: %v", err)
	}
	if got := readFile(t, v, "/d/a"); string(got) != "beta" {
		t.Fatalf("after rename over, /d/a = %q, want beta", got)
	}
	if _, _, err := v.Lookup("/b"); !os.IsNotExist(err) {
		t.Fatalf("lookup of renamed-away /b: %v, want not-exist", err)
	}
	// Rename of a directory keeps its contents.
	if err := v.Rename("/d", "/e"); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, v, "/e/a"); string(got) != "beta" {
		t.Fatalf("/e/a = %q after dir rename", got)
	}
	// Symlinks store their target.
	if err := v.Symlink("e/a", "/link"); err != nil {
		t.Fatal(err)
	}
	f, err := v.Open("/link")
	if err != nil {
		t.Fatal(err)
	}
	if target, err := f.Readlink(); err != nil || target != "e/a" {
		t.Fatalf("readlink = %q, %v", target, err)
	}
	f.Close()
	if err := v.Remove("/e/a"); err != nil {
		t.Fatal(err)
	}
	if err := v.RmDir("/e"); err != nil {
		t.Fatalf("rmdir of emptied dir: %v", err)
	}
	ents, err := v.ReadDirPlus("/")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		if e.FileName != "." && e.FileName != ".." {
			names = append(names, e.FileName)
		}
	}
	if len(names) != 1 || names[0] != "link" {
		t.Fatalf("root lists %v, want [link]", names)
	}
}

func TestCallerOwnsNewFiles(t *testing.T) {
	n := startNode(t, t.TempDir())
	root := mount(t, n.addr, 0, 0)
	if _, err := root.Mkdir("/shared", 0o777); err != nil {
		t.Fatal(err)
	}
	// Mkdir applies the client's mode; make it world-writable explicitly.
	if err := root.Setattr("/shared", nfsc.Sattr3{Mode: nfsc.SetMode{SetIt: true, Mode: 0o777}}); err != nil {
		t.Fatal(err)
	}
	user := mount(t, n.addr, 1000, 1001)
	writeFile(t, user, "/shared/mine", []byte("x"))
	attr, err := root.Getattr("/shared/mine")
	if err != nil {
		t.Fatal(err)
	}
	if attr.UID != 1000 || attr.GID != 1001 {
		t.Fatalf("new file owned by %d:%d, want 1000:1001 (the caller)", attr.UID, attr.GID)
	}
	// A user may not create in a directory it cannot write.
	if _, err := user.Create("/notmine", 0o644); err == nil {
		t.Fatal("uid 1000 created a file in root's 0755 directory")
	}
}

func TestHandles(t *testing.T) {
	dir := t.TempDir()
	n := startNode(t, dir)
	v := mount(t, n.addr, 0, 0)
	fh := writeFile(t, v, "/keep", []byte("kept"))
	gone := writeFile(t, v, "/gone", []byte("gone"))
	before, err := v.GetAttr(fh)
	if err != nil {
		t.Fatal(err)
	}

	// Valid after rename.
	if err := v.Rename("/keep", "/kept"); err != nil {
		t.Fatal(err)
	}
	after, err := v.GetAttr(fh)
	if err != nil {
		t.Fatalf("handle after rename: %v", err)
	}
	if after.Fileid != before.Fileid {
		t.Fatalf("fileid changed over rename: %d -> %d", before.Fileid, after.Fileid)
	}
	// Stale after delete.
	if err := v.Remove("/gone"); err != nil {
		t.Fatal(err)
	}
	_, err = v.GetAttr(gone)
	var nerr *nfsc.Error
	if !errors.As(err, &nerr) || nerr.ErrorNum != nfsc.NFS3ErrStale {
		t.Fatalf("handle of deleted file: %v, want NFS3ERR_STALE", err)
	}
	// A forged handle is refused.
	forged := bytes.Clone(fh)
	forged[5] ^= 1
	if _, err := v.GetAttr(forged); err == nil {
		t.Fatal("forged handle accepted")
	}

	// Valid after a restart on the same data dir.
	n.stop()
	n2 := startNode(t, dir)
	v2 := mount(t, n2.addr, 0, 0)
	again, err := v2.GetAttr(fh)
	if err != nil {
		t.Fatalf("handle after restart: %v", err)
	}
	if again.Fileid != before.Fileid {
		t.Fatalf("fileid changed over restart")
	}
	if got := readFile(t, v2, "/kept"); string(got) != "kept" {
		t.Fatalf("after restart /kept = %q", got)
	}
}

func TestLargeDirectoryListsCompletely(t *testing.T) {
	if testing.Short() {
		t.Skip("creates 3,000 files")
	}
	n := startNode(t, t.TempDir())
	v := mount(t, n.addr, 0, 0)
	if _, err := v.Mkdir("/big", 0o755); err != nil {
		t.Fatal(err)
	}
	const count = 3000
	want := map[string]bool{}
	deadline := time.Now().Add(5 * time.Minute)
	for i := range count {
		name := "f" + strconv.Itoa(i)
		if _, err := v.Create("/big/"+name, 0o644); err != nil {
			t.Fatal(err)
		}
		want[name] = true
		if time.Now().After(deadline) {
			t.Fatalf("creating %d files took over 5 minutes", i)
		}
	}
	ents, err := v.ReadDirPlus("/big")
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, e := range ents {
		if e.FileName == "." || e.FileName == ".." {
			continue
		}
		if seen[e.FileName] {
			t.Fatalf("%s listed twice", e.FileName)
		}
		seen[e.FileName] = true
		if !want[e.FileName] {
			t.Fatalf("unexpected entry %q", e.FileName)
		}
	}
	if len(seen) != count {
		t.Fatalf("listed %d entries, want %d", len(seen), count)
	}
}

// TestCorruptChunkIsIOError flips one bit in every chunk file of a file on
// disk: reads must fail with NFS3ERR_IO, never return the damaged bytes.
func TestCorruptChunkIsIOError(t *testing.T) {
	dir := t.TempDir()
	n := startNode(t, dir)
	v := mount(t, n.addr, 0, 0)
	data := randomBytes(7, 100<<10)
	writeFile(t, v, "/victim", data)

	chunks, err := filepath.Glob(filepath.Join(dir, "chunks", "*", "*"))
	if err != nil || len(chunks) == 0 {
		t.Fatalf("no chunk files found under %s (%v)", dir, err)
	}
	for _, p := range chunks {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		b[len(b)-1] ^= 0x10 // the last data byte: header intact, checksum wrong
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	f, err := v.Open("/victim")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got, err := io.ReadAll(f)
	var nerr *nfsc.Error
	if !errors.As(err, &nerr) || nerr.ErrorNum != nfsc.NFS3ErrIO {
		t.Fatalf("read of corrupt file: %d bytes, err %v; want NFS3ERR_IO", len(got), err)
	}
	if len(got) > 0 && !bytes.Equal(got, data[:len(got)]) {
		t.Fatal("corrupt bytes were returned")
	}
}
