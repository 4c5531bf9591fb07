package bench

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
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
	ctx, addr, start := restartableNode(t)
	p := start()
	c := dialUnstable(ctx, t, addr)
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
	c = dialUnstable(ctx, t, addr)
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

// TestUnstableWritesCommittedByAge checks chunks.write_back_age: UNSTABLE
// writes that no COMMIT follows (the client crashed, or went away) are
// committed by the node once they are that old, so they survive a kill -9
// of the node that came after.
func TestUnstableWritesCommittedByAge(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "wormhole.yaml")
	if err := os.WriteFile(cfg, []byte("chunks:\n  write_back_age: 300ms\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, addr, start := restartableNode(t, "--config", cfg)
	p := start()
	c := dialUnstable(ctx, t, addr)
	fh, err := c.create(ctx, c.root(), "never-committed")
	if err != nil {
		t.Fatal(err)
	}
	want := bytes.Repeat([]byte("written, never committed "), 3000)
	if err := c.writeBackAt(ctx, fh, want, 0); err != nil {
		t.Fatal(err)
	}
	if !c.hasVerf {
		t.Fatal("UNSTABLE WRITE was answered stable: write-back is off")
	}
	// No COMMIT: the node commits the data by itself once it is older
	// than the age, and says so once the commit is done (its chunk file
	// appears before that, with the chunk map not yet committed).
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !strings.Contains(p.Output(), "committed writes no client committed") {
		select {
		case <-ctx.Done():
			t.Fatalf("the uncommitted write was never committed\n%s", p.Output())
		case <-tick.C:
		}
	}
	if chunkFiles(t, filepath.Join(p.DataDir, "chunks")) == 0 {
		t.Fatal("the node says it committed the write, but it stored no chunk")
	}
	p.Kill9()
	_ = c.close()
	start()
	c = dialUnstable(ctx, t, addr)
	got := make([]byte, len(want))
	if err := c.readAt(ctx, fh, got, 0); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("write stored by age, after kill -9: equal %v, %v", bytes.Equal(got, want), err)
	}
}

// restartableNode builds the wormhole binary and returns the test's
// context (3 minutes), the NFS address, and a function that starts
// `wormhole serve` on that address and one data directory, with extra
// arguments, and waits until it serves. Every process it starts is killed
// when the test ends, and its output logged if the test failed.
func restartableNode(t *testing.T, extra ...string) (context.Context, string, func() *testnode.Process) {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs the wormhole binary")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	t.Cleanup(cancel)
	bin, err := testnode.BuildBinary(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	dataDir := filepath.Join(t.TempDir(), "data")
	addr := testnode.FreeAddr(t)
	return ctx, addr, func() *testnode.Process {
		t.Helper()
		p, err := testnode.Start(bin, dataDir, addr, extra...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			p.Kill9()
			if t.Failed() {
				t.Logf("node output:\n%s", p.Output())
			}
		})
		if err := p.WaitReady(ctx); err != nil {
			t.Fatalf("node not ready: %v\n%s", err, p.Output())
		}
		return p
	}
}

// dialUnstable mounts the node at addr and connects a client that sends
// its writes UNSTABLE.
func dialUnstable(ctx context.Context, t *testing.T, addr string) *nfsConn {
	t.Helper()
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

// chunkFiles counts the chunk files in a chunk store directory (in its
// fan-out subdirectories; temporary files excluded).
func chunkFiles(t *testing.T, dir string) int {
	t.Helper()
	subs, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	n := 0
	for _, sub := range subs {
		if !sub.IsDir() || len(sub.Name()) != 2 {
			continue
		}
		files, err := os.ReadDir(filepath.Join(dir, sub.Name()))
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range files {
			if f.Type().IsRegular() && strings.HasPrefix(f.Name(), sub.Name()) {
				n++
			}
		}
	}
	return n
}
