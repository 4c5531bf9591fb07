package etcdmeta

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/wormhole-fs/wormhole/chunker/chunk"
)

func metatestRef(index uint64) chunk.Ref {
	r := chunk.Ref{Index: index, Len: 123}
	r.ID[0], r.Sum[0] = 1, 2
	return r
}

// isolatedEnv names the test a child test process runs alone, without the
// package's shared etcd, so that goroutine checks see only that test.
const isolatedEnv = "ETCDMETA_ISOLATED_TEST"

// inChild runs the calling test in a child process of its own and reports
// whether the caller is that child (and should run the test body).
func inChild(t *testing.T) bool {
	t.Helper()
	if os.Getenv(isolatedEnv) == t.Name() {
		return true
	}
	cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^"+t.Name()+"$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), isolatedEnv+"="+t.Name())
	out, err := cmd.CombinedOutput()
	t.Logf("child process:\n%s", out)
	if err != nil {
		t.Fatalf("child process: %v", err)
	}
	if !strings.Contains(string(out), "--- PASS: "+t.Name()) {
		t.Fatal("child process did not run the test")
	}
	return false
}

// goroutines returns the stacks of all goroutines by id.
func goroutines() map[string]string {
	buf := make([]byte, 4<<20)
	buf = buf[:runtime.Stack(buf, true)]
	out := map[string]string{}
	for _, g := range strings.Split(string(buf), "\n\n") {
		id, _, _ := strings.Cut(strings.TrimPrefix(g, "goroutine "), " ")
		out[id] = g
	}
	return out
}

// waitNoNewGoroutines waits until every goroutine started since before was
// taken has ended, or fails at the deadline listing the ones left.
func waitNoNewGoroutines(t *testing.T, before map[string]string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		var left []string
		for id, g := range goroutines() {
			if _, old := before[id]; !old && !strings.Contains(g, "waitNoNewGoroutines") {
				left = append(left, g)
			}
		}
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines left behind:\n%s", len(left), strings.Join(left, "\n\n"))
		}
		<-tick.C
	}
}

func TestStartEmbeddedUnwritableDir(t *testing.T) {
	if !inChild(t) {
		return
	}
	before := goroutines()
	tmp := t.TempDir()
	file := filepath.Join(tmp, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(file, "etcd")
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	_, err := StartEmbedded(ctx, EmbedConfig{Dir: dir}, testLog(t))
	if err == nil {
		t.Fatal("StartEmbedded under a regular file succeeded")
	}
	if !strings.Contains(err.Error(), dir) {
		t.Fatalf("error does not name the directory %s: %v", dir, err)
	}
	t.Log(err)
	waitNoNewGoroutines(t, before)
}

func TestStartEmbeddedRelativeDir(t *testing.T) {
	_, err := StartEmbedded(t.Context(), EmbedConfig{Dir: "rel"}, testLog(t))
	if err == nil || !strings.Contains(err.Error(), "absolute") {
		t.Fatalf("relative dir: %v", err)
	}
}

func TestStartEmbeddedLockedDir(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	dir := t.TempDir()
	e, err := StartEmbedded(ctx, EmbedConfig{Dir: dir, UnsafeNoFsync: true}, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	_, err = StartEmbedded(ctx, EmbedConfig{Dir: dir}, testLog(t))
	if err == nil || !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second start on a running dir: %v", err)
	}
	// The first one still serves.
	if _, err := e.Client().Put(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
}

// TestStartEmbeddedFailureCleansUp makes etcd itself fail (its peer port is
// taken) and checks that nothing stays behind: no goroutines, and the
// directory can be used again.
func TestStartEmbeddedFailureCleansUp(t *testing.T) {
	if !inChild(t) {
		return
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	before := goroutines()
	dir := t.TempDir()
	_, err = StartEmbedded(ctx, EmbedConfig{Dir: dir, PeerURL: "http://" + l.Addr().String()}, testLog(t))
	if err == nil || !strings.Contains(err.Error(), dir) {
		t.Fatalf("start with a busy peer port: %v", err)
	}
	t.Log(err)
	waitNoNewGoroutines(t, before)
	e, err := StartEmbedded(ctx, EmbedConfig{Dir: dir, UnsafeNoFsync: true}, testLog(t))
	if err != nil {
		t.Fatalf("restart after failed start: %v", err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	waitNoNewGoroutines(t, before)
}

// syncBuffer is a bytes.Buffer safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestEmbeddedQuiet checks that a normal start, use and stop of etcd logs
// nothing at info level or above.
func TestEmbeddedQuiet(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	var buf syncBuffer
	log := zerolog.New(&buf) // every level
	e, err := StartEmbedded(ctx, EmbedConfig{Dir: t.TempDir()}, log)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := New(ctx, e.Client(), "quiet", zerolog.Nop()); err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		if line == "" {
			continue
		}
		var ev struct{ Level string }
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("bad log line %q: %v", line, err)
		}
		if ev.Level != "debug" {
			t.Errorf("etcd logged at %s: %s", ev.Level, line)
		}
	}
}

func TestEmbedConfigValidate(t *testing.T) {
	long := "/" + strings.Repeat("d", 120)
	for _, c := range []EmbedConfig{
		{},
		{Dir: "relative"},
		{Dir: long, ClientURL: "unix://" + long + "/client.sock"},
		{Dir: "/x", QuotaBytes: -1},
		{Dir: "/x", ClientURL: "::bad"},
	} {
		if err := c.Validate(); err == nil {
			t.Errorf("Validate(%+v) = nil", c)
		}
	}
	if err := (EmbedConfig{Dir: "/var/lib/wormhole/etcd"}).Validate(); err != nil {
		t.Error(err)
	}
	if err := (EmbedConfig{Dir: long}).Validate(); err != nil {
		t.Errorf("long Dir with the default client URL: %v", err)
	}
}

// TestStartEmbeddedLongDir checks that a Dir too long for a unix socket
// still starts, serving in process only.
func TestStartEmbeddedLongDir(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	dir := filepath.Join(t.TempDir(), strings.Repeat("d", 120))
	e, err := StartEmbedded(ctx, EmbedConfig{Dir: dir, UnsafeNoFsync: true}, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if _, err := e.Client().Put(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	if len(e.Server().Clients) != 0 {
		t.Fatalf("%d client listeners, want none", len(e.Server().Clients))
	}
}
