package cluster

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Disk faults under a client load: a node whose disk fills up, and chunk
// files damaged or deleted behind the node's back.

// settledClean accepts a census taken after since with every chunk on
// target and no orphan left.
func settledClean(since time.Time) func(status) bool {
	return func(st status) bool {
		ch := st.Chunks
		return ch != nil && ch.At.After(since) && len(ch.Partial) == 0 && ch.Below == 0 && ch.Above == 0 && ch.Orphans == 0
	}
}

// chunkFiles lists the chunk files (and leftover temporary files) under a
// node's chunk store.
func (n *node) chunkFiles(t *testing.T) (chunks, temps []string) {
	t.Helper()
	subs, err := filepath.Glob(filepath.Join(n.dir, "chunks", "[0-9a-f][0-9a-f]"))
	if err != nil {
		t.Fatal(err)
	}
	for _, sub := range subs {
		es, err := os.ReadDir(sub)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range es {
			if strings.HasPrefix(e.Name(), ".tmp-") {
				temps = append(temps, filepath.Join(sub, e.Name()))
			} else {
				chunks = append(chunks, filepath.Join(sub, e.Name()))
			}
		}
	}
	return chunks, temps
}

// fill takes all but leave bytes of the free space of the filesystem
// holding dir with one preallocated file, and returns its path.
func fill(t *testing.T, dir string, leave int64) string {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	free := int64(st.Bavail) * st.Bsize
	path := filepath.Join(dir, "filler")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if free > leave {
		if err := syscall.Fallocate(int(f.Fd()), 0, 0, free-leave); err != nil {
			t.Fatalf("fallocate %d bytes in %s: %v", free-leave, dir, err)
		}
	}
	return path
}

func TestFullDiskOnOneNode(t *testing.T) {
	// Every data directory is a tmpfs, so that capacities are comparable
	// (placement weighs nodes by capacity): the voters' big enough for
	// etcd, n4's (no etcd member) 64 MiB. n4 is full under 5% free.
	const small = 64 << 20
	c := newCluster(t, options{nodes: 4, voters: 3, copies: 2, repairGrace: testGrace, repairInterval: testInterval,
		orphanGrace: 5 * time.Second, smallDisks: map[int]int64{1: 320 << 20, 2: 320 << 20, 3: 320 << 20, 4: small}})
	c.start()
	n1, n4 := c.node(1), c.node(4)
	n1.waitStatus(30*time.Second, "4 alive nodes", allAlive(c.ids()...))
	v1 := n1.mount()

	l := startLoad(t, 1, n1, c.node(2))
	l.waitWrites(30*time.Second, 10)

	l.setPhase("full")
	filler := fill(t, n4.dir, 128<<10)
	filled := time.Now()
	t.Logf("filled n4's disk: 128 KiB left of %d MiB", small>>20)
	// A big file: chunks placed on n4 before gossip says it is full fail
	// there with ENOSPC and go to the next node.
	big := writeFiles(t, v1, "/big", 12<<20+77)
	ws := n1.holders(30*time.Second, big, copiesWithout(c, 2, "n4"))
	t.Logf("%s written while n4 is full: %d chunks, none on n4", big[0].name, len(ws[big[0].name].Chunks))
	l.waitWrites(60*time.Second, 20)

	// Bound: gossip carries free space every 30 s; status names n4 and
	// says what to do within 60 s of the fill, in the serve posture.
	st := n1.waitStatus(60*time.Second, "n4 named full, with advice, posture serve", func(st status) bool {
		return strings.Contains(st.Summary, "Full: n4") && strings.Contains(st.Advice, "free space on n4 or add a node") &&
			st.Posture == "serve"
	})
	t.Logf("%v after the fill: situation %q posture %q\nsummary: %s\nadvice: %s", time.Since(filled).Round(time.Millisecond),
		st.Situation, st.Posture, st.Summary, st.Advice)
	l.waitWrites(60*time.Second, 20)
	if fc := l.phaseCounts("full"); fc.Refused > 0 {
		t.Errorf("while n4 was full: %d calls refused (last error %s), want none: the other nodes have room", fc.Refused, fc.LastError)
	}
	// No half-written chunk file is left on n4, and every chunk file it
	// keeps verifies: a scrub pass finds nothing corrupt.
	if _, temps := n4.chunkFiles(t); len(temps) > 0 {
		t.Errorf("temporary chunk files left on n4 after ENOSPC: %v", temps)
	}
	for _, n := range c.nodes {
		checkFiles(t, n.mount(), n.id+" (n4 full)", big)
	}

	l.setPhase("freed")
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	freed := time.Now()
	// Bound: n4 takes chunks again within 90 s (its free space gossiped
	// within 30 s, then new chunks and rebalancing place some on it).
	deadline := freed.Add(90 * time.Second)
	var again []testFile
	for i := 0; ; i++ {
		fs := writeFiles(t, v1, fmt.Sprintf("/after%d-", i), 4<<20)
		again = append(again, fs...)
		var w where
		if _, err := n1.jsonCommand(&w, "where", fs[0].name); err == nil &&
			slices.ContainsFunc(w.Chunks, func(ch struct {
				Index   int      `json:"index"`
				ID      string   `json:"id"`
				Targets []string `json:"targets"`
				Holders []string `json:"holders"`
			}) bool {
				return slices.Contains(ch.Holders, "n4")
			}) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("n4 took no chunk of %d new files within 90 s of freeing its disk", len(again))
		}
		time.Sleep(3 * time.Second) // pace of new files, not a wait for an event
	}
	t.Logf("%v after freeing n4's disk, a new file has a chunk on n4", time.Since(freed).Round(time.Millisecond))
	l.waitWrites(60*time.Second, 10)
	l.stop(60 * time.Second)
	if fc := l.phaseCounts("freed"); fc.Refused > 0 {
		t.Errorf("after freeing n4's disk: %d calls refused (last error %s), want none", fc.Refused, fc.LastError)
	}

	// Bound: 90 s for every chunk on target and no orphan (a chunk of a
	// put that failed on n4 may stay there; the orphan grace is 5 s).
	stopped := time.Now()
	st = n1.waitStatus(90*time.Second, "within 90s, every chunk on target and no orphan", settledClean(stopped))
	t.Logf("%v after the load stopped: %s, orphans %d", time.Since(stopped).Round(time.Millisecond), census(st), st.Chunks.Orphans)
	for _, n := range c.nodes {
		checkFiles(t, n.mount(), n.id, append(big, again...))
	}
}

func TestChunkFileTruncatedAndDeleted(t *testing.T) {
	// Scrub passes only when kicked.
	c := newCluster(t, options{nodes: 3, voters: 3, copies: 2, repairGrace: testGrace, repairInterval: testInterval,
		orphanGrace: 5 * time.Second, scrubRate: 64 << 20, scrubDelay: time.Hour, scrubInterval: time.Hour})
	c.start()
	n1 := c.node(1)
	n1.waitStatus(30*time.Second, "3 alive nodes", allAlive(c.ids()...))
	files := writeFiles(t, n1.mount(), "/damaged", 3<<20+4321)
	want := chunksOf(files)
	w := n1.holders(30*time.Second, files, copiesWithout(c, 2, ""))[files[0].name]

	l := startLoad(t, 1, n1, c.node(2))
	l.waitWrites(30*time.Second, 10)
	l.setPhase("damaged")

	byID := map[string]*node{}
	for _, n := range c.nodes {
		byID[n.id] = n
	}
	cut, gone := w.Chunks[0], w.Chunks[2]
	hCut, hGone := byID[cut.Holders[0]], byID[gone.Holders[1]]
	cutPath := filepath.Join(hCut.dir, "chunks", cut.ID[:2], cut.ID)
	fi, err := os.Stat(cutPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(cutPath, fi.Size()/2); err != nil {
		t.Fatal(err)
	}
	gonePath := filepath.Join(hGone.dir, "chunks", gone.ID[:2], gone.ID)
	if err := os.Remove(gonePath); err != nil {
		t.Fatal(err)
	}
	damaged := time.Now()
	t.Logf("truncated chunk %d (%s) on %s to %d of %d bytes; deleted chunk %d (%s) on %s",
		cut.Index, cut.ID, hCut.id, fi.Size()/2, fi.Size(), gone.Index, gone.ID, hGone.id)

	// Reads through every node return the right bytes: the truncated copy
	// fails its checks and the read goes to the other copy.
	for _, n := range c.nodes {
		checkFiles(t, n.mount(), n.id+" (damaged)", files)
	}

	// The deleted copy is below target at once; the truncated one once
	// the scrubber sets it aside.
	if _, err := hCut.admin("POST", "/v1/scrub"); err != nil {
		t.Fatal(err)
	}
	// Bound: a scrub pass over a few MiB at 64 MiB/s.
	st := hCut.waitStatus(30*time.Second, "scrub.corrupt >= 1 within 30s", func(st status) bool {
		return st.Scrub != nil && st.Scrub.Corrupt >= 1
	})
	t.Logf("%v after the damage: %s's scrub %+v", time.Since(damaged).Round(time.Millisecond), hCut.id, *st.Scrub)
	metrics, err := hCut.admin("GET", "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(metrics, "\nwormhole_scrub_corrupt_chunks_total 1\n") {
		t.Errorf("%s's metrics do not count the corrupt copy:\n%s", hCut.id, grepLines(metrics, "wormhole_scrub"))
	}
	l.waitWrites(30*time.Second, 10)

	// Bound: repair (no grace needed: no node is down) rebuilds both
	// copies within 60 s of the scrub.
	found := time.Now()
	seen := passes{}
	st = n1.waitStatus(60*time.Second, "within 60s, both damaged chunks back to 2 good copies", func(st status) bool {
		seen.see(st)
		var w where
		if _, err := n1.jsonCommand(&w, "where", files[0].name); err != nil {
			return false
		}
		return copiesWithout(c, 2, "")(files[0], w) == nil
	})
	copied, _, _, _ := seen.totals()
	t.Logf("%v after the scrub: both chunks have 2 copies; %s; repair copied %d; passes seen:%s",
		time.Since(found).Round(time.Millisecond), census(st), copied, seen)
	// The truncated file is no longer in place (quarantined; a copy
	// rebuilt there is whole).
	if now, err := os.Stat(cutPath); err == nil && now.Size() != fi.Size() {
		t.Errorf("%s is %d bytes after repair, want %d", cutPath, now.Size(), fi.Size())
	}
	l.stop(60 * time.Second)
	stopped := time.Now()
	st = n1.waitStatus(60*time.Second, "within 60s, every chunk on target", settledClean(stopped))
	t.Logf("after the load: %s (%d file chunks)", census(st), want)
	for _, n := range c.nodes {
		checkFiles(t, n.mount(), n.id, files)
	}
}

// grepLines returns the lines of s containing sub.
func grepLines(s, sub string) string {
	var out []string
	for _, line := range strings.Split(s, "\n") {
		if strings.Contains(line, sub) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}
