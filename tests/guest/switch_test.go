package guest

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The TestSwitch protocol with the host, through the 9p share:
//
//	guest: writes switchRequest, naming its test directory, once its files are
//	       written through node A and a listing of big is under way
//	host:  lists big through node B as another client of B would, moves the
//	       mount's connections to node B, then writes switchDone
//	guest: checks everything through node B, writes switchManifest for the host
//
// The host side is TestKernelClientSwitchesNodes in tests/e2e.
const (
	switchEnv      = "WH_SWITCH" // set by the host; TestSwitch skips without it
	shareDir       = "/share"
	switchRequest  = "switch-request"
	switchDone     = "switch-done"
	switchManifest = "switch-manifest.json"
)

// SwitchManifest tells the host what the guest left on the mount, so it can check
// the same files through each node. Paths are relative to the export root.
type SwitchManifest struct {
	Dir   string               `json:"dir"`
	Files []SwitchManifestFile `json:"files"`
}

// SwitchManifestFile is one file as the guest last saw it.
type SwitchManifestFile struct {
	Path   string `json:"path"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
	Ino    uint64 `json:"ino"`
}

// switchFile is a file written before the switch and what the guest saw of it then.
type switchFile struct {
	name string // relative to the test directory
	data []byte
	st   stat
}

// TestSwitch writes files through one node, has the host move the mount to another
// node of the same cluster, and checks that the kernel client goes on as if nothing
// happened: the same data, attributes and inode numbers; a file descriptor and a
// working directory opened before the switch (handles the first node issued) still
// usable; a directory listing begun before the switch finishing complete (the
// second node resuming from the first one's readdir cookies, while it has served
// another client's listing of the same directory); new files creatable. It needs
// the host's cooperation and runs only when WH_SWITCH is set.
func TestSwitch(t *testing.T) {
	if os.Getenv(switchEnv) == "" {
		t.Skip(switchEnv + " is unset: this test needs the host to switch nodes (TestKernelClientSwitchesNodes)")
	}
	mnt := mountDir(t)
	dir, err := os.MkdirTemp(mnt, "TestSwitch-")
	if err != nil {
		t.Fatal(err)
	}
	// The directory is left behind on purpose: the host reads it through each node.

	// Before the switch: everything goes to node A.
	sizes := map[string]int{
		"empty":          0,
		"one-byte":       1,
		"small":          4096 + 17,
		"chunk-straddle": 1<<20 + 123_457, // crosses the 1 MiB chunk boundary
		"sub/nested":     300_001,
		"sub/deeper/two": 2<<20 + 5, // three chunks
	}
	if err := os.MkdirAll(filepath.Join(dir, "sub", "deeper"), 0o755); err != nil {
		t.Fatal(err)
	}
	var files []*switchFile
	for _, name := range slices.Sorted(maps.Keys(sizes)) {
		f := &switchFile{name: name, data: randBytes(t, sizes[name])}
		// Half of the files are fsynced, the others only closed (close-to-open
		// flushes them).
		writeSynced(t, filepath.Join(dir, name), f.data, len(files)%2 == 0)
		files = append(files, f)
	}

	// A file kept open across the switch, with data written and synced through A.
	heldName := "held-open"
	held, err := os.OpenFile(filepath.Join(dir, heldName), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	heldData := randBytes(t, 200_003)
	if _, err := held.Write(heldData); err != nil {
		t.Fatalf("write held file: %v", err)
	}
	if err := held.Sync(); err != nil {
		t.Fatalf("fsync held file: %v", err)
	}
	var heldBefore stat
	if err := syscall.Fstat(int(held.Fd()), &heldBefore); err != nil {
		t.Fatal(err)
	}

	// A big directory being listed across the switch: the listing started on A
	// goes on with A's readdir cookies on B.
	bigNames := makeBigDir(t, filepath.Join(dir, "big"), 1000)
	bigDir, err := os.Open(filepath.Join(dir, "big"))
	if err != nil {
		t.Fatal(err)
	}
	defer bigDir.Close()
	listed, err := bigDir.ReadDir(10)
	if err != nil {
		t.Fatalf("list the start of big: %v", err)
	}

	// The test directory as the working directory: its handle comes from A too.
	t.Chdir(dir)

	for _, f := range files {
		f.st = *lstat(t, f.name)
	}
	dirBefore := *lstat(t, ".")
	subBefore := *lstat(t, "sub")
	namesBefore := readNames(t, ".")

	// The switch, done by the host while the client is idle.
	syscall.Sync()
	relDir, err := filepath.Rel(mnt, dir)
	if err != nil {
		t.Fatal(err)
	}
	requestSwitch(t, relDir)

	// After the switch: everything goes to node B.
	t.Log("switched: checking through the other node")

	// Finish the listing begun on A before anything else refreshes the directory.
	statsBefore := readdirStats()
	rest, err := bigDir.ReadDir(-1)
	if err != nil {
		t.Errorf("go on listing big across the switch: %v", err)
	}
	var gotBig []string
	for _, e := range append(listed, rest...) {
		gotBig = append(gotBig, e.Name())
	}
	slices.Sort(gotBig)
	if !slices.Equal(gotBig, bigNames) {
		t.Errorf("a listing of big begun before the switch and finished after it gave %d names (%d before the switch), want the %d created; %s\n"+
			"client readdir counts before finishing the listing:\n%s\nafter:\n%s",
			len(gotBig), len(listed), len(bigNames), firstDiff(gotBig, bigNames), statsBefore, readdirStats())
	}
	if got := readNames(t, "big"); !slices.Equal(got, bigNames) {
		t.Errorf("a fresh listing of big after the switch gave %d names, want %d; %s", len(got), len(bigNames), firstDiff(got, bigNames))
	}

	// First with the client's caches as they are: cached dentries and inodes carry
	// A's handles, which the client now presents to B (GETATTR on open).
	for _, f := range files {
		checkSame(t, f.name, &f.st, lstat(t, f.name))
		if got := readFile(t, f.name); !bytes.Equal(got, f.data) {
			t.Errorf("%s: read %d bytes differing from the %d written before the switch (cached dentries)", f.name, len(got), len(f.data))
		}
	}
	// Then with the caches dropped, so names are looked up and data read on B. The
	// working directory and the open file stay pinned with A's handles.
	dropCaches(t)
	for _, f := range files {
		checkSame(t, f.name, &f.st, lstat(t, f.name))
		if got := readFile(t, f.name); !bytes.Equal(got, f.data) {
			t.Errorf("%s: read %d bytes differing from the %d written before the switch (caches dropped)", f.name, len(got), len(f.data))
		}
	}
	checkSame(t, "the working directory", &dirBefore, lstat(t, "."))
	checkSame(t, "sub", &subBefore, lstat(t, "sub"))
	if got := readNames(t, "."); !slices.Equal(got, namesBefore) {
		t.Errorf("the working directory lists %q after the switch, %q before", got, namesBefore)
	}

	// The descriptor opened before the switch: read it, then extend it.
	var heldAfter stat
	if err := syscall.Fstat(int(held.Fd()), &heldAfter); err != nil {
		t.Fatalf("fstat the file held open across the switch: %v", err)
	}
	checkSame(t, heldName+" (fstat)", &heldBefore, &heldAfter)
	got := make([]byte, len(heldData)+10)
	n, err := held.ReadAt(got, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		t.Fatalf("read the file held open across the switch: %v", err)
	}
	if !bytes.Equal(got[:n], heldData) {
		t.Errorf("%s: read %d bytes through the held descriptor differing from the %d written", heldName, n, len(heldData))
	}
	more := randBytes(t, 70_001)
	if _, err := held.WriteAt(more, int64(len(heldData))); err != nil {
		t.Fatalf("write through the descriptor held open across the switch: %v", err)
	}
	if err := held.Sync(); err != nil {
		t.Fatalf("fsync through the descriptor held open across the switch: %v", err)
	}
	heldData = append(heldData, more...)
	if err := held.Close(); err != nil {
		t.Fatalf("close the descriptor held open across the switch: %v", err)
	}
	dropCaches(t)
	if got := readFile(t, heldName); !bytes.Equal(got, heldData) {
		t.Errorf("%s: read back %d bytes after extending it through the held descriptor, want %d identical", heldName, len(got), len(heldData))
	}
	if st := lstat(t, heldName); st.Ino != heldBefore.Ino || st.Size != int64(len(heldData)) {
		t.Errorf("%s: ino %d size %d after extending, want ino %d size %d", heldName, st.Ino, st.Size, heldBefore.Ino, len(heldData))
	}

	// New files and directories, created relative to the old working directory.
	newData := randBytes(t, 123_456)
	writeSynced(t, "created-after-switch", newData, true)
	if err := os.Mkdir("dir-after-switch", 0o755); err != nil {
		t.Fatalf("mkdir after the switch: %v", err)
	}
	writeSynced(t, "dir-after-switch/inner", newData[:999], false)
	dropCaches(t)
	if got := readFile(t, "created-after-switch"); !bytes.Equal(got, newData) {
		t.Errorf("created-after-switch: read back %d bytes, want %d identical", len(got), len(newData))
	}
	wantNames := slices.Sorted(slices.Values(append(slices.Clone(namesBefore), "created-after-switch", "dir-after-switch")))
	if got := readNames(t, "."); !slices.Equal(got, wantNames) {
		t.Errorf("the working directory lists %q after creating files, want %q", got, wantNames)
	}

	// The manifest for the host, which reads every file through both nodes.
	m := SwitchManifest{Dir: relDir}
	add := func(name string, data []byte) {
		st := lstat(t, name)
		sum := sha256.Sum256(data)
		m.Files = append(m.Files, SwitchManifestFile{
			Path: filepath.Join(relDir, name), Size: int64(len(data)), SHA256: hex.EncodeToString(sum[:]), Ino: st.Ino,
		})
	}
	for _, f := range files {
		add(f.name, f.data)
	}
	add(heldName, heldData)
	add("created-after-switch", newData)
	add("dir-after-switch/inner", newData[:999])
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	writeShare(t, switchManifest, b)
}

// makeBigDir creates dir with n empty files whose names are long enough that
// listing them takes several READDIRPLUS replies, and returns the names sorted.
func makeBigDir(t *testing.T, dir string, n int) []string {
	t.Helper()
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	var names []string
	for i := range n {
		name := fmt.Sprintf("entry-%04d-%s", i, strings.Repeat("x", 50))
		f, err := os.OpenFile(filepath.Join(dir, name), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		names = append(names, name)
	}
	t.Logf("created %d files in %v", n, time.Since(start).Round(time.Millisecond))
	slices.Sort(names)
	return names
}

// readdirStats returns the client's READDIR and READDIRPLUS counts from
// /proc/self/mountstats: operations, transmissions, timeouts, bytes sent and
// received, queue, RTT and execution milliseconds, and errors.
func readdirStats() string {
	b, err := os.ReadFile("/proc/self/mountstats")
	if err != nil {
		return err.Error()
	}
	var lines []string
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 0 && (f[0] == "READDIR:" || f[0] == "READDIRPLUS:") {
			lines = append(lines, "  "+strings.Join(f, " "))
		}
	}
	return strings.Join(lines, "\n")
}

// requestSwitch asks the host to switch nodes and waits until it has. It tells
// the host the test directory, relative to the export root.
func requestSwitch(t *testing.T, dir string) {
	t.Helper()
	writeShare(t, switchRequest, []byte(dir+"\n"))
	t.Log("asked the host to switch nodes")
	deadline := time.Now().Add(5 * time.Minute)
	for {
		_, err := os.Stat(filepath.Join(shareDir, switchDone))
		if err == nil {
			return
		}
		if !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("poll %s: %v", switchDone, err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("the host did not switch nodes within 5 minutes (no %s/%s)", shareDir, switchDone)
		}
		time.Sleep(100 * time.Millisecond) // poll interval, not a wait for an event
	}
}

// writeShare writes a file into the 9p share, atomically for the host.
func writeShare(t *testing.T, name string, data []byte) {
	t.Helper()
	tmp := filepath.Join(shareDir, "."+name+".tmp")
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		t.Fatalf("write %s: %v", tmp, err)
	}
	if err := os.Rename(tmp, filepath.Join(shareDir, name)); err != nil {
		t.Fatalf("publish %s: %v", name, err)
	}
}

// writeSynced creates path with data, fsyncing before the close when sync is set.
func writeSynced(t *testing.T, path string, data []byte, sync bool) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		t.Fatalf("write %s: %v", path, err)
	}
	if sync {
		if err := f.Sync(); err != nil {
			f.Close()
			t.Fatalf("fsync %s: %v", path, err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatalf("close %s: %v", path, err)
	}
}

// checkSame reports the attributes that differ between two stats of one file taken
// before and after the switch.
func checkSame(t *testing.T, what string, before, after *stat) {
	t.Helper()
	type field struct {
		name       string
		want, have any
	}
	for _, f := range []field{
		{"ino", before.Ino, after.Ino},
		{"mode", before.Mode, after.Mode},
		{"nlink", before.Nlink, after.Nlink},
		{"uid", before.Uid, after.Uid},
		{"gid", before.Gid, after.Gid},
		{"size", before.Size, after.Size},
		{"mtime", before.Mtim, after.Mtim},
		{"ctime", before.Ctim, after.Ctim},
	} {
		if f.want != f.have {
			t.Errorf("%s: %s is %v after the switch, %v before", what, f.name, f.have, f.want)
		}
	}
}

// randBytes returns n random bytes.
func randBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}
