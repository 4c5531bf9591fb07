package appliance

import (
	"context"
	"fmt"

	"github.com/wormhole-fs/wormhole/chunker/chunk"
	"github.com/wormhole-fs/wormhole/chunker/repair"
	"github.com/wormhole-fs/wormhole/cluster"
	"github.com/wormhole-fs/wormhole/etcdmeta"
	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
)

// The repair worker's views of the namespace and the nodes.

// repairChunks adapts the namespace.
type repairChunks struct{ ns *etcdmeta.Store }

// ForEachChunk reads linearizably, as the orphan collection needs (see
// repair.Chunks).
func (r repairChunks) ForEachChunk(ctx context.Context, fn func(ino meta.Ino, ref chunk.Ref) error) error {
	return r.ns.ForEachChunkLinearizable(ctx, fn)
}

func (r repairChunks) Copies(ctx context.Context, ino meta.Ino) (int, error) {
	a, err := r.ns.GetAttr(ctx, ino)
	if err != nil {
		return 0, err
	}
	return int(a.Copies), nil
}

// repairPlacement asks the replicator where chunks belong.
type repairPlacement struct{ c *clusterNode }

func (p repairPlacement) Targets(id chunk.ID, copies int) []string {
	return p.c.replica.Holders(id, copies)
}

// repairCluster lists the recorded nodes with their state.
type repairCluster struct{ n *Node }

func (r repairCluster) Nodes() []repair.Node {
	c := r.n.cl
	v := c.view.Load()
	if v == nil {
		return nil
	}
	up := map[string]bool{}
	for _, m := range c.members.Members() {
		if m.State == cluster.StateAlive {
			up[m.ID] = true
		}
	}
	out := make([]repair.Node, 0, len(v.records))
	for _, rec := range v.records {
		out = append(out, repair.Node{ID: rec.ID, Alive: up[rec.ID], DownSince: v.downSince[rec.ID], Draining: rec.Draining})
	}
	return out
}

func (r repairCluster) Store(id string) (repair.NodeStore, error) {
	n := r.n
	if id == n.cl.st.NodeID {
		return n.store, nil
	}
	rem, err := n.cl.dialer.Remote(id)
	if err != nil {
		return nil, err
	}
	s, ok := rem.(repair.NodeStore)
	if !ok {
		return nil, fmt.Errorf("node %s: its client cannot list chunks", id)
	}
	return s, nil
}

// newRepair makes this node's repair worker; one node of the cluster
// leads at a time.
func (n *Node) newRepair() (*repair.Worker, error) {
	cfg := repair.DefaultConfig()
	cfg.Name = n.cl.st.NodeID
	cfg.Copies = n.cfg.Redundancy.Copies
	cfg.Grace = n.cfg.Repair.Grace
	cfg.Bandwidth = n.cfg.Repair.Bandwidth
	cfg.Interval = n.cfg.Repair.Interval
	cfg.OrphanGrace = n.cfg.Repair.OrphanGrace
	return repair.New(cfg, n.ns.Client(), "/wh/"+n.cl.st.ClusterID+"/", repairChunks{n.ns}, repairPlacement{n.cl},
		repairCluster{n}, n.log)
}

// kickRepair asks for a repair pass soon.
func (n *Node) kickRepair() {
	if n.cl != nil && n.cl.repair != nil {
		n.cl.repair.Kick()
	}
}

// repairProgress is what status shows of the repair worker: this node's
// pass if it leads, else the leader's last record.
func (n *Node) repairProgress(ctx context.Context) *repair.Progress {
	if n.cl == nil || n.cl.repair == nil {
		return nil
	}
	p, err := n.cl.repair.State(ctx)
	if err != nil {
		p = n.cl.repair.Progress()
	}
	return &p
}
