package appliance

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/wormhole-fs/wormhole/chunker/census"
	"github.com/wormhole-fs/wormhole/chunker/chunk"
	"github.com/wormhole-fs/wormhole/cluster"
	"github.com/wormhole-fs/wormhole/etcdmeta"
)

// NodeChunks is what `wormhole drain` polls: how much a node still holds.
type NodeChunks struct {
	ID       string `json:"id"`
	Alive    bool   `json:"alive"`
	Draining bool   `json:"draining"`
	// Chunks is how many chunks the node holds (-1 when it is down).
	Chunks int `json:"chunks"`
	// Remaining is, while it drains, how many chunks files refer to that
	// the node still holds, as counted by the last repair pass begun since
	// the drain that has read every reference (-1 before one). Chunks may stay above 0 with orphans no
	// file refers to.
	Remaining int `json:"remaining"`
}

// Errors of node operations; the admin API maps them to HTTP statuses.
var (
	ErrUnknownNode = errors.New("no such node in the cluster")
	ErrOnlyCopy    = errors.New("the node holds the only copy of some chunks")
)

// Drain marks node id as draining (or, with on false, not any more): it
// takes no new chunks, and the repair worker copies what it holds to
// other nodes, then deletes it there. The node keeps serving meanwhile.
func (n *Node) Drain(ctx context.Context, id string, on bool) error {
	if n.cl == nil {
		return ErrNotClustered
	}
	if err := n.ns.SetDraining(ctx, id, on); err != nil {
		if errors.Is(err, etcdmeta.ErrNoRecord) {
			return fmt.Errorf("%s: %w", id, ErrUnknownNode)
		}
		return err
	}
	if err := n.refreshView(ctx); err != nil {
		return err
	}
	n.kickRepair()
	n.log.Info().Str("node", id).Bool("draining", on).Msg("drain changed")
	return nil
}

// NodeChunks counts the chunks node id holds.
func (n *Node) NodeChunks(ctx context.Context, id string) (NodeChunks, error) {
	if n.cl == nil {
		return NodeChunks{}, ErrNotClustered
	}
	nc := NodeChunks{ID: id, Chunks: -1, Remaining: -1}
	known := false
	var since time.Time
	if v := n.cl.view.Load(); v != nil {
		for _, r := range v.records {
			if r.ID == id {
				known, nc.Draining, since = true, r.Draining, r.DrainingSince
			}
		}
	}
	if p := n.repairProgress(ctx); nc.Draining && p != nil && p.Started.After(since) && p.Scanned {
		nc.Remaining = p.DrainRemaining[id] // absent: nothing left
	}
	if !known {
		return nc, fmt.Errorf("%s: %w", id, ErrUnknownNode)
	}
	l, err := n.lister(id)
	if err != nil {
		return nc, nil // down: nothing to count
	}
	nc.Alive = true
	count := 0
	if err := l.List(ctx, func(chunk.ID) error { count++; return nil }); err != nil {
		return nc, fmt.Errorf("list chunks of %s: %w", id, err)
	}
	nc.Chunks = count
	return nc, nil
}

// lister returns the chunk lister of an alive node.
func (n *Node) lister(id string) (census.Lister, error) {
	for _, m := range n.cl.members.Members() {
		if m.ID != id || m.State != cluster.StateAlive {
			continue
		}
		if id == n.cl.st.NodeID {
			return n.store, nil
		}
		r, err := n.cl.dialer.Remote(id)
		if err != nil {
			return nil, err
		}
		if l, ok := r.(census.Lister); ok {
			return l, nil
		}
	}
	return nil, fmt.Errorf("node %s is down: %w", id, chunk.ErrUnavailable)
}

// Remove forgets node id: its etcd member (if it runs one) and its record.
// It refuses while the node holds the only copy of any chunk, or, when the
// node is down, while some chunk has no copy on a node that is up (it may
// be on the removed node); force skips the second check only.
func (n *Node) Remove(ctx context.Context, id string, force bool) error {
	if n.cl == nil {
		return ErrNotClustered
	}
	if id == n.cl.st.NodeID {
		return fmt.Errorf("a node cannot remove itself: run remove on another node")
	}
	nc, err := n.NodeChunks(ctx, id)
	if err != nil {
		return err
	}
	if nc.Alive {
		inv, errs := census.Gather(ctx, n.aliveListers())
		if len(errs) > 0 {
			return fmt.Errorf("cannot check who else holds %s's chunks: %s did not answer; try again", id, census.Failed(errs))
		}
		only := 0
		if l, err := n.lister(id); err == nil {
			_ = l.List(ctx, func(c chunk.ID) error {
				if inv.Copies(c) <= 1 {
					only++
				}
				return nil
			})
		}
		if only > 0 {
			return fmt.Errorf("%s holds the only copy of %d chunks: drain it first (wormhole drain %s): %w", id, only, id, ErrOnlyCopy)
		}
	} else if !force {
		if cs := n.chunkCensus(ctx, 0); cs.Missing > 0 {
			return fmt.Errorf("%s is down and %d chunks have no copy on a node that is up: they may be only on %s; bring it back, or remove it with --force to give them up: %w", id, cs.Missing, id, ErrOnlyCopy)
		}
	}
	if members, err := etcdmeta.Members(ctx, n.ns.Client()); err == nil {
		for _, m := range members {
			if m.Name == id {
				if err := etcdmeta.RemoveMember(ctx, n.ns.Client(), m.ID); err != nil {
					return fmt.Errorf("remove %s's etcd member: %w", id, err)
				}
			}
		}
	}
	if err := n.ns.DeleteNode(ctx, id); err != nil {
		return err
	}
	n.log.Info().Str("node", id).Msg("node removed from the cluster")
	return n.refreshView(ctx)
}

// aliveListers returns the chunk listers of every alive node.
func (n *Node) aliveListers() map[string]census.Lister {
	out := map[string]census.Lister{}
	for _, m := range n.cl.members.Members() {
		if m.State != cluster.StateAlive {
			continue
		}
		if l, err := n.lister(m.ID); err == nil {
			out[m.ID] = l
		}
	}
	return out
}
