// Package cli tests the wormhole binary as users run it: start-up errors,
// clean stops, and crashes (kill -9) that must lose no acknowledged write.
package cli

import (
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/wormhole-fs/wormhole/tests/testnode"
)

var bin string

func TestMain(m *testing.M) { testnode.RunWithBinary(m, &bin) }

// runFailing starts the binary, expects it to exit non-zero within a
// deadline, and returns its output.
func runFailing(t *testing.T, dataDir, addr string, extra ...string) string {
	t.Helper()
	p, err := testnode.Start(bin, dataDir, addr, extra...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	code, err := p.Wait(ctx)
	if err != nil {
		p.Kill9()
		t.Fatalf("wormhole did not exit: %v\n%s", err, p.Output())
	}
	if code == 0 {
		t.Fatalf("wormhole exited 0, want an error\n%s", p.Output())
	}
	return p.Output()
}

func TestBadConfigKey(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "wormhole.yaml")
	if err := os.WriteFile(cfg, []byte("nfs:\n  adress: 127.0.0.1:2049\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(t.TempDir(), "data")
	out := runFailing(t, data, testnode.FreeAddr(t), "--config", cfg)
	if !strings.Contains(out, "adress") || !strings.Contains(out, cfg) {
		t.Fatalf("error does not name the bad key and file:\n%s", out)
	}
	if _, err := os.Stat(data); !os.IsNotExist(err) {
		t.Fatalf("data dir created despite a config error (%v)", err)
	}
}

func TestBadConfigValue(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "wormhole.yaml")
	if err := os.WriteFile(cfg, []byte("chunks:\n  size: 12\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := runFailing(t, filepath.Join(t.TempDir(), "data"), testnode.FreeAddr(t), "--config", cfg)
	if !strings.Contains(out, "chunks.size") {
		t.Fatalf("error does not name chunks.size:\n%s", out)
	}
}

func TestPortInUse(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	data := t.TempDir()
	out := runFailing(t, data, l.Addr().String())
	if !strings.Contains(out, "already in use") || !strings.Contains(out, l.Addr().String()) {
		t.Fatalf("error does not say the port is in use:\n%s", out)
	}
	if _, err := os.Stat(filepath.Join(data, "etcd")); !os.IsNotExist(err) {
		t.Fatalf("etcd was started although the port was taken (%v)", err)
	}
}

func TestUnwritableDataDir(t *testing.T) {
	file := filepath.Join(t.TempDir(), "not-a-dir")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(file, "data")
	out := runFailing(t, data, testnode.FreeAddr(t))
	if !strings.Contains(out, data) {
		t.Fatalf("error does not name the data dir %s:\n%s", data, out)
	}
}

func TestSecondInstanceOnSameDataDir(t *testing.T) {
	data := t.TempDir()
	first := startServing(t, data)
	defer first.Kill9()
	out := runFailing(t, data, testnode.FreeAddr(t))
	if !strings.Contains(out, data) {
		t.Fatalf("error does not name the data dir in use:\n%s", out)
	}
}

func startServing(t *testing.T, data string) *testnode.Process {
	t.Helper()
	p, err := testnode.Start(bin, data, testnode.FreeAddr(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := p.WaitReady(ctx); err != nil {
		p.Kill9()
		t.Fatal(err)
	}
	return p
}

func TestSIGTERMStopsCleanlyAndRestartServesSameFiles(t *testing.T) {
	data := t.TempDir()
	p := startServing(t, data)
	v, closeMount, err := testnode.Mount(p.Addr, 0, 0)
	if err != nil {
		p.Kill9()
		t.Fatal(err)
	}
	if _, err := v.Create("/hello", 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := v.OpenFile("/hello", 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if err := testnode.WriteFile(f, []byte("hello, world")); err != nil {
		t.Fatal(err)
	}
	closeMount()

	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	code, err := p.Wait(ctx)
	if err != nil || code != 0 {
		t.Fatalf("after SIGTERM: exit %d, %v\n%s", code, err, p.Output())
	}

	if got := readAfterRestart(t, data, "/hello"); string(got) != "hello, world" {
		t.Fatalf("after restart: %q", got)
	}
}

// readAfterRestart starts a node on data and reads a whole file from it.
func readAfterRestart(t *testing.T, data, name string) []byte {
	t.Helper()
	p := startServing(t, data)
	defer p.Kill9()
	v, closeMount, err := testnode.Mount(p.Addr, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer closeMount()
	f, err := v.Open(name)
	if err != nil {
		t.Fatalf("open %s after restart: %v", name, err)
	}
	got, err := io.ReadAll(f)
	if err != nil {
		t.Fatalf("read %s after restart: %v", name, err)
	}
	return got
}

// TestKill9LosesNoAcknowledgedWrite writes blocks with a pattern while the
// server is killed with SIGKILL, restarts it, and checks every block the
// server acknowledged.
func TestKill9LosesNoAcknowledgedWrite(t *testing.T) {
	data := t.TempDir()
	t0 := time.Now()
	p := startServing(t, data)
	t.Logf("%v serving", time.Since(t0))
	v, closeMount, err := testnode.Mount(p.Addr, 0, 0)
	if err != nil {
		p.Kill9()
		t.Fatal(err)
	}
	t.Logf("%v mounted", time.Since(t0))
	if _, err := v.Create("/log", 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := v.OpenFile("/log", 0o644)
	if err != nil {
		t.Fatal(err)
	}
	const block = 48 << 10 // not a multiple of the chunk size: partial chunks too
	pattern := func(i int) []byte { return bytes.Repeat([]byte{byte(i%251 + 1)}, block) }

	var acked atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 100000; i++ {
			if _, err := f.Write(pattern(i)); err != nil {
				return // the server died under us
			}
			acked.Store(int64(i + 1))
		}
	}()
	// Kill once a good number of writes were acknowledged.
	deadline := time.Now().Add(2 * time.Minute)
	for acked.Load() < 40 {
		if time.Now().After(deadline) {
			t.Fatalf("only %d writes acknowledged in 2 minutes", acked.Load())
		}
		select {
		case <-done:
			t.Fatalf("writer stopped after %d writes\n%s", acked.Load(), p.Output())
		case <-time.After(10 * time.Millisecond): // poll interval
		}
	}
	t.Logf("%v killing after %d acknowledged writes", time.Since(t0), acked.Load())
	p.Kill9()
	<-done
	t.Logf("%v writer stopped", time.Since(t0))
	closeMount()
	n := int(acked.Load())

	got := readAfterRestart(t, data, "/log")
	if len(got) < n*block {
		t.Fatalf("file has %d bytes after kill -9, but %d blocks (%d bytes) were acknowledged", len(got), n, n*block)
	}
	for i := range n {
		if !bytes.Equal(got[i*block:(i+1)*block], pattern(i)) {
			t.Fatalf("acknowledged block %d of %d differs after kill -9", i, n)
		}
	}
	t.Logf("%d acknowledged blocks intact after kill -9", n)
}

func TestStatus(t *testing.T) {
	data := t.TempDir()
	p := startServing(t, data)
	defer p.Kill9()
	run := func(args ...string) (string, error) {
		out, err := exec.Command(bin, append([]string{"status", "--data-dir", data, "--admin-addr", p.AdminAddr}, args...)...).CombinedOutput()
		return string(out), err
	}
	out, err := run()
	if err != nil || !strings.Contains(out, "HEALTHY") || !strings.Contains(out, p.Addr) {
		t.Fatalf("wormhole status: %v\n%s", err, out)
	}
	out, err = run("--json")
	if err != nil || !strings.Contains(out, `"situation":"healthy"`) {
		t.Fatalf("wormhole status --json: %v\n%s", err, out)
	}
	// Without the node's token there is no status.
	other := t.TempDir()
	raw, err := exec.Command(bin, "status", "--data-dir", other, "--admin-addr", p.AdminAddr).CombinedOutput()
	if out = string(raw); err == nil || !strings.Contains(out, "admin token") {
		t.Fatalf("status without the token: %v\n%s", err, out)
	}
}

// A namespace keeps the chunk size it was created with: restarting with
// another one is refused, since it would read wrong bytes.
func TestChunkSizeChangeRefused(t *testing.T) {
	data := t.TempDir()
	p := startServing(t, data)
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if code, err := p.Wait(ctx); err != nil || code != 0 {
		t.Fatalf("stop: exit %d, %v", code, err)
	}
	cfg := filepath.Join(t.TempDir(), "wormhole.yaml")
	if err := os.WriteFile(cfg, []byte("chunks:\n  size: 65536\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := runFailing(t, data, testnode.FreeAddr(t), "--config", cfg)
	if !strings.Contains(out, "chunks.size") || !strings.Contains(out, "1048576") {
		t.Fatalf("error does not explain the chunk size mismatch:\n%s", out)
	}
}
