package guest

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestFigures measures a sequential write and read of a WH_FIG_MIB MiB file (default
// 256) in 1 MiB requests, and the creation of 2,000 empty files. It prints lines
//
//	FIGURE seq_write_256MiB_s=12.3
//
// to stdout and asserts only correctness. The guest CPU is emulated: compare figures
// only within one run.
func TestFigures(t *testing.T) {
	dir := workDir(t)
	mib := envInt(t, "WH_FIG_MIB", 256)
	p := filepath.Join(dir, "seq")
	buf := make([]byte, 1<<20)

	start := time.Now()
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for i := range mib {
		fillBlock(buf, i)
		if _, err := f.Write(buf); err != nil {
			t.Fatalf("write MiB %d: %v", i, err)
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatalf("fsync: %v", err)
	}
	if err := f.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	figure("seq_write_%dMiB_s", mib, time.Since(start))

	dropCaches(t)
	start = time.Now()
	r, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	want := make([]byte, len(buf))
	for i := range mib {
		if _, err := io.ReadFull(r, buf); err != nil {
			t.Fatalf("read MiB %d: %v", i, err)
		}
		fillBlock(want, i)
		if string(buf) != string(want) {
			t.Fatalf("MiB %d read back differs from what was written", i)
		}
	}
	if n, err := r.Read(buf[:1]); n != 0 || err != io.EOF {
		t.Fatalf("read past %d MiB: %d bytes, %v; want EOF", mib, n, err)
	}
	figure("seq_read_%dMiB_s", mib, time.Since(start))

	const empties = 2000
	cdir := filepath.Join(dir, "empties")
	if err := os.Mkdir(cdir, 0o755); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	for i := range empties {
		f, err := os.OpenFile(filepath.Join(cdir, fmt.Sprintf("e%05d", i)), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
		if err != nil {
			t.Fatalf("create empty file %d: %v", i, err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
	}
	figure("create_%d_empty_s", empties, time.Since(start))
	if names := readNames(t, cdir); len(names) != empties {
		t.Fatalf("%d empty files listed, want %d", len(names), empties)
	}
}

// fillBlock fills buf with a pattern unique to block i, so a block read at the wrong
// offset is detected.
func fillBlock(buf []byte, i int) {
	for off := 0; off+8 <= len(buf); off += 8 {
		binary.LittleEndian.PutUint64(buf[off:], uint64(i)<<32|uint64(off))
	}
}

// figure prints one FIGURE line with the duration in seconds.
func figure(format string, n int, d time.Duration) {
	fmt.Printf("FIGURE "+format+"=%.2f\n", n, d.Seconds())
}
