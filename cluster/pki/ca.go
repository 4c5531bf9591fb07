package pki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Validity periods and limits.
const (
	// CAValidity is how long a new cluster CA is valid.
	CAValidity = 10 * 365 * 24 * time.Hour
	// DefaultNodeValidity is how long node certificates are valid unless
	// the CA was configured otherwise with WithNodeValidity.
	DefaultNodeValidity = 365 * 24 * time.Hour
	// Backdate is subtracted from the issue time for NotBefore, so a
	// certificate is usable at once by peers whose clocks lag a little.
	Backdate = 5 * time.Minute
	// MaxClusterIDLen and MaxNodeIDLen bound the identifiers, in bytes.
	MaxClusterIDLen = 64
	MaxNodeIDLen    = 64
)

// PEM block types read and written by this package.
const (
	pemCertificate = "CERTIFICATE"
	pemPrivateKey  = "PRIVATE KEY"    // PKCS #8, written and read
	pemECKey       = "EC PRIVATE KEY" // SEC 1, read only
)

// uriScheme is the scheme of the URI SANs that name clusters and nodes.
const uriScheme = "wormhole"

// caCommonNamePrefix starts the CommonName of every cluster CA.
const caCommonNamePrefix = "wormhole CA "

// Sentinel errors. Functions wrap them with %w and context; test with
// errors.Is.
var (
	// ErrNoPEM: the input holds no PEM block.
	ErrNoPEM = errors.New("no PEM data found")
	// ErrPEMType: the PEM block is not of the expected type.
	ErrPEMType = errors.New("unexpected PEM block type")
	// ErrNotCA: the certificate is not a Wormhole cluster CA.
	ErrNotCA = errors.New("certificate is not a wormhole cluster CA")
	// ErrKeyMismatch: the private key does not belong to the certificate.
	ErrKeyMismatch = errors.New("private key does not match the certificate")
	// ErrUnsupportedKey: a key of a type or curve this package refuses.
	ErrUnsupportedKey = errors.New("unsupported key type")
	// ErrInvalidID: a cluster or node id that cannot be put in a
	// certificate.
	ErrInvalidID = errors.New("invalid id")
	// ErrCAExpired: the CA is not valid at the requested time.
	ErrCAExpired = errors.New("cluster CA is not valid at this time")
	// ErrNoNodeID: the certificate carries no Wormhole node identity.
	ErrNoNodeID = errors.New("certificate names no wormhole node")
	// ErrWrongCluster: the certificate belongs to another cluster.
	ErrWrongCluster = errors.New("certificate belongs to another cluster")
	// ErrWrongNode: the peer is a node of the cluster, but not the one
	// that was dialed.
	ErrWrongNode = errors.New("peer is not the expected node")
)

// CA is a cluster's certificate authority: its self-signed certificate and
// private key. Only the nodes that issue certificates (the seed, today)
// hold a CA; every node holds the Roots. A CA is immutable and safe for
// concurrent use.
type CA struct {
	roots        *Roots
	key          crypto.Signer
	nodeValidity time.Duration
}

// NewCA creates the CA of cluster clusterID: a fresh ECDSA P-256 key and a
// self-signed certificate valid from now (less Backdate) for CAValidity,
// with CommonName "wormhole CA <clusterID>" and the URI SAN
// "wormhole://<clusterID>". It may only sign end-entity certificates
// (path length 0).
//
// clusterID must be 1 to MaxClusterIDLen bytes of ASCII letters, digits,
// '-', '_' and '.', not starting or ending with '.' nor holding "..",
// because it becomes the host of URIs in certificates.
func NewCA(clusterID string, now time.Time) (*CA, error) {
	if err := validClusterID(clusterID); err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate CA key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          newSerial(),
		Subject:               pkix.Name{CommonName: caCommonNamePrefix + clusterID},
		NotBefore:             now.Add(-Backdate),
		NotAfter:              now.Add(CAValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
		URIs:                  []*url.URL{clusterURI(clusterID)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("create CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse new CA certificate: %w", err)
	}
	roots, err := newRoots(cert)
	if err != nil {
		return nil, err
	}
	return &CA{roots: roots, key: key, nodeValidity: DefaultNodeValidity}, nil
}

// LoadCA reads a CA back from CertPEM and KeyPEM output. The key may be
// PKCS #8 ("PRIVATE KEY") or SEC 1 ("EC PRIVATE KEY"). Errors wrap
// ErrNoPEM, ErrPEMType, ErrNotCA, ErrUnsupportedKey or ErrKeyMismatch.
// The CA issues node certificates valid for DefaultNodeValidity.
func LoadCA(certPEM, keyPEM []byte) (*CA, error) {
	roots, err := LoadRoots(certPEM)
	if err != nil {
		return nil, fmt.Errorf("load CA: %w", err)
	}
	key, err := parseKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("load CA key: %w", err)
	}
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(roots.cert.PublicKey) {
		return nil, fmt.Errorf("load CA: %w (cluster %q)", ErrKeyMismatch, roots.clusterID)
	}
	return &CA{roots: roots, key: key, nodeValidity: DefaultNodeValidity}, nil
}

// WithNodeValidity returns a copy of ca that issues node certificates
// valid for d (which must be positive). ca itself is unchanged.
func (ca *CA) WithNodeValidity(d time.Duration) (*CA, error) {
	if d <= 0 {
		return nil, fmt.Errorf("node certificate validity %v, want > 0", d)
	}
	c := *ca
	c.nodeValidity = d
	return &c, nil
}

// Roots returns the public half of the CA, which every node trusts.
func (ca *CA) Roots() *Roots { return ca.roots }

// ClusterID returns the id of the cluster the CA belongs to.
func (ca *CA) ClusterID() string { return ca.roots.clusterID }

// CertPEM returns the CA certificate, PEM-encoded.
func (ca *CA) CertPEM() []byte { return ca.roots.CertPEM() }

// KeyPEM returns the CA private key, PEM-encoded PKCS #8. Store it with
// mode 0600: whoever holds it can mint node certificates.
func (ca *CA) KeyPEM() ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(ca.key)
	if err != nil {
		return nil, fmt.Errorf("marshal CA key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemPrivateKey, Bytes: der}), nil
}

// IssueNode signs a certificate for node nodeID with public key pub,
// valid from now (less Backdate) for the CA's node validity, but never
// past the CA's own expiry. It is good for both TLS server and client
// authentication and carries the URI SAN
// "wormhole://<clusterID>/node/<nodeID>" (the node id path-escaped), which
// NodeIDFromCert reads back. hosts are the node's IP addresses and DNS
// names; they are informational for Wormhole's own TLS, which
// authenticates peers by node id, but help other tools.
//
// nodeID must be 1 to MaxNodeIDLen bytes of UTF-8 without control
// characters. pub must be ECDSA (P-256, P-384, P-521) or Ed25519.
//
// certPEM holds the node certificate followed by the CA certificate, so
// tls.X509KeyPair(certPEM, keyPEM) yields a tls.Certificate that sends the
// whole chain, which joining nodes need to check the CA pin.
func (ca *CA) IssueNode(nodeID string, hosts []string, pub crypto.PublicKey, now time.Time) (certPEM []byte, err error) {
	if err := validNodeID(nodeID); err != nil {
		return nil, err
	}
	if err := checkPublicKey(pub); err != nil {
		return nil, fmt.Errorf("issue certificate for node %q: %w", nodeID, err)
	}
	caCert := ca.roots.cert
	if now.Before(caCert.NotBefore) || !now.Before(caCert.NotAfter) {
		return nil, fmt.Errorf("issue certificate for node %q at %s: %w (valid %s to %s)",
			nodeID, now.UTC().Format(time.RFC3339), ErrCAExpired,
			caCert.NotBefore.UTC().Format(time.RFC3339), caCert.NotAfter.UTC().Format(time.RFC3339))
	}
	tmpl := &x509.Certificate{
		SerialNumber:          newSerial(),
		Subject:               pkix.Name{CommonName: nodeID},
		NotBefore:             now.Add(-Backdate),
		NotAfter:              now.Add(ca.nodeValidity),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		URIs:                  []*url.URL{nodeURI(ca.roots.clusterID, nodeID)},
	}
	if _, isECDSA := pub.(*ecdsa.PublicKey); isECDSA {
		tmpl.KeyUsage |= x509.KeyUsageKeyAgreement
	}
	if tmpl.NotBefore.Before(caCert.NotBefore) {
		tmpl.NotBefore = caCert.NotBefore
	}
	if tmpl.NotAfter.After(caCert.NotAfter) {
		tmpl.NotAfter = caCert.NotAfter
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
			continue
		}
		if !validDNSName(h) {
			return nil, fmt.Errorf("issue certificate for node %q: host %q is neither an IP address nor a DNS name", nodeID, h)
		}
		tmpl.DNSNames = append(tmpl.DNSNames, h)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, pub, ca.key)
	if err != nil {
		return nil, fmt.Errorf("issue certificate for node %q: %w", nodeID, err)
	}
	out := pem.EncodeToMemory(&pem.Block{Type: pemCertificate, Bytes: der})
	return append(out, ca.roots.CertPEM()...), nil
}

// NewNodeKey generates a node's private key (ECDSA P-256) and returns it
// with its PEM encoding (PKCS #8, "PRIVATE KEY"), ready for
// tls.X509KeyPair. The key never leaves the node: only key.Public() is
// sent to the CA.
func NewNodeKey() (crypto.Signer, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate node key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("marshal node key: %w", err)
	}
	return key, pem.EncodeToMemory(&pem.Block{Type: pemPrivateKey, Bytes: der}), nil
}

// NodeIDFromCert returns the node id in cert's URI SAN
// "wormhole://<clusterID>/node/<nodeID>". It fails with ErrNoNodeID when
// cert names no node (or names several), and ErrWrongCluster when it
// names a node of another cluster. It does not verify cert: call it on a
// certificate from a verified chain, such as the peer certificate of a
// connection set up with ServerTLS or ClientTLS.
func NodeIDFromCert(cert *x509.Certificate, clusterID string) (string, error) {
	if cert == nil {
		return "", fmt.Errorf("nil certificate: %w", ErrNoNodeID)
	}
	var found []string
	var foreign string
	for _, u := range cert.URIs {
		if u.Scheme != uriScheme {
			continue
		}
		cid, nid, ok := parseNodeURI(u)
		if !ok {
			continue
		}
		if cid != clusterID {
			foreign = cid
			continue
		}
		found = append(found, nid)
	}
	switch {
	case len(found) == 1:
		return found[0], nil
	case len(found) > 1:
		return "", fmt.Errorf("certificate %q names %d nodes: %w", cert.Subject.CommonName, len(found), ErrNoNodeID)
	case foreign != "":
		return "", fmt.Errorf("certificate %q is for cluster %q, want %q: %w", cert.Subject.CommonName, foreign, clusterID, ErrWrongCluster)
	default:
		return "", fmt.Errorf("certificate %q: %w", cert.Subject.CommonName, ErrNoNodeID)
	}
}

// parseNodeURI splits "wormhole://<cluster>/node/<escaped node>" and
// accepts only the canonical form nodeURI produces.
func parseNodeURI(u *url.URL) (clusterID, nodeID string, ok bool) {
	if u.Opaque != "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.ForceQuery {
		return "", "", false
	}
	rest, ok := strings.CutPrefix(u.EscapedPath(), "/node/")
	if !ok || rest == "" || strings.Contains(rest, "/") {
		return "", "", false
	}
	nid, err := url.PathUnescape(rest)
	if err != nil || validNodeID(nid) != nil || validClusterID(u.Host) != nil {
		return "", "", false
	}
	return u.Host, nid, true
}

// Roots is what every node of a cluster trusts: the cluster CA
// certificate, without its key. It is immutable and safe for concurrent
// use.
type Roots struct {
	clusterID   string
	cert        *x509.Certificate
	pool        *x509.CertPool
	fingerprint [sha256.Size]byte
}

// LoadRoots reads a cluster CA certificate (CertPEM output). Errors wrap
// ErrNoPEM, ErrPEMType or ErrNotCA.
func LoadRoots(certPEM []byte) (*Roots, error) {
	block, _ := pem.Decode(certPEM)
	if block == nil {
		return nil, fmt.Errorf("CA certificate: %w", ErrNoPEM)
	}
	if block.Type != pemCertificate {
		return nil, fmt.Errorf("CA certificate: %w: %q, want %q", ErrPEMType, block.Type, pemCertificate)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("CA certificate: %w", err)
	}
	return newRoots(cert)
}

func newRoots(cert *x509.Certificate) (*Roots, error) {
	if !cert.BasicConstraintsValid || !cert.IsCA || cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("certificate %q: %w (it may not sign certificates)", cert.Subject.CommonName, ErrNotCA)
	}
	clusterID, err := clusterIDOfCA(cert)
	if err != nil {
		return nil, err
	}
	if err := checkPublicKey(cert.PublicKey); err != nil {
		return nil, fmt.Errorf("CA certificate %q: %w", cert.Subject.CommonName, err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &Roots{clusterID: clusterID, cert: cert, pool: pool, fingerprint: sha256.Sum256(cert.Raw)}, nil
}

// clusterIDOfCA reads the cluster id from a CA's "wormhole://<id>" URI
// SAN, which must agree with its CommonName.
func clusterIDOfCA(cert *x509.Certificate) (string, error) {
	var ids []string
	for _, u := range cert.URIs {
		if u.Scheme == uriScheme && u.Path == "" && u.Opaque == "" && u.User == nil &&
			u.RawQuery == "" && u.Fragment == "" && validClusterID(u.Host) == nil {
			ids = append(ids, u.Host)
		}
	}
	if len(ids) != 1 {
		return "", fmt.Errorf("certificate %q: %w (it has no single wormhole://<cluster-id> URI)", cert.Subject.CommonName, ErrNotCA)
	}
	if cert.Subject.CommonName != caCommonNamePrefix+ids[0] {
		return "", fmt.Errorf("certificate %q: %w (CommonName disagrees with cluster id %q)", cert.Subject.CommonName, ErrNotCA, ids[0])
	}
	return ids[0], nil
}

// ClusterID returns the id of the cluster.
func (r *Roots) ClusterID() string { return r.clusterID }

// Certificate returns the CA certificate. Do not modify it.
func (r *Roots) Certificate() *x509.Certificate { return r.cert }

// CertPEM returns the CA certificate, PEM-encoded.
func (r *Roots) CertPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: pemCertificate, Bytes: r.cert.Raw})
}

// Pool returns a new pool holding only the CA certificate.
func (r *Roots) Pool() *x509.CertPool { return r.pool.Clone() }

// Fingerprint returns the SHA-256 of the CA certificate's DER encoding:
// the pin that join tokens carry.
func (r *Roots) Fingerprint() [sha256.Size]byte { return r.fingerprint }

// parseKeyPEM reads a private key (PKCS #8, or SEC 1 EC) and checks its
// type.
func parseKeyPEM(keyPEM []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(keyPEM)
	if block == nil {
		return nil, ErrNoPEM
	}
	var key any
	var err error
	switch block.Type {
	case pemPrivateKey:
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case pemECKey:
		key, err = x509.ParseECPrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("%w: %q, want %q", ErrPEMType, block.Type, pemPrivateKey)
	}
	if err != nil {
		return nil, err
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%w: %T", ErrUnsupportedKey, key)
	}
	if err := checkPublicKey(signer.Public()); err != nil {
		return nil, err
	}
	return signer, nil
}

// checkPublicKey accepts ECDSA on the NIST curves and Ed25519.
func checkPublicKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256(), elliptic.P384(), elliptic.P521():
			return nil
		}
		return fmt.Errorf("%w: ECDSA on curve %s", ErrUnsupportedKey, k.Curve.Params().Name)
	case ed25519.PublicKey:
		if len(k) == ed25519.PublicKeySize {
			return nil
		}
		return fmt.Errorf("%w: Ed25519 key of %d bytes", ErrUnsupportedKey, len(k))
	case nil:
		return fmt.Errorf("%w: no key", ErrUnsupportedKey)
	default:
		return fmt.Errorf("%w: %T (want ECDSA or Ed25519)", ErrUnsupportedKey, pub)
	}
}

// newSerial returns a random positive 128-bit serial number.
func newSerial() *big.Int {
	b := make([]byte, 16)
	rand.Read(b) // never fails (Go 1.24+)
	b[0] &= 0x7f
	b[0] |= 0x40 // keep it 16 bytes long and positive
	return new(big.Int).SetBytes(b)
}

// validClusterID reports whether id can be a URI host in certificates.
func validClusterID(id string) error {
	if id == "" || len(id) > MaxClusterIDLen {
		return fmt.Errorf("cluster id %q: %w: want 1 to %d bytes", id, ErrInvalidID, MaxClusterIDLen)
	}
	if id[0] == '.' || id[len(id)-1] == '.' || strings.Contains(id, "..") {
		return fmt.Errorf("cluster id %q: %w: empty dot-separated part", id, ErrInvalidID)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return fmt.Errorf("cluster id %q: %w: byte %q not allowed (letters, digits, '-', '_', '.')", id, ErrInvalidID, c)
		}
	}
	return nil
}

// validNodeID reports whether id is a node id this package accepts.
func validNodeID(id string) error {
	if id == "" || len(id) > MaxNodeIDLen {
		return fmt.Errorf("node id %q: %w: want 1 to %d bytes", id, ErrInvalidID, MaxNodeIDLen)
	}
	if !utf8.ValidString(id) {
		return fmt.Errorf("node id %q: %w: not valid UTF-8", id, ErrInvalidID)
	}
	for _, r := range id {
		if unicode.IsControl(r) {
			return fmt.Errorf("node id %q: %w: control character", id, ErrInvalidID)
		}
	}
	return nil
}

// validDNSName is a loose check: non-empty labels of printable ASCII with
// no spaces, no trailing dot.
func validDNSName(h string) bool {
	if h == "" || len(h) > 253 || bytes.ContainsAny([]byte(h), " /\\@:") {
		return false
	}
	for _, l := range strings.Split(h, ".") {
		if l == "" || len(l) > 63 {
			return false
		}
		for i := 0; i < len(l); i++ {
			if l[i] < 33 || l[i] > 126 {
				return false
			}
		}
	}
	return true
}

// clusterURI is the CA's URI SAN, "wormhole://<clusterID>".
func clusterURI(clusterID string) *url.URL {
	return &url.URL{Scheme: uriScheme, Host: clusterID}
}

// nodeURI is a node certificate's URI SAN,
// "wormhole://<clusterID>/node/<path-escaped nodeID>".
func nodeURI(clusterID, nodeID string) *url.URL {
	esc := url.PathEscape(nodeID)
	return &url.URL{Scheme: uriScheme, Host: clusterID, Path: "/node/" + nodeID, RawPath: "/node/" + esc}
}
