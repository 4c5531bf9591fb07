package appliance

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/wormhole-fs/wormhole/chunker/chunk"
	"github.com/wormhole-fs/wormhole/chunker/peer"
	"github.com/wormhole-fs/wormhole/chunker/repair"
	"github.com/wormhole-fs/wormhole/chunker/replica"
	"github.com/wormhole-fs/wormhole/cluster"
	"github.com/wormhole-fs/wormhole/cluster/join"
	"github.com/wormhole-fs/wormhole/cluster/pki"
	"github.com/wormhole-fs/wormhole/etcdmeta"
)

// clusterNode is what only a node of a cluster runs on top of a single
// node: its credentials, gossip, the chunk server other nodes read and
// write through, the replicating chunk store, and the join service.
type clusterNode struct {
	st  clusterState
	id  *identity
	adv string // node.advertise

	members *cluster.Membership
	replica *replica.Store
	dialer  *peerDialer

	peerLis net.Listener
	peerSrv *peer.Server
	joinLis net.Listener
	joinSrv *join.Server

	// seeds are gossip addresses to join when Start could reach none.
	seeds []string
	// view is what etcd and gossip say of the other nodes, refreshed by
	// gossipLoop: which drain, and since when the down ones are down.
	view atomic.Pointer[clusterView]
	// repair keeps chunks where placement puts them (one leader at a time).
	repair *repair.Worker
	// census caches the chunk census status shows.
	census censusCache
	// joinMu serializes the etcd membership changes this node makes when
	// admitting nodes.
	joinMu sync.Mutex
	// renewal paces the renewal of the node certificate (certrenew.go);
	// renewErr is why the last renewal due failed, nil after a success.
	renewal  certRenewal
	renewErr atomic.Pointer[string]
}

func hostPort(ip string, port int) string { return net.JoinHostPort(ip, strconv.Itoa(port)) }

// listenCluster binds the data and join ports early, like the NFS port,
// so a taken port fails the start before anything heavy runs.
func (c *clusterNode) listen(cfg Config) error {
	var err error
	if c.peerLis, err = net.Listen("tcp", hostPort(c.adv, cfg.Cluster.DataPort)); err != nil {
		return fmt.Errorf("cluster.data_port: %w (another program holds it: stop it or choose another port)", err)
	}
	if c.joinLis, err = net.Listen("tcp", hostPort(c.adv, cfg.Cluster.JoinPort)); err != nil {
		c.peerLis.Close()
		return fmt.Errorf("cluster.join_port: %w (another program holds it: stop it or choose another port)", err)
	}
	return nil
}

// checkAdvertise makes sure node.advertise is set, and is an address of
// this machine.
func checkAdvertise(adv string) error {
	if adv == "" {
		return errors.New("node.advertise must be set to the IP address other nodes reach this one at")
	}
	l, err := net.Listen("tcp", net.JoinHostPort(adv, "0"))
	if err != nil {
		return fmt.Errorf("node.advertise = %s is not an address of this machine: %w", adv, err)
	}
	l.Close()
	return nil
}

// startEtcd connects the node to the cluster's etcd: it starts its
// embedded member (and, the first time, waits for it to be promoted from
// learner to voter), or dials the members or the external cluster.
func (n *Node) startClusterEtcd(ctx context.Context, dataDir string) (*clientv3.Client, error) {
	c, cfg := n.cl, n.cfg
	log := n.log.With().Str("component", "etcd").Logger()
	switch c.st.Role {
	case roleVoter:
		ec := etcdmeta.EmbedConfig{
			Dir:                 filepath.Join(dataDir, "etcd"),
			Name:                c.st.NodeID,
			PeerURL:             "https://" + hostPort(c.adv, cfg.Etcd.PeerPort),
			ClientURL:           "https://" + hostPort(c.adv, cfg.Etcd.ClientPort),
			TLS:                 &etcdmeta.EmbedTLS{CertPEM: c.id.certPEM, KeyPEM: c.id.keyPEM, CAPEM: c.id.roots.CertPEM()},
			QuotaBytes:          cfg.Etcd.QuotaBytes,
			CompactionRetention: cfg.Etcd.CompactionRetention,
		}
		if c.st.InitialCluster != "" {
			initial, err := n.currentInitialCluster(ctx, dataDir, log)
			if err != nil {
				return nil, err
			}
			ec.Join = &etcdmeta.JoinSpec{InitialCluster: initial}
		}
		var err error
		if n.etcd, err = etcdmeta.StartEmbedded(ctx, ec, log); err != nil {
			return nil, err
		}
		n.closers = append(n.closers, n.etcd.Close)
		if n.etcd.IsLearner() {
			if err := n.promoteSelf(ctx, log); err != nil {
				return nil, err
			}
		}
		return n.etcd.Client(), nil
	case roleClient:
		return n.dialEtcd(ctx, c.st.EtcdEndpoints, pki.ClientTLS(c.id.roots, c.id.cert, ""), log)
	case roleExternal:
		tlsCfg, err := externalTLS(cfg.Etcd)
		if err != nil {
			return nil, err
		}
		return n.dialEtcd(ctx, cfg.Etcd.Endpoints, tlsCfg, log)
	}
	return nil, fmt.Errorf("cluster state %s: unknown role %q", statePath(dataDir), c.st.Role)
}

// currentInitialCluster is the member list this node's learner starts
// with the first time. The one the join answered lacks the members added
// since (several machines joined before any started), which etcd would
// refuse, so it is asked for anew; on later starts etcd ignores it.
func (n *Node) currentInitialCluster(ctx context.Context, dataDir string, log zerolog.Logger) (string, error) {
	c := n.cl
	if _, err := os.Stat(filepath.Join(dataDir, "etcd", "data", "member")); err == nil {
		return c.st.InitialCluster, nil
	}
	cli, err := etcdmeta.DialExternal(ctx, c.st.EtcdEndpoints, pki.ClientTLS(c.id.roots, c.id.cert, ""), log)
	if err != nil {
		return "", fmt.Errorf("reach the etcd members to start this node's member: %w", err)
	}
	defer cli.Close()
	mctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	initial, err := etcdmeta.InitialCluster(mctx, cli, c.st.MemberID, c.st.NodeID)
	if err != nil {
		return "", fmt.Errorf("start this node's etcd member: %w (are the other members up?)", err)
	}
	return initial, nil
}

// promoteTimeout bounds how long a new member waits to become a voter.
const promoteTimeout = 2 * time.Minute

// promoteSelf makes this node's learner a voting member once it has caught
// up, through the other members (a learner serves no client requests).
func (n *Node) promoteSelf(ctx context.Context, log zerolog.Logger) error {
	c := n.cl
	others := slices.DeleteFunc(slices.Clone(c.st.EtcdEndpoints), func(u string) bool {
		return u == "https://"+hostPort(c.adv, n.cfg.Etcd.ClientPort)
	})
	cli, err := etcdmeta.DialExternal(ctx, others, pki.ClientTLS(c.id.roots, c.id.cert, ""), log)
	if err != nil {
		return fmt.Errorf("promote this etcd member: %w", err)
	}
	defer cli.Close()
	pctx, cancel := context.WithTimeout(ctx, promoteTimeout)
	defer cancel()
	start := time.Now()
	if err := etcdmeta.PromoteWhenReady(pctx, cli, n.etcd.ID()); err != nil {
		return fmt.Errorf("promote this etcd member to voter: %w (are the other members up?)", err)
	}
	n.log.Info().Dur("took", time.Since(start)).Msg("etcd member promoted to voter")
	return nil
}

func (n *Node) dialEtcd(ctx context.Context, endpoints []string, tlsCfg *tls.Config, log zerolog.Logger) (*clientv3.Client, error) {
	cli, err := etcdmeta.DialExternal(ctx, endpoints, tlsCfg, log)
	if err != nil {
		return nil, err
	}
	n.closers = append(n.closers, cli.Close)
	return cli, nil
}

// startCluster starts gossip and the replicated chunk store once the
// namespace is reachable.
func (n *Node) startCluster(ctx context.Context) error {
	c := n.cl
	recs, err := n.ns.Nodes(ctx)
	if err != nil {
		return fmt.Errorf("cluster nodes: %w", err)
	}
	seeds := slices.Clone(c.st.GossipSeeds)
	for _, r := range recs {
		if r.ID != c.st.NodeID && r.Gossip != "" && !slices.Contains(seeds, r.Gossip) {
			seeds = append(seeds, r.Gossip)
		}
	}
	self := hostPort(c.adv, n.cfg.Cluster.GossipPort)
	seeds = slices.DeleteFunc(seeds, func(s string) bool { return s == self })

	rec := etcdmeta.NodeRecord{
		ID: c.st.NodeID, Advertise: c.adv, NFSAddr: n.lis.Addr().String(), Gossip: self,
		Data: c.peerLis.Addr().String(), Join: c.joinLis.Addr().String(), Etcd: c.st.Role,
		Zone: n.cfg.Node.Zone, Tier: n.cfg.Node.Tier, Version: n.cfg.Version,
	}
	for _, r := range recs {
		if r.ID == rec.ID {
			rec.Draining = r.Draining // a drain goes on across restarts
		}
	}
	// Recorded before gossip starts, so that when the others hear of
	// this node (and the repair worker moves chunks onto it) its record
	// is there.
	if err := n.ns.PutNode(ctx, rec); err != nil {
		return fmt.Errorf("record this node: %w", err)
	}
	mcfg := cluster.DefaultConfig()
	mcfg.NodeID = c.st.NodeID
	mcfg.BindAddr = self
	mcfg.SecretKey = c.id.secret
	mcfg.Seeds = seeds
	mcfg.Meta = n.facts
	log := n.log.With().Str("component", "gossip").Logger()
	if c.members, err = cluster.New(mcfg, log); err != nil {
		return fmt.Errorf("gossip: %w", err)
	}
	if err = c.members.Start(ctx); errors.Is(err, cluster.ErrJoin) {
		// Every other node is down: serve alone, and join them when
		// they return (Serve retries).
		log.Warn().Err(err).Msg("no other node answered; starting alone and retrying")
		c.members.Close()
		mcfg.Seeds = nil
		if c.members, err = cluster.New(mcfg, log); err != nil {
			return fmt.Errorf("gossip: %w", err)
		}
		c.seeds = seeds
		err = c.members.Start(ctx)
	}
	if err != nil {
		return fmt.Errorf("gossip on %s: %w", self, err)
	}
	n.closers = append(n.closers, c.members.Close)

	if err := n.refreshView(ctx); err != nil {
		return fmt.Errorf("cluster nodes: %w", err)
	}

	c.dialer = &peerDialer{members: c.members, roots: c.id.roots, cert: c.id.cert, clients: map[string]*peer.Client{}}
	n.closers = append(n.closers, c.dialer.Close)
	rcfg := replica.DefaultConfig()
	rcfg.Copies = n.cfg.Redundancy.Copies
	rcfg.MinCopies = rcfg.Copies
	if n.cfg.Redundancy.WhenShort == "degraded" {
		rcfg.MinCopies = 1
	}
	rcfg.Timeout = n.cfg.NFS.OpTimeout
	if c.replica, err = replica.New(rcfg, n.store, replicaView{c}, c.dialer, n.log.With().Str("component", "replica").Logger()); err != nil {
		return fmt.Errorf("redundancy: %w", err)
	}
	n.gate = newPostureGate()
	if c.repair, err = n.newRepair(); err != nil {
		return fmt.Errorf("repair: %w", err)
	}
	c.peerSrv = peer.NewServer(n.store, n.log.With().Str("component", "peer").Logger(), peer.ServerOptions{MaxChunk: int64(n.cfg.Chunks.Size)})
	caCert, caKey, err := n.ns.CA(ctx)
	if err != nil {
		return fmt.Errorf("cluster CA: %w", err)
	}
	ca, err := pki.LoadCA(caCert, caKey)
	if err != nil {
		return fmt.Errorf("cluster CA: %w", err)
	}
	c.joinSrv = join.NewServer(ca, admitter{n}, n.log.With().Str("component", "join").Logger(), join.ServerOptions{})
	return nil
}

// clusterView is a snapshot of the recorded nodes.
type clusterView struct {
	records   []etcdmeta.NodeRecord
	draining  map[string]bool
	downSince map[string]time.Time // recorded nodes gossip does not hear
}

// viewInterval is how often the view is refreshed.
const viewInterval = 2 * time.Second

// refreshView reads the node records and notes which nodes are down since
// when. A node already down when this node starts counts from then.
func (n *Node) refreshView(ctx context.Context) error {
	c := n.cl
	recs, err := n.ns.Nodes(ctx)
	if err != nil {
		return err
	}
	prev := c.view.Load()
	v := &clusterView{records: recs, draining: map[string]bool{}, downSince: map[string]time.Time{}}
	up := map[string]bool{}
	for _, m := range c.members.Members() {
		if m.State == cluster.StateAlive {
			up[m.ID] = true
		}
	}
	now := time.Now()
	for _, r := range recs {
		if r.Draining {
			v.draining[r.ID] = true
		}
		if up[r.ID] {
			continue
		}
		v.downSince[r.ID] = now
		if prev != nil {
			if t, ok := prev.downSince[r.ID]; ok {
				v.downSince[r.ID] = t
			}
		}
	}
	c.view.Store(v)
	return nil
}

// facts are what this node gossips about itself.
func (n *Node) facts() cluster.Node {
	c := n.cl
	f := cluster.Node{
		NFSAddr: n.lis.Addr().String(), DataAddr: c.peerLis.Addr().String(),
		Zone: n.cfg.Node.Zone, Tier: n.cfg.Node.Tier, Version: n.cfg.Version,
	}
	if total, free, err := n.store.Usage(); err == nil {
		f.Capacity, f.Free = total, free
	}
	return f
}

// factsInterval is how often a node gossips its free space anew.
const factsInterval = 30 * time.Second

// serveCluster runs the cluster's services until ctx ends.
func (n *Node) serveCluster(ctx context.Context, wg *sync.WaitGroup, fail func(error)) {
	c := n.cl
	wg.Go(func() {
		if err := c.peerSrv.Serve(ctx, c.peerLis, pki.ServerTLS(c.id.roots, c.id.cert)); err != nil {
			fail(fmt.Errorf("chunk service: %w", err))
		}
	})
	wg.Go(func() {
		if err := c.joinSrv.Serve(ctx, c.joinLis, pki.JoinServerTLS(c.id.cert)); err != nil {
			fail(fmt.Errorf("join service: %w", err))
		}
	})
	wg.Go(func() { n.gossipLoop(ctx) })
	wg.Go(func() { n.postureLoop(ctx) })
	wg.Go(func() {
		if err := c.repair.Run(ctx); err != nil {
			fail(fmt.Errorf("repair worker: %w", err))
		}
	})
	wg.Go(func() { n.watchMembership(ctx) })
	wg.Go(func() { n.drainReports(ctx) })
	wg.Go(func() { n.renewCertLoop(ctx) })
}

// gossipLoop refreshes this node's facts and, while the node is alone,
// tries to join the nodes it knows of.
func (n *Node) gossipLoop(ctx context.Context) {
	c := n.cl
	t := time.NewTicker(factsInterval)
	defer t.Stop()
	retry := time.NewTicker(5 * time.Second)
	defer retry.Stop()
	refresh := time.NewTicker(viewInterval)
	defer refresh.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-refresh.C:
			rctx, cancel := context.WithTimeout(ctx, viewInterval*5)
			if err := n.refreshView(rctx); err != nil && ctx.Err() == nil {
				n.log.Debug().Err(err).Msg("refresh node records")
			}
			cancel()
		case <-t.C:
			if err := c.members.UpdateFacts(); err != nil {
				n.log.Debug().Err(err).Msg("gossip facts")
			}
		case <-retry.C:
			n.reconnect(ctx)
		}
	}
}

// reconnect asks gossip to join the nodes it does not hear: the seeds
// while this node is alone, and every recorded node gossip holds dead.
// memberlist never probes a node it declared dead, so once a partition
// lasted longer than its gossip-to-the-dead time, both sides would
// otherwise stay blind to each other after it heals (serf's reconnect
// does the same). A node that is really gone costs one failed dial per
// retry.
func (n *Node) reconnect(ctx context.Context) {
	c := n.cl
	heard := map[string]bool{}
	for _, m := range c.members.Members() {
		heard[m.ID] = true
	}
	var addrs []string
	if len(heard) <= 1 {
		addrs = slices.Clone(c.seeds)
	}
	if v := c.view.Load(); v != nil {
		for _, r := range v.records {
			if !heard[r.ID] && r.ID != c.st.NodeID && r.Gossip != "" && !slices.Contains(addrs, r.Gossip) {
				addrs = append(addrs, r.Gossip)
			}
		}
	}
	if len(addrs) == 0 {
		return
	}
	jctx, cancel := context.WithTimeout(ctx, 4*time.Second)
	defer cancel()
	if k, err := c.members.Join(jctx, addrs); err == nil && k > 0 {
		n.log.Info().Int("answered", k).Strs("tried", addrs).Msg("rejoined nodes gossip did not hear")
	}
}

// watchMembership asks for a repair pass when a node comes, goes or
// changes: a new node may take chunks, a lost one leaves copies to make
// once its grace period ends (the worker also passes every interval).
func (n *Node) watchMembership(ctx context.Context) {
	for ev := range n.cl.members.Subscribe(ctx) {
		n.log.Debug().Str("node", ev.Node.ID).Stringer("event", ev.Kind).Msg("membership changed")
		if err := n.refreshView(ctx); err != nil && ctx.Err() == nil {
			n.log.Debug().Err(err).Msg("refresh node records")
		}
		// The posture must follow a node lost or back at once, not at
		// the next interval with a census up to a minute old. (A node's
		// facts, its free space, are gossiped as updates every
		// factsInterval: they need no census at once.)
		n.cl.census.invalidate()
		if ev.Kind != cluster.EventUpdate {
			n.gate.reassess()
		}
		n.kickRepair()
	}
}

// drainReports counts and logs the chunks the replicator found below
// their policy, and asks the repair worker for a pass.
func (n *Node) drainReports(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case r := <-n.cl.replica.Reports():
			n.underReplicated.Add(1)
			n.kickRepair()
			n.log.Warn().Str("chunk", r.ID.String()).Str("reason", string(r.Reason)).Str("node", r.Node).
				Msg("chunk below its redundancy")
		}
	}
}

// replicaView adapts gossip membership to the replicator's view.
type replicaView struct{ c *clusterNode }

func (v replicaView) SelfID() string { return v.c.members.Self().ID }

// minFree is the free space under which a node takes no new chunks (on a
// disk of 5 GiB or more; see nodeFull).
const minFree = 256 << 20

// Nodes weighs each node by its capacity, not its free space: placement
// then stays put while disks fill, instead of moving chunks at every
// write. A node full (nodeFull), or draining, weighs 0: it takes no new
// chunks but is still read.
func (v replicaView) Nodes() []replica.Node {
	ms := v.c.members.Members()
	view := v.c.view.Load()
	out := make([]replica.Node, 0, len(ms))
	for _, m := range ms {
		w := float64(m.Capacity)
		if nodeFull(m.Capacity, m.Free) || (view != nil && view.draining[m.ID]) {
			w = 0
		}
		out = append(out, replica.Node{ID: m.ID, Zone: m.Zone, Tier: m.Tier, Weight: w, Alive: m.State == cluster.StateAlive})
	}
	return out
}

// peerDialer gives the replicator a chunk client per node, over mutual
// TLS that checks the node's identity.
type peerDialer struct {
	members *cluster.Membership
	roots   *pki.Roots
	cert    *pki.NodeCert

	mu      sync.Mutex
	clients map[string]*peer.Client // node id -> client
}

func (d *peerDialer) Remote(nodeID string) (replica.Remote, error) {
	var addr string
	for _, m := range d.members.Members() {
		if m.ID == nodeID {
			addr = m.DataAddr
		}
	}
	if addr == "" {
		return nil, fmt.Errorf("node %s: no chunk address known: %w", nodeID, chunk.ErrUnavailable)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if cl, ok := d.clients[nodeID]; ok && cl.Addr() == addr {
		return cl, nil
	} else if ok {
		cl.Close()
	}
	cl := peer.NewClient(addr, pki.ClientTLS(d.roots, d.cert, nodeID), peer.ClientOptions{})
	d.clients[nodeID] = cl
	return cl, nil
}

// Close releases every client's connections.
func (d *peerDialer) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, cl := range d.clients {
		cl.Close()
	}
	return nil
}

// clusterUsage is the cluster's capacity as NFS clients see it: the
// space of the alive nodes, divided by the number of copies.
type clusterUsage struct {
	members *cluster.Membership
	copies  int
}

func (u clusterUsage) Usage() (total, free uint64, err error) {
	for _, m := range u.members.Members() {
		if m.State == cluster.StateAlive {
			total += m.Capacity
			free += m.Free
		}
	}
	return total / uint64(u.copies), free / uint64(u.copies), nil
}

// externalTLS is the TLS configuration for an external etcd cluster.
func externalTLS(c EtcdConfig) (*tls.Config, error) {
	if c.CAFile == "" && c.CertFile == "" && !slices.ContainsFunc(c.Endpoints, func(u string) bool { return strings.HasPrefix(u, "https://") }) {
		return nil, nil // plaintext etcd, on a trusted network only
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if c.CAFile != "" {
		b, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("etcd.ca_file: %w", err)
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("etcd.ca_file %s: no PEM certificate in it", c.CAFile)
		}
	}
	if c.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("etcd.cert_file, etcd.key_file: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}
