package appliance

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/wormhole-fs/wormhole/cluster"
	"github.com/wormhole-fs/wormhole/cluster/posture"
	"github.com/wormhole-fs/wormhole/etcdmeta"
)

// NodeStatus is one node of the cluster as status reports it.
type NodeStatus struct {
	ID string `json:"id"`
	// State is alive (gossip hears from it) or dead (recorded in etcd but
	// silent).
	State     string `json:"state"`
	Advertise string `json:"advertise"`
	NFSAddr   string `json:"nfs_addr"`
	// Etcd is voter, learner, client or external.
	Etcd          string `json:"etcd"`
	Zone          string `json:"zone,omitempty"`
	Tier          string `json:"tier,omitempty"`
	CapacityBytes uint64 `json:"capacity_bytes"`
	FreeBytes     uint64 `json:"free_bytes"`
	Version       string `json:"version,omitempty"`
	// Draining is set while `wormhole drain` empties the node.
	Draining bool `json:"draining,omitempty"`
	// DownSince is when this node last saw it go (or, if it was down
	// already, when this node started).
	DownSince *time.Time `json:"down_since,omitempty"`
}

// RedundancyStatus is the declared default policy.
type RedundancyStatus struct {
	Copies    int    `json:"copies"`
	WhenShort string `json:"when_short"`
}

// clusterStatus fills the cluster part of st and judges the situation.
func (n *Node) clusterStatus(ctx context.Context, st *Status) error {
	c := n.cl
	st.Node = c.st.NodeID
	if until := n.certNotAfter(); !until.IsZero() {
		st.CertValidUntil = &until
	}
	if e := c.renewErr.Load(); e != nil {
		st.CertRenewalError = *e
	}
	st.Redundancy = &RedundancyStatus{Copies: n.cfg.Redundancy.Copies, WhenShort: n.cfg.Redundancy.WhenShort}
	recs, err := n.ns.Nodes(ctx)
	if err != nil {
		return fmt.Errorf("cluster nodes: %w", err)
	}
	etcdRole := map[string]string{}
	if members, err := etcdmeta.Members(ctx, n.ns.Client()); err == nil {
		for _, m := range members {
			etcdRole[m.Name] = "voter"
			if m.IsLearner {
				etcdRole[m.Name] = "learner"
			}
		}
	}
	alive := map[string]cluster.Node{}
	for _, m := range c.members.Members() {
		if m.State == cluster.StateAlive {
			alive[m.ID] = m
		}
	}
	var down []string
	for _, r := range recs {
		ns := NodeStatus{ID: r.ID, State: "dead", Advertise: r.Advertise, NFSAddr: r.NFSAddr, Etcd: r.Etcd,
			Zone: r.Zone, Tier: r.Tier, Version: r.Version, Draining: r.Draining}
		if v := c.view.Load(); v != nil {
			if t, ok := v.downSince[r.ID]; ok && !isAlive(alive, r.ID) {
				ns.DownSince = &t
			}
		}
		if role, ok := etcdRole[r.ID]; ok {
			ns.Etcd = role
		}
		if m, ok := alive[r.ID]; ok {
			ns.State, ns.CapacityBytes, ns.FreeBytes = "alive", m.Capacity, m.Free
			if m.Version != "" {
				ns.Version = m.Version
			}
		} else {
			down = append(down, r.ID)
		}
		st.Nodes = append(st.Nodes, ns)
	}
	st.Capacity.TotalBytes, st.Capacity.FreeBytes, _ = clusterUsage{c.members, n.cfg.Redundancy.Copies}.Usage()

	up, copies := len(alive), n.cfg.Redundancy.Copies
	st.Summary = fmt.Sprintf("%d of %d nodes up", up, len(recs))
	if up < len(recs) {
		st.Summary += fmt.Sprintf(" (down: %s); files are read from the copies on the nodes that are up", strings.Join(down, ", "))
	}
	switch {
	case up >= copies:
		st.Summary += fmt.Sprintf("; every new chunk is written to %d nodes before the client is answered.", copies)
	case n.cfg.Redundancy.WhenShort == "refuse":
		st.Summary += fmt.Sprintf(". Fewer nodes are up than the %d copies declared, so writes are refused (redundancy.when_short: refuse).", copies)
	default:
		st.Summary += fmt.Sprintf(". Fewer nodes are up than the %d copies declared: new chunks get only %d cop%s until nodes return (redundancy.when_short: degraded).", copies, up, plural(up, "y", "ies"))
	}
	cs := n.chunkCensus(ctx, statusCensusAge)
	st.Chunks = &cs
	if cs.Below > 0 {
		st.Summary += fmt.Sprintf(" %d of %d chunks have fewer copies than declared", cs.Below, cs.Chunks)
		if cs.Missing > 0 {
			st.Summary += fmt.Sprintf(", %d of them no copy on a node that is up (reads of their data fail with an I/O error until a node holding them returns)", cs.Missing)
		}
		st.Summary += "."
	}
	if len(cs.Partial) > 0 {
		st.Summary += fmt.Sprintf(" (Copies on %s were not counted: they did not answer.)", strings.Join(cs.Partial, ", "))
	}
	a := n.assess(ctx)
	st.Situation, st.Posture, st.AtRisk, st.Advice = string(a.Situation), string(a.Posture), a.AtRisk, a.Advice
	st.PostureMeaning = a.Posture.Meaning()
	if a.Situation == posture.Healthy {
		st.Advice = ""
		if len(down) > 0 {
			st.Advice = fmt.Sprintf("every chunk has its copies without %s: bring %s back, or take %s out with 'wormhole remove'.",
				strings.Join(down, ", "), plural(len(down), "it", "them"), plural(len(down), "it", "them"))
		}
	}
	fullNodes(st)
	if p := n.repairProgress(ctx); p != nil {
		st.Repair = p
	}
	return nil
}

// statusMetaTimeout bounds status's first read of etcd: past it, status
// reports what the node knows without the metadata store.
const statusMetaTimeout = 5 * time.Second

// statusWithoutMeta fills the cluster part of st when etcd did not answer
// (err): the nodes as last recorded and as gossip hears them, and the
// situation and posture as assessed now (the metadata quorum counts as
// lost once the loss lasts, see quorumWatch).
func (n *Node) statusWithoutMeta(ctx context.Context, st *Status, err error) {
	c := n.cl
	st.Node = c.st.NodeID
	if until := n.certNotAfter(); !until.IsZero() {
		st.CertValidUntil = &until
	}
	if e := c.renewErr.Load(); e != nil {
		st.CertRenewalError = *e
	}
	st.Redundancy = &RedundancyStatus{Copies: n.cfg.Redundancy.Copies, WhenShort: n.cfg.Redundancy.WhenShort}
	alive := map[string]cluster.Node{}
	for _, m := range c.members.Members() {
		if m.State == cluster.StateAlive {
			alive[m.ID] = m
		}
	}
	if v := c.view.Load(); v != nil {
		for _, r := range v.records {
			ns := NodeStatus{ID: r.ID, State: "dead", Advertise: r.Advertise, NFSAddr: r.NFSAddr, Etcd: r.Etcd,
				Zone: r.Zone, Tier: r.Tier, Version: r.Version, Draining: r.Draining}
			if m, ok := alive[r.ID]; ok {
				ns.State, ns.CapacityBytes, ns.FreeBytes = "alive", m.Capacity, m.Free
			} else if t, ok := v.downSince[r.ID]; ok {
				ns.DownSince = &t
			}
			st.Nodes = append(st.Nodes, ns)
		}
	}
	a := n.assess(ctx)
	st.Situation, st.Posture, st.AtRisk, st.Advice = string(a.Situation), string(a.Posture), a.AtRisk, a.Advice
	st.PostureMeaning = a.Posture.Meaning()
	st.Summary = fmt.Sprintf("the metadata store (etcd) does not answer this node (%v): %d of %d recorded nodes heard by gossip; "+
		"no file can be looked up or changed through this node until it does.", err, len(alive), len(st.Nodes))
}

func isAlive(alive map[string]cluster.Node, id string) bool {
	_, ok := alive[id]
	return ok
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
