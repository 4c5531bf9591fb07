package cluster

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	nfsc "github.com/willscott/go-nfs-client/nfs"
)

// Self-healing under faults: a lost node's copies rebuilt, a drained node
// removed, a damaged copy found by the scrubber and rebuilt, and the
// read-only posture while chunks are missing. Repair runs with a short
// grace and interval so that every test finishes in about a minute.
const (
	testGrace    = 3 * time.Second
	testInterval = 2 * time.Second
)

// testFile is a file a test wrote, and its content.
type testFile struct {
	name string
	data []byte
}

// writeFiles writes one file per size, named prefix0, prefix1, ...
func writeFiles(t *testing.T, v *nfsc.Target, prefix string, sizes ...int) []testFile {
	t.Helper()
	var files []testFile
	for i, size := range sizes {
		f := testFile{name: fmt.Sprintf("%s%d", prefix, i), data: randomBytes(t, size)}
		if err := writeFile(v, f.name, f.data); err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}
	return files
}

// checkFiles reads every file through v and reports any that differs.
func checkFiles(t *testing.T, v *nfsc.Target, via string, files []testFile) {
	t.Helper()
	for _, f := range files {
		got, _, err := readFile(v, f.name)
		switch {
		case err != nil:
			t.Errorf("through %s: %v", via, err)
		case !bytes.Equal(got, f.data):
			t.Errorf("through %s: %s: %s", via, f.name, firstDiff(got, f.data))
		}
	}
}

// chunksOf is how many chunks the files have.
func chunksOf(files []testFile) int {
	n := 0
	for _, f := range files {
		n += (len(f.data) + chunkSize - 1) / chunkSize
	}
	return n
}

// holders asks the node where each chunk of the files is, waiting at most
// d for check to accept every file's answer, and returns the answers.
func (n *node) holders(d time.Duration, files []testFile, check func(testFile, where) error) map[string]where {
	n.c.t.Helper()
	out := map[string]where{}
	for _, f := range files {
		want := (len(f.data) + chunkSize - 1) / chunkSize
		out[f.name] = n.waitWhere(d, f.name, func(w where) error {
			if len(w.Chunks) != want {
				return fmt.Errorf("%d chunks listed, want %d", len(w.Chunks), want)
			}
			if check == nil {
				return nil
			}
			return check(f, w)
		})
	}
	return out
}

// heldBy counts the chunks of ws that node id holds.
func heldBy(ws map[string]where, id string) int {
	n := 0
	for _, w := range ws {
		for _, ch := range w.Chunks {
			if slices.Contains(ch.Holders, id) {
				n++
			}
		}
	}
	return n
}

// copiesWithout checks that every chunk of w has copies holders on
// different nodes, none of them on node gone.
func copiesWithout(c *cluster, copies int, gone string) func(testFile, where) error {
	return func(_ testFile, w where) error {
		for _, ch := range w.Chunks {
			if err := distinctNodes(c, ch.Holders, copies); err != nil {
				return fmt.Errorf("chunk %d (%s) holders %v: %v", ch.Index, ch.ID, ch.Holders, err)
			}
			if gone != "" && slices.Contains(ch.Holders, gone) {
				return fmt.Errorf("chunk %d (%s) still held by %s: holders %v", ch.Index, ch.ID, gone, ch.Holders)
			}
		}
		return nil
	}
}

// settled accepts a status whose census was taken after since, heard
// from every node up, and counts want chunks, each with its copies.
func settled(since time.Time, want int) func(status) bool {
	return func(st status) bool {
		ch := st.Chunks
		return ch != nil && ch.At.After(since) && len(ch.Partial) == 0 &&
			ch.Chunks == want && ch.Below == 0 && ch.Above == 0
	}
}

// census prints a status's chunk census.
func census(st status) string {
	if st.Chunks == nil {
		return "no census"
	}
	ch := st.Chunks
	return fmt.Sprintf("chunks %d: below %d (missing %d), on %d, above %d, partial %v",
		ch.Chunks, ch.Below, ch.Missing, ch.On, ch.Above, ch.Partial)
}

// passes collects the repair passes seen in statuses: the last report of
// each, by pass number, and when the test first saw it.
type passes map[uint64]seenPass

type seenPass struct {
	repairProgress
	first time.Time
}

func (p passes) see(st status) {
	if r := st.Repair; r != nil && r.Pass > 0 {
		first := p[r.Pass].first
		if first.IsZero() {
			first = time.Now()
		}
		p[r.Pass] = seenPass{*r, first}
	}
}

// totals sums the work of the passes seen.
func (p passes) totals() (copied, deleted, failed int, bytes int64) {
	for _, r := range p {
		copied, deleted, failed, bytes = copied+r.Copied, deleted+r.Deleted, failed+r.Failed, bytes+r.BytesCopied
	}
	return
}

// firstWith is when the test first saw a pass that copied or deleted.
func (p passes) firstWith() time.Time {
	var t time.Time
	for _, r := range p {
		if (r.Copied > 0 || r.Deleted > 0) && (t.IsZero() || r.first.Before(t)) {
			t = r.first
		}
	}
	return t
}

// String lists the passes seen that had work or met trouble, and counts
// the idle ones.
func (p passes) String() string {
	var ids []uint64
	for id := range p {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	var b strings.Builder
	idle := 0
	for _, id := range ids {
		r := p[id]
		if r.ToCopy+r.ToDelete+r.Failed+r.Deferred+r.Unavailable == 0 && r.LastError == "" {
			idle++
			continue
		}
		fmt.Fprintf(&b, "\n  pass %d (leader %s, running %v): copied %d/%d, deleted %d/%d, failed %d, deferred %d, unavailable %d, %d bytes copied %s",
			id, r.Leader, r.Running, r.Copied, r.ToCopy, r.Deleted, r.ToDelete, r.Failed, r.Deferred, r.Unavailable, r.BytesCopied, r.LastError)
	}
	fmt.Fprintf(&b, "\n  and %d idle passes", idle)
	return b.String()
}

// stop ends the node's serve process with SIGTERM, or SIGKILL when it
// has not exited within d.
func (n *node) stop(d time.Duration) {
	n.c.t.Helper()
	if err := n.proc.Signal(syscall.SIGTERM); err != nil {
		n.c.t.Logf("%s: SIGTERM: %v", n.id, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	if _, err := n.proc.Wait(ctx); err != nil {
		n.c.t.Logf("%s: not stopped %v after SIGTERM (%v): killing it", n.id, d, err)
		n.proc.Kill9()
	}
}

func TestRepairAfterNodeLoss(t *testing.T) {
	c := newCluster(t, options{nodes: 4, voters: 3, copies: 2, repairGrace: testGrace, repairInterval: testInterval})
	c.start()
	n1, n4 := c.node(1), c.node(4)
	n1.waitStatus(30*time.Second, "4 alive nodes", allAlive(c.ids()...))

	// About 8 MiB in 12 chunks, a few files ending inside a chunk.
	files := writeFiles(t, n1.mount(), "/f", 1<<20, 2<<20+5, 300<<10, 1<<20+777, 3<<20, 64<<10, 123457)
	want := chunksOf(files)
	written := time.Now()
	n1.waitStatus(60*time.Second, fmt.Sprintf("a census of %d chunks, each with 2 copies", want), settled(written, want))
	before := n1.holders(30*time.Second, files, copiesWithout(c, 2, ""))
	onN4 := heldBy(before, "n4")
	if onN4 == 0 {
		t.Fatalf("n4 holds none of the %d chunks: nothing to repair", want)
	}
	t.Logf("%d chunks, %d of them on n4", want, onN4)

	killed := time.Now()
	n4.proc.Kill9()
	n1.waitStatus(30*time.Second, "n4 dead", func(st status) bool { return st.states()["n4"] == "dead" })
	dead := time.Now()
	t.Logf("%v n1 reports n4 dead", dead.Sub(killed).Round(time.Millisecond))

	// Bound: repair starts at most grace after n4 is seen dead; copying
	// 12 MiB at most, at 64 MiB/s, and a fresh census take seconds.
	bound := testGrace + 60*time.Second
	seen := passes{}
	var first status
	st := n1.waitStatus(bound, fmt.Sprintf("within %v of n4 dead, a census after it of %d chunks, none below 2 copies", bound, want),
		func(st status) bool {
			seen.see(st)
			if first.Chunks == nil && st.Chunks != nil && st.Chunks.At.After(dead) {
				first = st
			}
			ch := st.Chunks
			return ch != nil && ch.At.After(dead) && len(ch.Partial) == 0 && ch.Chunks == want && ch.Below == 0
		})
	repaired := time.Now()
	copied, _, failed, bytesCopied := seen.totals()
	t.Logf("%v after the kill (%v after n4 dead): %s; first census after n4 dead: %s; situation %q posture %q; repair passes seen:%s",
		repaired.Sub(killed).Round(time.Millisecond), repaired.Sub(dead).Round(time.Millisecond), census(st), census(first),
		first.Situation, first.Posture, seen)
	if copied == 0 {
		t.Errorf("no repair pass seen reported a copy (%d failed); passes seen:%s", failed, seen)
	}
	t.Logf("repair copied %d chunks (%d bytes) for %d chunks n4 held; first pass with copies seen %v after n4 dead",
		copied, bytesCopied, onN4, seen.firstWith().Sub(dead).Round(time.Millisecond))
	n1.holders(30*time.Second, files, copiesWithout(c, 2, "n4"))
	checkFiles(t, c.node(2).mount(), "n2", files)

	// n4 returns with its old copies: they are extras, and are removed.
	n4.restart(60 * time.Second)
	n1.waitStatus(30*time.Second, "4 alive nodes", allAlive(c.ids()...))
	back := time.Now()
	t.Logf("%v after the kill n1 reports n4 alive again", back.Sub(killed).Round(time.Millisecond))
	seen = passes{}
	first = status{}
	st = n1.waitStatus(60*time.Second, fmt.Sprintf("within 60s of n4 back, a census after it of %d chunks, none above or below 2 copies", want),
		func(st status) bool {
			seen.see(st)
			if first.Chunks == nil && st.Chunks != nil && st.Chunks.At.After(back) {
				first = st
			}
			return settled(back, want)(st)
		})
	_, deleted, _, _ := seen.totals()
	t.Logf("%v after n4 back: %s (first census after it: %s); repair deleted %d copies; passes seen:%s",
		time.Since(back).Round(time.Millisecond), census(st), census(first), deleted, seen)
	n1.holders(30*time.Second, files, copiesWithout(c, 2, ""))
	checkFiles(t, n4.mount(), "n4", files)
}

func TestDrainAndRemove(t *testing.T) {
	// Repair copies at 1 MiB/s, so that the drain takes seconds.
	c := newCluster(t, options{nodes: 4, voters: 3, copies: 2, repairGrace: testGrace, repairInterval: testInterval,
		repairRate: 1 << 20})
	c.start()
	n1, n4 := c.node(1), c.node(4)
	n1.waitStatus(30*time.Second, "4 alive nodes", allAlive(c.ids()...))
	v1 := n1.mount()
	files := writeFiles(t, v1, "/d", 2<<20, 1<<20+5, 700<<10, 3<<20+1, 200<<10)
	want := chunksOf(files)
	written := time.Now()
	n1.waitStatus(60*time.Second, fmt.Sprintf("a census of %d chunks, each with 2 copies", want), settled(written, want))
	onN4 := heldBy(n1.holders(30*time.Second, files, copiesWithout(c, 2, "")), "n4")
	if onN4 == 0 {
		t.Fatalf("n4 holds none of the %d chunks: nothing to drain", want)
	}

	// Bound: a repair pass within the interval, then copying at most
	// 8 MiB at 1 MiB/s; drain polls every 2 s.
	const drainBound = 90 * time.Second
	t0 := time.Now()
	r := n1.wormhole(drainBound, "drain", "n4")
	t.Logf("wormhole drain n4 (%d of %d chunks on it): exit %d after %v\nstdout: %s\nstderr: %s",
		onN4, want, r.ExitCode, time.Since(t0).Round(time.Millisecond), r.Stdout, lastLines(r.Stderr, 3))
	switch {
	case r.Err == nil:
		if !strings.Contains(r.Stdout, "holds no chunk") {
			t.Errorf("wormhole drain n4: stdout does not say n4 holds no chunk:\n%s", r.Stdout)
		}
	case r.ExitCode > 0:
		// The command failed: say so, and follow the drain through the
		// admin API instead, as the command would.
		t.Errorf("wormhole drain n4: exit %d: %s", r.ExitCode, strings.TrimSpace(r.Stderr))
		n1.waitDrained(drainBound-time.Since(t0), "n4")
	default:
		t.Fatalf("wormhole drain n4 did not finish within %v: %v", drainBound, r.Err)
	}
	drained := time.Now()
	t.Logf("n4 drained %v after the drain began", drained.Sub(t0).Round(time.Millisecond))
	// Once the drain says n4 is empty, no file's chunk is on n4 any more.
	for _, f := range files {
		var w where
		out, err := n1.jsonCommand(&w, "where", f.name)
		if err == nil {
			err = copiesWithout(c, 2, "n4")(f, w)
		}
		if err != nil {
			t.Errorf("where %s right after the drain said n4 was empty: %v\n%s", f.name, err, out)
		}
	}
	n1.holders(60*time.Second, files, copiesWithout(c, 2, "n4"))
	t.Logf("%v after the drain said n4 was empty, where shows no chunk on n4", time.Since(drained).Round(time.Millisecond))
	st := n1.waitStatus(30*time.Second, "n4 draining with no referenced chunk left", func(st status) bool {
		draining := false
		for _, n := range st.Nodes {
			draining = draining || (n.ID == "n4" && n.Draining)
		}
		return draining && st.Repair != nil && st.Repair.DrainRemaining["n4"] == 0
	})
	t.Logf("after the drain: %s; repair pass %d drain_remaining %v", census(st), st.Repair.Pass, st.Repair.DrainRemaining)

	// A file kept in one copy: its holder may not be removed.
	if _, err := within(20*time.Second, "mkdir /solo", func() ([]byte, error) { return v1.Mkdir("/solo", 0o755) }); err != nil {
		t.Fatal(err)
	}
	if r := n1.wormhole(30*time.Second, "redundancy", "set", "/solo", "1"); r.Err != nil {
		t.Fatalf("wormhole redundancy set /solo 1: exit %d: %v\n%s%s", r.ExitCode, r.Err, r.Stdout, r.Stderr)
	}
	solo := writeFiles(t, v1, "/solo/one", 300<<10)
	ws := n1.holders(30*time.Second, solo, func(_ testFile, w where) error {
		if len(w.Chunks[0].Holders) != 1 {
			return fmt.Errorf("holders %v, want one", w.Chunks[0].Holders)
		}
		return nil
	})
	holder := ws[solo[0].name].Chunks[0].Holders[0]
	if holder == "n4" {
		t.Fatalf("/solo/one was placed on n4, which is draining")
	}
	runner := n1
	if holder == "n1" {
		runner = c.node(2)
	}
	r = runner.wormhole(60*time.Second, "remove", holder)
	t.Logf("wormhole remove %s (holds the only copy of /solo/one): exit %d\nstdout: %s\nstderr: %s", holder, r.ExitCode, r.Stdout, r.Stderr)
	if r.Err == nil {
		t.Errorf("wormhole remove %s succeeded while it holds the only copy of /solo/one", holder)
	} else if !strings.Contains(r.Stderr, "only copy") {
		t.Errorf("wormhole remove %s: refusal does not say 'only copy':\n%s", holder, r.Stderr)
	}

	r = n1.wormhole(60*time.Second, "remove", "n4")
	t.Logf("wormhole remove n4: exit %d\nstdout: %s\nstderr: %s", r.ExitCode, r.Stdout, r.Stderr)
	if r.Err != nil {
		t.Errorf("wormhole remove n4 after its drain: exit %d: %v: %s", r.ExitCode, r.Err, strings.TrimSpace(r.Stderr))
	}
	if _, err := n1.jsonCommand(&st, "status"); err == nil {
		t.Logf("status right after remove, n4 still serving: nodes %v", st.states())
	}
	n4.stop(30 * time.Second)
	ids := []string{"n1", "n2", "n3"}
	n1.waitStatus(30*time.Second, "n1-n3 alive and n4 not listed", allAlive(ids...))
	n1.waitStatus(60*time.Second, "a census without n4, every chunk with its copies", settled(time.Now(), want+1))
	checkFiles(t, c.node(2).mount(), "n2", append(files, solo...))
}

// waitDrained polls the admin API's count of the chunks files refer to
// that node id holds (what `wormhole drain` follows) until it is 0, and
// fails the test when d passes first.
func (n *node) waitDrained(d time.Duration, id string) {
	n.c.t.Helper()
	deadline := time.Now().Add(d)
	for {
		out, err := n.admin("GET", "/v1/nodes/"+id)
		var nc struct {
			Alive     bool `json:"alive"`
			Draining  bool `json:"draining"`
			Chunks    int  `json:"chunks"`
			Remaining int  `json:"remaining"`
		}
		if err == nil {
			if err = json.Unmarshal([]byte(out), &nc); err == nil && nc.Draining && nc.Remaining == 0 {
				n.c.t.Logf("%s: GET /v1/nodes/%s: %s", n.id, id, strings.TrimSpace(out))
				return
			}
		}
		if time.Now().After(deadline) {
			n.c.t.Fatalf("%s: %s not drained within %v: %v: %s", n.id, id, d, err, out)
		}
		time.Sleep(500 * time.Millisecond) // poll interval, not a wait for an event
	}
}

// lastLines is the last n lines of s (progress bars print many).
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

func TestScrubRepairsCorruptCopy(t *testing.T) {
	// Scrub passes only when kicked (the delay and interval are long).
	c := newCluster(t, options{nodes: 3, voters: 3, copies: 2, repairGrace: testGrace, repairInterval: testInterval,
		scrubRate: 64 << 20, scrubDelay: time.Hour, scrubInterval: time.Hour})
	c.start()
	n1 := c.node(1)
	n1.waitStatus(30*time.Second, "3 alive nodes", allAlive(c.ids()...))
	files := writeFiles(t, n1.mount(), "/scrubbed", 2<<20+4321)
	want := chunksOf(files)
	written := time.Now()
	n1.waitStatus(60*time.Second, fmt.Sprintf("a census of %d chunks, each with 2 copies", want), settled(written, want))
	w := n1.holders(30*time.Second, files, copiesWithout(c, 2, ""))[files[0].name]
	ch := w.Chunks[1]
	var h *node
	for _, n := range c.nodes {
		if n.id == ch.Holders[0] {
			h = n
		}
	}
	path := filepath.Join(h.dir, "chunks", ch.ID[:2], ch.ID)
	flipByte(t, path, -1000) // in the data, 1000 bytes before the end
	damaged, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("flipped a byte of chunk %d (%s) in %s's copy %s; holders %v", ch.Index, ch.ID, h.id, path, ch.Holders)

	// h reads the other copy meanwhile.
	vh := h.mount()
	check := func(when string) {
		t.Helper()
		got, _, err := readFile(vh, files[0].name)
		if err != nil {
			t.Fatalf("through %s %s: %v", h.id, when, err)
		}
		if !bytes.Equal(got, files[0].data) {
			t.Fatalf("through %s %s: wrong bytes: %s", h.id, when, firstDiff(got, files[0].data))
		}
	}
	check("with its copy damaged")

	kicked := time.Now()
	if _, err := h.admin("POST", "/v1/scrub"); err != nil {
		t.Fatal(err)
	}
	// Bound: a pass over a few MiB at 64 MiB/s.
	st := h.waitStatus(30*time.Second, "scrub.corrupt >= 1 within 30s of the kick", func(st status) bool {
		check("while the scrubber runs")
		return st.Scrub != nil && st.Scrub.Corrupt >= 1
	})
	found := time.Now()
	t.Logf("%v after the kick: scrub %+v", found.Sub(kicked).Round(time.Millisecond), *st.Scrub)
	// The damaged file is set aside; repair may have put a good copy in
	// its place already.
	if b, err := os.ReadFile(path); err == nil && bytes.Equal(b, damaged) {
		t.Errorf("the damaged copy %s is still in place after the scrub", path)
	}
	q, _ := filepath.Glob(filepath.Join(h.dir, "chunks", "quarantine", ch.ID+".*"))
	if len(q) != 1 {
		t.Errorf("%s's quarantine holds %d copies of %s (%v), want 1", h.id, len(q), ch.ID, q)
	} else if b, err := os.ReadFile(q[0]); err != nil || !bytes.Equal(b, damaged) {
		t.Errorf("%s is not the damaged copy (%v)", q[0], err)
	}

	// Bound: the scrubber kicks repair, which needs no grace (no node is
	// down): one pass and a fresh census.
	seen := passes{}
	st = n1.waitStatus(60*time.Second, fmt.Sprintf("within 60s, a census after the scrub of %d chunks each with 2 copies", want),
		func(st status) bool {
			seen.see(st)
			check("while repair runs")
			return settled(found, want)(st)
		})
	t.Logf("%v after the scrub found it: %s; first pass with a copy seen after %v; passes seen:%s", time.Since(found).Round(time.Millisecond),
		census(st), seen.firstWith().Sub(found).Round(time.Millisecond), seen)
	n1.holders(30*time.Second, files, copiesWithout(c, 2, ""))
	check("after repair")

	// The rebuilt copies are sound: another pass finds nothing new.
	if _, err := h.admin("POST", "/v1/scrub"); err != nil {
		t.Fatal(err)
	}
	passed := st.Scrub
	if passed == nil {
		var hs status
		if _, err := h.jsonCommand(&hs, "status"); err == nil {
			passed = hs.Scrub
		}
	}
	st = h.waitStatus(30*time.Second, "a second scrub pass within 30s", func(st status) bool {
		return st.Scrub != nil && passed != nil && st.Scrub.Passes > passed.Passes
	})
	if st.Scrub.Corrupt != 1 {
		t.Errorf("second scrub pass on %s: %d corrupt copies in all, want 1", h.id, st.Scrub.Corrupt)
	}
}

// flipByte inverts the byte at offset off of the file (off < 0 counts
// from the end).
func flipByte(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if off < 0 {
		fi, err := f.Stat()
		if err != nil {
			t.Fatal(err)
		}
		off += fi.Size()
	}
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0xff
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

func TestCriticalPostureReadOnly(t *testing.T) {
	c := newCluster(t, options{nodes: 3, voters: 3, copies: 1, repairGrace: testGrace, repairInterval: testInterval,
		critical: "read-only"})
	c.start()
	n1, n3 := c.node(1), c.node(3)
	n1.waitStatus(30*time.Second, "3 alive nodes", allAlive(c.ids()...))
	v1 := n1.mount()
	files := writeFiles(t, v1, "/c", 200<<10, 200<<10, 200<<10, 200<<10, 200<<10, 200<<10, 1<<20+3, 2<<20+9)
	want := chunksOf(files)
	written := time.Now()
	n1.waitStatus(60*time.Second, fmt.Sprintf("a census of %d chunks, each with 1 copy", want), settled(written, want))
	ws := n1.holders(30*time.Second, files, copiesWithout(c, 1, ""))
	var safe, lost []testFile // all chunks off n3; some on n3
	for _, f := range files {
		if heldBy(map[string]where{f.name: ws[f.name]}, "n3") == 0 {
			safe = append(safe, f)
		} else {
			lost = append(lost, f)
		}
	}
	if len(safe) == 0 || len(lost) == 0 {
		t.Fatalf("of %d files, %d have every chunk off n3 and %d some on it: need both", len(files), len(safe), len(lost))
	}
	t.Logf("%d chunks, %d on n3; %d files only on n1 and n2", want, heldBy(ws, "n3"), len(safe))

	killed := time.Now()
	n3.proc.Kill9()
	// What a client sees first, with nobody asking for status: writes are
	// refused once gossip declares n3 dead (about 7 s) and the posture
	// loop (every 5 s) counts chunks again, which it does with a census
	// up to a minute old. Bound: 7 + 60 + 5 s, and a margin.
	const gateBound = 80 * time.Second
	var werr error
	accepted := 0
	deadline := time.Now().Add(gateBound)
	for i := 0; ; i++ {
		werr = writeFile(v1, fmt.Sprintf("/during%d", i), randomBytes(t, 4096))
		var ne *nfsc.Error
		if errors.As(werr, &ne) && ne.ErrorNum == nfsc.NFS3ErrROFS {
			break
		}
		if werr == nil {
			accepted++
		} else {
			t.Logf("%v after the kill: write failed otherwise: %v", time.Since(killed).Round(time.Millisecond), werr)
		}
		if time.Now().After(deadline) {
			t.Fatalf("writes not refused with NFS3ERR_ROFS within %v of the kill (%d accepted): last error %v", gateBound, accepted, werr)
		}
		time.Sleep(500 * time.Millisecond) // poll interval, not a wait for an event
	}
	t.Logf("%v after the kill: write refused: %v (%d writes accepted before)", time.Since(killed).Round(time.Millisecond), werr, accepted)

	// Status says why.
	st := n1.waitStatus(30*time.Second, "situation critical and posture read-only", func(st status) bool {
		return st.Situation == "critical" && st.Posture == "read-only"
	})
	t.Logf("%v after the kill: situation %q posture %q: %s; at risk: %s; advice: %s",
		time.Since(killed).Round(time.Millisecond), st.Situation, st.Posture, census(st), st.AtRisk, st.Advice)
	if err := writeFile(v1, "/refused", []byte("no")); err == nil {
		t.Errorf("a write passed while status says read-only")
	}
	checkFiles(t, v1, "n1 (read-only)", safe)
	if got, _, err := readFile(v1, lost[0].name); err == nil {
		if !bytes.Equal(got, lost[0].data) {
			t.Errorf("%s, with a chunk only on dead n3, read back wrong bytes: %s", lost[0].name, firstDiff(got, lost[0].data))
		} else {
			t.Errorf("%s, with a chunk only on dead n3, read back whole", lost[0].name)
		}
	} else {
		t.Logf("read of %s (a chunk only on n3) fails, as it should: %v", lost[0].name, err)
	}

	// n3 returns: the situation is healthy again and writes pass.
	n3.restart(60 * time.Second)
	back := time.Now()
	st = n1.waitStatus(60*time.Second, "within 60s of n3 back, situation healthy and posture serve", func(st status) bool {
		return st.Situation == "healthy" && st.Chunks != nil && st.Chunks.At.After(back) && st.Chunks.Missing == 0
	})
	healthy := time.Now()
	t.Logf("%v after n3 back: situation %q posture %q: %s", healthy.Sub(back).Round(time.Millisecond), st.Situation, st.Posture, census(st))
	deadline = time.Now().Add(15 * time.Second)
	for {
		werr = writeFile(v1, "/after", []byte("writable again"))
		if werr == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("writes still refused 15s after status said healthy: %v", werr)
		}
		time.Sleep(500 * time.Millisecond) // poll interval: the gate is updated every 5 s
	}
	t.Logf("%v after healthy a write passes", time.Since(healthy).Round(time.Millisecond))
	checkFiles(t, v1, "n1", files)
}

// etcdLeader returns the node whose embedded etcd member leads, from the
// etcd_server_is_leader metric each node's admin API exports.
func (c *cluster) etcdLeader(d time.Duration) *node {
	c.t.Helper()
	deadline := time.Now().Add(d)
	for {
		var leaders []*node
		for _, n := range c.nodes {
			if exited, _ := n.proc.Exited(); exited {
				continue
			}
			out, err := n.admin("GET", "/metrics")
			if err == nil && strings.Contains(out, "\netcd_server_is_leader 1\n") {
				leaders = append(leaders, n)
			}
		}
		if len(leaders) == 1 {
			return leaders[0]
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("no single etcd leader within %v (%d nodes say they lead)", d, len(leaders))
		}
		time.Sleep(250 * time.Millisecond) // poll interval, not a wait for an event
	}
}

func TestKillEtcdLeaderDuringWrites(t *testing.T) {
	c := newCluster(t, options{nodes: 3, voters: 3, copies: 2, repairGrace: testGrace, repairInterval: testInterval})
	c.start()
	c.node(1).waitStatus(30*time.Second, "3 alive nodes", allAlive(c.ids()...))
	leader := c.etcdLeader(20 * time.Second)
	// Write through a node that is not the leader.
	via := c.node(2)
	if leader == via {
		via = c.node(1)
	}
	t.Logf("etcd leader: %s; writing through %s", leader.id, via.id)

	w := &writer{addr: via.nfsAddr()}
	stop := make(chan struct{})
	finished := make(chan struct{})
	var runErr error // set before finished is closed
	go func() {
		defer close(finished)
		runErr = w.run(stop, 45*time.Second)
	}()
	stopped := false
	stopWriter := func() error {
		if !stopped {
			stopped = true
			close(stop)
		}
		select {
		case <-finished:
			return runErr
		case <-time.After(90 * time.Second):
			return fmt.Errorf("writer did not stop within 90 s")
		}
	}
	defer func() { _ = stopWriter() }()

	waitAcked(t, w, finished, &runErr, 6, 60*time.Second)
	before := w.ackedCount()
	killed := time.Now()
	leader.proc.Kill9()
	t.Logf("killed etcd leader %s (kill -9) after %d acknowledged files", leader.id, before)
	// Bound: a new etcd leader is elected in seconds; the writer retries
	// each file for at most 45 s.
	waitAcked(t, w, finished, &runErr, before+6, 90*time.Second)
	t.Logf("%v after the kill: %d files acknowledged", time.Since(killed).Round(time.Millisecond), w.ackedCount())
	// Writes go on once the others know the old leader is dead, too.
	via.waitStatus(30*time.Second, leader.id+" dead", func(st status) bool { return st.states()[leader.id] == "dead" })
	dead := w.ackedCount()
	waitAcked(t, w, finished, &runErr, dead+4, 60*time.Second)
	t.Logf("%v after the kill: %s seen dead after %d files, %d acknowledged", time.Since(killed).Round(time.Millisecond),
		leader.id, dead, w.ackedCount())
	if err := stopWriter(); err != nil {
		t.Fatal(err)
	}

	leader.restart(60 * time.Second)
	c.node(1).waitStatus(60*time.Second, "3 alive nodes after the restart", allAlive(c.ids()...))
	newLeader := c.etcdLeader(20 * time.Second)
	t.Logf("%v after the kill %s is back; etcd leader now %s", time.Since(killed).Round(time.Millisecond), leader.id, newLeader.id)

	w.mu.Lock()
	acked, retries := append([]ackedFile(nil), w.acked...), append([]string(nil), w.retries...)
	w.mu.Unlock()
	t.Logf("%d files acknowledged, %d retried errors", len(acked), len(retries))
	for _, r := range retries[:min(len(retries), 10)] {
		t.Logf("  retried: %s", r)
	}
	for _, n := range []*node{via, leader} {
		v := n.mount()
		bad := 0
		for _, f := range acked {
			got, _, err := readFile(v, f.name)
			switch {
			case err != nil:
				t.Errorf("through %s: acknowledged %s: %v", n.id, f.name, err)
			case len(got) != f.size || sha256.Sum256(got) != f.sum:
				t.Errorf("through %s: acknowledged %s: %d bytes with other content, wrote %d", n.id, f.name, len(got), f.size)
			default:
				continue
			}
			if bad++; bad == 5 {
				t.Fatalf("through %s: giving up after 5 bad files", n.id)
			}
		}
	}
}
