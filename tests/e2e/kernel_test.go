package e2e

import (
	"context"
	"net"
	"os"
	"path/filepath"
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

// TestKernelPlainMount mounts with no port options: the guest kernel asks
// the node's portmapper (port 111) where NFS and MOUNT are, as a plain
// `mount -t nfs node:/ /mnt` does. It needs root and the standard ports
// free on this machine.
func TestKernelPlainMount(t *testing.T) {
	bin := os.Getenv("WH_BIN")
	if bin == "" {
		t.Skip("WH_BIN is unset: point it at a built wormhole binary")
	}
	for _, addr := range []string{"127.0.0.1:111", "127.0.0.1:2049"} {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			// Another portmapper (rpcbind) or NFS server owns the port on
			// this machine: not a failure of ours, so skip even in CI.
			t.Skipf("%s is not free (%v): the plain-mount test needs the standard ports", addr, err)
		}
		l.Close()
	}
	cfg := filepath.Join(t.TempDir(), "wormhole.yaml")
	if err := os.WriteFile(cfg, []byte("nfs:\n  portmap_addr: 127.0.0.1:111\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	p, err := testnode.Start(bin, t.TempDir(), "127.0.0.1:2049", "--config", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.Kill9()
		if t.Failed() {
			t.Logf("--- wormhole log (tail) ---\n%s", tail(p.Output(), 40))
		}
	})
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if err := p.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	res := runGuest(t, Options{MountOptions: "vers=3,nolock", TestRun: "TestSmoke|TestCreateWriteRead", Timeout: 5 * time.Minute})
	if res.TestExit != 0 {
		t.Fatalf("guest tests failed over a plain mount:\n%s", tail(res.TestOutput, 40))
	}
}
