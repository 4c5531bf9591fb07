package join

import (
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// Path is the URL path of the join request.
const Path = "/v1/join"

// Roles a joining node can get.
const (
	// RoleVoter: the node runs an embedded etcd member, added as a
	// learner (and promoted later).
	RoleVoter = "voter"
	// RoleClient: the node only talks to etcd as a client, at
	// Response.EtcdEndpoints.
	RoleClient = "client"
	// RoleExternal: the cluster keeps its metadata in an external etcd
	// cluster, which the node is configured to dial; the response need
	// carry no etcd endpoints.
	RoleExternal = "external"
)

// Limits of the protocol.
const (
	// MaxRequestBytes bounds the body of a join request.
	MaxRequestBytes = 64 << 10
	// MaxResponseBytes bounds the body of a join response.
	MaxResponseBytes = 1 << 20
	// MaxHosts bounds Request.Hosts.
	MaxHosts = 16
	// MinSecretLen is the least length of Response.Secret, in bytes.
	MinSecretLen = 32
)

// Sentinel errors. Join's errors wrap them (or the pki token sentinels,
// pki.ErrCAPinMismatch) with %w; test with errors.Is.
var (
	// ErrUnknownToken: the seed has no record of the token id. Admitters
	// return it from TokenRecord; joining nodes see pki.ErrTokenInvalid,
	// as for a wrong secret.
	ErrUnknownToken = errors.New("unknown join token")
	// ErrNodeIDTaken: the node id belongs to a member of the cluster.
	// Admitters return it from Admit; Join's error wraps it.
	ErrNodeIDTaken = errors.New("the node id belongs to a member of the cluster: " +
		"choose another node id, or remove the old member first")
	// ErrBadRequest: the request is malformed or invalid, as found by
	// Join before dialing or by the seed; the error says which field.
	// Admitters may return it from Admit too (e.g. for an advertise
	// address already in use).
	ErrBadRequest = errors.New("invalid join request")
	// ErrSeedUnreachable: no connection to the seed could be made.
	ErrSeedUnreachable = errors.New("cannot reach the seed")
	// ErrSeedFailed: the seed accepted the token but could not admit the
	// node, or is shutting down; the error carries the seed's reason.
	ErrSeedFailed = errors.New("the seed could not admit the node")
	// ErrBadResponse: the seed's answer is malformed or does not match
	// the request (a certificate for another node or key, ...).
	ErrBadResponse = errors.New("invalid answer from the seed")
)

// Request is what a joining node sends after the TLS handshake has proven
// the seed holds the pinned CA.
type Request struct {
	// Token is the full token string (whj1....); the server parses and
	// verifies it. Join fills it in. Admit gets it redacted
	// (pki.Token.Redacted), so it can be logged.
	Token string `json:"token"`
	// NodeID is the joining node's id (see pki.IssueNode for its rules).
	NodeID string `json:"node_id"`
	// PublicKey is the PKIX DER of the node's public key
	// (x509.MarshalPKIXPublicKey), ECDSA or Ed25519.
	PublicKey []byte `json:"public_key"`
	// Hosts are the IPs and DNS names to put in the node certificate
	// (its advertise IP), at most MaxHosts.
	Hosts []string `json:"hosts"`
	// Advertise is the IP the joining node is reachable at.
	Advertise string `json:"advertise"`
	// The joining node's ports, each 1 to 65535.
	EtcdPeerPort int `json:"etcd_peer_port"`
	GossipPort   int `json:"gossip_port"`
	DataPort     int `json:"data_port"`
	NFSPort      int `json:"nfs_port"`
}

// Response is what the seed answers.
type Response struct {
	// ClusterID is the id of the cluster joined.
	ClusterID string `json:"cluster_id"`
	// CACertPEM is the cluster CA certificate.
	CACertPEM []byte `json:"ca_cert_pem"`
	// NodeCertPEM is the chain from pki.CA.IssueNode: the node
	// certificate, then the CA certificate.
	NodeCertPEM []byte `json:"node_cert_pem"`
	// Secret is the cluster secret (handle key, gossip key derivation),
	// at least MinSecretLen bytes.
	Secret []byte `json:"secret"`
	// Role is RoleVoter, RoleClient or RoleExternal.
	Role string `json:"role"`
	// InitialCluster is, for RoleVoter, etcdmeta.JoinSpec.InitialCluster
	// as returned by etcdmeta.AddLearner.
	InitialCluster string `json:"initial_cluster,omitempty"`
	// MemberID is, for RoleVoter, the learner's etcd member id.
	MemberID uint64 `json:"member_id,omitempty"`
	// EtcdEndpoints are the client URLs of the etcd members
	// (https://ip:port), for RoleClient and for later dialing.
	EtcdEndpoints []string `json:"etcd_endpoints"`
	// GossipSeeds are host:port gossip addresses of existing nodes.
	GossipSeeds []string `json:"gossip_seeds"`
}

// validate checks the fields of a request other than the token and the
// node id (which IssueNode checks), and returns the parsed public key.
// Errors wrap ErrBadRequest.
func (r *Request) validate() (any, error) {
	if len(r.PublicKey) == 0 {
		return nil, fmt.Errorf("%w: no public key", ErrBadRequest)
	}
	pub, err := x509.ParsePKIXPublicKey(r.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("%w: public key: %w", ErrBadRequest, err)
	}
	if len(r.Hosts) > MaxHosts {
		return nil, fmt.Errorf("%w: %d hosts, at most %d", ErrBadRequest, len(r.Hosts), MaxHosts)
	}
	for _, h := range r.Hosts {
		if err := validHost(h); err != nil {
			return nil, fmt.Errorf("%w: host %q: %w", ErrBadRequest, h, err)
		}
	}
	if err := validAdvertise(r.Advertise); err != nil {
		return nil, fmt.Errorf("%w: advertise address %q: %w", ErrBadRequest, r.Advertise, err)
	}
	for _, p := range []struct {
		name string
		port int
	}{
		{"etcd peer", r.EtcdPeerPort}, {"gossip", r.GossipPort},
		{"data", r.DataPort}, {"NFS", r.NFSPort},
	} {
		if p.port < 1 || p.port > 65535 {
			return nil, fmt.Errorf("%w: %s port %d, want 1 to 65535", ErrBadRequest, p.name, p.port)
		}
	}
	return pub, nil
}

// validHost accepts an IP address without zone or a DNS name.
func validHost(h string) error {
	if a, err := netip.ParseAddr(h); err == nil {
		if a.Zone() != "" {
			return errors.New("IP address with a zone")
		}
		return nil
	}
	if h == "" || len(h) > 253 {
		return errors.New("want an IP address or a DNS name of 1 to 253 bytes")
	}
	for label := range strings.SplitSeq(strings.TrimSuffix(h, "."), ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return errors.New("not an IP address nor a DNS name")
		}
		for _, c := range []byte(label) {
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-') {
				return errors.New("not an IP address nor a DNS name")
			}
		}
	}
	return nil
}

// validAdvertise accepts a unicast IP address without zone.
func validAdvertise(s string) error {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return errors.New("not an IP address")
	}
	if a.Zone() != "" || a.IsUnspecified() || a.IsMulticast() {
		return errors.New("want a unicast IP address without zone")
	}
	return nil
}

// checkAdmission checks the fields Admit fills in. Errors wrap
// ErrBadResponse.
func checkAdmission(r *Response) error {
	if len(r.Secret) < MinSecretLen {
		return fmt.Errorf("%w: cluster secret of %d bytes, want at least %d", ErrBadResponse, len(r.Secret), MinSecretLen)
	}
	if bytes.Equal(r.Secret, make([]byte, len(r.Secret))) {
		return fmt.Errorf("%w: cluster secret is all zero", ErrBadResponse)
	}
	switch r.Role {
	case RoleVoter:
		if r.InitialCluster == "" || r.MemberID == 0 {
			return fmt.Errorf("%w: role %q without initial cluster or member id", ErrBadResponse, r.Role)
		}
	case RoleClient:
		if len(r.EtcdEndpoints) == 0 {
			return fmt.Errorf("%w: role %q without etcd endpoints", ErrBadResponse, r.Role)
		}
	case RoleExternal:
	default:
		return fmt.Errorf("%w: role %q, want %q, %q or %q", ErrBadResponse, r.Role, RoleVoter, RoleClient, RoleExternal)
	}
	return nil
}
