package placement

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

// nodes returns n candidates n0..n(n-1) of weight 1 without zones.
func nodes(n int) []Candidate {
	cs := make([]Candidate, n)
	for i := range cs {
		cs[i] = Candidate{ID: fmt.Sprintf("n%d", i), Weight: 1}
	}
	return cs
}

// keys returns count pseudo-random 16-byte keys (like chunk IDs), the same
// on every run.
func keys(count int, seed uint64) [][]byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	ks := make([][]byte, count)
	for i := range ks {
		k := make([]byte, 16)
		binary.LittleEndian.PutUint64(k[:8], r.Uint64())
		binary.LittleEndian.PutUint64(k[8:], r.Uint64())
		ks[i] = k
	}
	return ks
}

func first(key []byte, cands []Candidate) string {
	ids := Place(key, 1, cands)
	if len(ids) == 0 {
		return ""
	}
	return ids[0]
}

// TestGolden pins the hash and the scoring: placement is a cluster-wide
// contract, and a change here moves almost every chunk.
func TestGolden(t *testing.T) {
	if got, want := fnv1a("a"), uint64(0xaf63dc4c8601ec8c); got != want {
		t.Fatalf("fnv1a(a) = %#x, want %#x (the FNV-1a test vector)", got, want)
	}
	cands := []Candidate{
		{ID: "alpha", Zone: "z1", Weight: 4e12},
		{ID: "bravo", Zone: "z1", Weight: 8e12},
		{ID: "charlie", Zone: "z2", Weight: 4e12},
		{ID: "delta", Zone: "z3", Weight: 2e12},
		{ID: "echo", Zone: "z2", Weight: 6e12},
	}
	hk := fmix64(fnv1a([]byte("chunk-0")))
	if hk != 0x17fea4cee2a084f1 {
		t.Errorf("key hash of chunk-0 = %#x, want 0x17fea4cee2a084f1", hk)
	}
	if h := fmix64(hk ^ fmix64(fnv1a("alpha"))); h != 0x0b6bede7f672b4a6 {
		t.Errorf("hash of (chunk-0, alpha) = %#x, want 0x0b6bede7f672b4a6", h)
	}
	if s := score(hk, "alpha", 4e12); math.Abs(s-1286309609807.5513) > 1e-3 {
		t.Errorf("score of (chunk-0, alpha) = %.17g, want 1286309609807.5513", s)
	}
	golden := map[string][]string{
		"":                 {"alpha", "charlie", "delta", "bravo", "echo"},
		"chunk-0":          {"echo", "bravo", "delta", "charlie", "alpha"},
		"chunk-1":          {"alpha", "charlie", "delta", "bravo", "echo"},
		"0123456789abcdef": {"bravo", "echo", "delta", "alpha", "charlie"},
	}
	for key, want := range golden {
		if got := Place([]byte(key), 5, cands); !slices.Equal(got, want) {
			t.Errorf("Place(%q) = %q, want %q", key, got, want)
		}
	}
}

func TestPlaceTable(t *testing.T) {
	key := []byte("0123456789abcdef")
	tests := []struct {
		name  string
		n     int
		cands []Candidate
		want  int      // number of IDs returned
		never []string // IDs that must not appear
		zones int      // distinct zones the result must span
	}{
		{name: "no candidates", n: 3, want: 0},
		{name: "n zero", n: 0, cands: nodes(3), want: 0},
		{name: "n negative", n: -1, cands: nodes(3), want: 0},
		{name: "fewer than n", n: 5, cands: nodes(3), want: 3},
		{name: "exactly n", n: 3, cands: nodes(3), want: 3},
		{name: "one of many", n: 1, cands: nodes(10), want: 1},
		{
			name: "ineligible weights", n: 5, want: 2,
			cands: []Candidate{
				{ID: "zero", Weight: 0}, {ID: "neg", Weight: -1},
				{ID: "nan", Weight: math.NaN()}, {ID: "inf", Weight: math.Inf(1)},
				{ID: "ok1", Weight: 1}, {ID: "ok2", Weight: 1e-9},
			},
			never: []string{"zero", "neg", "nan", "inf"},
		},
		{
			name: "duplicated ID", n: 3, want: 2,
			cands: []Candidate{{ID: "a", Weight: 1}, {ID: "a", Weight: 5}, {ID: "b", Weight: 1}},
		},
		{
			name: "two zones two copies", n: 2, want: 2, zones: 2,
			cands: []Candidate{
				{ID: "a1", Zone: "a", Weight: 100}, {ID: "a2", Zone: "a", Weight: 100},
				{ID: "a3", Zone: "a", Weight: 100}, {ID: "b1", Zone: "b", Weight: 1},
			},
		},
		{
			name: "three copies over two zones", n: 3, want: 3, zones: 2,
			cands: []Candidate{
				{ID: "a1", Zone: "a", Weight: 1}, {ID: "a2", Zone: "a", Weight: 1},
				{ID: "b1", Zone: "b", Weight: 1}, {ID: "b2", Zone: "b", Weight: 1},
			},
		},
		{
			name: "zone of only a zero-weight node", n: 2, want: 2, zones: 1,
			cands: []Candidate{
				{ID: "a1", Zone: "a", Weight: 1}, {ID: "a2", Zone: "a", Weight: 1},
				{ID: "b1", Zone: "b", Weight: 0},
			},
			never: []string{"b1"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Place(key, tt.n, tt.cands)
			if len(got) != tt.want {
				t.Fatalf("Place = %q (%d IDs), want %d IDs", got, len(got), tt.want)
			}
			checkDistinct(t, got)
			for _, id := range tt.never {
				if slices.Contains(got, id) {
					t.Errorf("Place = %q, contains ineligible %q", got, id)
				}
			}
			if tt.zones > 0 {
				if z := zoneCount(got, tt.cands); z != tt.zones {
					t.Errorf("Place = %q spans %d zones, want %d", got, z, tt.zones)
				}
			}
		})
	}
}

func checkDistinct(t *testing.T, ids []string) {
	t.Helper()
	seen := map[string]bool{}
	for _, id := range ids {
		if seen[id] {
			t.Fatalf("%q holds %q twice", ids, id)
		}
		seen[id] = true
	}
}

func zoneCount(ids []string, cands []Candidate) int {
	zones := map[string]bool{}
	for _, id := range ids {
		for _, c := range cands {
			if c.ID == id {
				zones[c.Zone] = true
			}
		}
	}
	return len(zones)
}

// TestDeterministic checks that the answer depends only on the key and the
// set of candidates, not on their order.
func TestDeterministic(t *testing.T) {
	cands := zoned(12, 4)
	r := rand.New(rand.NewPCG(1, 2))
	for _, k := range keys(500, 1) {
		want := Place(k, 3, cands)
		shuffled := slices.Clone(cands)
		r.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		if got := Place(k, 3, shuffled); !slices.Equal(got, want) {
			t.Fatalf("key %x: Place = %q after shuffle, %q before", k, got, want)
		}
		if got := Place(k, 3, cands); !slices.Equal(got, want) {
			t.Fatalf("key %x: Place = %q, then %q", k, want, got)
		}
	}
}

// zoned returns n candidates of weight 1 spread round-robin over z zones.
func zoned(n, z int) []Candidate {
	cs := nodes(n)
	for i := range cs {
		cs[i].Zone = fmt.Sprintf("z%d", i%z)
	}
	return cs
}

// TestZoneSpread checks over many keys that copies never share a zone
// while a free zone exists, and that the first choice is the top score.
func TestZoneSpread(t *testing.T) {
	cands := []Candidate{
		{ID: "a1", Zone: "a", Weight: 10}, {ID: "a2", Zone: "a", Weight: 10},
		{ID: "a3", Zone: "a", Weight: 10}, {ID: "a4", Zone: "a", Weight: 10},
		{ID: "b1", Zone: "b", Weight: 1}, {ID: "c1", Zone: "c", Weight: 1},
	}
	for _, k := range keys(2000, 2) {
		for n := 1; n <= len(cands); n++ {
			got := Place(k, n, cands)
			if len(got) != n {
				t.Fatalf("key %x n=%d: got %q", k, n, got)
			}
			checkDistinct(t, got)
			if want := min(n, 3); zoneCount(got, cands) != want {
				t.Fatalf("key %x n=%d: %q spans %d zones, want %d", k, n, got, zoneCount(got, cands), want)
			}
			if got[0] != first(k, cands) {
				t.Fatalf("key %x n=%d: first choice %s, want %s", k, n, got[0], first(k, cands))
			}
		}
	}
}

func TestPlaceTier(t *testing.T) {
	cands := []Candidate{
		{ID: "s1", Zone: "a", Tier: "ssd", Weight: 1},
		{ID: "s2", Zone: "a", Tier: "ssd", Weight: 1},
		{ID: "h1", Zone: "a", Tier: "hdd", Weight: 100},
		{ID: "h2", Zone: "b", Tier: "hdd", Weight: 100},
		{ID: "h3", Zone: "c", Tier: "hdd", Weight: 100},
		{ID: "s0", Zone: "b", Tier: "ssd", Weight: 0},
	}
	isTier := func(id, tier string) bool {
		for _, c := range cands {
			if c.ID == id {
				return c.Tier == tier
			}
		}
		return false
	}
	for _, k := range keys(1000, 3) {
		got := PlaceTier(k, 2, cands, "ssd")
		if len(got) != 2 || !isTier(got[0], "ssd") || !isTier(got[1], "ssd") {
			t.Fatalf("key %x: PlaceTier(ssd, 2) = %q, want both ssd", k, got)
		}
		got = PlaceTier(k, 3, cands, "ssd")
		if len(got) != 3 || !isTier(got[2], "hdd") {
			t.Fatalf("key %x: PlaceTier(ssd, 3) = %q, want two ssd then one hdd", k, got)
		}
		// The fallback prefers a zone the tier did not use.
		if z := zoneCount(got, cands); z != 2 {
			t.Fatalf("key %x: PlaceTier(ssd, 3) = %q spans %d zones, want 2", k, got, z)
		}
		got = PlaceTier(k, 3, cands, "hdd")
		if zoneCount(got, cands) != 3 || !isTier(got[0], "hdd") || !isTier(got[1], "hdd") || !isTier(got[2], "hdd") {
			t.Fatalf("key %x: PlaceTier(hdd, 3) = %q, want 3 hdd in 3 zones", k, got)
		}
		if got := PlaceTier(k, 10, cands, "nvme"); !slices.Equal(got, Place(k, 10, cands)) {
			t.Fatalf("key %x: PlaceTier of a missing tier = %q, want Place's %q", k, got, Place(k, 10, cands))
		}
		if got := PlaceTier(k, 10, cands, "ssd"); len(got) != 5 || slices.Contains(got, "s0") {
			t.Fatalf("key %x: PlaceTier(ssd, 10) = %q, want the 5 eligible nodes", k, got)
		}
	}
}

// TestAddNodeMovesFewKeys checks the rendezvous property: a new node takes
// about 1/(N+1) of the first choices (its weight share), and every key that
// moves, moves to the new node.
func TestAddNodeMovesFewKeys(t *testing.T) {
	for _, tc := range []struct {
		name   string
		before []Candidate
		added  Candidate
	}{
		{name: "10 equal nodes", before: nodes(10), added: Candidate{ID: "new", Weight: 1}},
		{name: "4 equal nodes", before: nodes(4), added: Candidate{ID: "new", Weight: 1}},
		{name: "weighted", before: []Candidate{
			{ID: "a", Weight: 4e12}, {ID: "b", Weight: 8e12}, {ID: "c", Weight: 2e12},
		}, added: Candidate{ID: "new", Weight: 6e12}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			after := append(slices.Clone(tc.before), tc.added)
			var total float64
			for _, c := range after {
				total += c.Weight
			}
			ks := keys(20000, 4)
			moved := 0
			for _, k := range ks {
				b, a := first(k, tc.before), first(k, after)
				if a == b {
					continue
				}
				if a != tc.added.ID {
					t.Fatalf("key %x moved from %s to %s, not to the new node", k, b, a)
				}
				moved++
			}
			want := float64(len(ks)) * tc.added.Weight / total
			if got := float64(moved); math.Abs(got-want) > 0.25*want {
				t.Errorf("%d of %d keys moved, want %.0f ±25%%", moved, len(ks), want)
			}
		})
	}
}

// TestRemoveNodeMovesOnlyItsKeys checks that removing a node changes the
// placement only of keys that had a copy on it, for the first choice and
// for whole replica sets, with and without zones.
func TestRemoveNodeMovesOnlyItsKeys(t *testing.T) {
	for _, tc := range []struct {
		name  string
		cands []Candidate
		n     int
	}{
		{name: "first choice", cands: nodes(8), n: 1},
		{name: "three copies", cands: nodes(8), n: 3},
		{name: "three copies zoned", cands: zoned(9, 3), n: 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			removed := tc.cands[3].ID
			after := slices.Delete(slices.Clone(tc.cands), 3, 4)
			moved := 0
			for _, k := range keys(20000, 5) {
				b, a := Place(k, tc.n, tc.cands), Place(k, tc.n, after)
				if slices.Contains(b, removed) {
					moved++
					continue
				}
				if !slices.Equal(a, b) {
					t.Fatalf("key %x did not use %s but moved: %q -> %q", k, removed, b, a)
				}
			}
			if moved == 0 {
				t.Fatalf("no key used %s", removed)
			}
		})
	}
}

// TestCapacityProportional checks that first choices follow the weights.
func TestCapacityProportional(t *testing.T) {
	cands := []Candidate{
		{ID: "one", Weight: 1e12}, {ID: "two", Weight: 2e12}, {ID: "three", Weight: 3e12},
	}
	ks := keys(60000, 6)
	counts := map[string]int{}
	for _, k := range ks {
		counts[first(k, cands)]++
	}
	for _, c := range cands {
		want := float64(len(ks)) * c.Weight / 6e12
		if got := float64(counts[c.ID]); math.Abs(got-want) > 0.10*want {
			t.Errorf("%s: %d first choices, want %.0f ±10%%", c.ID, counts[c.ID], want)
		}
	}
}

// TestSecondCopiesSpread checks that the load of replica sets follows the
// weights too when all nodes have equal weight: each node holds about
// n/N of all copies.
func TestSecondCopiesSpread(t *testing.T) {
	cands := zoned(6, 3)
	ks := keys(30000, 7)
	counts := map[string]int{}
	for _, k := range ks {
		for _, id := range Place(k, 2, cands) {
			counts[id]++
		}
	}
	want := float64(len(ks)) * 2 / 6
	for _, c := range cands {
		if got := float64(counts[c.ID]); math.Abs(got-want) > 0.10*want {
			t.Errorf("%s holds %d copies, want %.0f ±10%%", c.ID, counts[c.ID], want)
		}
	}
}

func BenchmarkPlace(b *testing.B) {
	for _, n := range []int{5, 50} {
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) {
			cands := zoned(n, 3)
			for i := range cands {
				cands[i].Weight = float64(1+i%4) * 1e12
			}
			ks := keys(1024, 8)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				_ = Place(ks[i%len(ks)], 3, cands)
				i++
			}
		})
	}
}
