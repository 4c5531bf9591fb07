package replica_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/wormhole-fs/wormhole/chunker"
	"github.com/wormhole-fs/wormhole/chunker/chunk"
	"github.com/wormhole-fs/wormhole/chunker/peer"
	"github.com/wormhole-fs/wormhole/chunker/placement"
	"github.com/wormhole-fs/wormhole/chunker/replica"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var (
	_ chunker.Blobs      = (*replica.Store)(nil)
	_ replica.Local      = (*chunker.LocalStore)(nil)
	_ replica.Remote     = (*peer.Client)(nil)
	_ replica.Dialer     = (*testDialer)(nil)
	_ replica.Remote     = (*fakeRemote)(nil)
	_ replica.Membership = (*view)(nil)
)

func testLogger(t testing.TB) zerolog.Logger {
	return zerolog.New(zerolog.NewTestWriter(t))
}

func openStore(t *testing.T) *chunker.LocalStore {
	t.Helper()
	s, err := chunker.OpenLocal(filepath.Join(t.TempDir(), "chunks"), testLogger(t))
	if err != nil {
		t.Fatalf("OpenLocal: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// fault is how a node misbehaves when reached through the test dialer.
type fault int

const (
	healthy   fault = iota
	down            // every operation fails like an unreachable node
	lostReply       // Put stores the chunk, then fails; other operations work
	noDial          // the dialer cannot produce a Remote
)

var errDown = errors.New("test: node unreachable")

// cluster is a set of nodes, each with a real LocalStore, its membership
// facts and an injectable fault.
type cluster struct {
	t      *testing.T
	mu     sync.Mutex
	nodes  []replica.Node
	stores map[string]*chunker.LocalStore
	faults map[string]fault
}

// newCluster returns n alive nodes "n1".."n<n>" of equal weight.
func newCluster(t *testing.T, n int) *cluster {
	c := &cluster{t: t, stores: map[string]*chunker.LocalStore{}, faults: map[string]fault{}}
	for i := 1; i <= n; i++ {
		c.add(fmt.Sprintf("n%d", i), 1<<30)
	}
	return c
}

// add creates an alive node with its own store.
func (c *cluster) add(id string, weight float64) {
	st := openStore(c.t)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.nodes = append(c.nodes, replica.Node{ID: id, Weight: weight, Alive: true})
	c.stores[id] = st
}

func (c *cluster) setAlive(id string, alive bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range c.nodes {
		if c.nodes[i].ID == id {
			c.nodes[i].Alive = alive
		}
	}
}

func (c *cluster) setWeight(id string, w float64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range c.nodes {
		if c.nodes[i].ID == id {
			c.nodes[i].Weight = w
		}
	}
}

func (c *cluster) setFault(id string, f fault) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.faults[id] = f
}

func (c *cluster) fault(id string) fault {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.faults[id]
}

func (c *cluster) snapshot() []replica.Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.nodes)
}

// ranking is the placement order of id over the alive nodes, computed
// independently of the package under test.
func (c *cluster) ranking(id chunk.ID) []string {
	var cands []placement.Candidate
	for _, n := range c.snapshot() {
		if n.Alive {
			cands = append(cands, placement.Candidate{ID: n.ID, Zone: n.Zone, Tier: n.Tier, Weight: n.Weight})
		}
	}
	return placement.Place(id[:], len(cands), cands)
}

// holding returns the sorted IDs of the nodes whose store holds a good copy
// of id.
func (c *cluster) holding(id chunk.ID) []string {
	c.t.Helper()
	var out []string
	for node, st := range c.stores {
		_, err := st.Get(c.t.Context(), id)
		switch {
		case err == nil:
			out = append(out, node)
		case !errors.Is(err, chunk.ErrNotFound):
			c.t.Fatalf("node %s: %v", node, err)
		}
	}
	slices.Sort(out)
	return out
}

// corrupt flips one data byte of node's copy of id.
func (c *cluster) corrupt(node string, id chunk.ID) {
	c.t.Helper()
	corruptChunk(c.t, c.stores[node], id)
}

// corruptChunk flips the last data byte of the chunk file of id in st.
func corruptChunk(t *testing.T, st *chunker.LocalStore, id chunk.ID) {
	t.Helper()
	path := st.Path(id)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)-1] ^= 0x01
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// replicaStore returns the replicator of node self.
func (c *cluster) replicaStore(self string, cfg replica.Config) *replica.Store {
	c.t.Helper()
	s, err := replica.New(cfg, c.stores[self], &view{c: c, self: self}, &testDialer{c: c}, testLogger(c.t))
	if err != nil {
		c.t.Fatalf("New: %v", err)
	}
	return s
}

// view is one node's Membership.
type view struct {
	c    *cluster
	self string
}

func (v *view) SelfID() string        { return v.self }
func (v *view) Nodes() []replica.Node { return v.c.snapshot() }

// testDialer reaches the other nodes' LocalStores directly.
type testDialer struct{ c *cluster }

func (d *testDialer) Remote(node string) (replica.Remote, error) {
	if d.c.fault(node) == noDial {
		return nil, fmt.Errorf("dial %s: %w", node, errDown)
	}
	if _, ok := d.c.stores[node]; !ok {
		return nil, fmt.Errorf("dial %s: unknown node", node)
	}
	return &fakeRemote{c: d.c, node: node}, nil
}

// fakeRemote is a LocalStore seen as a Remote, with the node's fault.
type fakeRemote struct {
	c    *cluster
	node string
}

func (r *fakeRemote) store() *chunker.LocalStore { return r.c.stores[r.node] }

func (r *fakeRemote) Put(ctx context.Context, id chunk.ID, data []byte) (chunk.Sum, error) {
	switch r.c.fault(r.node) {
	case down:
		return chunk.Sum{}, errDown
	case lostReply:
		if _, err := r.store().Put(ctx, id, data); err != nil {
			return chunk.Sum{}, err
		}
		return chunk.Sum{}, fmt.Errorf("reply lost: %w", errDown)
	}
	return r.store().Put(ctx, id, data)
}

func (r *fakeRemote) Get(ctx context.Context, id chunk.ID) ([]byte, error) {
	if r.c.fault(r.node) == down {
		return nil, errDown
	}
	return r.store().Get(ctx, id)
}

func (r *fakeRemote) Has(ctx context.Context, id chunk.ID) (bool, error) {
	_, err := r.Get(ctx, id)
	if errors.Is(err, chunk.ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

func (r *fakeRemote) Delete(ctx context.Context, id chunk.ID) error {
	if r.c.fault(r.node) == down {
		return errDown
	}
	return r.store().Delete(ctx, id)
}

// idWhere returns a fresh chunk ID for which ok holds of its placement
// ranking (a cluster's ranking method, say).
func idWhere(t *testing.T, ranking func(chunk.ID) []string, ok func(ranking []string) bool) chunk.ID {
	t.Helper()
	for range 100000 {
		id := chunk.NewID()
		if ok(ranking(id)) {
			return id
		}
	}
	t.Fatal("no chunk ID with the wanted placement")
	return chunk.ID{}
}

// drain returns the reports queued so far.
func drain(s *replica.Store) []replica.RepairReport {
	var out []replica.RepairReport
	for {
		select {
		case r := <-s.Reports():
			out = append(out, r)
		default:
			return out
		}
	}
}

func randomData(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

func mustGet(t *testing.T, s *replica.Store, id chunk.ID, want []byte) {
	t.Helper()
	got, err := s.Get(t.Context(), id)
	if err != nil {
		t.Fatalf("Get %s: %v", id, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("Get %s: wrong data (%d bytes, want %d)", id, len(got), len(want))
	}
}
