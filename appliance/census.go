package appliance

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"sync"
	"time"

	"github.com/wormhole-fs/wormhole/chunker/census"
	"github.com/wormhole-fs/wormhole/chunker/chunk"
	"github.com/wormhole-fs/wormhole/cluster"
	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
)

// ChunkCensus is status's count of chunks by how many copies the nodes
// hold, against what each chunk's file asks for.
type ChunkCensus struct {
	Chunks int `json:"chunks"`
	// Below counts chunks with fewer copies than wanted, Missing those
	// with none at all (included in Below), On and Above the others.
	Below   int `json:"below"`
	On      int `json:"on"`
	Above   int `json:"above"`
	Missing int `json:"missing"`
	// Orphans counts chunks some node holds that no file refers to:
	// copies left by a failed write or delete (the repair worker deletes
	// them after repair.orphan_grace), or written for a write not yet
	// committed. They are not counted in Above.
	Orphans int `json:"orphans"`
	// Partial lists the nodes up but not answering: their copies were not
	// seen, so Below may be too high.
	Partial []string  `json:"partial,omitempty"`
	At      time.Time `json:"at"`
	Error   string    `json:"error,omitempty"`
}

// How old a census may be when reused: counting reads every chunk
// reference and every node's chunk list, so the posture loop, which runs
// often, takes a new one rarely; status asks for a fresher one.
const (
	statusCensusAge  = 10 * time.Second
	postureCensusAge = time.Minute
)

// censusCache keeps the last census; one is taken at a time.
type censusCache struct {
	mu   sync.Mutex
	last *ChunkCensus
}

// invalidate forgets the last census: nodes came or went, so the next
// status or posture assessment counts afresh.
func (c *censusCache) invalidate() {
	c.mu.Lock()
	c.last = nil
	c.mu.Unlock()
}

// chunkCensus returns a census at most maxAge old.
func (n *Node) chunkCensus(ctx context.Context, maxAge time.Duration) ChunkCensus {
	c := &n.cl.census
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.last != nil && time.Since(c.last.At) < maxAge {
		return *c.last
	}
	cs := n.takeCensus(ctx)
	c.last = &cs
	return cs
}

// takeCensus lists every alive node's chunks and compares them with every
// file's chunk references.
func (n *Node) takeCensus(ctx context.Context) ChunkCensus {
	cs := ChunkCensus{At: time.Now()}
	listers := n.aliveListers()
	for _, m := range n.cl.members.Members() {
		if _, ok := listers[m.ID]; !ok && m.State == cluster.StateAlive {
			cs.Partial = append(cs.Partial, m.ID)
		}
	}
	inv, errs := census.Gather(ctx, listers)
	cs.Partial = append(cs.Partial, census.Failed(errs)...)

	def := n.cfg.Redundancy.Copies
	var scanErr error
	chunks := func(yield func(census.Chunk) bool) {
		var (
			cur  meta.Ino
			want int
		)
		scanErr = n.ns.ForEachChunk(ctx, func(ino meta.Ino, ref chunk.Ref) error {
			if ino != cur {
				cur, want = ino, def
				if a, err := n.ns.GetAttr(ctx, ino); err == nil && a.Copies > 0 {
					want = int(a.Copies)
				}
			}
			if !yield(census.Chunk{ID: ref.ID, Want: want}) {
				return errStopCensus
			}
			return nil
		})
	}
	counts, below := census.CountBelow(iter.Seq[census.Chunk](chunks), inv, settleMax)
	if len(below) > 0 && ctx.Err() == nil {
		// The nodes were listed before the references were read: a chunk
		// written or moved meanwhile looks below target. A second listing,
		// taken after the references were read, sees it.
		later, _ := census.Gather(ctx, listers)
		counts = census.Settle(counts, below, inv, later)
		// A chunk written while the nodes were listed and replaced (so
		// deleted) before the second listing ended is on fewer nodes than
		// it wants, or on none, though nothing is short: it is no longer
		// referenced. Only a chunk still referenced now counts as below
		// target, or as missing (which makes the cluster critical).
		if still := census.StillBelow(below, inv, later); len(still) > 0 {
			if gone, err := n.unreferenced(ctx, still); err == nil {
				for _, ch := range still {
					if !gone[ch.ID] {
						continue
					}
					counts.Chunks--
					counts.Below--
					if inv.Copies(ch.ID) == 0 && later.Copies(ch.ID) == 0 {
						counts.Missing--
					}
				}
			}
		}
	}
	cs.Chunks, cs.Below, cs.On, cs.Above, cs.Missing = counts.Chunks, counts.Below, counts.On, counts.Above, counts.Missing
	cs.Orphans = counts.Orphans
	if scanErr != nil && scanErr != errStopCensus {
		cs.Error = fmt.Sprintf("chunk references: %v", scanErr)
	}
	return cs
}

// unreferenced returns which of chunks no file refers to any more.
func (n *Node) unreferenced(ctx context.Context, chunks []census.Chunk) (map[chunk.ID]bool, error) {
	left := make(map[chunk.ID]bool, len(chunks))
	for _, ch := range chunks {
		left[ch.ID] = true
	}
	err := n.ns.ForEachChunk(ctx, func(_ meta.Ino, ref chunk.Ref) error {
		delete(left, ref.ID)
		if len(left) == 0 {
			return errStopCensus
		}
		return nil
	})
	if err != nil && !errors.Is(err, errStopCensus) {
		return nil, err
	}
	return left, nil
}

// settleMax bounds the chunks below target a census checks again against
// a second listing (see takeCensus); past it, the count may be high while
// writes run.
const settleMax = 4096

// errStopCensus ends a chunk scan whose consumer stopped.
var errStopCensus = fmt.Errorf("census stopped")
