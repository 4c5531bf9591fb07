package repair

import (
	"bytes"
	"context"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/wormhole-fs/wormhole/chunker/chunk"
)

// TestDeadNode: within the grace period nothing is copied or deleted; after
// it, the dead node's chunks are copied to their new targets, fewest copies
// first, and extra copies are deleted.
func TestDeadNode(t *testing.T) {
	e := newEnv(t)
	net := newNet("n1", "n2", "n3", "n4")
	ch := newChunks()
	write(t, net, ch, 10, 20, 2)
	write(t, net, ch, 11, 20, 3)
	write(t, net, ch, 12, 10, 3)
	ch.setCopies(12, 1) // extras to delete on alive nodes, once allowed
	net.setNode("n4", func(n *Node) { n.Alive, n.DownSince = false, time.Now() })

	cfg := testConfig("w1")
	cfg.Parallel = 1 // the order of the copies is the order of the work
	w := e.start(cfg, net, ch)

	p := waitPass(t, w, 1)
	if puts, dels := net.opsOf("", "put"), net.opsOf("", "delete"); len(puts)+len(dels) != 0 {
		t.Fatalf("within grace: %d copies and %d deletions, want none", len(puts), len(dels))
	}
	if p.Deferred == 0 || p.ToCopy != 0 || p.ToDelete != 0 {
		t.Fatalf("within grace: progress %+v, want deferred chunks and no work", p)
	}
	for _, o := range net.opsOf("", "") {
		if o.node == "n4" {
			t.Fatalf("operation on the dead node: %+v", o)
		}
	}

	// The grace period is over.
	kept := map[chunk.ID]int{}
	for id := range ch.refs() {
		kept[id] = len(net.holders(id))
	}
	net.setNode("n4", func(n *Node) { n.DownSince = time.Now().Add(-time.Hour) })
	w.Kick()
	p = waitPass(t, w, 2)
	if p.Failed != 0 || p.Copied != p.ToCopy || p.Deleted != p.ToDelete || p.Copied == 0 || p.Deleted == 0 {
		t.Fatalf("progress %+v", p)
	}
	checkConverged(t, net, ch, 2)

	var order []int
	for _, o := range net.opsOf("w1", "put") {
		order = append(order, kept[o.id])
	}
	if !slices.IsSorted(order) || order[0] != 1 {
		t.Errorf("copies by copy count at pass start: %v, want ascending from 1", order)
	}
	for _, o := range net.opsOf("", "") {
		if o.node == "n4" {
			t.Fatalf("operation on the dead node: %+v", o)
		}
	}
}

// TestJoinRebalance: a new node gets its share, copies first and deletions
// after, and no chunk ever has fewer copies than it wants.
func TestJoinRebalance(t *testing.T) {
	e := newEnv(t)
	net := newNet("n1", "n2", "n3")
	ch := newChunks()
	write(t, net, ch, 20, 30, 2)
	write(t, net, ch, 21, 10, 1)
	w := e.start(testConfig("w1"), net, ch)
	if p := waitPass(t, w, 1); p.ToCopy+p.ToDelete != 0 {
		t.Fatalf("balanced cluster: progress %+v, want no work", p)
	}

	net.addNode(Node{ID: "n4", Alive: true})
	hook, violations := floorCheck(net, ch, 2)
	net.setHooks(nil, hook)
	w.Kick()
	p := waitPass(t, w, 2)
	if p.Copied == 0 || p.Copied != p.ToCopy || p.Deleted != p.ToDelete || p.Failed != 0 {
		t.Fatalf("progress %+v", p)
	}
	if v := violations(); len(v) > 0 {
		t.Fatalf("redundancy dropped below target: %v", v)
	}
	checkConverged(t, net, ch, 2)
	if len(net.opsOf("", "delete")) != p.Deleted {
		t.Errorf("%d deletions, progress says %d", len(net.opsOf("", "delete")), p.Deleted)
	}
}

// TestCopiesChanged: lowering a file's redundancy deletes copies, raising it
// adds them.
func TestCopiesChanged(t *testing.T) {
	e := newEnv(t)
	net := newNet("n1", "n2", "n3", "n4")
	ch := newChunks()
	down := write(t, net, ch, 30, 10, 3)
	up := write(t, net, ch, 31, 10, 2)
	ch.setCopies(30, 2)
	ch.setCopies(31, 4)
	hook, violations := floorCheck(net, ch, 2)
	net.setHooks(nil, hook)
	w := e.start(testConfig("w1"), net, ch)
	p := waitPass(t, w, 1)
	if p.Copied != 20 || p.Deleted != 10 || p.Failed != 0 {
		t.Fatalf("progress %+v, want 20 copies and 10 deletions", p)
	}
	// The counters for monitoring hold the same, and keep it when the
	// next pass (with nothing to do) starts its progress from zero.
	w.Kick()
	waitPass(t, w, 2)
	if tot := w.Totals(); tot.Passes < 2 || tot.Copied != 20 || tot.Deleted != 10 || tot.Failed != 0 || tot.BytesCopied == 0 {
		t.Fatalf("totals after two passes %+v, want 20 copies and 10 deletions", tot)
	}
	if v := violations(); len(v) > 0 {
		t.Fatalf("redundancy dropped below target: %v", v)
	}
	checkConverged(t, net, ch, 2)
	for _, id := range down {
		if n := len(net.holders(id)); n != 2 {
			t.Errorf("lowered chunk %s has %d copies", id, n)
		}
	}
	for _, id := range up {
		if n := len(net.holders(id)); n != 4 {
			t.Errorf("raised chunk %s has %d copies", id, n)
		}
	}
}

// TestDrain: a draining node is emptied of every referenced chunk without
// lowering redundancy, and the state record says so.
func TestDrain(t *testing.T) {
	e := newEnv(t)
	net := newNet("n1", "n2", "n3", "n4")
	ch := newChunks()
	write(t, net, ch, 40, 40, 2)
	write(t, net, ch, 41, 5, 3)
	net.setNode("n2", func(n *Node) { n.Draining = true })
	hook, violations := floorCheck(net, ch, 2)
	net.setHooks(nil, hook)
	w := e.start(testConfig("w1"), net, ch)
	p := waitPass(t, w, 1)
	if v := violations(); len(v) > 0 {
		t.Fatalf("redundancy dropped below target: %v", v)
	}
	net.mu.Lock()
	left := len(net.stores["n2"].chunks)
	net.mu.Unlock()
	if left != 0 {
		t.Errorf("draining node still holds %d chunks", left)
	}
	if rem, ok := p.DrainRemaining["n2"]; !ok || rem != 0 || p.Deleted == 0 {
		t.Errorf("progress %+v, want n2 drained", p)
	}
	checkConverged(t, net, ch, 2)

	// The pass's end is written to etcd after it shows in Progress.
	var st Progress
	waitFor(t, "the finished pass in etcd", func() bool {
		var err error
		st, err = w.State(t.Context())
		return err == nil && st.Pass >= 1 && !st.Running
	})
	if st.Pass != 1 || st.Running || st.Deleted != p.Deleted || st.DrainRemaining["n2"] != 0 || st.Leader != "w1" {
		t.Errorf("state in etcd %+v, want the pass's progress %+v", st, p)
	}
}

// TestCorruptSource: corrupt copies, and copies whose bytes do not match the
// namespace's checksum, are never copied, and are replaced when they sit on
// a target; a chunk with no good copy fails without writing anything.
func TestCorruptSource(t *testing.T) {
	e := newEnv(t)
	net := newNet("n1", "n2", "n3", "n4")
	ch := newChunks()
	ids := write(t, net, ch, 50, 3, 2)
	x, y, z := ids[0], ids[1], ids[2]

	// x and z: the first target's copy is bad, the second target has none,
	// a non-target has a good copy.
	// y: only one copy, corrupt, on a non-target.
	for i, id := range []chunk.ID{x, y, z} {
		targets := net.Targets(id, 2)
		net.mu.Lock()
		var other string
		for _, n := range []string{"n1", "n2", "n3", "n4"} {
			if !slices.Contains(targets, n) {
				other = n
				break
			}
		}
		good := net.stores[targets[0]].chunks[id]
		delete(net.stores[targets[1]].chunks, id)
		switch i {
		case 0:
			net.stores[targets[0]].corrupt[id] = true
			net.stores[other].chunks[id] = good
		case 1:
			delete(net.stores[targets[0]].chunks, id)
			net.stores[other].chunks[id] = good
			net.stores[other].corrupt[id] = true
		case 2:
			net.stores[targets[0]].garbled[id] = true
			net.stores[other].chunks[id] = good
		}
		net.mu.Unlock()
	}

	w := e.start(testConfig("w1"), net, ch)
	p := waitPass(t, w, 1)
	if p.Failed != 1 {
		t.Errorf("progress %+v, want one failed item (y)", p)
	}
	for _, o := range net.opsOf("", "put") {
		if o.id == y {
			t.Errorf("chunk with no good copy was written to %s", o.node)
		}
	}
	for _, id := range []chunk.ID{x, z} {
		want := slices.Sorted(slices.Values(net.Targets(id, 2)))
		if got := net.holders(id); !slices.Equal(got, want) {
			t.Errorf("chunk %s on %v, want %v", id, got, want)
		}
		net.mu.Lock()
		for _, n := range want {
			if !bytes.Equal(net.stores[n].chunks[id], ch.data[id]) {
				t.Errorf("chunk %s on %s has wrong data", id, n)
			}
		}
		net.mu.Unlock()
	}
}

// TestPartialInventory: when a node cannot list its chunks, copies go on but
// nothing is deleted, and none goes to that node (it may be dying, or hold
// the chunk already).
func TestPartialInventory(t *testing.T) {
	e := newEnv(t)
	net := newNet("n1", "n2", "n3", "n4")
	ch := newChunks()
	write(t, net, ch, 60, 10, 3)
	ch.setCopies(60, 2)
	write(t, net, ch, 61, 10, 3)
	ch.setCopies(61, 4)
	net.mu.Lock()
	net.stores["n3"].failList = true
	net.mu.Unlock()
	w := e.start(testConfig("w1"), net, ch)
	p := waitPass(t, w, 1)
	if !slices.Equal(p.Partial, []string{"n3"}) || p.Copied == 0 || p.Deleted != 0 || p.ToDelete != 0 {
		t.Fatalf("progress %+v, want copies, no deletions, n3 partial", p)
	}
	if d := net.opsOf("", "delete"); len(d) != 0 {
		t.Fatalf("%d deletions with a partial inventory", len(d))
	}
	for _, o := range net.opsOf("", "put") {
		if o.node == "n3" {
			t.Fatalf("chunk %s copied to n3, whose list failed", o.id)
		}
	}
}

// leaderKey returns the current leader's election key and lease.
func (e *testEnv) leaderKey() (string, clientv3.LeaseID) {
	e.t.Helper()
	resp, err := e.cli.Get(context.Background(), e.prefix+"repair/leader/", append(clientv3.WithFirstCreate(), clientv3.WithPrefix())...)
	if err != nil || len(resp.Kvs) == 0 {
		e.t.Fatalf("no leader key: %v", err)
	}
	return string(resp.Kvs[0].Key), clientv3.LeaseID(resp.Kvs[0].Lease)
}

// TestTwoWorkers: of two workers on one etcd only the leader acts; when its
// session ends mid-pass, the other takes over and finishes.
func TestTwoWorkers(t *testing.T) {
	e := newEnv(t)
	net := newNet("n1", "n2", "n3", "n4", "n5")
	ch := newChunks()
	write(t, net, ch, 70, 40, 2)
	write(t, net, ch, 71, 20, 3)
	net.setNode("n5", func(n *Node) { n.Alive, n.DownSince = false, time.Now().Add(-time.Hour) })
	const cfgParallel = 3 // testConfig's
	w1 := e.start(testConfig("w1"), net, ch)
	w2 := e.start(testConfig("w2"), net, ch)

	var leader, other *Worker
	waitFor(t, "a pass", func() bool {
		for _, w := range []*Worker{w1, w2} {
			if p := w.Progress(); p.Pass >= 1 && !p.Running && !p.Finished.IsZero() && p.Leader == w.cfg.Name {
				leader = w
			}
		}
		return leader != nil
	})
	other = w1
	if leader == w1 {
		other = w2
	}
	checkConverged(t, net, ch, 2)
	if n := len(net.opsOf(other.cfg.Name, "")); n != 0 || len(net.opsOf(leader.cfg.Name, "put")) == 0 {
		t.Fatalf("follower made %d operations; leader %d copies", n, len(net.opsOf(leader.cfg.Name, "put")))
	}
	if p := other.Progress(); p.Pass != 0 || p.Running {
		t.Fatalf("follower progress %+v", p)
	}

	// n4 dies too; the leader loses its session (as if its lease expired)
	// at its second copy. That copy and any other it starts wait until the
	// leader notices and cancels them.
	_, lease := e.leaderKey()
	var once sync.Once
	var leaderPuts atomic.Int32
	net.setHooks(func(ctx context.Context, o op) {
		if o.worker != leader.cfg.Name || o.kind != "put" {
			return
		}
		if leaderPuts.Add(1) >= 2 {
			once.Do(func() {
				if _, err := e.cli.Revoke(context.Background(), lease); err != nil {
					t.Errorf("revoke: %v", err)
				}
			})
			<-ctx.Done()
		}
	}, nil)
	before := len(net.opsOf(leader.cfg.Name, "put"))
	net.setNode("n4", func(n *Node) { n.Alive, n.DownSince = false, time.Now().Add(-time.Hour) })
	leader.Kick()

	p := waitLeaderPass(t, other)
	if p.Failed != 0 {
		t.Fatalf("successor progress %+v", p)
	}
	checkConverged(t, net, ch, 2)
	if len(net.opsOf(other.cfg.Name, "put")) == 0 {
		t.Error("the successor copied nothing")
	}
	if n := len(net.opsOf(leader.cfg.Name, "put")) - before; n > 1+cfgParallel {
		t.Errorf("the deposed leader started %d copies", n)
	}
	if st, err := other.State(t.Context()); err != nil || st.Leader != other.cfg.Name || st.Pass < 2 {
		t.Errorf("state %+v, %v: want the successor's pass, numbered after the first leader's", st, err)
	}
}

// TestFencing: a worker whose election key disappears (leadership revoked)
// stops before its next deletion, and finishes once it leads again.
func TestFencing(t *testing.T) {
	e := newEnv(t)
	net := newNet("n1", "n2", "n3", "n4")
	ch := newChunks()
	write(t, net, ch, 80, 10, 4)
	ch.setCopies(80, 1) // three deletions per chunk

	blocker := e.prefix + "repair/leader/blocker"
	var once sync.Once
	net.setHooks(func(_ context.Context, o op) {
		if o.kind != "delete" {
			return
		}
		once.Do(func() {
			key, _ := e.leaderKey()
			// Revoke: the key goes, and a blocker campaigning first keeps
			// the worker from leading again.
			if _, err := e.cli.Txn(context.Background()).Then(
				clientv3.OpDelete(key), clientv3.OpPut(blocker, "test")).Commit(); err != nil {
				t.Errorf("revoke leadership: %v", err)
			}
		})
	}, nil)
	cfg := testConfig("w1")
	cfg.Parallel = 1
	cfg.ProgressEvery = time.Hour // the fence check before each deletion must catch it
	w := e.start(cfg, net, ch)

	p := waitPass(t, w, 1)
	if !strings.Contains(p.LastError, "lost leadership") {
		t.Fatalf("progress %+v, want lost leadership", p)
	}
	if n := len(net.opsOf("", "delete")); n != 1 {
		t.Fatalf("%d deletions after leadership was revoked during the first; want only that one", n)
	}

	if _, err := e.cli.Delete(context.Background(), blocker); err != nil {
		t.Fatal(err)
	}
	p = waitPass(t, w, 2)
	if p.Deleted != 29 || p.Failed != 0 {
		t.Fatalf("progress %+v, want the 29 remaining deletions", p)
	}
	checkConverged(t, net, ch, 2)
}

// TestStopsOnCancel: cancelling Run during a pass ends it promptly (the
// cleanup of start checks that no goroutine is left).
func TestStopsOnCancel(t *testing.T) {
	e := newEnv(t)
	net := newNet("n1", "n2", "n3")
	ch := newChunks()
	write(t, net, ch, 90, 20, 3)
	ch.setCopies(90, 1)
	started := make(chan struct{})
	release := make(chan struct{})
	var once sync.Once
	net.setHooks(func(_ context.Context, o op) {
		if o.kind == "delete" {
			once.Do(func() { close(started) })
			<-release
		}
	}, nil)
	w, err := New(testConfig("w1"), e.cli, e.prefix, ch, net, fakeCluster{net: net, worker: "w1"}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	<-started
	cancel()
	close(release)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return")
	}
	if n := len(net.opsOf("", "delete")); n > 3 {
		t.Errorf("%d deletions after cancel, want at most one per parallel slot", n)
	}
	waitFor(t, "worker goroutines to end", func() bool {
		return !strings.Contains(allStacks(), "chunker/repair.(*Worker)")
	})
	// The election key was released at once, not left to expire.
	resp, err := e.cli.Get(context.Background(), e.prefix+"repair/leader/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || resp.Count != 0 {
		t.Errorf("election keys left: %v, %v", resp.Count, err)
	}
}
