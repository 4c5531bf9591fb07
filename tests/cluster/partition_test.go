package cluster

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestPartitionMinority cuts one node of three off the network while
// clients write and read through the other two, then heals the cut. The
// majority keeps etcd's quorum and two live copies' worth of nodes, so
// its clients keep being served (the favourable/mixed postures serve);
// after the heal, every copy is back on target and the history holds.
func TestPartitionMinority(t *testing.T) {
	c := newCluster(t, options{nodes: 3, voters: 3, copies: 2, repairGrace: testGrace, repairInterval: testInterval})
	c.start()
	n1, n2, n3 := c.node(1), c.node(2), c.node(3)
	n1.waitStatus(30*time.Second, "3 alive nodes", allAlive(c.ids()...))

	l := startLoad(t, 1, n1, n2)
	l.waitWrites(30*time.Second, 10)

	l.setPhase("partitioned")
	if err := n3.host.LinkDown(); err != nil {
		t.Fatal(err)
	}
	cut := time.Now()
	n1.waitStatus(30*time.Second, "n3 dead", func(st status) bool { return st.states()["n3"] == "dead" })
	t.Logf("%v after the cut n1 reports n3 dead", time.Since(cut).Round(time.Millisecond))
	l.waitWrites(60*time.Second, 10)

	l.setPhase("healed")
	if err := n3.host.LinkUp(); err != nil {
		t.Fatal(err)
	}
	healed := time.Now()
	n1.waitStatus(60*time.Second, "3 alive nodes after the heal", allAlive(c.ids()...))
	l.waitWrites(60*time.Second, 10)
	l.stop(60 * time.Second)
	// The majority keeps quorum and enough nodes for every copy: the
	// posture serves throughout, and no write is refused.
	for _, phase := range []string{"partitioned", "healed"} {
		if c := l.phaseCounts(phase); c.Refused > 0 {
			t.Errorf("%s: %d calls refused by a posture (last error %s), want none: the majority keeps its quorum",
				phase, c.Refused, c.LastError)
		}
	}

	// Bound: the census after the heal shows no chunk off target within
	// 90 s: n3 missed writes while cut off and the repair loop, every
	// testInterval, brings its copies back or moves them elsewhere.
	st := n1.waitStatus(90*time.Second, "a census after the heal with every chunk on target",
		func(st status) bool {
			ch := st.Chunks
			return ch != nil && ch.At.After(healed) &&
				len(ch.Partial) == 0 && ch.Below == 0 && ch.Above == 0
		})
	t.Logf("%v after the heal: %s", time.Since(healed).Round(time.Millisecond), census(st))
}

// onTarget accepts a status whose census was taken after since, heard
// from every node up, with every chunk on its target: none below (so none
// missing) and none above.
func onTarget(since time.Time) func(status) bool {
	return func(st status) bool {
		ch := st.Chunks
		return ch != nil && ch.At.After(since) && len(ch.Partial) == 0 && ch.Below == 0 && ch.Above == 0
	}
}

// others is every node of c but n.
func (c *cluster) others(n *node) []*node {
	var out []*node
	for _, o := range c.nodes {
		if o != n {
			out = append(out, o)
		}
	}
	return out
}

// sigstop stops the node's process with SIGSTOP. The returned function
// resumes it with SIGCONT; it also runs when the test ends, so that a
// failed test does not leave a stopped process behind.
func (n *node) sigstop() (resume func()) {
	n.c.t.Helper()
	if err := n.proc.Signal(syscall.SIGSTOP); err != nil {
		n.c.t.Fatalf("%s: SIGSTOP: %v", n.id, err)
	}
	var once sync.Once
	resume = func() {
		once.Do(func() {
			if err := n.proc.Signal(syscall.SIGCONT); err != nil {
				n.c.t.Errorf("%s: SIGCONT: %v", n.id, err)
			}
		})
	}
	n.c.t.Cleanup(resume)
	return resume
}

// repairLeader is the node leading repair, as n's status says.
func (c *cluster) repairLeader(n *node, d time.Duration) *node {
	c.t.Helper()
	st := n.waitStatus(d, "a repair leader", func(st status) bool { return st.Repair != nil && st.Repair.Leader != "" })
	for _, o := range c.nodes {
		if o.id == st.Repair.Leader {
			return o
		}
	}
	c.t.Fatalf("repair leader %q is no node of the cluster", st.Repair.Leader)
	return nil
}

// stopPast is how long TestSIGSTOPPastLeases keeps a node stopped, at
// least: longer than everything that times out a silent node added up.
// Gossip declares it dead in about 7 s (memberlist's LAN preset), repair
// waits testGrace (3 s) more before copying its chunks elsewhere, etcd
// elects a new leader after its 1 s election timeout, and the repair
// leader's election session (repair.Config.SessionTTL, 10 s) expires:
// 21 s in all. No other lease or lock is held in etcd (the election
// session is the only one the code takes).
const stopPast = 25 * time.Second

// TestSIGSTOPPastLeases freezes a node with SIGSTOP for longer than its
// leases and timeouts, while clients write and read through the others,
// then lets it go on with SIGCONT: a process that resumes believing
// nothing happened. It does so twice: first to a node that leads neither
// etcd nor repair, then to the repair leader (the etcd leader too when
// one node leads both, as is usual). While a node is stopped the others
// keep serving, report it dead, and repair copies its chunks after the
// grace; after SIGCONT it rejoins, a stale repair leader does nothing (its
// writes are fenced by the election key's revision), every chunk comes
// back on target, and the clients' history holds.
func TestSIGSTOPPastLeases(t *testing.T) {
	c := newCluster(t, options{nodes: 3, voters: 3, copies: 2, repairGrace: testGrace, repairInterval: testInterval})
	c.start()
	n1 := c.node(1)
	n1.waitStatus(30*time.Second, "3 alive nodes", allAlive(c.ids()...))
	// Data that stays put, so that every node holds copies repair must
	// make elsewhere while it is stopped (the load's own chunks are
	// replaced at every write).
	files := writeFiles(t, n1.mount(), "/still", 1<<20, 2<<20+5, 300<<10, 700<<10+3)

	etcdLeader := c.etcdLeader(20 * time.Second)
	repairLeader := c.repairLeader(n1, 30*time.Second)
	var follower *node
	for _, n := range c.nodes {
		if n != etcdLeader && n != repairLeader {
			follower = n
			break
		}
	}
	t.Logf("etcd leader %s, repair leader %s; stopping %s first", etcdLeader.id, repairLeader.id, follower.id)
	stopAndResume(t, c, follower, "a", files)

	etcdLeader = c.etcdLeader(20 * time.Second)
	repairLeader = c.repairLeader(n1, 30*time.Second)
	t.Logf("etcd leader %s, repair leader %s; stopping the repair leader %s (etcd leader too: %v)",
		etcdLeader.id, repairLeader.id, repairLeader.id, etcdLeader == repairLeader)
	stopAndResume(t, c, repairLeader, "b", files)
}

// stopAndResume runs one round of TestSIGSTOPPastLeases on victim, with a
// load of its own (files named prefix-*) through the other nodes.
func stopAndResume(t *testing.T, c *cluster, victim *node, prefix string, files []testFile) {
	t.Helper()
	others := c.others(victim)
	watcher := others[0]
	l := startLoadNamed(t, prefix+"-", 1, others...)
	l.waitWrites(30*time.Second, 10)

	// Anything this node leads, before it stops.
	var before status
	if _, err := watcher.jsonCommand(&before, "status"); err != nil {
		t.Fatal(err)
	}
	wasLeader := before.Repair != nil && before.Repair.Leader == victim.id

	l.setPhase("stopped")
	resume := victim.sigstop()
	stopped := time.Now()
	watcher.waitStatus(30*time.Second, victim.id+" dead", func(st status) bool { return st.states()[victim.id] == "dead" })
	t.Logf("%v after SIGSTOP %s reports %s dead", time.Since(stopped).Round(time.Millisecond), watcher.id, victim.id)
	l.waitWrites(60*time.Second, 10)

	// Bound: within 60 s of the stop, a census taken after the victim
	// was seen dead shows no chunk below target, repair (led by another
	// node) having copied the victim's chunks elsewhere: gossip's
	// detection, the grace, and (when the victim led repair) its
	// session's expiry make 21 s; a pass every testInterval and a few
	// MiB to copy add seconds, and a status asked while the victim still
	// counted as alive waits up to 10 s for its chunk list (the peer
	// connection's health check). Seen: 17 s for a follower, 32 s for
	// the leader of both etcd and repair. The postures serve throughout:
	// two of three nodes keep etcd's quorum and room for both copies.
	dead := time.Now()
	seen := passes{}
	var notServing []string
	st := watcher.waitStatus(60*time.Second-time.Since(stopped), "a census with no chunk below target, repair led by another node, while "+victim.id+" is stopped",
		func(st status) bool {
			seen.see(st)
			if st.Posture != "serve" {
				notServing = append(notServing, st.Situation+"/"+st.Posture+": "+st.AtRisk)
			}
			ch, r := st.Chunks, st.Repair
			return r != nil && r.Leader != victim.id && ch != nil && ch.At.After(dead) && len(ch.Partial) == 0 && ch.Below == 0
		})
	copied, _, _, _ := seen.totals()
	t.Logf("%v after SIGSTOP: repair led by %s; %s; passes seen copied %d chunks:%s", time.Since(stopped).Round(time.Millisecond),
		st.Repair.Leader, census(st), copied, seen)
	if wasLeader {
		t.Logf("repair leadership moved from %s to %s while it was stopped", victim.id, st.Repair.Leader)
	}
	// The victim stays stopped for stopPast at least, leases included.
	for time.Since(stopped) < stopPast {
		st := watcher.waitStatus(10*time.Second, "a status", func(status) bool { return true })
		seen.see(st)
		if st.Posture != "serve" {
			notServing = append(notServing, st.Situation+"/"+st.Posture+": "+st.AtRisk)
		}
	}
	newLeader := st.Repair.Leader

	l.setPhase("resumed")
	resume()
	resumed := time.Now()
	t.Logf("SIGCONT %s after %v stopped", victim.id, resumed.Sub(stopped).Round(time.Millisecond))
	// A stale leader must not act: every repair record written from
	// now on comes from the leader elected while the victim was
	// stopped (the records are written under the election key's
	// fence, and so are deletions).
	var stale []string
	staleCheck := func(st status) {
		if r := st.Repair; r != nil && r.Leader == victim.id && wasLeader {
			stale = append(stale, fmt.Sprintf("pass %d by %s (running %v)", r.Pass, r.Leader, r.Running))
		}
	}
	watcher.waitStatus(60*time.Second, "3 alive nodes after SIGCONT", func(st status) bool {
		staleCheck(st)
		return allAlive(c.ids()...)(st)
	})
	t.Logf("%v after SIGCONT %s reports every node alive", time.Since(resumed).Round(time.Millisecond), watcher.id)
	l.waitWrites(60*time.Second, 10)
	l.stop(60 * time.Second)
	for _, phase := range []string{"stopped", "resumed"} {
		if cnt := l.phaseCounts(phase); cnt.Refused > 0 {
			t.Errorf("%s: %d calls refused by a posture (last error %s), want none: two nodes of three keep the quorum",
				phase, cnt.Refused, cnt.LastError)
		}
	}
	if len(notServing) > 0 {
		t.Errorf("while %s was stopped, status showed a posture other than serve %d times: %s",
			victim.id, len(notServing), strings.Join(notServing[:min(len(notServing), 5)], "; "))
	}

	// Bound: 90 s after the load stops, a census shows every chunk on
	// target: the victim's copies of chunks that repair copied while it
	// was stopped, and of the load's chunks replaced since, are extras
	// that the repair loop (every testInterval) deletes.
	stoppedLoad := time.Now()
	st = watcher.waitStatus(90*time.Second, "a census with every chunk on target after SIGCONT", func(st status) bool {
		staleCheck(st)
		seen.see(st)
		return onTarget(stoppedLoad)(st)
	})
	t.Logf("%v after SIGCONT: %s; repair led by %s; passes seen:%s", time.Since(resumed).Round(time.Millisecond),
		census(st), newLeader, seen)
	if len(stale) > 0 {
		t.Errorf("the stale repair leader %s wrote records after SIGCONT: %s", victim.id, strings.Join(stale, "; "))
	}
	checkFiles(t, victim.mount(), victim.id, files)
	// The resumed node may judge the situation critical for a moment (its
	// quorum probes failed while it was stopped and while its etcd member
	// catches up); the posture lifts by itself. Bound: 60 s.
	st = victim.waitStatus(60*time.Second, "the serve posture after SIGCONT", func(st status) bool {
		return st.Posture == "serve"
	})
	t.Logf("%v after SIGCONT %s serves again (situation %q)", time.Since(resumed).Round(time.Millisecond), victim.id, st.Situation)
}

// TestPartitionClientNode cuts off the node a client writes through,
// while a second client writes through another node. The cut-off node is
// a minority of one: it loses etcd's quorum, judges the situation
// critical and applies its posture (read-only, the default), so none of
// its clients' writes is acknowledged and then lost; the majority keeps
// serving its client. After the heal the cut-off node serves again, every
// copy is back on target and the history holds.
func TestPartitionClientNode(t *testing.T) {
	c := newCluster(t, options{nodes: 3, voters: 3, copies: 2, repairGrace: testGrace, repairInterval: testInterval})
	c.start()
	n1, n3 := c.node(1), c.node(3)
	n1.waitStatus(30*time.Second, "3 alive nodes", allAlive(c.ids()...))

	l := startLoad(t, 1, n3, n1)
	l.waitWritesVia(30*time.Second, 5, "n3")
	l.waitWritesVia(30*time.Second, 5, "n1")

	l.setPhase("partitioned")
	if err := n3.host.LinkDown(); err != nil {
		t.Fatal(err)
	}
	cut := time.Now()
	n1.waitStatus(30*time.Second, "n3 dead", func(st status) bool { return st.states()["n3"] == "dead" })
	t.Logf("%v after the cut n1 reports n3 dead", time.Since(cut).Round(time.Millisecond))
	// Bound: n3 notices within 45 s that it has lost the quorum (its
	// posture loop probes etcd every 5 s with a 5 s deadline, and wants
	// the loss to last 10 s), and says so on its status.
	st := n3.waitStatus(45*time.Second-time.Since(cut), "n3 critical and read-only", func(st status) bool {
		return st.Situation == "critical" && st.Posture == "read-only"
	})
	t.Logf("%v after the cut n3 says: situation %q posture %q: %s; advice: %s", time.Since(cut).Round(time.Millisecond),
		st.Situation, st.Posture, st.AtRisk, st.Advice)
	l.waitWritesVia(60*time.Second, 10, "n1")
	st = n1.waitStatus(30*time.Second, "n1 serving", func(st status) bool { return st.Posture == "serve" })
	t.Logf("n1 says: situation %q posture %q: %s", st.Situation, st.Posture, st.AtRisk)

	l.setPhase("healed")
	cutFor := time.Since(cut)
	if err := n3.host.LinkUp(); err != nil {
		t.Fatal(err)
	}
	healed := time.Now()
	n1.waitStatus(60*time.Second, "3 alive nodes after the heal", allAlive(c.ids()...))
	st = n3.waitStatus(60*time.Second, "n3 serving after the heal", func(st status) bool { return st.Posture == "serve" })
	t.Logf("%v after the heal n3 says: situation %q posture %q", time.Since(healed).Round(time.Millisecond), st.Situation, st.Posture)
	l.waitWritesVia(60*time.Second, 5, "n3")
	l.waitWritesVia(60*time.Second, 5, "n1")
	l.stop(60 * time.Second)

	// While cut off, n3 acknowledges no write, but one that reached etcd
	// just before the cut (the worker has one call in flight at a time).
	if cnt := l.nodeCounts("partitioned", "n3"); cnt.WritesOK > 1 {
		t.Errorf("n3 acknowledged %d writes while cut off from the quorum for %v, want at most 1 (in flight at the cut)",
			cnt.WritesOK, cutFor.Round(time.Second))
	} else {
		t.Logf("through n3 while cut off: %+v", cnt)
	}
	for _, phase := range []string{"partitioned", "healed"} {
		if cnt := l.nodeCounts(phase, "n1"); cnt.Refused > 0 {
			t.Errorf("%s: %d calls through n1 refused by a posture (last error %s), want none: n1 is in the majority",
				phase, cnt.Refused, cnt.LastError)
		}
	}
	// Bound: as TestPartitionMinority.
	stopped := time.Now()
	st = n1.waitStatus(90*time.Second, "a census after the heal with every chunk on target", onTarget(stopped))
	t.Logf("%v after the heal: %s", time.Since(healed).Round(time.Millisecond), census(st))
}

// TestKillMinority kills two nodes of five (kill -9), one of the three
// etcd voters (n3) and one etcd client (n5), while clients write through
// two of the others. Two voters of three keep etcd's quorum, and three
// copies still fit on the three nodes left: the majority serves throughout
// (favourable: repair can restore every copy), repair copies every chunk
// back to three copies, and when the two return their copies are extras,
// which repair deletes. (Five voters cannot be started one node at a time:
// the product refuses an even number of voters.)
func TestKillMinority(t *testing.T) {
	c := newCluster(t, options{nodes: 5, voters: 3, copies: 3, repairGrace: testGrace, repairInterval: testInterval})
	c.start()
	n1, n2, n3, n5 := c.node(1), c.node(2), c.node(3), c.node(5)
	n1.waitStatus(30*time.Second, "5 alive nodes", allAlive(c.ids()...))
	files := writeFiles(t, n1.mount(), "/k", 1<<20, 2<<20+5, 300<<10, 1<<20+777, 64<<10)

	l := startLoad(t, 1, n1, n2)
	l.waitWrites(30*time.Second, 10)

	l.setPhase("killed")
	killed := time.Now()
	n3.proc.Kill9()
	n5.proc.Kill9()
	n1.waitStatus(30*time.Second, "n3 and n5 dead", func(st status) bool {
		s := st.states()
		return s["n3"] == "dead" && s["n5"] == "dead"
	})
	dead := time.Now()
	t.Logf("%v after the kill n1 reports n3 and n5 dead", dead.Sub(killed).Round(time.Millisecond))
	l.waitWrites(60*time.Second, 20)
	st := n1.waitStatus(30*time.Second, "a status", func(status) bool { return true })
	t.Logf("with n3 and n5 dead: situation %q posture %q: %s", st.Situation, st.Posture, st.AtRisk)
	if st.Posture != "serve" {
		t.Errorf("with two nodes of five dead, posture %q (situation %q: %s), want serve", st.Posture, st.Situation, st.AtRisk)
	}
	l.stop(60 * time.Second)
	if cnt := l.phaseCounts("killed"); cnt.Refused > 0 {
		t.Errorf("%d calls refused by a posture with two nodes of five dead (last error %s), want none", cnt.Refused, cnt.LastError)
	}

	// Bound: within 90 s of n3 and n5 seen dead, every chunk has its
	// three copies on n1, n2 and n4: the grace (3 s), a pass every testInterval,
	// and copying some 10 MiB at 64 MiB/s.
	seen := passes{}
	st = n1.waitStatus(90*time.Second, "every chunk back on 3 copies without n3 and n5", func(st status) bool {
		seen.see(st)
		return onTarget(dead)(st)
	})
	t.Logf("%v after n3 and n5 dead: %s; passes seen:%s", time.Since(dead).Round(time.Millisecond), census(st), seen)
	n1.holders(30*time.Second, files, func(_ testFile, w where) error {
		for _, ch := range w.Chunks {
			if len(ch.Holders) != 3 || slices.Contains(ch.Holders, "n3") || slices.Contains(ch.Holders, "n5") {
				return fmt.Errorf("chunk %d holders %v, want n1, n2 and n4", ch.Index, ch.Holders)
			}
		}
		return nil
	})

	n3.restart(60 * time.Second)
	n5.restart(60 * time.Second)
	n1.waitStatus(60*time.Second, "5 alive nodes", allAlive(c.ids()...))
	back := time.Now()
	// Bound: within 60 s of both back, their copies are deleted as
	// extras and placement's moves are done: every chunk on target.
	seen = passes{}
	st = n1.waitStatus(60*time.Second, "every chunk on target with n3 and n5 back", func(st status) bool {
		seen.see(st)
		return onTarget(back)(st)
	})
	_, deleted, _, _ := seen.totals()
	t.Logf("%v after n3 and n5 back: %s; %d copies deleted; passes seen:%s", time.Since(back).Round(time.Millisecond),
		census(st), deleted, seen)
	checkFiles(t, n5.mount(), "n5", files)
}
