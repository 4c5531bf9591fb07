package appliance

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/wormhole-fs/wormhole/cluster"
	"github.com/wormhole-fs/wormhole/cluster/join"
	"github.com/wormhole-fs/wormhole/cluster/pki"
	"github.com/wormhole-fs/wormhole/etcdmeta"
)

// admitter is this node's side of `wormhole join`: it checks join tokens
// against the records in etcd and decides what the new node runs.
type admitter struct{ n *Node }

var _ join.Admitter = admitter{}

// TokenRecord implements join.Admitter.
func (a admitter) TokenRecord(ctx context.Context, id string) (pki.TokenRecord, error) {
	var rec pki.TokenRecord
	if err := a.n.ns.Token(ctx, id, &rec); err != nil {
		if errors.Is(err, etcdmeta.ErrNoRecord) {
			return rec, fmt.Errorf("token %s: %w", id, join.ErrUnknownToken)
		}
		return rec, err
	}
	return rec, nil
}

// Admit implements join.Admitter. The first etcd.voters nodes get an
// embedded etcd member, added as a learner (the new node promotes it once
// it has caught up: adding a voter directly stalls the cluster); later
// ones are etcd clients.
func (a admitter) Admit(ctx context.Context, req join.Request) (join.Response, error) {
	n, c := a.n, a.n.cl
	c.joinMu.Lock()
	defer c.joinMu.Unlock()

	for _, m := range c.members.Members() {
		if m.ID == req.NodeID && m.State == cluster.StateAlive {
			return join.Response{}, fmt.Errorf("node id %s belongs to a node that is up (%s): give this one another node.id: %w", req.NodeID, m.Addr, join.ErrNodeIDTaken)
		}
	}
	cli := n.ns.Client()
	resp := join.Response{Secret: c.id.secret, Role: roleClient}
	if c.st.Role == roleExternal {
		resp.Role = roleExternal
	} else {
		members, err := etcdmeta.Members(ctx, cli)
		if err != nil {
			return join.Response{}, err
		}
		peerURL := "https://" + hostPort(req.Advertise, req.EtcdPeerPort)
		voters := 0
		for _, m := range members {
			switch {
			case m.Name == req.NodeID || (len(m.PeerURLs) == 1 && m.PeerURLs[0] == peerURL):
				if m.Name != "" {
					return join.Response{}, fmt.Errorf("etcd member %s (%v) exists and has run: remove it before joining again: %w", req.NodeID, m.PeerURLs, join.ErrNodeIDTaken)
				}
				// Added by an earlier join that never started: add it anew.
				if err := etcdmeta.RemoveMember(ctx, cli, m.ID); err != nil {
					return join.Response{}, fmt.Errorf("remove the unstarted etcd member of an earlier join: %w", err)
				}
			default:
				voters++
			}
		}
		if voters < n.cfg.Etcd.Voters {
			id, initial, err := etcdmeta.AddLearner(ctx, cli, req.NodeID, peerURL)
			if err != nil {
				return join.Response{}, fmt.Errorf("add etcd member for %s: %w", req.NodeID, err)
			}
			resp.Role, resp.MemberID, resp.InitialCluster = roleVoter, id, initial
		}
		for _, m := range members {
			resp.EtcdEndpoints = append(resp.EtcdEndpoints, m.ClientURLs...)
		}
	}
	for _, m := range c.members.Members() {
		if m.State == cluster.StateAlive {
			resp.GossipSeeds = append(resp.GossipSeeds, m.Addr)
		}
	}
	n.log.Info().Str("node", req.NodeID).Str("advertise", req.Advertise).Str("etcd", resp.Role).Msg("admitting node")
	return resp, nil
}

// DefaultTokenTTL is how long a join token is accepted.
const DefaultTokenTTL = 24 * time.Hour

// NewJoinToken makes a join token for this node's cluster, valid for ttl,
// and records it so that any node can admit with it.
func (n *Node) NewJoinToken(ctx context.Context, ttl time.Duration) (pki.Token, error) {
	if n.cl == nil {
		return pki.Token{}, errors.New("this node is a single node, not a cluster: make a cluster with `wormhole init` on an empty data directory")
	}
	certPEM, keyPEM, err := n.ns.CA(ctx)
	if err != nil {
		return pki.Token{}, err
	}
	ca, err := pki.LoadCA(certPEM, keyPEM)
	if err != nil {
		return pki.Token{}, err
	}
	return newToken(ctx, n.ns, ca, ttl)
}

// newToken makes and records a join token.
func newToken(ctx context.Context, ns *etcdmeta.Store, ca *pki.CA, ttl time.Duration) (pki.Token, error) {
	tok, err := pki.NewJoinToken(ca, ttl, time.Now())
	if err != nil {
		return pki.Token{}, err
	}
	rec := tok.Record()
	if err := ns.PutToken(ctx, rec.ID, rec); err != nil {
		return pki.Token{}, fmt.Errorf("record join token: %w", err)
	}
	return tok, nil
}
