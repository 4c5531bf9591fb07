package census_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"iter"
	"net/http/httptest"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"testing"

	"github.com/rs/zerolog"

	"github.com/wormhole-fs/wormhole/chunker"
	"github.com/wormhole-fs/wormhole/chunker/census"
	"github.com/wormhole-fs/wormhole/chunker/chunk"
	"github.com/wormhole-fs/wormhole/chunker/peer"
)

var (
	_ census.Lister = (*chunker.LocalStore)(nil)
	_ census.Lister = (*peer.Client)(nil)
)

// id returns a distinct, readable chunk ID.
func id(n byte) chunk.ID { return chunk.ID{0: n, 15: n} }

func chunks(cs ...census.Chunk) iter.Seq[census.Chunk] { return slices.Values(cs) }

func TestCount(t *testing.T) {
	newInv := func() *census.Inventory {
		inv := census.NewInventory()
		inv.Add("a", id(1), id(2), id(3), id(4))
		inv.Add("b", id(2), id(3), id(4))
		inv.Add("c", id(3), id(4), id(9)) // 9: held, not referenced
		inv.Add("d")                      // answered, holds nothing
		return inv
	}

	for _, tt := range []struct {
		name   string
		chunks []census.Chunk
		want   census.Counts
	}{
		{"none", nil, census.Counts{Orphans: 5}},
		{"one copy of 1", []census.Chunk{{id(1), 1}}, census.Counts{Chunks: 1, On: 1, Orphans: 4}},
		{"below", []census.Chunk{{id(1), 2}, {id(2), 3}}, census.Counts{Chunks: 2, Below: 2, Orphans: 3}},
		{"above", []census.Chunk{{id(3), 2}, {id(4), 1}}, census.Counts{Chunks: 2, Above: 2, Orphans: 3}},
		{"missing is below too", []census.Chunk{{id(5), 2}, {id(2), 2}}, census.Counts{Chunks: 2, Below: 1, On: 1, Missing: 1, Orphans: 4}},
		{"want nothing, have nothing", []census.Chunk{{id(6), 0}}, census.Counts{Chunks: 1, On: 1, Orphans: 5}},
		{"duplicates count twice", []census.Chunk{{id(5), 1}, {id(5), 1}}, census.Counts{Chunks: 2, Below: 2, Missing: 2, Orphans: 5}},
		{"mixed", []census.Chunk{{id(1), 2}, {id(2), 2}, {id(3), 2}, {id(4), 3}, {id(7), 3}},
			census.Counts{Chunks: 5, Below: 2, On: 2, Above: 1, Missing: 1, Orphans: 1}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := census.Count(chunks(tt.chunks...), newInv()); got != tt.want {
				t.Fatalf("Count = %+v, want %+v", got, tt.want)
			}
		})
	}
}

// TestOrphansNotAbove checks that chunks no file refers to are counted as
// orphans only, never above target, and that marks survive later Adds and
// are listed by Unreferenced with their holders.
func TestOrphansNotAbove(t *testing.T) {
	inv := census.NewInventory()
	inv.Add("a", id(1), id(8), id(9))
	inv.Add("b", id(1), id(9))
	got := census.Count(chunks(census.Chunk{ID: id(1), Want: 2}), inv)
	if want := (census.Counts{Chunks: 1, On: 1, Orphans: 2}); got != want {
		t.Fatalf("Count = %+v, want %+v", got, want)
	}
	inv.Add("c", id(1), id(9)) // marks survive an Add
	inv.RemoveNode("a")
	seen := map[chunk.ID][]string{}
	inv.Unreferenced(func(c chunk.ID, holders []string) bool {
		seen[c] = holders
		return true
	})
	if len(seen) != 1 || !slices.Equal(seen[id(9)], []string{"b", "c"}) {
		t.Fatalf("Unreferenced = %v, want only %v held by b and c", seen, id(9))
	}
	if hs := inv.Holders(id(1)); !slices.Equal(hs, []string{"b", "c"}) {
		t.Fatalf("Holders(1) = %v after marking, want [b c]", hs)
	}
}

// TestSettle checks that a second listing clears what a census that
// listed before reading references miscounts: a chunk written after the
// first listing, and one moved between nodes during it.
func TestSettle(t *testing.T) {
	earlier := census.NewInventory()
	earlier.Add("a", id(1), id(2)) // 2 moving from b to c: listed on a only
	earlier.Add("b", id(1))
	earlier.Add("c", id(4)) // 4: really one copy short
	refs := chunks(
		census.Chunk{ID: id(1), Want: 2}, // on target
		census.Chunk{ID: id(2), Want: 2}, // looks below
		census.Chunk{ID: id(3), Want: 2}, // written after the first listing: looks missing
		census.Chunk{ID: id(4), Want: 2}, // below
		census.Chunk{ID: id(5), Want: 1}, // lost
	)
	c, below := census.CountBelow(refs, earlier, 10)
	if want := (census.Counts{Chunks: 5, Below: 4, On: 1, Missing: 2, Orphans: 0}); c != want {
		t.Fatalf("CountBelow = %+v, want %+v", c, want)
	}
	if len(below) != 4 {
		t.Fatalf("CountBelow returned %d chunks below, want 4", len(below))
	}
	later := census.NewInventory()
	later.Add("a", id(1), id(2), id(3))
	later.Add("b", id(1), id(3))
	later.Add("c", id(2), id(4))
	got := census.Settle(c, below, earlier, later)
	if want := (census.Counts{Chunks: 5, Below: 2, On: 3, Missing: 1, Orphans: 0}); got != want {
		t.Fatalf("Settle = %+v, want %+v", got, want)
	}
	if still := census.StillBelow(below, earlier, later); len(still) != 2 || still[0].ID != id(4) || still[1].ID != id(5) {
		t.Fatalf("StillBelow = %v, want chunks 4 and 5", still)
	}
}

func TestInventory(t *testing.T) {
	inv := census.NewInventory()
	if inv.Len() != 0 || inv.Nodes() != nil || inv.Holders(id(1)) != nil || inv.Copies(id(1)) != 0 {
		t.Fatal("new Inventory is not empty")
	}
	inv.Add("n2", id(1), id(2))
	inv.Add("n1", id(1))
	inv.Add("n3", id(1), id(1)) // twice
	inv.Add("n1", id(1))        // again
	inv.Add("n0")

	if got, want := inv.Holders(id(1)), []string{"n1", "n2", "n3"}; !slices.Equal(got, want) {
		t.Errorf("Holders(1) = %v, want %v", got, want)
	}
	if got := inv.Copies(id(1)); got != 3 {
		t.Errorf("Copies(1) = %d, want 3", got)
	}
	if got, want := inv.Holders(id(2)), []string{"n2"}; !slices.Equal(got, want) {
		t.Errorf("Holders(2) = %v, want %v", got, want)
	}
	if got, want := inv.Nodes(), []string{"n0", "n1", "n2", "n3"}; !slices.Equal(got, want) {
		t.Errorf("Nodes = %v, want %v", got, want)
	}
	if inv.Len() != 2 {
		t.Errorf("Len = %d, want 2", inv.Len())
	}

	inv.RemoveNode("n2")
	inv.RemoveNode("unknown")
	if got, want := inv.Holders(id(1)), []string{"n1", "n3"}; !slices.Equal(got, want) {
		t.Errorf("after RemoveNode(n2): Holders(1) = %v, want %v", got, want)
	}
	if got := inv.Holders(id(2)); got != nil {
		t.Errorf("after RemoveNode(n2): Holders(2) = %v, want none", got)
	}
	if inv.Len() != 1 {
		t.Errorf("after RemoveNode(n2): Len = %d, want 1", inv.Len())
	}
	if got, want := inv.Nodes(), []string{"n0", "n1", "n3"}; !slices.Equal(got, want) {
		t.Errorf("after RemoveNode(n2): Nodes = %v, want %v", got, want)
	}
	// A removed node can come back.
	inv.Add("n2", id(2))
	if got, want := inv.Holders(id(2)), []string{"n2"}; !slices.Equal(got, want) {
		t.Errorf("after re-adding n2: Holders(2) = %v, want %v", got, want)
	}
}

func TestInventoryConcurrent(t *testing.T) {
	inv := census.NewInventory()
	ids := make([]chunk.ID, 2000)
	for i := range ids {
		ids[i] = chunk.NewID()
	}
	var wg sync.WaitGroup
	for n := range 8 {
		wg.Go(func() {
			node := fmt.Sprint("node", n)
			for i := 0; i < len(ids); i += 100 {
				inv.Add(node, ids[i:i+100]...)
				_ = inv.Holders(ids[i])
				_ = inv.Len()
			}
		})
	}
	wg.Wait()
	for _, id := range ids {
		if got := inv.Copies(id); got != 8 {
			t.Fatalf("Copies(%s) = %d, want 8", id, got)
		}
	}
}

func TestWhere(t *testing.T) {
	inv := census.NewInventory()
	inv.Add("a", id(1), id(2))
	inv.Add("b", id(1))
	inv.Add("c", id(2))
	refs := []chunk.Ref{{Index: 0, ID: id(1)}, {Index: 3, ID: id(2)}, {Index: 4, ID: id(3)}}
	targets := func(cid chunk.ID) []string {
		if cid == id(2) {
			return []string{"b", "a"}
		}
		return []string{"a", "b"}
	}
	got := census.Where(refs, targets, inv)
	want := []census.ChunkPlace{
		{Index: 0, ID: id(1), Targets: []string{"a", "b"}, Holders: []string{"a", "b"}},
		{Index: 3, ID: id(2), Targets: []string{"b", "a"}, Holders: []string{"a", "c"}},
		{Index: 4, ID: id(3), Targets: []string{"a", "b"}},
	}
	if len(got) != len(want) {
		t.Fatalf("Where = %+v, want %+v", got, want)
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.Index != w.Index || g.ID != w.ID || !slices.Equal(g.Targets, w.Targets) || !slices.Equal(g.Holders, w.Holders) {
			t.Errorf("Where[%d] = %+v, want %+v", i, g, w)
		}
	}
	for _, tt := range []struct {
		place          census.ChunkPlace
		missing, extra []string
	}{
		{got[0], nil, nil},
		{got[1], []string{"b"}, []string{"c"}},
		{got[2], []string{"a", "b"}, nil},
	} {
		if m := tt.place.Missing(); !slices.Equal(m, tt.missing) {
			t.Errorf("chunk %d: Missing = %v, want %v", tt.place.Index, m, tt.missing)
		}
		if e := tt.place.Extra(); !slices.Equal(e, tt.extra) {
			t.Errorf("chunk %d: Extra = %v, want %v", tt.place.Index, e, tt.extra)
		}
	}
	if p := census.Where(refs[:1], nil, inv); p[0].Targets != nil || len(p[0].Holders) != 2 {
		t.Errorf("Where without targets = %+v", p)
	}
}

// fakeLister lists ids, then fails with err.
type fakeLister struct {
	ids []chunk.ID
	err error
}

func (f fakeLister) List(ctx context.Context, fn func(chunk.ID) error) error {
	for _, id := range f.ids {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := fn(id); err != nil {
			return err
		}
	}
	return f.err
}

func TestGather(t *testing.T) {
	many := make([]chunk.ID, 10000) // several batches
	for i := range many {
		many[i] = chunk.NewID()
	}
	broken := errors.New("disk on fire")
	inv, errs := census.Gather(t.Context(), map[string]census.Lister{
		"a":     fakeLister{ids: many},
		"b":     fakeLister{ids: []chunk.ID{many[0], id(1)}},
		"empty": fakeLister{},
		// Fails after a partial list: none of it may count.
		"bad": fakeLister{ids: append([]chunk.ID{id(2)}, many...), err: broken},
		"nil": nil,
	})
	if got, want := census.Failed(errs), []string{"bad", "nil"}; !slices.Equal(got, want) {
		t.Fatalf("failed nodes = %v (%v), want %v", got, errs, want)
	}
	if !errors.Is(errs["bad"], broken) {
		t.Errorf("error of node bad = %v, want it to wrap the lister's", errs["bad"])
	}
	if got, want := inv.Nodes(), []string{"a", "b", "empty"}; !slices.Equal(got, want) {
		t.Errorf("Nodes = %v, want %v", got, want)
	}
	if inv.Len() != len(many)+1 {
		t.Errorf("Len = %d, want %d", inv.Len(), len(many)+1)
	}
	if got := inv.Holders(many[0]); !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("Holders(many[0]) = %v", got)
	}
	if got := inv.Holders(many[9999]); !slices.Equal(got, []string{"a"}) {
		t.Errorf("Holders(many[9999]) = %v", got)
	}
	if got := inv.Holders(id(2)); got != nil {
		t.Errorf("chunk only the failed node listed: Holders = %v, want none", got)
	}
}

func TestGatherCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	inv, errs := census.Gather(ctx, map[string]census.Lister{"a": fakeLister{ids: []chunk.ID{id(1)}}})
	if !errors.Is(errs["a"], context.Canceled) || inv.Len() != 0 || inv.Nodes() != nil {
		t.Fatalf("cancelled Gather: %v, %d chunks, nodes %v", errs, inv.Len(), inv.Nodes())
	}
}

func testLogger(t testing.TB) zerolog.Logger { return zerolog.New(zerolog.NewTestWriter(t)) }

// TestGatherOverPeers runs a census of three nodes, each a LocalStore
// behind a peer.Server over TLS, and one that is down.
func TestGatherOverPeers(t *testing.T) {
	ctx := t.Context()
	listers := map[string]census.Lister{}
	stores := map[string]*chunker.LocalStore{}
	for _, node := range []string{"n1", "n2", "n3"} {
		s, err := chunker.OpenLocal(filepath.Join(t.TempDir(), node), testLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		stores[node] = s
		ts := httptest.NewUnstartedServer(peer.NewServer(s, testLogger(t), peer.ServerOptions{}))
		ts.EnableHTTP2 = true
		ts.StartTLS()
		t.Cleanup(ts.Close)
		listers[node] = newClient(t, ts.Listener.Addr().String(), ts.Certificate())
	}
	down := httptest.NewTLSServer(nil)
	listers["down"] = newClient(t, down.Listener.Addr().String(), down.Certificate())
	down.Close()

	c1, c2, c3, lost := chunk.NewID(), chunk.NewID(), chunk.NewID(), chunk.NewID()
	for node, ids := range map[string][]chunk.ID{"n1": {c1, c2}, "n2": {c1, c2}, "n3": {c2, c3}} {
		for _, id := range ids {
			if _, err := stores[node].Put(ctx, id, []byte(node)); err != nil {
				t.Fatal(err)
			}
		}
	}

	inv, errs := census.Gather(ctx, listers)
	if got := census.Failed(errs); !slices.Equal(got, []string{"down"}) {
		t.Fatalf("failed nodes = %v (%v), want [down]", got, errs)
	}
	if !peer.IsRetryable(errs["down"]) {
		t.Errorf("error of the node that is down: %v, want a retryable transport error", errs["down"])
	}
	if got := inv.Nodes(); !slices.Equal(got, []string{"n1", "n2", "n3"}) {
		t.Errorf("Nodes = %v", got)
	}
	counts := census.Count(chunks(
		census.Chunk{ID: c1, Want: 2},
		census.Chunk{ID: c2, Want: 2},
		census.Chunk{ID: c3, Want: 2},
		census.Chunk{ID: lost, Want: 2},
	), inv)
	if want := (census.Counts{Chunks: 4, Below: 2, On: 1, Above: 1, Missing: 1}); counts != want {
		t.Errorf("Count = %+v, want %+v", counts, want)
	}
	if got := inv.Holders(c2); !slices.Equal(got, []string{"n1", "n2", "n3"}) {
		t.Errorf("Holders(c2) = %v", got)
	}
}

// newClient returns a peer client for addr that trusts cert.
func newClient(t *testing.T, addr string, cert *x509.Certificate) *peer.Client {
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	c := peer.NewClient(addr, &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, peer.ClientOptions{})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// TestInventoryMemory measures the heap an Inventory uses per chunk, to
// back the bound the package documentation gives.
func TestInventoryMemory(t *testing.T) {
	n := 1 << 20
	if testing.Short() {
		n = 1 << 16
	}
	ids := make([]chunk.ID, n)
	for i := range ids {
		ids[i] = chunk.NewID()
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	inv := census.NewInventory()
	for node := range 3 { // three copies of every chunk, on 5 nodes
		for i := 0; i < n; i += 4096 {
			inv.Add(fmt.Sprint("node", (node+i/4096)%5), ids[i:min(i+4096, n)]...)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(ids) // measured without the IDs themselves
	perChunk := float64(after.HeapAlloc-before.HeapAlloc) / float64(n)
	t.Logf("%d chunks, 3 copies each: %.1f bytes per chunk (%.0f MB per 10M chunks)", n, perChunk, perChunk*10e6/1e6)
	if perChunk > 64 {
		t.Errorf("%.1f bytes per chunk, want at most 64", perChunk)
	}
	runtime.KeepAlive(inv)
}
