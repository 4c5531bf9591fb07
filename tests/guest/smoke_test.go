package guest

import (
	"bytes"
	"path/filepath"
	"testing"
)

// TestSmoke writes a file and reads it back: the least a mount must do. The harness
// smoke test runs only this one.
func TestSmoke(t *testing.T) {
	dir := workDir(t)
	p := filepath.Join(dir, "hello.txt")
	want := []byte("hello from the guest kernel NFS client\n")
	writeFile(t, p, want)
	if got := readFile(t, p); !bytes.Equal(got, want) {
		t.Fatalf("read back %q, want %q", got, want)
	}
}
