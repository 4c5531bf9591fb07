// Package guest holds POSIX behaviour tests that run inside a qemu guest against a
// directory mounted by the Linux kernel NFS client.
//
// The tests read the mount point from the WH_MNT environment variable and skip when it
// is unset, so "go test ./..." on a host stays green. The host-side harness in
// tests/e2e builds this package with
//
//	CGO_ENABLED=0 go test -c -o guest.test ./tests/guest
//
// copies the binary into the guest and runs it there as root with WH_MNT=/mnt.
//
// Environment:
//
//	WH_MNT         mount point to test under (required, else every test skips)
//	WH_FIG_MIB     size in MiB of the sequential file in TestFigures (default 256)
//	WH_TREE_FILES  number of files in TestTreeWorkload (default 3000)
//
// Every test works in its own fresh directory under WH_MNT and removes it afterwards.
package guest

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// helperEnv names the environment variable that turns the test binary into a small
// helper process (see runHelper) instead of running tests.
const helperEnv = "WH_GUEST_HELPER"

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		if err := runHelper(mode, os.Getenv(helperEnv+"_PATH")); err != nil {
			fmt.Fprintf(os.Stderr, "helper %s: %v\n", mode, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// runHelper performs one action for a parent test that needs it done by another
// process, typically one running under different credentials.
func runHelper(mode, path string) error {
	switch mode {
	case "create":
		return os.WriteFile(path, []byte("created by helper\n"), 0o644)
	default:
		return fmt.Errorf("unknown helper mode %q", mode)
	}
}

// mountDir returns WH_MNT, skipping the test when it is unset.
func mountDir(t testing.TB) string {
	t.Helper()
	mnt := os.Getenv("WH_MNT")
	if mnt == "" {
		t.Skip("WH_MNT is unset: these tests run inside the e2e guest (see tests/e2e)")
	}
	return mnt
}

// workDir creates a fresh directory for the test under WH_MNT and removes it when the
// test ends. A failed removal is logged, not fatal: a test asserting a removal
// behaviour has already reported it.
func workDir(t testing.TB) string {
	t.Helper()
	mnt := mountDir(t)
	name := strings.NewReplacer("/", "_", " ", "_").Replace(t.Name())
	dir, err := os.MkdirTemp(mnt, name+"-")
	if err != nil {
		t.Fatalf("create work dir under %s: %v", mnt, err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Logf("cleanup: remove %s: %v", dir, err)
		}
	})
	return dir
}

// envInt reads a positive integer from the environment, or returns def.
func envInt(t testing.TB, name string, def int) int {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		t.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}

// writeFile writes data to path, failing the test on error.
func writeFile(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatalf("write %s: %v", path, err)
	}
}

// readFile reads path, failing the test on error.
func readFile(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	return b
}

// stat is the kernel's stat structure, for inode numbers, link counts, owners and
// timestamps that os.FileInfo does not expose portably.
type stat = syscall.Stat_t

// lstat returns the raw stat of path without following symlinks.
func lstat(t testing.TB, path string) *stat {
	t.Helper()
	var st stat
	if err := syscall.Lstat(path, &st); err != nil {
		t.Fatalf("lstat %s: %v", path, err)
	}
	return &st
}

// dropCaches asks the guest kernel to drop its page, dentry and inode caches so the
// next reads go to the server. It is best effort: without the proc file the reads
// may be served from cache, which still checks what the client holds.
func dropCaches(t testing.TB) {
	t.Helper()
	syscall.Sync()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0o200); err != nil {
		t.Logf("drop caches: %v (continuing with cached data)", err)
	}
}

// rel returns path relative to base for messages.
func rel(base, path string) string {
	if r, err := filepath.Rel(base, path); err == nil {
		return r
	}
	return path
}
