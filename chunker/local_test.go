package chunker

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/rs/zerolog"

	"github.com/wormhole-fs/wormhole/chunker/chunk"
)

func testLogger(t testing.TB) zerolog.Logger {
	return zerolog.New(zerolog.NewTestWriter(t))
}

func openTestStore(t *testing.T) *LocalStore {
	t.Helper()
	s, err := OpenLocal(filepath.Join(t.TempDir(), "chunks"), testLogger(t))
	if err != nil {
		t.Fatalf("OpenLocal: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// countChunkFiles returns the number of chunk files (not temporary files) in
// the store.
func countChunkFiles(t *testing.T, dir string) int {
	t.Helper()
	n := 0
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			if strings.HasPrefix(d.Name(), tmpPrefix) {
				t.Errorf("temporary file left: %s", path)
			}
			n++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestLocalPutGet(t *testing.T) {
	ctx := t.Context()
	s := openTestStore(t)
	for _, n := range []int{0, 1, 4096, 1<<20 + 3} {
		id := chunk.NewID()
		data := bytes.Repeat([]byte{byte(n), 0xA5}, n/2+1)[:n]
		sum, err := s.Put(ctx, id, data)
		if err != nil {
			t.Fatalf("Put %d bytes: %v", n, err)
		}
		if sum != sumOf(data) {
			t.Errorf("Put %d bytes: sum mismatch", n)
		}
		got, err := s.Get(ctx, id)
		if err != nil {
			t.Fatalf("Get %d bytes: %v", n, err)
		}
		if !bytes.Equal(got, data) {
			t.Errorf("Get %d bytes: data differs", n)
		}
		if got, gotSum, err := s.GetSummed(ctx, id); err != nil || !bytes.Equal(got, data) || gotSum != sum {
			t.Errorf("GetSummed %d bytes: %d bytes, sum %x, %v; want the data and sum %x", n, len(got), gotSum, err, sum)
		}
		// Put is idempotent.
		if _, err := s.Put(ctx, id, data); err != nil {
			t.Fatalf("second Put: %v", err)
		}
		if st, err := os.Stat(s.Path(id)); err != nil || st.Size() != int64(dataOffset(n)+n) {
			t.Errorf("chunk file: %v, size %v", err, st)
		}
	}
	if got := countChunkFiles(t, s.Dir()); got != 4 {
		t.Errorf("%d chunk files, want 4", got)
	}
}

func TestLocalGetMissing(t *testing.T) {
	s := openTestStore(t)
	_, err := s.Get(t.Context(), chunk.NewID())
	if !errors.Is(err, chunk.ErrNotFound) {
		t.Fatalf("Get missing: %v, want ErrNotFound", err)
	}
}

func TestLocalDeleteIdempotent(t *testing.T) {
	ctx := t.Context()
	s := openTestStore(t)
	id := chunk.NewID()
	if _, err := s.Put(ctx, id, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if err := s.Delete(ctx, id); err != nil {
			t.Fatalf("Delete #%d: %v", i+1, err)
		}
	}
	if _, err := s.Get(ctx, id); !errors.Is(err, chunk.ErrNotFound) {
		t.Fatalf("Get after Delete: %v, want ErrNotFound", err)
	}
	if err := s.Delete(ctx, chunk.NewID()); err != nil {
		t.Fatalf("Delete never-stored chunk: %v", err)
	}
}

// logBuffer is a goroutine-safe log sink for checking what was logged.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestLocalCorruption(t *testing.T) {
	data := bytes.Repeat([]byte("wormhole"), 1000)
	tests := []struct {
		name    string
		corrupt func(t *testing.T, path string)
	}{
		{"bit flip in data", func(t *testing.T, path string) {
			b := readFile(t, path)
			b[dataOffset(len(data))+len(data)/2] ^= 0x10
			writeFile(t, path, b)
		}},
		{"bit flip in checksum", func(t *testing.T, path string) {
			b := readFile(t, path)
			b[40] ^= 0x01
			writeFile(t, path, b)
		}},
		{"bit flip in magic", func(t *testing.T, path string) {
			b := readFile(t, path)
			b[0] ^= 0x01
			writeFile(t, path, b)
		}},
		{"truncated data", func(t *testing.T, path string) {
			if err := os.Truncate(path, int64(dataOffset(len(data))+len(data)-1)); err != nil {
				t.Fatal(err)
			}
		}},
		{"truncated header", func(t *testing.T, path string) {
			if err := os.Truncate(path, headerSizeV2-1); err != nil {
				t.Fatal(err)
			}
		}},
		{"empty file", func(t *testing.T, path string) {
			if err := os.Truncate(path, 0); err != nil {
				t.Fatal(err)
			}
		}},
		{"extra byte", func(t *testing.T, path string) {
			writeFile(t, path, append(readFile(t, path), 0))
		}},
		{"other chunk's file", func(t *testing.T, path string) {
			other := filepath.Join(t.TempDir(), "other")
			s2, err := OpenLocal(other, zerolog.Nop())
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = s2.Close() }()
			id2 := chunk.NewID()
			if _, err := s2.Put(t.Context(), id2, data); err != nil {
				t.Fatal(err)
			}
			writeFile(t, path, readFile(t, s2.Path(id2)))
		}},
		{"directory instead of file", func(t *testing.T, path string) {
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
			if err := os.Mkdir(path, 0o755); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var logs logBuffer
			s, err := OpenLocal(t.TempDir(), zerolog.New(&logs))
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = s.Close() }()
			id := chunk.NewID()
			if _, err := s.Put(t.Context(), id, data); err != nil {
				t.Fatal(err)
			}
			tt.corrupt(t, s.Path(id))
			got, err := s.Get(t.Context(), id)
			if !errors.Is(err, chunk.ErrCorrupt) {
				t.Fatalf("Get: %v, want ErrCorrupt", err)
			}
			if got != nil {
				t.Errorf("Get returned %d bytes with the error", len(got))
			}
			for _, want := range []string{id.String(), s.Path(id)} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not name %q", err, want)
				}
			}
			if l := logs.String(); !strings.Contains(l, `"level":"error"`) || !strings.Contains(l, id.String()) {
				t.Errorf("corruption not logged at error level: %s", l)
			}
		})
	}
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestOpenLocalUnderRegularFile(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	writeFile(t, file, []byte("x"))
	dir := filepath.Join(file, "chunks")
	_, err := OpenLocal(dir, testLogger(t))
	if err == nil {
		t.Fatal("OpenLocal under a regular file succeeded")
	}
	if !strings.Contains(err.Error(), "chunk store "+dir) {
		t.Errorf("error %q does not name the directory", err)
	}
	if !errors.Is(err, syscall.ENOTDIR) {
		t.Errorf("error %q does not wrap ENOTDIR", err)
	}
}

func TestOpenLocalNotWritable(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root ignores directory permissions")
	}
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o555); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Chmod(dir, 0o755) })
	_, err := OpenLocal(dir, testLogger(t))
	if err == nil || !strings.Contains(err.Error(), "chunk store "+dir+": directory not writable") {
		t.Fatalf("OpenLocal on read-only dir: %v", err)
	}
}

func TestOpenLocalRemovesTempFiles(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenLocal(dir, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	id := chunk.NewID()
	if _, err := s.Put(t.Context(), id, []byte("kept")); err != nil {
		t.Fatal(err)
	}
	_ = s.Close()
	sub, _ := relPath(id)
	leftovers := []string{
		filepath.Join(dir, sub, tmpPrefix+id.String()+"-0123456789abcdef"),
		filepath.Join(dir, "ff", tmpPrefix+"crash"),
		filepath.Join(dir, tmpPrefix+"probe-x"),
	}
	for _, p := range leftovers {
		writeFile(t, p, []byte("partial"))
	}
	s, err = OpenLocal(dir, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	for _, p := range leftovers {
		if _, err := os.Stat(p); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s survived open: %v", p, err)
		}
	}
	if got, err := s.Get(t.Context(), id); err != nil || string(got) != "kept" {
		t.Errorf("Get after reopen: %q, %v", got, err)
	}
}

func TestLocalPutNoSpaceWrapping(t *testing.T) {
	s := openTestStore(t)
	for _, errno := range []syscall.Errno{syscall.ENOSPC, syscall.EDQUOT} {
		err := s.putErr(chunk.NewID(), "write", &fs.PathError{Op: "write", Path: "x", Err: errno})
		if !errors.Is(err, chunk.ErrNoSpace) || !errors.Is(err, errno) {
			t.Errorf("%v: got %v, want ErrNoSpace wrapping the errno", errno, err)
		}
	}
	if err := s.putErr(chunk.NewID(), "write", syscall.EIO); errors.Is(err, chunk.ErrNoSpace) {
		t.Errorf("EIO mapped to ErrNoSpace: %v", err)
	}
}

func TestLocalUsage(t *testing.T) {
	s := openTestStore(t)
	total, free, err := s.Usage()
	if err != nil {
		t.Fatal(err)
	}
	if total == 0 || free > total {
		t.Errorf("Usage = %d total, %d free", total, free)
	}
}

func TestLocalContextCancelled(t *testing.T) {
	s := openTestStore(t)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := s.Put(ctx, chunk.NewID(), []byte("x")); !errors.Is(err, context.Canceled) {
		t.Errorf("Put with cancelled ctx: %v", err)
	}
}

func TestLocalConcurrent(t *testing.T) {
	ctx := t.Context()
	s := openTestStore(t)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 10 {
				id := chunk.NewID()
				data := bytes.Repeat([]byte{byte(g), byte(i)}, 100)
				if _, err := s.Put(ctx, id, data); err != nil {
					t.Error(err)
					return
				}
				got, err := s.Get(ctx, id)
				if err != nil || !bytes.Equal(got, data) {
					t.Errorf("Get: %v", err)
				}
				if err := s.Delete(ctx, id); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	if n := countChunkFiles(t, s.Dir()); n != 0 {
		t.Errorf("%d chunk files left", n)
	}
}

// TestLocalPutSummed checks that a chunk stored with the caller's checksum
// reads back whole and in ranges, and that a checksum that does not match
// the data makes a chunk every full read calls corrupt.
func TestLocalPutSummed(t *testing.T) {
	ctx := t.Context()
	s := openTestStore(t)
	data := pattern(2*BlockSize+77, 4)
	id := chunk.NewID()
	if err := s.PutSummed(ctx, id, data, sumOf(data)); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Get(ctx, id); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("Get = %d bytes, %v", len(got), err)
	}
	checkRange(t, s, id, data, BlockSize-5, 10)

	wrong := chunk.NewID()
	if err := s.PutSummed(ctx, wrong, data, sumOf(data[1:])); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctx, wrong); !errors.Is(err, chunk.ErrCorrupt) {
		t.Fatalf("Get of a chunk stored with a wrong sum: %v, want ErrCorrupt", err)
	}
}
