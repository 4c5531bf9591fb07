package guest

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"
)

func TestCreateWriteRead(t *testing.T) {
	dir := workDir(t)
	p := filepath.Join(dir, "f")
	data := bytes.Repeat([]byte("0123456789abcdef"), 70_000) // about 1.1 MiB: several WRITEs
	writeFile(t, p, data)
	dropCaches(t)
	if got := readFile(t, p); !bytes.Equal(got, data) {
		t.Fatalf("read back %d bytes, want %d identical bytes", len(got), len(data))
	}
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() != int64(len(data)) || !fi.Mode().IsRegular() {
		t.Fatalf("stat: size %d mode %v, want size %d regular file", fi.Size(), fi.Mode(), len(data))
	}

	// O_EXCL on an existing name must fail with EEXIST.
	if _, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644); !errors.Is(err, syscall.EEXIST) {
		t.Errorf("O_EXCL create of existing file: got %v, want EEXIST", err)
	}
	// Opening a missing name must fail with ENOENT.
	if _, err := os.Open(filepath.Join(dir, "missing")); !errors.Is(err, syscall.ENOENT) {
		t.Errorf("open missing file: got %v, want ENOENT", err)
	}
}

func TestMkdirRmdir(t *testing.T) {
	dir := workDir(t)
	t.Run("Empty", func(t *testing.T) {
		d := filepath.Join(dir, "empty")
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if fi, err := os.Stat(d); err != nil || !fi.IsDir() {
			t.Fatalf("stat new dir: %v %v", fi, err)
		}
		if err := os.Mkdir(d, 0o755); !errors.Is(err, syscall.EEXIST) {
			t.Errorf("mkdir existing: got %v, want EEXIST", err)
		}
		if err := syscall.Rmdir(d); err != nil {
			t.Fatalf("rmdir empty dir: %v", err)
		}
		if _, err := os.Lstat(d); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("after rmdir: lstat got %v, want not-exist", err)
		}
	})
	t.Run("NonEmpty", func(t *testing.T) {
		d := filepath.Join(dir, "full")
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(d, "child"), []byte("x"))
		err := syscall.Rmdir(d)
		if !errors.Is(err, syscall.ENOTEMPTY) {
			t.Errorf("rmdir non-empty dir: got %v (%d), want ENOTEMPTY", err, errnoOf(err))
		}
		if _, err := os.Stat(filepath.Join(d, "child")); err != nil {
			t.Errorf("child after refused rmdir: %v", err)
		}
	})
}

func TestUnlink(t *testing.T) {
	dir := workDir(t)
	p := filepath.Join(dir, "f")
	writeFile(t, p, []byte("bye"))
	if err := syscall.Unlink(p); err != nil {
		t.Fatalf("unlink: %v", err)
	}
	if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("after unlink: lstat got %v, want not-exist", err)
	}
	if err := syscall.Unlink(p); !errors.Is(err, syscall.ENOENT) {
		t.Errorf("unlink missing: got %v, want ENOENT", err)
	}
	names := readNames(t, dir)
	if len(names) != 0 {
		t.Errorf("dir after unlink lists %v, want nothing", names)
	}
}

func TestRename(t *testing.T) {
	dir := workDir(t)
	t.Run("File", func(t *testing.T) {
		a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
		writeFile(t, a, []byte("content a"))
		if err := os.Rename(a, b); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Lstat(a); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("old name after rename: %v, want not-exist", err)
		}
		if got := readFile(t, b); string(got) != "content a" {
			t.Errorf("new name reads %q", got)
		}
	})
	t.Run("OverExistingFile", func(t *testing.T) {
		src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
		writeFile(t, src, []byte("source"))
		writeFile(t, dst, []byte("old target, longer than the source"))
		if err := os.Rename(src, dst); err != nil {
			t.Fatal(err)
		}
		dropCaches(t)
		if got := readFile(t, dst); string(got) != "source" {
			t.Errorf("target reads %q, want %q", got, "source")
		}
		if _, err := os.Lstat(src); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("source after rename: %v, want not-exist", err)
		}
	})
	t.Run("Directory", func(t *testing.T) {
		d1, d2 := filepath.Join(dir, "d1"), filepath.Join(dir, "d2")
		if err := os.MkdirAll(filepath.Join(d1, "sub"), 0o755); err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(d1, "sub", "f"), []byte("deep"))
		if err := os.Rename(d1, d2); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Lstat(d1); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("old dir after rename: %v, want not-exist", err)
		}
		dropCaches(t)
		if got := readFile(t, filepath.Join(d2, "sub", "f")); string(got) != "deep" {
			t.Errorf("file under renamed dir reads %q", got)
		}
	})
	t.Run("DirectoryAcrossParents", func(t *testing.T) {
		p1, p2 := filepath.Join(dir, "p1"), filepath.Join(dir, "p2")
		for _, p := range []string{filepath.Join(p1, "moved"), p2} {
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		writeFile(t, filepath.Join(p1, "moved", "f"), []byte("across"))
		if err := os.Rename(filepath.Join(p1, "moved"), filepath.Join(p2, "moved")); err != nil {
			t.Fatal(err)
		}
		if got := readFile(t, filepath.Join(p2, "moved", "f")); string(got) != "across" {
			t.Errorf("moved file reads %q", got)
		}
		if names := readNames(t, p1); len(names) != 0 {
			t.Errorf("old parent still lists %v", names)
		}
	})
}

func TestSymlink(t *testing.T) {
	dir := workDir(t)
	target := filepath.Join(dir, "target")
	writeFile(t, target, []byte("through the link"))
	link := filepath.Join(dir, "link")
	if err := os.Symlink("target", link); err != nil {
		t.Fatal(err)
	}
	got, err := os.Readlink(link)
	if err != nil || got != "target" {
		t.Fatalf("readlink: %q %v, want %q", got, err, "target")
	}
	fi, err := os.Lstat(link)
	if err != nil || fi.Mode().Type() != fs.ModeSymlink {
		t.Fatalf("lstat link: %v %v, want a symlink", fi, err)
	}
	if b := readFile(t, link); string(b) != "through the link" {
		t.Errorf("read through link: %q", b)
	}
	// A dangling absolute link keeps its text.
	abs := filepath.Join(dir, "dangling")
	if err := os.Symlink("/nowhere/at/all", abs); err != nil {
		t.Fatal(err)
	}
	if got, err := os.Readlink(abs); err != nil || got != "/nowhere/at/all" {
		t.Errorf("readlink dangling: %q %v", got, err)
	}
	if _, err := os.Stat(abs); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("stat dangling link: %v, want not-exist", err)
	}
}

func TestHardLink(t *testing.T) {
	dir := workDir(t)
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	writeFile(t, a, []byte("shared"))
	if err := os.Link(a, b); err != nil {
		t.Fatalf("link: %v", err)
	}
	sa, sb := lstat(t, a), lstat(t, b)
	if sa.Nlink != 2 || sb.Nlink != 2 {
		t.Errorf("nlink after link: %d and %d, want 2", sa.Nlink, sb.Nlink)
	}
	if sa.Ino != sb.Ino {
		t.Errorf("inode numbers differ: %d and %d", sa.Ino, sb.Ino)
	}
	// Writing through one name shows through the other.
	f, err := os.OpenFile(b, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(" content"); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	dropCaches(t)
	if got := readFile(t, a); string(got) != "shared content" {
		t.Errorf("read via first name: %q, want %q", got, "shared content")
	}
	if err := os.Remove(a); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, b); string(got) != "shared content" {
		t.Errorf("read after unlinking the other name: %q", got)
	}
	if st := lstat(t, b); st.Nlink != 1 {
		t.Errorf("nlink after unlinking the other name: %d, want 1", st.Nlink)
	}
}

func TestChmod(t *testing.T) {
	dir := workDir(t)
	p := filepath.Join(dir, "f")
	writeFile(t, p, []byte("x"))
	for _, mode := range []fs.FileMode{0o600, 0o751, 0o444, 0o755} {
		if err := os.Chmod(p, mode); err != nil {
			t.Fatalf("chmod %o: %v", mode, err)
		}
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != mode.Perm() {
			t.Errorf("after chmod %o: mode %o", mode, fi.Mode().Perm())
		}
	}
}

func TestOwnership(t *testing.T) {
	dir := workDir(t)
	t.Run("RootCreates", func(t *testing.T) {
		p := filepath.Join(dir, "root-file")
		writeFile(t, p, []byte("x"))
		if st := lstat(t, p); st.Uid != 0 || st.Gid != 0 {
			t.Errorf("file created by root is owned by %d:%d, want 0:0", st.Uid, st.Gid)
		}
	})
	t.Run("Chown", func(t *testing.T) {
		p := filepath.Join(dir, "chowned")
		writeFile(t, p, []byte("x"))
		if err := os.Chown(p, 1234, 5678); err != nil {
			t.Fatalf("chown: %v", err)
		}
		if st := lstat(t, p); st.Uid != 1234 || st.Gid != 5678 {
			t.Errorf("after chown 1234:5678: owner %d:%d", st.Uid, st.Gid)
		}
		dropCaches(t)
		if st := lstat(t, p); st.Uid != 1234 || st.Gid != 5678 {
			t.Errorf("after chown and cache drop: owner %d:%d", st.Uid, st.Gid)
		}
	})
	t.Run("UserCreates", func(t *testing.T) {
		shared := filepath.Join(dir, "shared")
		if err := os.Mkdir(shared, 0o777); err != nil {
			t.Fatal(err)
		}
		// Mkdir applies the umask; make sure others can traverse and write.
		for _, d := range []string{dir, shared} {
			if err := os.Chmod(d, 0o777); err != nil {
				t.Fatalf("chmod %s: %v", d, err)
			}
		}
		p := filepath.Join(shared, "user-file")
		exe, err := os.Executable()
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(exe)
		cmd.Env = append(os.Environ(), helperEnv+"=create", helperEnv+"_PATH="+p)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 1000, Gid: 1000}}
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("create as 1000:1000 (the test binary %s must be executable by that user): %v\n%s", exe, err, out)
		}
		if st := lstat(t, p); st.Uid != 1000 || st.Gid != 1000 {
			t.Errorf("file created by 1000:1000 is owned by %d:%d", st.Uid, st.Gid)
		}
	})
}

func TestTruncate(t *testing.T) {
	dir := workDir(t)
	p := filepath.Join(dir, "f")
	data := []byte("0123456789 this tail goes away")
	writeFile(t, p, data)
	if err := os.Truncate(p, 10); err != nil {
		t.Fatalf("truncate shrink: %v", err)
	}
	dropCaches(t)
	if got := readFile(t, p); string(got) != "0123456789" {
		t.Fatalf("after shrink to 10: %q", got)
	}
	const extended = 5000
	if err := os.Truncate(p, extended); err != nil {
		t.Fatalf("truncate extend: %v", err)
	}
	dropCaches(t)
	got := readFile(t, p)
	if len(got) != extended {
		t.Fatalf("after extend: size %d, want %d", len(got), extended)
	}
	if string(got[:10]) != "0123456789" {
		t.Errorf("after extend: head %q", got[:10])
	}
	if i := slices.IndexFunc(got[10:], func(b byte) bool { return b != 0 }); i >= 0 {
		t.Errorf("after extend: byte %d is %#x, want 0", 10+i, got[10+i])
	}
	// Truncation through an open descriptor, as ftruncate(2).
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(3); err != nil {
		t.Fatalf("ftruncate: %v", err)
	}
	if fi, err := f.Stat(); err != nil || fi.Size() != 3 {
		t.Errorf("fstat after ftruncate: %v %v, want size 3", fi, err)
	}
}

func TestSparseFile(t *testing.T) {
	dir := workDir(t)
	p := filepath.Join(dir, "sparse")
	const off = 5 << 30
	tail := []byte("the end of a sparse file")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(tail, off); err != nil {
		t.Fatalf("write at 5 GiB: %v", err)
	}
	if err := f.Sync(); err != nil {
		t.Fatalf("fsync: %v", err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	dropCaches(t)
	st := lstat(t, p)
	if st.Size != off+int64(len(tail)) {
		t.Fatalf("size %d, want %d", st.Size, off+int64(len(tail)))
	}
	t.Logf("sparse file: size %d, %d blocks of 512 bytes allocated", st.Size, st.Blocks)

	r, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	// Sample the hole rather than reading 5 GiB through an emulated CPU.
	buf := make([]byte, 64<<10)
	for _, at := range []int64{0, 1 << 20, 1<<30 + 12345, 4 << 30, off - int64(len(buf))} {
		n, err := r.ReadAt(buf, at)
		if err != nil || n != len(buf) {
			t.Fatalf("read hole at %d: %d bytes, %v", at, n, err)
		}
		if i := slices.IndexFunc(buf, func(b byte) bool { return b != 0 }); i >= 0 {
			t.Fatalf("hole byte at %d is %#x, want 0", at+int64(i), buf[i])
		}
	}
	got := make([]byte, len(tail)+10)
	n, err := r.ReadAt(got, off)
	if !errors.Is(err, io.EOF) || n != len(tail) || !bytes.Equal(got[:n], tail) {
		t.Fatalf("read tail: %q (%d bytes, %v), want %q then EOF", got[:n], n, err, tail)
	}
}

func TestTimestamps(t *testing.T) {
	dir := workDir(t)
	p := filepath.Join(dir, "f")
	writeFile(t, p, []byte("x"))
	t.Run("MtimeOnWrite", func(t *testing.T) {
		old := time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)
		if err := os.Chtimes(p, old, old); err != nil {
			t.Fatalf("chtimes: %v", err)
		}
		if fi, err := os.Stat(p); err != nil || !fi.ModTime().Equal(old) {
			t.Fatalf("mtime after chtimes: %v %v, want %v", fi.ModTime(), err, old)
		}
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteString("more"); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if !fi.ModTime().After(old.Add(365 * 24 * time.Hour)) {
			t.Errorf("mtime after write is %v: not moved forward from %v", fi.ModTime(), old)
		}
	})
	t.Run("CtimeOnChmod", func(t *testing.T) {
		// chmod moves ctime to now and leaves mtime alone: ctime is its
		// own attribute, not a copy of mtime.
		old := time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)
		if err := os.Chtimes(p, old, old); err != nil {
			t.Fatalf("chtimes: %v", err)
		}
		before := time.Now().Add(-time.Minute) // guest and host clocks may differ a little
		if err := os.Chmod(p, 0o640); err != nil {
			t.Fatalf("chmod: %v", err)
		}
		dropCaches(t)
		st := lstat(t, p)
		if c := ctime(st); !c.After(before) {
			t.Errorf("ctime after chmod is %v, want about now", c)
		}
		if m := time.Unix(st.Mtim.Unix()); !m.Equal(old) {
			t.Errorf("chmod changed mtime to %v, want %v", m.UTC(), old)
		}
		if fs.FileMode(st.Mode&0o777) != 0o640 {
			t.Errorf("mode %o after chmod 640", st.Mode&0o777)
		}
	})
	t.Run("AtimeSettable", func(t *testing.T) {
		at := time.Date(2010, 6, 7, 8, 9, 10, 0, time.UTC)
		mt := time.Date(2011, 1, 2, 3, 4, 5, 0, time.UTC)
		if err := os.Chtimes(p, at, mt); err != nil {
			t.Fatalf("chtimes: %v", err)
		}
		dropCaches(t)
		st := lstat(t, p)
		if got := time.Unix(st.Atim.Unix()); !got.Equal(at) {
			t.Errorf("atime %v, want %v", got.UTC(), at)
		}
		if got := time.Unix(st.Mtim.Unix()); !got.Equal(mt) {
			t.Errorf("mtime %v, want %v", got.UTC(), mt)
		}
	})
}

func TestReadDirThousand(t *testing.T) {
	dir := workDir(t)
	const n = 1000
	want := make([]string, 0, n)
	for i := range n {
		name := fmt.Sprintf("entry-%04d-%x", i, i*7919)
		want = append(want, name)
		writeFile(t, filepath.Join(dir, name), nil)
	}
	slices.Sort(want)
	dropCaches(t)
	if got := readNames(t, dir); !slices.Equal(got, want) {
		t.Fatalf("readdir: %d names, want %d; first difference: %s", len(got), len(want), firstDiff(got, want))
	}
}

func TestStatConsistency(t *testing.T) {
	dir := workDir(t)
	writeFile(t, filepath.Join(dir, "empty"), nil)
	writeFile(t, filepath.Join(dir, "small"), []byte("small"))
	writeFile(t, filepath.Join(dir, "bigger"), bytes.Repeat([]byte{7}, 200_000))
	if err := os.Mkdir(filepath.Join(dir, "subdir"), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("small", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(dir, "small"), 0o604); err != nil {
		t.Fatal(err)
	}
	dropCaches(t)
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 5 {
		t.Fatalf("readdir lists %d entries, want 5", len(entries))
	}
	for _, e := range entries {
		info, err := e.Info()
		if err != nil {
			t.Fatalf("%s: info: %v", e.Name(), err)
		}
		fi, err := os.Lstat(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if e.Type() != fi.Mode().Type() {
			t.Errorf("%s: readdir type %v, lstat type %v", e.Name(), e.Type(), fi.Mode().Type())
		}
		if info.Mode() != fi.Mode() || info.Size() != fi.Size() {
			t.Errorf("%s: readdir info mode %v size %d, lstat mode %v size %d",
				e.Name(), info.Mode(), info.Size(), fi.Mode(), fi.Size())
		}
		if !fi.Mode().IsRegular() {
			continue
		}
		if want := int64(len(readFile(t, filepath.Join(dir, e.Name())))); fi.Size() != want {
			t.Errorf("%s: size %d, content %d bytes", e.Name(), fi.Size(), want)
		}
	}
	if fi, _ := os.Lstat(filepath.Join(dir, "small")); fi != nil && fi.Mode().Perm() != 0o604 {
		t.Errorf("small: mode %v, want -rw----r--", fi.Mode())
	}
	if fi, _ := os.Lstat(filepath.Join(dir, "link")); fi != nil && fi.Size() != int64(len("small")) {
		t.Errorf("link: size %d, want the length of its target text", fi.Size())
	}
}

// readNames lists a directory's names, sorted.
func readNames(t testing.TB, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("readdir %s: %v", dir, err)
	}
	names := make([]string, len(entries))
	for i, e := range entries {
		names[i] = e.Name()
	}
	return names
}

// firstDiff describes the first place two sorted name lists differ.
func firstDiff(got, want []string) string {
	for i := range min(len(got), len(want)) {
		if got[i] != want[i] {
			return fmt.Sprintf("index %d: got %q, want %q", i, got[i], want[i])
		}
	}
	if len(got) > len(want) {
		return fmt.Sprintf("extra %q", got[len(want)])
	}
	if len(want) > len(got) {
		return fmt.Sprintf("missing %q", want[len(got)])
	}
	return "none"
}

// ctime returns the status change time from a raw stat.
func ctime(st *stat) time.Time { return time.Unix(st.Ctim.Unix()) }

// errnoOf returns the errno inside err, or 0.
func errnoOf(err error) int {
	var e syscall.Errno
	if errors.As(err, &e) {
		return int(e)
	}
	return 0
}
