package bench

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wormhole-fs/wormhole/tests/testnode"
)

// TestUnstableCommitSurvivesKill checks the write-back contract of a real
// node: UNSTABLE WRITEs are answered UNSTABLE, COMMIT makes them durable
// (they survive kill -9), FILE_SYNC WRITEs are durable on their own, and
// the write verifier changes when the node restarts, so a client holding
// uncommitted writes learns it must send them again.
func TestUnstableCommitSurvivesKill(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the wormhole binary")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	bin, err := testnode.BuildBinary(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	dataDir := filepath.Join(t.TempDir(), "data")
	addr := testnode.FreeAddr(t)
	start := func() *testnode.Process {
		p, err := testnode.Start(bin, dataDir, addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.Kill9)
		if err := p.WaitReady(ctx); err != nil {
			t.Fatalf("node not ready: %v\n%s", err, p.Output())
		}
		return p
	}
	dial := func() *nfsConn {
		tg, err := mountNFS(ctx, addr, addr, "/", 30*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		tg.unstable = true
		c, err := tg.dial(ctx)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.close() })
		return c.(*nfsConn)
	}

	p := start()
	c := dial()
	committed, err := c.create(ctx, c.root(), "committed")
	if err != nil {
		t.Fatal(err)
	}
	stable, err := c.create(ctx, c.root(), "stable")
	if err != nil {
		t.Fatal(err)
	}
	// Unaligned writes across a chunk boundary, the second overlapping
	// the first.
	want := bytes.Repeat([]byte("0123456789abcdef"), 1<<16+100) // 1 MiB + 1600 bytes
	if err := c.writeBackAt(ctx, committed, want[:700000], 1000); err != nil {
		t.Fatal(err)
	}
	if err := c.writeBackAt(ctx, committed, want[600000:], 601000); err != nil {
		t.Fatal(err)
	}
	if !c.hasVerf {
		t.Fatal("UNSTABLE WRITEs were answered stable: write-back is off")
	}
	// Read back on the same node before COMMIT: the uncommitted bytes
	// are there, the size includes them.
	got := make([]byte, len(want))
	if err := c.readAt(ctx, committed, got, 1000); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read before COMMIT: equal %v, %v", bytes.Equal(got, want), err)
	}
	if a, err := c.getattr(ctx, committed); err != nil || a.Size != int64(1000+len(want)) {
		t.Fatalf("size before COMMIT: %+v, %v", a, err)
	}
	verf := c.verf
	if err := c.commit(ctx, committed); err != nil {
		t.Fatal(err)
	}
	if err := c.writeAt(ctx, stable, want[:5000], 0); err != nil {
		t.Fatal(err)
	}
	// Written and never committed: it may be lost, and the verifier says so.
	lost, err := c.create(ctx, c.root(), "lost")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.writeBackAt(ctx, lost, want[:4096], 0); err != nil {
		t.Fatal(err)
	}

	p.Kill9()
	_ = c.close()
	start()
	c = dial()
	got = make([]byte, len(want))
	if err := c.readAt(ctx, committed, got, 1000); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("committed data after kill -9: equal %v, %v", bytes.Equal(got, want), err)
	}
	head := make([]byte, 1000)
	if err := c.readAt(ctx, committed, head, 0); err != nil || !bytes.Equal(head, make([]byte, 1000)) {
		t.Fatalf("hole before the data after kill -9: %v", err)
	}
	got = got[:5000]
	if err := c.readAt(ctx, stable, got, 0); err != nil || !bytes.Equal(got, want[:5000]) {
		t.Fatalf("FILE_SYNC data after kill -9: %v", err)
	}
	// The client resends its uncommitted write: the new verifier differs.
	c.verf, c.hasVerf = verf, true
	err = c.writeBackAt(ctx, lost, want[:4096], 0)
	if err == nil || !strings.Contains(err.Error(), "verifier changed") {
		t.Fatalf("WRITE after restart: %v, want a changed verifier", err)
	}
	c.hasVerf = false
	if err := c.writeBackAt(ctx, lost, want[:4096], 0); err != nil {
		t.Fatal(err)
	}
	if err := c.commit(ctx, lost); err != nil {
		t.Fatal(err)
	}
}
