package bench

import (
	"bytes"
	"encoding/json"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/wormhole-fs/wormhole/tests/testnode"
)

// startNode runs an in-process Wormhole node on a temporary data dir and
// returns its NFS address (NFS and MOUNT share the port).
func startNode(t *testing.T) string {
	t.Helper()
	return testnode.InProcess(t, "", nil).NFSAddr().String()
}

// tiny sizes every workload down so a run takes a second or two.
func tiny(o Options) Options {
	o.Size = 2 << 20
	o.RandomOps = 20
	o.Creates = 10
	o.ListEntries = 50
	o.SmallFiles = 10
	return o
}

func checkResults(t *testing.T, res Results, streams int) {
	t.Helper()
	if len(res.Figures) != len(Workloads) {
		t.Fatalf("got %d figures, want %d", len(res.Figures), len(Workloads))
	}
	for i, f := range res.Figures {
		if f.Workload != Workloads[i] || f.Value <= 0 || f.Unit == "" {
			t.Errorf("figure %d: %+v", i, f)
		}
	}
	if res.Streams != streams {
		t.Errorf("streams %d, want %d", res.Streams, streams)
	}
	table := res.Table()
	for _, w := range Workloads {
		if !strings.Contains(table, w) {
			t.Errorf("table lacks %s:\n%s", w, table)
		}
	}
	if _, err := json.Marshal(res); err != nil {
		t.Fatal(err)
	}
}

func TestRunAgainstWormhole(t *testing.T) {
	addr := startNode(t)
	for _, streams := range []int{1, 2} {
		var progress bytes.Buffer
		res, err := Run(t.Context(), tiny(Options{NFSAddr: addr, Streams: streams, Progress: &progress}))
		if err != nil {
			t.Fatalf("streams %d: %v\nprogress:\n%s", streams, err, progress.String())
		}
		checkResults(t, res, streams)
		if got := strings.Count(progress.String(), "bench ["); got != len(Workloads) {
			t.Errorf("%d progress lines, want %d:\n%s", got, len(Workloads), progress.String())
		}
	}
	// Cleanup removed both runs' directories.
	tgt, err := mountNFS(t.Context(), addr, addr, "/", 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c, err := tgt.dial(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	entries, err := c.listDir(t.Context(), c.root())
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 0 {
		t.Errorf("root not empty after the runs: %+v", entries)
	}
}

func TestRunLocal(t *testing.T) {
	res, err := Run(t.Context(), tiny(Options{LocalDir: t.TempDir(), Streams: 2}))
	if err != nil {
		t.Fatal(err)
	}
	checkResults(t, res, 2)
}

func TestUnreachableServerNamed(t *testing.T) {
	_, err := Run(t.Context(), tiny(Options{NFSAddr: "127.0.0.1:1"}))
	if err == nil || !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Fatalf("err = %v, want one naming 127.0.0.1:1", err)
	}
	// A server that accepts and never answers: the deadline ends the call.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
		}
	}()
	_, err = Run(t.Context(), tiny(Options{NFSAddr: l.Addr().String(), OpTimeout: 200 * time.Millisecond}))
	if err == nil || !strings.Contains(err.Error(), l.Addr().String()) || !strings.Contains(err.Error(), "no reply") {
		t.Fatalf("silent server: err = %v, want a deadline error naming %s", err, l.Addr())
	}
	_, err = Run(t.Context(), tiny(Options{NFSAddr: startNode(t), Export: "/no/such/export"}))
	if err == nil || !strings.Contains(err.Error(), "/no/such/export") {
		t.Fatalf("err = %v, want one naming the export", err)
	}
}

// TestVerifyCatchesWrongBytes writes a file through a real node and reads
// it back through the same path the workloads use: the right pattern
// passes, another seed or one flipped byte fails with ErrMismatch.
func TestVerifyCatchesWrongBytes(t *testing.T) {
	addr := startNode(t)
	tgt, err := mountNFS(t.Context(), addr, addr, "/", 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c, err := tgt.dial(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	h, err := c.create(t.Context(), c.root(), "v")
	if err != nil {
		t.Fatal(err)
	}
	good := patternKey(7, keySeq, 0, 0)
	buf := make([]byte, 3*patternBlock+100)
	good.fill(buf, 5) // unaligned on purpose
	if err := c.writeAt(t.Context(), h, buf, 5); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(buf))
	if err := c.readAt(t.Context(), h, got, 5); err != nil {
		t.Fatal(err)
	}
	if err := good.verify(got, 5); err != nil {
		t.Fatalf("right pattern: %v", err)
	}
	if err := patternKey(8, keySeq, 0, 0).verify(got, 5); !errors.Is(err, ErrMismatch) {
		t.Errorf("other seed: err = %v, want ErrMismatch", err)
	}
	if err := good.verify(got, 6); !errors.Is(err, ErrMismatch) {
		t.Errorf("wrong offset: err = %v, want ErrMismatch", err)
	}
	got[2*patternBlock+1] ^= 1
	err = good.verify(got, 5)
	if !errors.Is(err, ErrMismatch) || !strings.Contains(err.Error(), "offset 8198") {
		t.Errorf("flipped byte: err = %v, want ErrMismatch at offset 8198", err)
	}
}

func TestCheckListing(t *testing.T) {
	ok := []dirEntry{{Name: "e000001", HasAttr: true}, {Name: "e000000", HasAttr: true}}
	if err := checkListing(ok, 2); err != nil {
		t.Fatal(err)
	}
	for name, bad := range map[string][]dirEntry{
		"missing":    ok[:1],
		"duplicate":  {ok[0], ok[0]},
		"stranger":   {ok[0], {Name: "x", HasAttr: true}},
		"no attrs":   {ok[0], {Name: "e000000"}},
		"not a file": {ok[0], {Name: "e000000", HasAttr: true, Attr: attr{Dir: true}}},
	} {
		if err := checkListing(bad, 2); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"4096": 4096, "64KiB": 64 << 10, "256MiB": 256 << 20, "1GiB": 1 << 30, "1GB": 1e9, "2m": 2 << 20} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	if _, err := ParseSize("lots"); err == nil {
		t.Error("ParseSize(lots) accepted")
	}
}
