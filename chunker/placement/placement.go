// Package placement decides which nodes hold the copies of a chunk:
// capacity-weighted rendezvous (highest random weight) hashing with zone
// spreading and an optional tier preference.
//
// It is pure and deterministic: the same key and the same candidates (in any
// order) give the same answer on every node and every run, so any node can
// compute where a chunk lives without asking anyone. It imports only the
// standard library.
//
// # Scoring
//
// For a key k and a candidate with ID id and weight w > 0:
//
//	hk    = fmix64(fnv1a64(k))
//	hn    = fmix64(fnv1a64(id))
//	h     = fmix64(hk ^ hn)
//	u     = ((h >> 11) + 0.5) / 2^53          // uniform in (0, 1), never 0 or 1
//	score = w / -ln(u)
//
// fnv1a64 is 64-bit FNV-1a (as hash/fnv's New64a) and fmix64 the MurmurHash3 64-bit
// finalizer. The candidate with the highest score wins; equal scores are
// broken by the smaller ID. With this score, the probability that a
// candidate wins is exactly its share of the total weight, and adding or
// removing a candidate only moves keys to or from that candidate. The hash
// is part of the cluster's contract: changing it moves almost every chunk,
// so TestGolden pins it.
//
// # Selection
//
// Place ranks the eligible candidates (finite weight > 0) by score and
// picks, in order:
//
//  1. the best candidate of each zone not used yet, in score order;
//  2. then the best remaining candidates, in score order.
//
// So copies spread over as many zones as exist before a zone gets a second
// copy. Candidates without a zone form one unnamed zone; when no candidate
// declares a zone the result is plain score order. PlaceTier runs the same
// two steps over the candidates of the wanted tier first and then over the
// others, so the tier wins over zone spreading.
//
// The first choice is always the top-scoring candidate (or, for PlaceTier,
// the top-scoring one of the tier), which keeps the rendezvous property for
// it: adding a node moves about w/(W+w) of the keys' first choices, all to
// the new node, and removing a node moves only the keys it held.
package placement

import (
	"math"
	"slices"
	"strings"
)

// Candidate is a node that may hold a copy.
type Candidate struct {
	// ID names the node; IDs should be unique. A duplicated ID is
	// chosen at most once.
	ID string
	// Zone is the failure domain (rack, room, site). Copies spread over
	// distinct zones first. Empty means the unnamed zone.
	Zone string
	// Tier is the storage class (for example "ssd" or "hdd"), used by
	// PlaceTier.
	Tier string
	// Weight is the node's share of the data, for example its total or
	// free capacity in bytes. A node with a weight <= 0, NaN or infinite
	// is never chosen.
	Weight float64
}

// Place returns the IDs of up to n distinct candidates that should hold
// the copies of the chunk named key, best first. It returns fewer than n
// IDs (possibly none) when fewer candidates are eligible; the caller
// decides what that means. n <= 0 returns nil. cands is not modified.
func Place(key []byte, n int, cands []Candidate) []string {
	return place(key, n, cands, "", false)
}

// PlaceTier is Place with a preference for candidates whose Tier is tier:
// it picks from them first (spread over their zones) and falls back to
// candidates of other tiers only when the tier has fewer than n eligible
// nodes.
func PlaceTier(key []byte, n int, cands []Candidate, tier string) []string {
	return place(key, n, cands, tier, true)
}

// scored is an eligible candidate and its score for one key.
type scored struct {
	c      *Candidate
	score  float64
	chosen bool
}

func place(key []byte, n int, cands []Candidate, tier string, useTier bool) []string {
	if n <= 0 {
		return nil
	}
	hk := fmix64(fnv1a(key))
	ranked := make([]scored, 0, len(cands))
	for i := range cands {
		c := &cands[i]
		if !(c.Weight > 0) || math.IsInf(c.Weight, 1) {
			continue
		}
		ranked = append(ranked, scored{c: c, score: score(hk, c.ID, c.Weight)})
	}
	// Scores are finite and positive, so plain comparisons order them.
	slices.SortFunc(ranked, func(a, b scored) int {
		switch {
		case a.score > b.score:
			return -1
		case a.score < b.score:
			return 1
		}
		return strings.Compare(a.c.ID, b.c.ID)
	})

	out := make([]string, 0, min(n, len(ranked)))
	zones := make([]string, 0, cap(out)) // zones holding a copy
	pick := func(inTier func(*Candidate) bool, newZoneOnly bool) {
		for i := range ranked {
			if len(out) == n {
				return
			}
			s := &ranked[i]
			if s.chosen || !inTier(s.c) {
				continue
			}
			if slices.Contains(out, s.c.ID) {
				s.chosen = true // a duplicated ID
				continue
			}
			if newZoneOnly && slices.Contains(zones, s.c.Zone) {
				continue
			}
			s.chosen = true
			out = append(out, s.c.ID)
			if !slices.Contains(zones, s.c.Zone) {
				zones = append(zones, s.c.Zone)
			}
		}
	}
	if useTier {
		match := func(c *Candidate) bool { return c.Tier == tier }
		pick(match, true)
		pick(match, false)
	}
	all := func(*Candidate) bool { return true }
	pick(all, true)
	pick(all, false)
	return out
}

// score returns the weighted rendezvous score of the node id with weight w
// for a key whose hash is hk. Higher is better.
func score(hk uint64, id string, w float64) float64 {
	h := fmix64(hk ^ fmix64(fnv1a(id)))
	u := (float64(h>>11) + 0.5) / (1 << 53)
	return w / -math.Log(u)
}

// fnv1a returns the 64-bit FNV-1a hash of b (the same as hash/fnv's New64a,
// without its allocation).
func fnv1a[T string | []byte](b T) uint64 {
	const (
		offset = 14695981039346656037
		prime  = 1099511628211
	)
	h := uint64(offset)
	for i := 0; i < len(b); i++ {
		h ^= uint64(b[i])
		h *= prime
	}
	return h
}

// fmix64 is the MurmurHash3 64-bit finalizer: every input bit affects every
// output bit.
func fmix64(h uint64) uint64 {
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	h ^= h >> 33
	return h
}
