package appliance

import (
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/wormhole-fs/wormhole/cluster/pki"
)

// Etcd roles of a cluster node.
const (
	roleVoter    = "voter"    // runs an embedded etcd member
	roleClient   = "client"   // talks to the members' client URLs
	roleExternal = "external" // talks to an external etcd cluster
)

// clusterState is what `wormhole init` or `wormhole join` leaves in
// <data_dir>/cluster/: the node's place in its cluster. state.json is
// written last, so a data directory either holds a complete cluster
// state or none (it then is a single node of its own).
type clusterState struct {
	Version   int    `json:"version"`
	ClusterID string `json:"cluster_id"`
	NodeID    string `json:"node_id"`
	// Role is roleVoter, roleClient or roleExternal.
	Role string `json:"role"`
	// InitialCluster is the etcd member list a voter added as a learner
	// starts with, the first time only; empty for the founding member.
	InitialCluster string `json:"initial_cluster,omitempty"`
	// MemberID is the etcd member id of a voter added as a learner, which
	// it promotes once it has caught up.
	MemberID uint64 `json:"member_id,omitempty"`
	// EtcdEndpoints are the client URLs of the etcd members when the
	// state was written; a client node dials them.
	EtcdEndpoints []string `json:"etcd_endpoints,omitempty"`
	// GossipSeeds are gossip addresses of nodes that were up then.
	GossipSeeds []string `json:"gossip_seeds,omitempty"`
}

const stateVersion = 1

// Paths of the cluster state inside a data directory.
func clusterDir(dataDir string) string { return filepath.Join(dataDir, "cluster") }
func statePath(dataDir string) string  { return filepath.Join(clusterDir(dataDir), "state.json") }
func nodeCertPath(dataDir string) string {
	return filepath.Join(clusterDir(dataDir), "node.pem")
}
func nodeKeyPath(dataDir string) string { return filepath.Join(clusterDir(dataDir), "node-key.pem") }
func caCertPath(dataDir string) string  { return filepath.Join(clusterDir(dataDir), "ca.pem") }
func secretPath(dataDir string) string  { return filepath.Join(dataDir, "cluster.key") }

// loadState reads the cluster state; ok is false when the data directory
// belongs to no cluster.
func loadState(dataDir string) (st clusterState, ok bool, err error) {
	b, err := os.ReadFile(statePath(dataDir))
	if errors.Is(err, os.ErrNotExist) {
		return clusterState{}, false, nil
	}
	if err != nil {
		return clusterState{}, false, fmt.Errorf("cluster state: %w", err)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return clusterState{}, false, fmt.Errorf("cluster state %s is damaged: %w (restore it from a backup, or empty the data directory and join again)", statePath(dataDir), err)
	}
	if st.Version != stateVersion {
		return clusterState{}, false, fmt.Errorf("cluster state %s has version %d; this wormhole reads version %d", statePath(dataDir), st.Version, stateVersion)
	}
	return st, true, nil
}

// saveState writes the cluster state atomically and durably.
func saveState(dataDir string, st clusterState) error {
	st.Version = stateVersion
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	return writeAtomic(statePath(dataDir), append(b, '\n'))
}

// identity is a cluster node's credentials.
type identity struct {
	roots *pki.Roots
	// cert is the node certificate chain and key in use; a renewal
	// replaces it (certrenew.go).
	cert    *pki.NodeCert
	certPEM []byte // as loaded at start
	keyPEM  []byte
	secret  []byte
}

// writeIdentity stores the node's certificate, key, CA certificate and
// the cluster secret.
func writeIdentity(dataDir string, certPEM, keyPEM, caPEM, secret []byte) error {
	if err := os.MkdirAll(clusterDir(dataDir), 0o700); err != nil {
		return fmt.Errorf("cluster state: %w", err)
	}
	for _, f := range []struct {
		path string
		b    []byte
	}{
		{nodeKeyPath(dataDir), keyPEM}, {nodeCertPath(dataDir), certPEM},
		{caCertPath(dataDir), caPEM}, {secretPath(dataDir), secret},
	} {
		if err := writeAtomic(f.path, f.b); err != nil {
			return err
		}
	}
	return nil
}

// loadIdentity reads what writeIdentity stored.
func loadIdentity(dataDir string) (*identity, error) {
	read := func(path string) ([]byte, error) {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("cluster credentials: %w (the data directory is incomplete: restore it, or empty it and join again)", err)
		}
		return b, nil
	}
	id := &identity{}
	var err error
	if id.certPEM, err = read(nodeCertPath(dataDir)); err != nil {
		return nil, err
	}
	if id.keyPEM, err = read(nodeKeyPath(dataDir)); err != nil {
		return nil, err
	}
	caPEM, err := read(caCertPath(dataDir))
	if err != nil {
		return nil, err
	}
	if id.roots, err = pki.LoadRoots(caPEM); err != nil {
		return nil, fmt.Errorf("cluster CA %s: %w", caCertPath(dataDir), err)
	}
	pair, err := tls.X509KeyPair(id.certPEM, id.keyPEM)
	if err != nil {
		return nil, fmt.Errorf("node certificate %s: %w", nodeCertPath(dataDir), err)
	}
	id.cert = pki.NewNodeCert(pair)
	if id.secret, err = loadSecret(secretPath(dataDir)); err != nil {
		return nil, err
	}
	return id, nil
}

// writeAtomic writes b to path through a synced temporary file, a rename
// and a directory sync, so path holds either its old or its new content.
func writeAtomic(path string, b []byte) error {
	tmp := path + ".tmp"
	if err := writeFileSync(tmp, b); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
