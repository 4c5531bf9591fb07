package cluster

import (
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
