package pki

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"
)

// ErrCAPinMismatch: the seed a joining node reached does not present the
// CA its join token pins.
var ErrCAPinMismatch = errors.New("seed's CA fingerprint does not match the join token")

// NodeCert is a node's certificate chain and key, replaceable while in
// use: the configurations made from it (ServerTLS, ClientTLS,
// JoinServerTLS) present the current one at every handshake, so a renewed
// certificate serves every new connection without a restart. It is safe
// for concurrent use.
type NodeCert struct {
	cur atomic.Pointer[tls.Certificate]
}

// NewNodeCert returns a NodeCert holding c.
func NewNodeCert(c tls.Certificate) *NodeCert {
	n := &NodeCert{}
	n.Replace(c)
	return n
}

// Current returns the certificate in use.
func (n *NodeCert) Current() *tls.Certificate { return n.cur.Load() }

// Replace makes c the certificate new handshakes present.
func (n *NodeCert) Replace(c tls.Certificate) { n.cur.Store(&c) }

// serve is a tls.Config.GetCertificate that presents the current one.
func (n *NodeCert) serve(*tls.ClientHelloInfo) (*tls.Certificate, error) { return n.Current(), nil }

// present is a tls.Config.GetClientCertificate that presents the current
// one.
func (n *NodeCert) present(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return n.Current(), nil
}

// ServerTLS returns the configuration of a node's mTLS listener: TLS 1.3
// only, presenting nodeCert's current certificate, and requiring a client
// certificate that chains to the cluster CA
// (tls.RequireAndVerifyClientCert), is valid for client authentication,
// and names a node of the cluster (see NodeIDFromCert). PeerNodeID gives
// the client's node id once the handshake is done.
func ServerTLS(roots *Roots, nodeCert *NodeCert) *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS13,
		GetCertificate: nodeCert.serve,
		ClientAuth:     tls.RequireAndVerifyClientCert,
		ClientCAs:      roots.Pool(),
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("client sent no certificate")
			}
			if _, err := NodeIDFromCert(cs.PeerCertificates[0], roots.clusterID); err != nil {
				return fmt.Errorf("client certificate: %w", err)
			}
			return nil
		},
	}
}

// ClientTLS returns the configuration for dialing another node: TLS 1.3
// only, presenting nodeCert's current certificate, and accepting the server only if its
// certificate chains to the cluster CA, is valid for server
// authentication, and names node peerNodeID of the cluster (any node of
// the cluster when peerNodeID is empty, e.g. for a seed known only by
// address; check PeerNodeID afterwards).
//
// Nodes are dialed by IP address and identified by node id, not host
// name, so the standard host-name verification is replaced:
// InsecureSkipVerify is set and VerifyConnection does the whole check.
// The check uses the returned config's Time (time.Now when nil); set Time
// on this config, not on a clone.
func ClientTLS(roots *Roots, nodeCert *NodeCert, peerNodeID string) *tls.Config {
	cfg := &tls.Config{
		MinVersion:           tls.VersionTLS13,
		GetClientCertificate: nodeCert.present,
		InsecureSkipVerify:   true, // VerifyConnection verifies chain and node id.
	}
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		leaf, err := verifyServerChain(cs, roots, configTime(cfg))
		if err != nil {
			return err
		}
		id, err := NodeIDFromCert(leaf, roots.clusterID)
		if err != nil {
			return fmt.Errorf("server certificate: %w", err)
		}
		if peerNodeID != "" && id != peerNodeID {
			return fmt.Errorf("dialed node %q but the server is node %q: %w", peerNodeID, id, ErrWrongNode)
		}
		return nil
	}
	return cfg
}

// JoinServerTLS returns the configuration of the seed's join listener:
// TLS 1.3 only, presenting nodeCert's current certificate, asking for no client certificate (the
// joining node has none yet; it proves itself with the token). nodeCert
// must hold the chain IssueNode returns, CA certificate included, or
// joining nodes cannot check their token's CA pin.
func JoinServerTLS(nodeCert *NodeCert) *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS13,
		GetCertificate: nodeCert.serve,
		ClientAuth:     tls.NoClientCert,
	}
}

// JoinClientTLS returns the configuration a joining node dials a seed
// with. It trusts nothing but the token: the seed must present, after its
// own certificate, a CA certificate whose SHA-256 equals the token's pin
// (else the handshake fails with ErrCAPinMismatch), and its own
// certificate must chain to that CA, be valid for server authentication
// and name a node of the CA's cluster. No client certificate is sent.
//
// Only after this handshake succeeds may the token itself be sent, so a
// node tricked into dialing the wrong address does not give its token
// away. JoinedRoots returns the cluster's Roots from the connection. Time
// is handled as in ClientTLS.
func JoinClientTLS(token Token) *tls.Config {
	cfg := &tls.Config{
		MinVersion:         tls.VersionTLS13,
		InsecureSkipVerify: true, // VerifyConnection verifies against the pinned CA.
	}
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		_, err := JoinedRoots(cs, token, configTime(cfg))
		return err
	}
	return cfg
}

// JoinedRoots checks a connection to a seed as JoinClientTLS does and
// returns the Roots of the cluster joined: the pinned CA the seed
// presented.
func JoinedRoots(cs tls.ConnectionState, token Token, now time.Time) (*Roots, error) {
	certs := cs.PeerCertificates
	if len(certs) == 0 {
		return nil, errors.New("seed sent no certificate")
	}
	pin := token.CAFingerprint()
	var ca *x509.Certificate
	var seen []string
	for _, c := range certs[1:] {
		fp := sha256.Sum256(c.Raw)
		if fp == pin {
			ca = c
			break
		}
		seen = append(seen, fingerprintString(fp))
	}
	if ca == nil {
		got := "only its own certificate, no CA"
		if len(seen) > 0 {
			got = "CA " + strings.Join(seen, ", ")
		}
		return nil, fmt.Errorf("%w: the token pins CA %s but the seed presented %s; "+
			"this address is not a node of the cluster that made the token, or the token is for another cluster",
			ErrCAPinMismatch, fingerprintString(pin), got)
	}
	roots, err := newRoots(ca)
	if err != nil {
		return nil, fmt.Errorf("seed's pinned CA: %w", err)
	}
	leaf, err := verifyServerChain(cs, roots, now)
	if err != nil {
		return nil, err
	}
	if _, err := NodeIDFromCert(leaf, roots.clusterID); err != nil {
		return nil, fmt.Errorf("seed certificate: %w", err)
	}
	return roots, nil
}

// PeerNodeID returns the node id of the peer of a connection whose
// handshake, with a config from ServerTLS or ClientTLS, succeeded: those
// have verified the peer certificate. Do not use it on connections set up
// otherwise.
func PeerNodeID(cs tls.ConnectionState, clusterID string) (string, error) {
	if !cs.HandshakeComplete {
		return "", errors.New("peer node id: handshake not complete")
	}
	if len(cs.PeerCertificates) == 0 {
		return "", fmt.Errorf("peer node id: peer sent no certificate: %w", ErrNoNodeID)
	}
	return NodeIDFromCert(cs.PeerCertificates[0], clusterID)
}

// fingerprintString formats a CA fingerprint as "sha256:<base64url>", the
// form error messages use (the token carries the same base64url).
func fingerprintString(fp [sha256.Size]byte) string {
	return "sha256:" + base64.RawURLEncoding.EncodeToString(fp[:])
}

// verifyServerChain verifies that the peer's certificate chains to roots
// and is valid for server authentication at now, and returns it.
func verifyServerChain(cs tls.ConnectionState, roots *Roots, now time.Time) (*x509.Certificate, error) {
	if len(cs.PeerCertificates) == 0 {
		return nil, errors.New("server sent no certificate")
	}
	leaf := cs.PeerCertificates[0]
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	_, err := leaf.Verify(x509.VerifyOptions{
		Roots:         roots.pool,
		Intermediates: inter,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	if err != nil {
		return nil, fmt.Errorf("server certificate %q is not trusted by cluster %q: %w", leaf.Subject.CommonName, roots.clusterID, err)
	}
	return leaf, nil
}

// configTime returns cfg's notion of the current time.
func configTime(cfg *tls.Config) time.Time {
	if cfg.Time != nil {
		return cfg.Time()
	}
	return time.Now()
}
