package e2e

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/wormhole-fs/wormhole/tests/testnode"
)

// startWormhole starts "$WH_BIN serve" on a fresh data directory and a free loopback
// port, and kills it when the test ends. It skips the test when WH_BIN is unset.
func startWormhole(t *testing.T) *testnode.Process {
	t.Helper()
	bin := os.Getenv("WH_BIN")
	if bin == "" {
		t.Skip("WH_BIN is unset: point it at a built wormhole binary")
	}
	p, err := testnode.Start(bin, t.TempDir(), testnode.FreeAddr(t))
	if err != nil {
		t.Fatalf("start wormhole: %v", err)
	}
	t.Cleanup(func() {
		p.Kill9()
		if t.Failed() {
			t.Logf("--- wormhole log (tail) ---\n%s", tail(p.Output(), 80))
		}
	})
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if err := p.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestKernelClient runs the whole guest suite, with the Linux kernel NFS client,
// against a Wormhole server started from WH_BIN. Any guest test failure fails it.
func TestKernelClient(t *testing.T) {
	srv := startWormhole(t)
	res := runGuest(t, Options{Port: srv.Port(), Env: passEnv("WH_FIG_MIB", "WH_TREE_FILES"), Timeout: 20 * time.Minute})
	t.Logf("guest test output:\n%s", res.TestOutput)
	for _, f := range figures(res.TestOutput) {
		t.Log(f)
	}
	if res.TestExit != 0 {
		var failed []string
		for _, v := range testVerdicts(res.TestOutput) {
			if strings.Contains(v, "--- FAIL") {
				failed = append(failed, strings.TrimSpace(v))
			}
		}
		t.Errorf("guest tests failed (exit %d):\n%s", res.TestExit, strings.Join(failed, "\n"))
	}
	if res.UmountExit != 0 {
		t.Errorf("umount failed with status %d: %s", res.UmountExit, res.UmountOutput)
	}
}
