package replica_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/wormhole-fs/wormhole/chunker"
	"github.com/wormhole-fs/wormhole/chunker/chunk"
	"github.com/wormhole-fs/wormhole/chunker/replica"
)

func TestConfig(t *testing.T) {
	c := newCluster(t, 1)
	st := c.stores["n1"]
	d := &testDialer{c: c}
	m := &view{c: c, self: "n1"}

	s, err := replica.New(replica.Config{}, st, m, d, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := s.Config(), replica.DefaultConfig(); got != want {
		t.Errorf("defaults = %+v, want %+v", got, want)
	}
	s, err = replica.New(replica.Config{Copies: 3}, st, m, d, testLogger(t))
	if err != nil || s.Config().MinCopies != 3 {
		t.Fatalf("MinCopies should default to Copies: %+v, %v", s.Config(), err)
	}

	for _, cfg := range []replica.Config{
		{Copies: -1},
		{Copies: 2, MinCopies: 3},
		{Copies: 2, MinCopies: -1},
		{Timeout: -time.Second},
		{ReportBuffer: -1},
	} {
		if _, err := replica.New(cfg, st, m, d, testLogger(t)); err == nil {
			t.Errorf("New(%+v) succeeded", cfg)
		}
	}
	if _, err := replica.New(replica.Config{}, nil, m, d, testLogger(t)); err == nil {
		t.Error("New without a local store succeeded")
	}
}

func TestPutLandsOnPlacementTargets(t *testing.T) {
	for _, copies := range []int{1, 2, 3} {
		t.Run(fmt.Sprintf("copies=%d", copies), func(t *testing.T) {
			c := newCluster(t, 3)
			s := c.replicaStore("n1", replica.Config{Copies: copies})
			rng := rand.New(rand.NewPCG(uint64(copies), 1))
			selfHeld, selfNot := 0, 0
			for range 30 {
				id := chunk.NewID()
				data := randomData(rng, 1+rng.IntN(5000))
				sum, err := s.Put(t.Context(), id, data)
				if err != nil {
					t.Fatalf("Put: %v", err)
				}
				if sum == (chunk.Sum{}) {
					t.Fatal("Put returned a zero sum")
				}
				want := sorted(c.ranking(id)[:copies])
				if got := c.holding(id); !slices.Equal(got, want) {
					t.Fatalf("chunk on %v, placement says %v", got, want)
				}
				if got := sorted(s.Holders(id, 0)); !slices.Equal(got, want) {
					t.Fatalf("Holders = %v, want %v", got, want)
				}
				if slices.Contains(want, "n1") {
					selfHeld++
				} else {
					selfNot++
				}
				mustGet(t, s, id, data)
			}
			if copies < 3 && (selfHeld == 0 || selfNot == 0) {
				t.Errorf("placement never (or always) chose self: %d/%d", selfHeld, selfNot)
			}
			if r := drain(s); len(r) != 0 {
				t.Errorf("unexpected reports %+v", r)
			}
		})
	}
}

func TestPutFailsOverToSpare(t *testing.T) {
	for _, tt := range []struct {
		name  string
		apply func(c *cluster)
	}{
		{"not alive", func(c *cluster) { c.setAlive("n2", false) }},
		{"unreachable", func(c *cluster) { c.setFault("n2", down) }},
		{"no dial", func(c *cluster) { c.setFault("n2", noDial) }},
		{"full", func(c *cluster) { c.setWeight("n2", 0) }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := newCluster(t, 3)
			s := c.replicaStore("n1", replica.Config{Copies: 2})
			// n2 is a placement target while all nodes are healthy.
			id := idWhere(t, c.ranking, func(r []string) bool { return slices.Contains(r[:2], "n2") })
			tt.apply(c)
			data := []byte("failover")
			if _, err := s.Put(t.Context(), id, data); err != nil {
				t.Fatalf("Put: %v", err)
			}
			if got := c.holding(id); !slices.Equal(got, []string{"n1", "n3"}) {
				t.Fatalf("chunk on %v, want [n1 n3]", got)
			}
			mustGet(t, s, id, data)
			if r := drain(s); len(r) != 0 {
				t.Errorf("unexpected reports %+v", r)
			}
		})
	}
}

func TestPutNotEnoughNodes(t *testing.T) {
	for _, tt := range []struct {
		name string
		f    fault
	}{
		{"not alive", -1},
		{"unreachable", down},
		{"reply lost after storing", lostReply},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := newCluster(t, 3)
			s := c.replicaStore("n1", replica.Config{Copies: 2, MinCopies: 2})
			for _, n := range []string{"n2", "n3"} {
				if tt.f < 0 {
					c.setAlive(n, false)
				} else {
					c.setFault(n, tt.f)
				}
			}
			for range 5 {
				id := chunk.NewID()
				_, err := s.Put(t.Context(), id, []byte("lonely"))
				if !errors.Is(err, replica.ErrNotEnoughNodes) {
					t.Fatalf("Put = %v, want ErrNotEnoughNodes", err)
				}
				if errors.Is(err, chunk.ErrNoSpace) {
					t.Errorf("Put error %v wraps ErrNoSpace", err)
				}
				if got := c.holding(id); len(got) != 0 {
					t.Fatalf("failed Put left copies on %v", got)
				}
			}
			if r := drain(s); len(r) != 0 {
				t.Errorf("unexpected reports %+v", r)
			}
		})
	}
}

func TestPutClusterFull(t *testing.T) {
	c := newCluster(t, 3)
	for _, n := range []string{"n1", "n2", "n3"} {
		c.setWeight(n, 0)
	}
	s := c.replicaStore("n1", replica.Config{})
	_, err := s.Put(t.Context(), chunk.NewID(), []byte("x"))
	if !errors.Is(err, replica.ErrNotEnoughNodes) || !errors.Is(err, chunk.ErrNoSpace) {
		t.Fatalf("Put = %v, want ErrNotEnoughNodes and ErrNoSpace", err)
	}
}

func TestPutMinCopiesReportsUnderReplicated(t *testing.T) {
	for _, tt := range []struct {
		name  string
		apply func(c *cluster, n string)
	}{
		{"not alive", func(c *cluster, n string) { c.setAlive(n, false) }},
		{"unreachable", func(c *cluster, n string) { c.setFault(n, down) }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := newCluster(t, 3)
			s := c.replicaStore("n1", replica.Config{Copies: 2, MinCopies: 1})
			tt.apply(c, "n2")
			tt.apply(c, "n3")
			id := chunk.NewID()
			data := []byte("one is enough")
			if _, err := s.Put(t.Context(), id, data); err != nil {
				t.Fatalf("Put: %v", err)
			}
			if got := c.holding(id); !slices.Equal(got, []string{"n1"}) {
				t.Fatalf("chunk on %v, want [n1]", got)
			}
			r := drain(s)
			if len(r) != 1 || r[0].ID != id || r[0].Reason != replica.ReasonUnderReplicated ||
				!slices.Equal(r[0].Good, []string{"n1"}) {
				t.Fatalf("reports = %+v, want one under-replicated report with good copy on n1", r)
			}
			mustGet(t, s, id, data)
		})
	}
}

func TestGetCorruptCopy(t *testing.T) {
	for _, tt := range []struct {
		name       string
		selfHolder bool
	}{
		{"self holds a copy", true},
		{"remote copies only", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := newCluster(t, 3)
			s := c.replicaStore("n1", replica.Config{Copies: 2})
			id := idWhere(t, c.ranking, func(r []string) bool { return slices.Contains(r[:2], "n1") == tt.selfHolder })
			data := []byte("precious bytes")
			if _, err := s.Put(t.Context(), id, data); err != nil {
				t.Fatal(err)
			}
			// The holder Get asks first: self when it holds a copy,
			// else the top of the ranking.
			targets := c.ranking(id)[:2]
			first, other := targets[0], targets[1]
			if tt.selfHolder && first != "n1" {
				first, other = other, first
			}
			c.corrupt(first, id)

			mustGet(t, s, id, data)
			r := drain(s)
			want := replica.RepairReport{ID: id, Reason: replica.ReasonCorrupt, Node: first, Good: []string{other}}
			if len(r) != 1 || r[0].ID != want.ID || r[0].Reason != want.Reason || r[0].Node != want.Node ||
				!slices.Equal(r[0].Good, want.Good) {
				t.Fatalf("reports = %+v, want [%+v]", r, want)
			}
		})
	}
}

func TestGetAllCopiesCorrupt(t *testing.T) {
	c := newCluster(t, 3)
	s := c.replicaStore("n1", replica.Config{Copies: 2})
	id := chunk.NewID()
	if _, err := s.Put(t.Context(), id, []byte("doomed")); err != nil {
		t.Fatal(err)
	}
	holders := c.holding(id)
	for _, n := range holders {
		c.corrupt(n, id)
	}
	data, err := s.Get(t.Context(), id)
	if !errors.Is(err, chunk.ErrCorrupt) || data != nil {
		t.Fatalf("Get = %d bytes, %v; want ErrCorrupt", len(data), err)
	}
	if errors.Is(err, chunk.ErrNotFound) || errors.Is(err, replica.ErrNotEnoughNodes) {
		t.Errorf("Get error %v wraps more than ErrCorrupt", err)
	}
	var nodes []string
	for _, r := range drain(s) {
		if r.Reason != replica.ReasonCorrupt || len(r.Good) != 0 {
			t.Errorf("unexpected report %+v", r)
		}
		nodes = append(nodes, r.Node)
	}
	if got := sorted(nodes); !slices.Equal(got, holders) {
		t.Fatalf("corrupt reports for %v, want %v", got, holders)
	}
}

func TestGetMissingCopyOnTarget(t *testing.T) {
	c := newCluster(t, 3)
	s := c.replicaStore("n1", replica.Config{Copies: 2})
	id := idWhere(t, c.ranking, func(r []string) bool { return !slices.Contains(r[:2], "n1") })
	data := []byte("half gone")
	if _, err := s.Put(t.Context(), id, data); err != nil {
		t.Fatal(err)
	}
	lost := c.ranking(id)[0]
	if err := c.stores[lost].Delete(t.Context(), id); err != nil {
		t.Fatal(err)
	}
	mustGet(t, s, id, data)
	r := drain(s)
	if len(r) != 1 || r[0].Reason != replica.ReasonMissing || r[0].Node != lost {
		t.Fatalf("reports = %+v, want one missing report for %s", r, lost)
	}
}

func TestGetSkipsUnreachableHolder(t *testing.T) {
	c := newCluster(t, 3)
	s := c.replicaStore("n1", replica.Config{Copies: 2})
	id := idWhere(t, c.ranking, func(r []string) bool { return !slices.Contains(r[:2], "n1") })
	data := []byte("still here")
	if _, err := s.Put(t.Context(), id, data); err != nil {
		t.Fatal(err)
	}
	c.setFault(c.ranking(id)[0], down)
	mustGet(t, s, id, data)
	if r := drain(s); len(r) != 0 {
		t.Errorf("an unreachable node is not a repair case: %+v", r)
	}
}

func TestGetNotFound(t *testing.T) {
	c := newCluster(t, 3)
	s := c.replicaStore("n1", replica.Config{})
	_, err := s.Get(t.Context(), chunk.NewID())
	if !errors.Is(err, chunk.ErrNotFound) || errors.Is(err, replica.ErrNotEnoughNodes) || errors.Is(err, chunk.ErrCorrupt) {
		t.Fatalf("Get of an unknown chunk = %v, want only ErrNotFound", err)
	}
	// With a node down, the chunk may be there: say so as well.
	c.setAlive("n3", false)
	_, err = s.Get(t.Context(), chunk.NewID())
	if !errors.Is(err, chunk.ErrNotFound) || !errors.Is(err, replica.ErrNotEnoughNodes) {
		t.Fatalf("Get with a node down = %v, want ErrNotFound and ErrNotEnoughNodes", err)
	}
	c.setAlive("n3", true)
	c.setFault("n2", down)
	_, err = s.Get(t.Context(), chunk.NewID())
	if !errors.Is(err, chunk.ErrNotFound) || !errors.Is(err, replica.ErrNotEnoughNodes) {
		t.Fatalf("Get with a node unreachable = %v, want ErrNotFound and ErrNotEnoughNodes", err)
	}
	// Reports only name placement targets, never self when not a target.
	for _, r := range drain(s) {
		if r.Reason != replica.ReasonMissing {
			t.Errorf("unexpected report %+v", r)
		}
	}
}

// TestGetSearchesBeyondPlacement stores a chunk, then adds nodes that take
// over its placement: Get must still find the old copies further down the
// ranking, and report the new targets as missing.
func TestGetSearchesBeyondPlacement(t *testing.T) {
	c := newCluster(t, 3)
	s := c.replicaStore("n1", replica.Config{Copies: 2})
	c.add("n4", 1<<30)
	c.add("n5", 1<<30)
	c.setAlive("n4", false)
	c.setAlive("n5", false)
	var id chunk.ID
	for i := 0; ; i++ {
		if i == 1000 {
			t.Fatal("no chunk ID with the wanted placements")
		}
		id = idWhere(t, c.ranking, func(r []string) bool { return slices.Equal(sorted(r[:2]), []string{"n2", "n3"}) })
		c.setAlive("n4", true)
		c.setAlive("n5", true)
		if slices.Equal(sorted(c.ranking(id)[:2]), []string{"n4", "n5"}) {
			break
		}
		c.setAlive("n4", false)
		c.setAlive("n5", false)
	}
	c.setAlive("n4", false)
	c.setAlive("n5", false)
	data := []byte("moved around")
	if _, err := s.Put(t.Context(), id, data); err != nil {
		t.Fatal(err)
	}
	c.setAlive("n4", true)
	c.setAlive("n5", true)
	if got := sorted(s.Holders(id, 0)); !slices.Equal(got, []string{"n4", "n5"}) {
		t.Fatalf("Holders after join = %v", got)
	}

	mustGet(t, s, id, data)
	var missing []string
	for _, r := range drain(s) {
		if r.Reason != replica.ReasonMissing || len(r.Good) != 1 {
			t.Errorf("unexpected report %+v", r)
		}
		missing = append(missing, r.Node)
	}
	if got := sorted(missing); !slices.Equal(got, []string{"n4", "n5"}) {
		t.Fatalf("missing reports for %v, want [n4 n5]", got)
	}
}

func TestDelete(t *testing.T) {
	c := newCluster(t, 3)
	s := c.replicaStore("n1", replica.Config{Copies: 2})
	ctx := t.Context()
	id := chunk.NewID()
	if _, err := s.Put(ctx, id, []byte("short-lived")); err != nil {
		t.Fatal(err)
	}
	// A stray copy off placement (left by an earlier failover).
	for _, n := range []string{"n1", "n2", "n3"} {
		if _, err := c.stores[n].Put(ctx, id, []byte("short-lived")); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 { // idempotent
		if err := s.Delete(ctx, id); err != nil {
			t.Fatalf("Delete: %v", err)
		}
		if got := c.holding(id); len(got) != 0 {
			t.Fatalf("after Delete the chunk is on %v", got)
		}
	}
	if err := s.Delete(ctx, chunk.NewID()); err != nil {
		t.Fatalf("Delete of an unknown chunk: %v", err)
	}

	// An unreachable node fails the Delete; the others still delete.
	id = chunk.NewID()
	if _, err := s.Put(ctx, id, []byte("x")); err != nil {
		t.Fatal(err)
	}
	c.setFault("n3", down)
	if _, err := c.stores["n3"].Put(ctx, id, []byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, id); !errors.Is(err, errDown) {
		t.Fatalf("Delete with a node unreachable = %v, want its error", err)
	}
	if got := c.holding(id); !slices.Equal(got, []string{"n3"}) {
		t.Fatalf("after Delete the chunk is on %v, want only the unreachable n3", got)
	}
}

func TestReportsNeverBlock(t *testing.T) {
	c := newCluster(t, 3)
	s := c.replicaStore("n1", replica.Config{Copies: 3, MinCopies: 1, ReportBuffer: 1})
	c.setFault("n2", down)
	for range 3 {
		if _, err := s.Put(t.Context(), chunk.NewID(), []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	if r := drain(s); len(r) != 1 {
		t.Fatalf("%d reports queued, want 1", len(r))
	}
	if got := s.DroppedReports(); got != 2 {
		t.Fatalf("DroppedReports = %d, want 2", got)
	}
}

func TestPutCancelled(t *testing.T) {
	c := newCluster(t, 3)
	s := c.replicaStore("n1", replica.Config{Copies: 2})
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	id := chunk.NewID()
	_, err := s.Put(ctx, id, []byte("x"))
	if !errors.Is(err, replica.ErrNotEnoughNodes) || !errors.Is(err, context.Canceled) {
		t.Fatalf("Put with a cancelled context = %v", err)
	}
	if got := c.holding(id); len(got) != 0 {
		t.Fatalf("cancelled Put left copies on %v", got)
	}
}

func TestConcurrentPutGetDelete(t *testing.T) {
	c := newCluster(t, 3)
	stores := []*replica.Store{
		c.replicaStore("n1", replica.Config{Copies: 2}),
		c.replicaStore("n2", replica.Config{Copies: 2}),
		c.replicaStore("n3", replica.Config{Copies: 2}),
	}
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for range 20 {
				id := chunk.NewID()
				data := randomData(rng, 1+rng.IntN(3000))
				if _, err := stores[rng.IntN(3)].Put(t.Context(), id, data); err != nil {
					t.Errorf("Put: %v", err)
					return
				}
				got, err := stores[rng.IntN(3)].Get(t.Context(), id)
				if err != nil || string(got) != string(data) {
					t.Errorf("Get: %v", err)
					return
				}
				if rng.IntN(2) == 0 {
					if err := stores[rng.IntN(3)].Delete(t.Context(), id); err != nil {
						t.Errorf("Delete: %v", err)
					}
				}
			}
		})
	}
	wg.Wait()
}

var _ chunker.RangeReader = (*replica.Store)(nil)

// TestReadRange checks range reads: from this node's copy when it has a
// good one, else through Get's search (with its repair report), clamped
// like LocalStore.ReadRange.
func TestReadRange(t *testing.T) {
	for _, tt := range []struct {
		name  string
		fault func(c *cluster, id chunk.ID) // applied to n1's copy
		want  replica.Reason                // report expected, if any
	}{
		{"good local copy", func(*cluster, chunk.ID) {}, ""},
		{"corrupt local copy", func(c *cluster, id chunk.ID) { c.corrupt("n1", id) }, replica.ReasonCorrupt},
		{"missing local copy", func(c *cluster, id chunk.ID) {
			if err := c.stores["n1"].Delete(t.Context(), id); err != nil {
				t.Fatal(err)
			}
		}, replica.ReasonMissing},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx := t.Context()
			c := newCluster(t, 3)
			s := c.replicaStore("n1", replica.Config{Copies: 2})
			id := idWhere(t, c.ranking, func(r []string) bool { return slices.Contains(r[:2], "n1") })
			data := bytes.Repeat([]byte("0123456789abcdef"), 10000) // 160000 bytes: 3 blocks
			if _, err := s.Put(ctx, id, data); err != nil {
				t.Fatal(err)
			}
			tt.fault(c, id)
			n := int64(len(data))
			// Lent in place only from a good copy on this node (the
			// corruption is in the last byte).
			v, release, err := s.ViewRange(ctx, id, n-50, 100)
			if tt.want == "" && (err != nil || !bytes.Equal(v, data[n-50:])) {
				t.Fatalf("ViewRange of a good local copy: %d bytes, %v", len(v), err)
			}
			if tt.want != "" && (!errors.Is(err, chunk.ErrNoView) || v != nil) {
				t.Fatalf("ViewRange without a good local copy: %d bytes, %v; want ErrNoView", len(v), err)
			}
			if release != nil {
				release()
			}
			for _, r := range [][2]int64{{n - 5, 100}, {0, 10}, {chunker.BlockSize - 3, 6}, {n, 1}, {0, n}} {
				got := make([]byte, r[1])
				k, err := s.ReadRange(ctx, id, got, r[0])
				lo := min(r[0], n)
				hi := lo + min(r[1], n-lo)
				if err != nil || !bytes.Equal(got[:k], data[lo:hi]) {
					t.Fatalf("ReadRange(%d bytes at %d) = %d bytes, %v; want %d bytes", r[1], r[0], k, err, hi-lo)
				}
			}
			reports := drain(s)
			if tt.want == "" && len(reports) != 0 {
				t.Fatalf("reports %+v for a good local copy", reports)
			}
			if tt.want != "" && (len(reports) == 0 || reports[0].Reason != tt.want || reports[0].Node != "n1") {
				t.Fatalf("reports %+v, want %s of n1", reports, tt.want)
			}
			if _, err := s.ReadRange(ctx, id, make([]byte, 1), -1); err == nil {
				t.Fatal("negative offset accepted")
			}
		})
	}
}
