package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Test environment:
//
//	WH_E2E_REQUIRE=1   fail instead of skipping when qemu or a kernel is missing
//	WH_E2E_CONSOLE=1   stream the guest console into the test output
//	WH_E2E_KERNEL      kernel image to boot (default the newest /boot/vmlinuz-*)
//	WH_E2E_CACHE       initramfs cache directory (default tests/e2e/.cache)
//	WH_BIN             built wormhole binary, for TestKernelClient
//	WH_FIG_MIB         passed to the guest: size of the TestFigures file in MiB
//	WH_TREE_FILES      passed to the guest: number of files in TestTreeWorkload

var (
	guestOnce sync.Once
	guest     *Guest
	guestErr  error

	binOnce sync.Once
	binPath string
	binErr  error
	binDir  string // removed by TestMain
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// requireGuest returns the prepared guest and the guest test binary, building both
// once per test process. It skips the test when qemu or a kernel is missing, unless
// WH_E2E_REQUIRE=1.
func requireGuest(t *testing.T) (*Guest, string) {
	t.Helper()
	if testing.Short() {
		t.Skip("boots a qemu guest; skipped in -short mode")
	}
	cfg := Config{Kernel: os.Getenv("WH_E2E_KERNEL")}
	if err := Available(cfg); err != nil {
		if os.Getenv("WH_E2E_REQUIRE") == "1" {
			t.Fatalf("e2e guest unavailable and WH_E2E_REQUIRE=1: %v", err)
		}
		t.Skipf("e2e guest unavailable (set WH_E2E_REQUIRE=1 to fail instead): %v", err)
	}
	guestOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		start := time.Now()
		guest, guestErr = NewGuest(ctx, cfg)
		if guestErr == nil {
			t.Logf("guest: kernel %s, initramfs %s (ready in %v)", guest.KernelVersion, guest.Initrd,
				time.Since(start).Round(time.Millisecond))
		}
	})
	if guestErr != nil {
		t.Fatalf("prepare guest: %v", guestErr)
	}
	binOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		mod, err := ModuleDir(ctx)
		if err != nil {
			binErr = err
			return
		}
		if binDir, binErr = os.MkdirTemp("", "wormhole-e2e-bin-"); binErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "guest.test")
		binErr = BuildGuestTests(ctx, mod, binPath)
	})
	if binErr != nil {
		t.Fatalf("build guest test binary: %v", binErr)
	}
	return guest, binPath
}

// runGuest boots the guest against a server on port and returns the result. It fails
// the test, with the console tail, if the harness fails or the mount fails; guest
// test failures are left to the caller.
func runGuest(t *testing.T, opts Options) Result {
	t.Helper()
	g, bin := requireGuest(t)
	opts.TestBinary = bin
	if os.Getenv("WH_E2E_CONSOLE") == "1" && opts.Console == nil {
		opts.Console = t.Output()
	}
	ctx := t.Context()
	if dl, ok := t.Deadline(); ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, dl.Add(-30*time.Second))
		defer cancel()
	}
	res, err := g.Run(ctx, opts)
	t.Logf("guest run: %s", res.Summary())
	if err != nil {
		t.Fatalf("guest run failed: %v\n--- guest test output (tail) ---\n%s\n--- console (tail) ---\n%s",
			err, tail(res.TestOutput, 40), res.ConsoleTail(60))
	}
	if res.MountExit != 0 {
		t.Fatalf("mount failed with status %d: %s\n--- console (tail) ---\n%s",
			res.MountExit, strings.TrimSpace(res.MountOutput), res.ConsoleTail(60))
	}
	return res
}

// testVerdicts extracts the "--- PASS/FAIL/SKIP: Name" lines of go test -v output.
func testVerdicts(out string) []string {
	var v []string
	for _, line := range strings.Split(out, "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "--- ") {
			v = append(v, line)
		}
	}
	return v
}

// figures extracts the FIGURE lines of the guest output.
func figures(out string) []string {
	var f []string
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "FIGURE ") {
			f = append(f, line)
		}
	}
	return f
}

// passEnv returns those of the named host environment variables that are set, for
// Options.Env.
func passEnv(names ...string) map[string]string {
	env := map[string]string{}
	for _, n := range names {
		if v, ok := os.LookupEnv(n); ok {
			env[n] = v
		}
	}
	return env
}
