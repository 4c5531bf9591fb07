package appliance

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/wormhole-fs/wormhole/cluster/join"
	"github.com/wormhole-fs/wormhole/cluster/pki"
	"github.com/wormhole-fs/wormhole/etcdmeta"
)

// `wormhole init` and `wormhole join` prepare a data directory for a node
// of a cluster; `wormhole serve` then runs it. Both refuse a data
// directory that belongs to a cluster, join also one that holds a single
// node's data (init makes such a node the first of the cluster), and on
// failure they remove what they wrote, so a directory is either as it was
// or ready.

// nodeID is the configured node id, or one made from the host name.
func nodeID(cfg Config) (string, error) {
	if cfg.Node.ID != "" {
		return cfg.Node.ID, nil
	}
	h, err := os.Hostname()
	if err != nil {
		return "", fmt.Errorf("node.id is not set and the host name is unknown (%w): set node.id", err)
	}
	id := regexp.MustCompile(`[^A-Za-z0-9_.-]+`).ReplaceAllString(strings.ToLower(h), "-")
	if id == "" || len(id) > 64 {
		return "", fmt.Errorf("node.id is not set and the host name %q does not make one: set node.id", h)
	}
	return id, nil
}

// freshDataDir prepares dataDir for a joining node and makes sure it holds
// no node yet.
func freshDataDir(dir string) (string, error) {
	abs, single, err := initDataDir(dir)
	if err != nil {
		return "", err
	}
	if single != "" {
		return "", fmt.Errorf("data dir %s already holds a single node's data (%s/): a joining node starts from an empty data directory (to grow a cluster from this single node, run `wormhole init` on it and join the other machines to it)", abs, single)
	}
	return abs, nil
}

// initDataDir prepares dataDir for init or join and makes sure it belongs
// to no cluster yet. single names a subdirectory holding a single node's
// data ("etcd" or "chunks"), empty when there is none.
func initDataDir(dir string) (abs, single string, err error) {
	abs, err = prepareDataDir(dir)
	if err != nil {
		return "", "", err
	}
	if st, ok, err := loadState(abs); err != nil {
		return "", "", err
	} else if ok {
		return "", "", fmt.Errorf("data dir %s already belongs to node %s of cluster %s: start it with `wormhole serve`, or empty the directory to begin anew", abs, st.NodeID, st.ClusterID)
	}
	for _, sub := range []string{"etcd", "chunks"} {
		if entries, err := os.ReadDir(filepath.Join(abs, sub)); err == nil && len(entries) > 0 {
			return abs, sub, nil
		}
	}
	return abs, "", nil
}

// certHosts are the addresses a node certificate names. etcd checks a
// peer's certificate against the connection's source address; on loopback
// (nodes of a test or a trial on one machine, at 127.0.0.x) the kernel
// sends from 127.0.0.1 whatever the advertised address, so that is named
// too.
func certHosts(advertise string) []string {
	hosts := []string{advertise}
	if ip := net.ParseIP(advertise); ip != nil && ip.IsLoopback() && advertise != "127.0.0.1" {
		hosts = append(hosts, "127.0.0.1")
	}
	return hosts
}

// undo removes what a failed init or join wrote.
func undo(dataDir string) {
	os.RemoveAll(clusterDir(dataDir))
	os.RemoveAll(filepath.Join(dataDir, "etcd"))
	os.Remove(secretPath(dataDir))
}

// Init makes the data directory the first node of a new cluster: a CA, the
// node's certificate, the cluster secret, the etcd member (or the records
// in the external etcd) and the namespace's root. It returns a join token
// for the next nodes, valid for tokenTTL.
//
// A data directory that holds a single node (stopped) becomes the first
// node with everything it holds: its etcd becomes the cluster's first
// member (now advertising node.advertise, over TLS), its handle key the
// cluster secret (so clients' file handles stay valid), and its chunks
// the cluster's, copied to the nodes that join as the redundancy asks.
// A failed init leaves such a directory the single node it was.
func Init(ctx context.Context, cfg Config, tokenTTL time.Duration, log zerolog.Logger) (_ pki.Token, err error) {
	dataDir, single, err := initDataDir(cfg.DataDir)
	if err != nil {
		return pki.Token{}, err
	}
	if single != "" && len(cfg.Etcd.Endpoints) > 0 {
		return pki.Token{}, fmt.Errorf("data dir %s holds a single node whose files are in its own etcd (%s/): it can become the first node of a cluster that runs its own etcd, not of one on an external etcd; remove etcd.endpoints, or start from an empty data directory", dataDir, "etcd")
	}
	if err := checkAdvertise(cfg.Node.Advertise); err != nil {
		return pki.Token{}, err
	}
	id, err := nodeID(cfg)
	if err != nil {
		return pki.Token{}, err
	}
	defer func() {
		switch {
		case err == nil:
		case single != "":
			// The single node's data stays; only the cluster's files go.
			os.RemoveAll(clusterDir(dataDir))
		default:
			undo(dataDir)
		}
	}()
	now := time.Now()
	ca, err := pki.NewCA(cfg.ClusterID, now)
	if err != nil {
		return pki.Token{}, fmt.Errorf("cluster CA: %w", err)
	}
	key, keyPEM, err := pki.NewNodeKey()
	if err != nil {
		return pki.Token{}, err
	}
	certPEM, err := ca.IssueNode(id, certHosts(cfg.Node.Advertise), key.Public(), now)
	if err != nil {
		return pki.Token{}, fmt.Errorf("node certificate: %w", err)
	}
	var secret []byte
	if single != "" {
		// The handle key clients' file handles are signed with.
		if secret, err = loadSecret(secretPath(dataDir)); err != nil {
			return pki.Token{}, err
		}
	} else {
		secret = make([]byte, 32)
		if _, err := rand.Read(secret); err != nil {
			return pki.Token{}, err
		}
	}
	if err := writeIdentity(dataDir, certPEM, keyPEM, ca.CertPEM(), secret); err != nil {
		return pki.Token{}, err
	}
	st := clusterState{ClusterID: cfg.ClusterID, NodeID: id, Role: roleVoter,
		EtcdEndpoints: []string{"https://" + hostPort(cfg.Node.Advertise, cfg.Etcd.ClientPort)}}
	if len(cfg.Etcd.Endpoints) > 0 {
		st.Role, st.EtcdEndpoints = roleExternal, cfg.Etcd.Endpoints
	}

	// Start the etcd side as `serve` will, record the cluster, stop.
	n := &Node{cfg: cfg, log: log, cl: &clusterNode{st: st, adv: cfg.Node.Advertise}}
	defer n.Close()
	if n.cl.id, err = loadIdentity(dataDir); err != nil {
		return pki.Token{}, err
	}
	cli, err := n.startClusterEtcd(ctx, dataDir)
	if err != nil {
		if single != "" && errors.Is(err, etcdmeta.ErrDirLocked) {
			return pki.Token{}, fmt.Errorf("data dir %s: the single node is running: stop it (systemctl stop wormhole), then run init again: %w", dataDir, err)
		}
		return pki.Token{}, err
	}
	if single != "" {
		if err := n.adoptSingle(ctx, cli); err != nil {
			return pki.Token{}, fmt.Errorf("make the single node in %s a cluster: %w", dataDir, err)
		}
	}
	ns, err := etcdmeta.New(ctx, cli, cfg.ClusterID, log.With().Str("component", "meta").Logger())
	if err != nil {
		return pki.Token{}, fmt.Errorf("namespace: %w", err)
	}
	if _, err := ns.ChunkSize(ctx, uint64(cfg.Chunks.Size)); err != nil {
		return pki.Token{}, fmt.Errorf("chunks.size: %w", err)
	}
	caKey, err := ca.KeyPEM()
	if err != nil {
		return pki.Token{}, err
	}
	if recorded, _, err := ns.PutCA(ctx, ca.CertPEM(), caKey); err != nil {
		return pki.Token{}, err
	} else if string(recorded) != string(ca.CertPEM()) {
		return pki.Token{}, fmt.Errorf("etcd already holds cluster %s: join it with `wormhole join` instead", cfg.ClusterID)
	}
	tok, err := newToken(ctx, ns, ca, tokenTTL)
	if err != nil {
		return pki.Token{}, err
	}
	if err := n.Close(); err != nil {
		return pki.Token{}, err
	}
	if err := saveState(dataDir, st); err != nil {
		return pki.Token{}, err
	}
	if single != "" {
		log.Info().Str("cluster", cfg.ClusterID).Str("node", id).Str("data_dir", dataDir).
			Msg("cluster created from the single node: its files are the cluster's; joining nodes receive copies")
	} else {
		log.Info().Str("cluster", cfg.ClusterID).Str("node", id).Str("data_dir", dataDir).Msg("cluster created")
	}
	return tok, nil
}

// adoptSingle readies a single node's etcd, just started as the cluster's
// first member, for the cluster: the files must be in the namespace the
// configuration names, and the member must advertise the peer URL other
// members will dial (a single node's advertises port 0).
func (n *Node) adoptSingle(ctx context.Context, cli *clientv3.Client) error {
	cfg := n.cfg
	if got, ok, err := etcdmeta.FirstNamespace(ctx, cli); err != nil {
		return err
	} else if ok && got != cfg.ClusterID {
		return fmt.Errorf("its files are in namespace %q but cluster_id is %q: set cluster_id: %s in the configuration (the namespace cannot be renamed)", got, cfg.ClusterID, got)
	}
	return etcdmeta.SetPeerURL(ctx, cli, n.etcd.ID(), "https://"+hostPort(n.cl.adv, cfg.Etcd.PeerPort))
}

// Join asks the node at seed (host:port of its join port) to admit this
// one with token, and stores what it answers in the data directory.
func Join(ctx context.Context, cfg Config, seed, token string, log zerolog.Logger) (err error) {
	tok, err := pki.ParseToken(token)
	if err != nil {
		return err
	}
	dataDir, err := freshDataDir(cfg.DataDir)
	if err != nil {
		return err
	}
	if err := checkAdvertise(cfg.Node.Advertise); err != nil {
		return err
	}
	id, err := nodeID(cfg)
	if err != nil {
		return err
	}
	key, keyPEM, err := pki.NewNodeKey()
	if err != nil {
		return err
	}
	pub, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return err
	}
	_, p, _ := net.SplitHostPort(cfg.NFS.Addr)
	nfsPort, _ := strconv.Atoi(p)
	resp, err := join.Join(ctx, seed, tok, join.Request{
		Token: token, NodeID: id, PublicKey: pub, Hosts: certHosts(cfg.Node.Advertise), Advertise: cfg.Node.Advertise,
		EtcdPeerPort: cfg.Etcd.PeerPort, GossipPort: cfg.Cluster.GossipPort, DataPort: cfg.Cluster.DataPort, NFSPort: nfsPort,
	})
	if err != nil {
		return err
	}
	if cfg.ClusterID != DefaultConfig().ClusterID && cfg.ClusterID != resp.ClusterID {
		return fmt.Errorf("cluster_id is %s in the configuration but the token is for cluster %s: fix cluster_id", cfg.ClusterID, resp.ClusterID)
	}
	defer func() {
		if err != nil {
			undo(dataDir)
		}
	}()
	if err := writeIdentity(dataDir, resp.NodeCertPEM, keyPEM, resp.CACertPEM, resp.Secret); err != nil {
		return err
	}
	st := clusterState{
		ClusterID: resp.ClusterID, NodeID: id, Role: resp.Role, InitialCluster: resp.InitialCluster,
		MemberID: resp.MemberID, EtcdEndpoints: resp.EtcdEndpoints, GossipSeeds: resp.GossipSeeds,
	}
	if len(cfg.Etcd.Endpoints) > 0 {
		st.Role = roleExternal
	}
	if st.Role == roleVoter && st.InitialCluster == "" {
		return errors.New("the seed made this node an etcd member but sent no member list: a bug; try again")
	}
	if err := saveState(dataDir, st); err != nil {
		return err
	}
	log.Info().Str("cluster", st.ClusterID).Str("node", id).Str("etcd", st.Role).Msg("joined cluster")
	return nil
}
