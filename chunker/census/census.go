// Package census finds out which nodes hold which chunks and compares that
// with what the namespace wants: it is the data behind `wormhole status`
// (how many chunks are below, on and above their target redundancy) and
// `wormhole where PATH` (which nodes hold a file's chunks).
//
// Gather asks every node for the IDs it holds (through Lister, which
// peer.Client and chunker.LocalStore implement) and builds an Inventory;
// Count and Where are pure functions of an Inventory and what the caller
// reads from the namespace and placement. The interfaces are declared
// here, on the consumer side; the package imports only chunker/chunk from
// Wormhole, so the admin API or the CLI can use it without pulling in
// more.
//
// # Memory
//
// An Inventory stores each distinct chunk once, as a map entry from its
// 16-byte ID to a 4-byte index into a table of holder sets (one entry per
// distinct combination of nodes, shared by all chunks held by exactly
// those nodes). With Go's map overhead that is about 30 to 45 bytes per
// chunk (depending on how full the map's tables are), whatever the number
// of copies or nodes: 10 million chunks take about 300 to 450 MB, 100
// million would take 3 to 4.5 GB (TestInventoryMemory measures it and
// fails above 64 bytes per chunk). Gather adds to it in batches of 4096
// IDs per node, so listing holds little beyond the Inventory itself, and
// Count allocates nothing per chunk.
package census

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"maps"
	"slices"
	"sync"

	"github.com/wormhole-fs/wormhole/chunker/chunk"
)

// Chunk is one chunk the namespace references and how many copies its
// policy wants.
type Chunk struct {
	ID   chunk.ID
	Want int
}

// Counts is the redundancy of a set of chunks against an Inventory. Each
// chunk the sequence yields is counted once in Chunks and in exactly one
// of Below, On and Above, by comparing the nodes of the Inventory that
// hold it (its copies) with its Want. Missing counts the chunks held by
// no node at all although they want copies; they are also counted in
// Below, so Below-Missing chunks are degraded but readable.
//
// Orphans counts the chunks the Inventory holds that no yielded chunk is:
// copies no file refers to (left by a failed write or delete, or written
// for a write not committed yet). They are in none of the other counts: a
// chunk is above target only if a file refers to it.
type Counts struct {
	Chunks  int // chunks counted
	Below   int // fewer copies than wanted (Missing included)
	On      int // exactly as many copies as wanted
	Above   int // more copies than wanted
	Missing int // no copy at all, though wanted: the data is unreadable
	Orphans int // held by some node but referenced by no chunk counted
}

// Count compares each chunk of chunks with the copies inv knows of. A
// chunk yielded twice is counted twice. If inv lacks nodes (those Gather
// reported failing) copies on them are not seen, so Below and Missing are
// upper bounds and On and Above lower bounds; the caller should say so.
// Count marks each chunk it counts as referenced in inv (MarkReferenced),
// and counts the unmarked rest as Orphans.
func Count(chunks iter.Seq[Chunk], inv *Inventory) Counts {
	c, _ := CountBelow(chunks, inv, 0)
	return c
}

// CountBelow is Count, and also returns the first max chunks it found
// below target, for a caller that wants to check them again (Settle).
func CountBelow(chunks iter.Seq[Chunk], inv *Inventory, max int) (Counts, []Chunk) {
	var (
		c     Counts
		below []Chunk
	)
	for ch := range chunks {
		c.Chunks++
		inv.MarkReferenced(ch.ID)
		n := inv.Copies(ch.ID)
		switch {
		case n < ch.Want:
			c.Below++
			if n == 0 {
				c.Missing++
			}
			if len(below) < max {
				below = append(below, ch)
			}
		case n == ch.Want:
			c.On++
		default:
			c.Above++
		}
	}
	c.Orphans = inv.countUnreferenced()
	return c, below
}

// Settle recounts the chunks below (as CountBelow returned them from c's
// count over an earlier Inventory) against the union of their holders in
// earlier and later, an Inventory gathered after the chunk references were
// read. A census lists the nodes, then reads the references: a chunk
// written meanwhile is referenced but was not listed, and a chunk a
// rebalance moved meanwhile may have been listed on neither node. Both
// look below target without being so; a second listing sees them. A
// chunk that is really below target stays so in the union. The chunks are
// counted again only in Below, Missing, On and Above.
func Settle(c Counts, below []Chunk, earlier, later *Inventory) Counts {
	for _, ch := range below {
		hs := earlier.Holders(ch.ID)
		for _, h := range later.Holders(ch.ID) {
			if !slices.Contains(hs, h) {
				hs = append(hs, h)
			}
		}
		n := len(hs)
		if n < ch.Want {
			if n > 0 && earlier.Copies(ch.ID) == 0 {
				c.Missing--
			}
			continue
		}
		c.Below--
		if earlier.Copies(ch.ID) == 0 {
			c.Missing--
		}
		if n == ch.Want {
			c.On++
		} else {
			c.Above++
		}
	}
	return c
}

// StillBelow returns the chunks of below (as CountBelow returned them)
// that earlier and later together hold fewer copies of than they want:
// those Settle still counts as Below (and as Missing when neither holds
// any). Besides real trouble, such a chunk may have been written while
// the listings ran and replaced, and deleted, before the second ended (a
// file rewritten meanwhile): a caller that reads its reference again can
// tell.
func StillBelow(below []Chunk, earlier, later *Inventory) []Chunk {
	var out []Chunk
	for _, ch := range below {
		hs := earlier.Holders(ch.ID)
		for _, h := range later.Holders(ch.ID) {
			if !slices.Contains(hs, h) {
				hs = append(hs, h)
			}
		}
		if len(hs) < ch.Want {
			out = append(out, ch)
		}
	}
	return out
}

// ChunkPlace describes where one chunk of a file is and should be.
type ChunkPlace struct {
	Index   uint64   // position of the chunk in the file, as chunk.Ref.Index
	ID      chunk.ID // the chunk
	Targets []string // nodes placement assigns it to, in placement order
	Holders []string // nodes that hold it, sorted
}

// Missing returns the targets that do not hold the chunk, in Targets
// order.
func (p ChunkPlace) Missing() []string {
	var out []string
	for _, t := range p.Targets {
		if _, found := slices.BinarySearch(p.Holders, t); !found {
			out = append(out, t)
		}
	}
	return out
}

// Extra returns the holders that are not targets, sorted: copies that a
// rebalance would move or remove.
func (p ChunkPlace) Extra() []string {
	var out []string
	for _, h := range p.Holders {
		if !slices.Contains(p.Targets, h) {
			out = append(out, h)
		}
	}
	return out
}

// Where describes each chunk of refs (a file's chunk map, as the
// namespace returns it): its targets, as targets computes them (typically
// placement over the current candidates; nil if the caller has none), and
// its holders in inv. The result is in the order of refs.
func Where(refs []chunk.Ref, targets func(chunk.ID) []string, inv *Inventory) []ChunkPlace {
	out := make([]ChunkPlace, len(refs))
	for i, r := range refs {
		out[i] = ChunkPlace{Index: r.Index, ID: r.ID, Holders: inv.Holders(r.ID)}
		if targets != nil {
			out[i].Targets = targets(r.ID)
		}
	}
	return out
}

// Lister is what Gather needs from a node: peer.Client (over the
// network) and chunker.LocalStore (in process) implement it.
type Lister interface {
	// List calls fn with the ID of every chunk held, each once, and
	// stops at the first error, which it returns; it must return soon
	// after ctx is done. On an error, fn may have seen part of the list.
	List(ctx context.Context, fn func(id chunk.ID) error) error
}

// errNoLister is the error of a node Gather was given no Lister for.
var errNoLister = errors.New("no lister")

// gatherBatch is how many IDs Gather collects from one node before adding
// them to the Inventory.
const gatherBatch = 4096

// Gather lists every node of nodes (node ID to its Lister) concurrently,
// one goroutine per node, and returns the Inventory of those that
// answered in full. The error map has an entry for each node that did not
// (its List failed, or its Lister is nil), and is empty when all did; a
// failed node's partial list is left out of the Inventory, so the
// Inventory's Nodes are exactly the nodes that answered. Counts over an
// Inventory missing nodes are partial: report which nodes are missing.
//
// Gather returns when every List has returned; cancelling ctx makes the
// remaining ones fail.
func Gather(ctx context.Context, nodes map[string]Lister) (*Inventory, map[string]error) {
	inv := NewInventory()
	var (
		mu   sync.Mutex
		errs = map[string]error{}
		wg   sync.WaitGroup
	)
	for node, l := range nodes {
		wg.Go(func() {
			if err := gatherNode(ctx, inv, node, l); err != nil {
				mu.Lock()
				errs[node] = err
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return inv, errs
}

// gatherNode lists node into inv, removing what it added if the list
// fails.
func gatherNode(ctx context.Context, inv *Inventory, node string, l Lister) error {
	if l == nil {
		return fmt.Errorf("census: node %s: %w", node, errNoLister)
	}
	batch := make([]chunk.ID, 0, gatherBatch)
	inv.Add(node) // a node that holds nothing still answered
	err := l.List(ctx, func(id chunk.ID) error {
		batch = append(batch, id)
		if len(batch) == cap(batch) {
			inv.Add(node, batch...)
			batch = batch[:0]
		}
		return nil
	})
	if err == nil {
		inv.Add(node, batch...)
		return nil
	}
	inv.RemoveNode(node)
	return fmt.Errorf("census: list chunks of node %s: %w", node, err)
}

// shards is the number of independently locked parts of an Inventory.
const shards = 64

// Inventory records which nodes hold which chunks; see the package
// documentation for its memory use. The zero value is not usable: call
// NewInventory. It is safe for concurrent use.
type Inventory struct {
	shards [shards]invShard

	mu      sync.RWMutex // guards the fields below
	names   []string     // node index -> node ID
	index   map[string]uint32
	present []bool    // node index -> added and not removed
	sets    [][]int32 // holder set index -> sorted node indices; sets[0] is empty
	setIdx  map[string]uint32
	with    map[[2]uint32]uint32 // (set, node) -> set plus node
	without map[[2]uint32]uint32 // (set, node) -> set minus node
}

// invShard holds the chunks whose ID ends in its index (modulo shards):
// listings come grouped by the first byte, so the last one spreads
// concurrent adds over the shards.
type invShard struct {
	mu sync.RWMutex
	m  map[chunk.ID]uint32 // chunk -> holder set index (never 0), maybe with refBit
}

// refBit, set in a shard map value, marks a chunk as referenced
// (MarkReferenced); the other bits are the holder set index. It costs no
// memory: holder set indexes stay far below 2^31.
const refBit = 1 << 31

func (inv *Inventory) shard(id chunk.ID) *invShard {
	return &inv.shards[int(id[chunk.IDSize-1])%shards]
}

// NewInventory returns an empty Inventory.
func NewInventory() *Inventory {
	inv := &Inventory{
		index:   map[string]uint32{},
		sets:    [][]int32{nil},
		setIdx:  map[string]uint32{"": 0},
		with:    map[[2]uint32]uint32{},
		without: map[[2]uint32]uint32{},
	}
	for i := range inv.shards {
		inv.shards[i].m = map[chunk.ID]uint32{}
	}
	return inv
}

// Add records that node holds ids (adding a pair again changes nothing)
// and makes node one of the Inventory's Nodes, even with no ids. It does
// not keep ids.
func (inv *Inventory) Add(node string, ids ...chunk.ID) {
	n := inv.nodeIndex(node)
	memo := map[uint32]uint32{} // set -> set plus n, local to spare inv.mu
	for _, id := range ids {
		sh := inv.shard(id)
		sh.mu.Lock()
		v := sh.m[id]
		old := v &^ refBit
		next, ok := memo[old]
		if !ok {
			next = inv.step(old, n, true)
			memo[old] = next
		}
		sh.m[id] = next | v&refBit
		sh.mu.Unlock()
	}
}

// RemoveNode forgets node and every chunk it holds; chunks left with no
// holder are forgotten too. It costs a pass over the whole Inventory. It
// must not run concurrently with an Add for the same node.
func (inv *Inventory) RemoveNode(node string) {
	inv.mu.Lock()
	n, ok := inv.index[node]
	if ok {
		inv.present[n] = false
	}
	inv.mu.Unlock()
	if !ok {
		return
	}
	memo := map[uint32]uint32{}
	for i := range inv.shards {
		sh := &inv.shards[i]
		sh.mu.Lock()
		for id, v := range sh.m {
			old := v &^ refBit
			next, ok := memo[old]
			if !ok {
				next = inv.step(old, n, false)
				memo[old] = next
			}
			switch {
			case next == old:
			case next == 0:
				delete(sh.m, id)
			default:
				sh.m[id] = next | v&refBit
			}
		}
		sh.mu.Unlock()
	}
}

// nodeIndex returns node's index, registering it if new.
func (inv *Inventory) nodeIndex(node string) uint32 {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	n, ok := inv.index[node]
	if !ok {
		n = uint32(len(inv.names))
		inv.names = append(inv.names, node)
		inv.present = append(inv.present, false)
		inv.index[node] = n
	}
	inv.present[n] = true
	return n
}

// step returns the index of holder set s with node n added (add) or
// removed (!add), creating the set if new.
func (inv *Inventory) step(s, n uint32, add bool) uint32 {
	key := [2]uint32{s, n}
	memo := inv.with
	if !add {
		memo = inv.without
	}
	inv.mu.RLock()
	next, ok := memo[key]
	inv.mu.RUnlock()
	if ok {
		return next
	}
	inv.mu.Lock()
	defer inv.mu.Unlock()
	if next, ok := memo[key]; ok {
		return next
	}
	members := inv.sets[s]
	i, found := slices.BinarySearch(members, int32(n))
	switch {
	case add == found:
		next = s
	case add:
		next = inv.intern(slices.Insert(slices.Clone(members), i, int32(n)))
	default:
		next = inv.intern(slices.Delete(slices.Clone(members), i, i+1))
	}
	memo[key] = next
	return next
}

// intern returns the index of the holder set members, adding it if new.
// The caller holds inv.mu.
func (inv *Inventory) intern(members []int32) uint32 {
	key := make([]byte, 0, 4*len(members))
	for _, m := range members {
		key = append(key, byte(m), byte(m>>8), byte(m>>16), byte(m>>24))
	}
	if s, ok := inv.setIdx[string(key)]; ok {
		return s
	}
	s := uint32(len(inv.sets))
	inv.sets = append(inv.sets, members)
	inv.setIdx[string(key)] = s
	return s
}

// holderSet returns the node indices of the holders of id.
func (inv *Inventory) holderSet(id chunk.ID) []int32 {
	sh := inv.shard(id)
	sh.mu.RLock()
	s := sh.m[id] &^ refBit
	sh.mu.RUnlock()
	if s == 0 {
		return nil
	}
	inv.mu.RLock()
	defer inv.mu.RUnlock()
	return inv.sets[s] // never modified once interned
}

// Copies returns how many nodes hold id.
func (inv *Inventory) Copies(id chunk.ID) int { return len(inv.holderSet(id)) }

// Holders returns the nodes that hold id, sorted; nil if none.
func (inv *Inventory) Holders(id chunk.ID) []string {
	set := inv.holderSet(id)
	if len(set) == 0 {
		return nil
	}
	out := make([]string, len(set))
	inv.mu.RLock()
	for i, n := range set {
		out[i] = inv.names[n]
	}
	inv.mu.RUnlock()
	slices.Sort(out)
	return out
}

// MarkReferenced marks chunk id, if some node holds it, as referenced by
// a file, so that Unreferenced leaves it out. Marks survive Add; a chunk
// RemoveNode forgets loses its mark.
func (inv *Inventory) MarkReferenced(id chunk.ID) {
	sh := inv.shard(id)
	sh.mu.Lock()
	if v, ok := sh.m[id]; ok {
		sh.m[id] = v | refBit
	}
	sh.mu.Unlock()
}

// Unreferenced calls fn with every chunk held by some node and not marked
// referenced, and its holders (sorted), until fn returns false. The order
// is unspecified. fn must not call the Inventory's methods that change it.
func (inv *Inventory) Unreferenced(fn func(id chunk.ID, holders []string) bool) {
	for i := range inv.shards {
		sh := &inv.shards[i]
		var ids []chunk.ID
		sh.mu.RLock()
		for id, v := range sh.m {
			if v&refBit == 0 {
				ids = append(ids, id)
			}
		}
		sh.mu.RUnlock()
		for _, id := range ids {
			if !fn(id, inv.Holders(id)) {
				return
			}
		}
	}
}

// countUnreferenced is how many chunks held are not marked referenced.
func (inv *Inventory) countUnreferenced() int {
	n := 0
	for i := range inv.shards {
		sh := &inv.shards[i]
		sh.mu.RLock()
		for _, v := range sh.m {
			if v&refBit == 0 {
				n++
			}
		}
		sh.mu.RUnlock()
	}
	return n
}

// Nodes returns the nodes the Inventory covers (added and not removed),
// sorted.
func (inv *Inventory) Nodes() []string {
	inv.mu.RLock()
	defer inv.mu.RUnlock()
	var out []string
	for n, name := range inv.names {
		if inv.present[n] {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// Len returns the number of distinct chunks held by at least one node.
func (inv *Inventory) Len() int {
	total := 0
	for i := range inv.shards {
		sh := &inv.shards[i]
		sh.mu.RLock()
		total += len(sh.m)
		sh.mu.RUnlock()
	}
	return total
}

// Failed returns the nodes of errs (as Gather returns them) sorted, to
// report which nodes a partial census lacks.
func Failed(errs map[string]error) []string {
	return slices.Sorted(maps.Keys(errs))
}
