package appliance

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wormhole-fs/wormhole/cluster"
	"github.com/wormhole-fs/wormhole/cluster/posture"
	"github.com/wormhole-fs/wormhole/nfsfront"
)

// postureInterval is how often the cluster's situation is assessed.
const postureInterval = 5 * time.Second

// How the metadata quorum is probed: one linearizable read with a
// deadline. The quorum counts as lost only once probes have failed for
// quorumLossAfter in a row, at least quorumLossProbes of them: a single
// read that misses its deadline (an etcd election, a member resuming
// after a stall, a machine so loaded that etcd answers in seconds) must
// not turn a node read-only. A node cut off from the majority is found
// out within about four posture intervals; its writes fail meanwhile
// anyway, since etcd cannot commit them.
const (
	quorumProbeTimeout = 5 * time.Second
	quorumLossAfter    = 10 * time.Second
	quorumLossProbes   = 2
)

// censusRecheckAge is how old a census that shows chunks below target,
// or nodes that did not answer, may be when the posture loop reuses it:
// a census taken while a node was returning (or under writes) must not
// hold a crisis posture for postureCensusAge once the facts are better.
const censusRecheckAge = 10 * time.Second

// postureCensusTimeout bounds a census taken for an assessment, so that
// etcd lost in the middle of one cannot stall the posture loop.
const postureCensusTimeout = time.Minute

// postureGate is the NFS front's gate: it lets through what the posture in
// force allows. Until the first assessment everything is served.
type postureGate struct {
	cur atomic.Pointer[posture.Assessment]
	// quorum turns the quorum probes into the MetaQuorum fact.
	quorum quorumWatch
	// kick asks the posture loop for an assessment now (a node came or
	// went); sends do not block, and kicks made meanwhile make one.
	kick chan struct{}
	// every is the pause between assessments: postureInterval.
	every time.Duration
}

// newPostureGate returns a gate that serves everything until its first
// assessment.
func newPostureGate() *postureGate {
	return &postureGate{kick: make(chan struct{}, 1), every: postureInterval}
}

// reassess asks for an assessment without waiting for the next interval.
func (g *postureGate) reassess() {
	select {
	case g.kick <- struct{}{}:
	default: // one is already asked for
	}
}

// quorumWatch debounces the metadata quorum probes; see quorumLossAfter.
// It is safe for concurrent use (status and the posture loop both probe).
type quorumWatch struct {
	mu sync.Mutex
	// failingSince is when the first probe of the current run of
	// failures failed; zero while the last probe succeeded.
	failingSince time.Time
	failures     int
}

// observe records the outcome of one probe that ended at now, and says
// whether the quorum counts as held: until failures have lasted
// quorumLossAfter over quorumLossProbes probes, it still does.
func (q *quorumWatch) observe(ok bool, now time.Time) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if ok {
		q.failingSince, q.failures = time.Time{}, 0
		return true
	}
	if q.failures == 0 {
		q.failingSince = now
	}
	q.failures++
	return q.failures < quorumLossProbes || now.Sub(q.failingSince) < quorumLossAfter
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
	f := posture.Facts{Copies: n.cfg.Redundancy.Copies}
	qctx, cancel := context.WithTimeout(ctx, quorumProbeTimeout)
	_, err := n.ns.Client().Get(qctx, "health") // a linearizable read needs the quorum
	cancel()
	answered := err == nil
	f.MetaQuorum = n.gate.quorum.observe(answered, time.Now())
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
	if !answered && f.MetaQuorum {
		// A probe failed, but the loss is not confirmed yet: the last
		// assessment stands (a census would wait on etcd).
		if prev := n.gate.cur.Load(); prev != nil {
			return *prev
		}
	}
	if answered {
		// The census reads etcd, which just answered; a census that saw
		// trouble is not trusted for long.
		cctx, cancel := context.WithTimeout(ctx, postureCensusTimeout)
		cs := n.chunkCensus(cctx, postureCensusAge)
		if (cs.Below > 0 || len(cs.Partial) > 0) && time.Since(cs.At) > censusRecheckAge {
			cs = n.chunkCensus(cctx, censusRecheckAge)
		}
		cancel()
		f.ChunksBelow, f.ChunksMissing, f.CensusPartial = cs.Below, cs.Missing, len(cs.Partial) > 0
		f.NeededBytes = uint64(cs.Below) * uint64(n.cfg.Chunks.Size)
	}
	return posture.Assess(n.policy(), f)
}

// postureLoop keeps the gate's posture up to date: postures lift by
// themselves when the situation improves. It assesses every interval, and
// at once when a node comes or goes (reassess), so that clients see a
// crisis posture as soon as the facts call for it, and no longer: after a
// whole cluster restarts, a node that started first and found itself
// alone stays read-only only until the others are back.
func (n *Node) postureLoop(ctx context.Context) {
	t := time.NewTicker(n.gate.every)
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
		case <-n.gate.kick:
		}
	}
}
