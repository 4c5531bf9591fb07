package appliance

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/wormhole-fs/wormhole/cluster"
	"github.com/wormhole-fs/wormhole/cluster/posture"
	"github.com/wormhole-fs/wormhole/nfsfront"
)

// postureInterval is how often the cluster's situation is assessed.
const postureInterval = 5 * time.Second

// postureGate is the NFS front's gate: it lets through what the posture in
// force allows. Until the first assessment everything is served.
type postureGate struct {
	cur atomic.Pointer[posture.Assessment]
}

// Allow implements nfsfront.Gate.
func (g *postureGate) Allow(op nfsfront.OpClass) error {
	a := g.cur.Load()
	if a == nil {
		return nil
	}
	want := posture.Write
	switch op {
	case nfsfront.OpRead:
		want = posture.Read
	case nfsfront.OpRemove:
		want = posture.Remove
	}
	switch {
	case a.Posture.Allows(want):
		return nil
	case a.Posture == posture.Freeze:
		return fmt.Errorf("%s: %w", a.Situation, nfsfront.ErrFrozen)
	}
	return fmt.Errorf("%s: %w", a.Situation, nfsfront.ErrWritesRefused)
}

// policy is the configured postures (validated with the config).
func (n *Node) policy() posture.Policy {
	return posture.Policy{
		Favourable: posture.Posture(n.cfg.Postures.Favourable),
		Mixed:      posture.Posture(n.cfg.Postures.Mixed),
		Critical:   posture.Posture(n.cfg.Postures.Critical),
	}
}

// assess gathers the facts and judges the situation.
func (n *Node) assess(ctx context.Context) posture.Assessment {
	c := n.cl
	f := posture.Facts{Copies: n.cfg.Redundancy.Copies, MetaQuorum: true}
	qctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	_, err := n.ns.Client().Get(qctx, "health") // a linearizable read needs the quorum
	cancel()
	if err != nil {
		f.MetaQuorum = false
	}
	up := map[string]bool{}
	for _, m := range c.members.Members() {
		if m.State == cluster.StateAlive {
			up[m.ID] = true
			f.FreeBytes += m.Free
		}
	}
	if v := c.view.Load(); v != nil {
		for _, r := range v.records {
			f.NodesKnown++
			if up[r.ID] {
				f.NodesUp++
			} else {
				f.Down = append(f.Down, r.ID)
			}
		}
	}
	if f.MetaQuorum {
		cs := n.chunkCensus(ctx, postureCensusAge)
		f.ChunksBelow, f.ChunksMissing, f.CensusPartial = cs.Below, cs.Missing, len(cs.Partial) > 0
		f.NeededBytes = uint64(cs.Below) * uint64(n.cfg.Chunks.Size)
	}
	return posture.Assess(n.policy(), f)
}

// postureLoop keeps the gate's posture up to date: postures lift by
// themselves when the situation improves.
func (n *Node) postureLoop(ctx context.Context) {
	t := time.NewTicker(postureInterval)
	defer t.Stop()
	for {
		a := n.assess(ctx)
		if ctx.Err() != nil {
			return
		}
		prev := n.gate.cur.Swap(&a)
		if prev == nil || prev.Situation != a.Situation || prev.Posture != a.Posture {
			ev := n.log.Info()
			if a.Situation != posture.Healthy {
				ev = n.log.Warn()
			}
			ev.Str("situation", string(a.Situation)).Str("posture", string(a.Posture)).Str("at_risk", a.AtRisk).
				Str("advice", a.Advice).Msg("cluster situation")
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
