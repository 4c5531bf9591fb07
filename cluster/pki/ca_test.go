package pki

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"
)

// t0 is the fixed "now" of tests that do not talk TLS.
var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func mustCA(t *testing.T, clusterID string, now time.Time) *CA {
	t.Helper()
	ca, err := NewCA(clusterID, now)
	if err != nil {
		t.Fatalf("NewCA(%q): %v", clusterID, err)
	}
	return ca
}

// parseChain decodes every CERTIFICATE block of a PEM chain.
func parseChain(t *testing.T, chain []byte) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for {
		var b *pem.Block
		b, chain = pem.Decode(chain)
		if b == nil {
			return out
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
}

func mustIssue(t *testing.T, ca *CA, nodeID string, now time.Time) (*x509.Certificate, []byte) {
	t.Helper()
	key, _, err := NewNodeKey()
	if err != nil {
		t.Fatal(err)
	}
	chain, err := ca.IssueNode(nodeID, []string{"127.0.0.1", "node1.example"}, key.Public(), now)
	if err != nil {
		t.Fatalf("IssueNode(%q): %v", nodeID, err)
	}
	return parseChain(t, chain)[0], chain
}

func TestNewCA(t *testing.T) {
	ca := mustCA(t, "prod-1", t0)
	c := ca.Roots().Certificate()
	if c.Subject.CommonName != "wormhole CA prod-1" {
		t.Errorf("CommonName %q", c.Subject.CommonName)
	}
	if !c.IsCA || !c.BasicConstraintsValid || c.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Errorf("not a CA: IsCA=%v KeyUsage=%v", c.IsCA, c.KeyUsage)
	}
	if c.MaxPathLen != 0 || !c.MaxPathLenZero {
		t.Errorf("MaxPathLen %d (zero %v), want 0", c.MaxPathLen, c.MaxPathLenZero)
	}
	if got := c.NotAfter.Sub(t0); got != CAValidity {
		t.Errorf("validity %v, want %v", got, CAValidity)
	}
	if !c.NotBefore.Equal(t0.Add(-Backdate)) {
		t.Errorf("NotBefore %v", c.NotBefore)
	}
	if len(c.URIs) != 1 || c.URIs[0].String() != "wormhole://prod-1" {
		t.Errorf("URIs %v", c.URIs)
	}
	if _, ok := c.PublicKey.(*ecdsa.PublicKey); !ok {
		t.Errorf("key %T", c.PublicKey)
	}
	if ca.ClusterID() != "prod-1" || ca.Roots().ClusterID() != "prod-1" {
		t.Errorf("ClusterID %q", ca.ClusterID())
	}
	if err := c.CheckSignatureFrom(c); err != nil {
		t.Errorf("not self-signed: %v", err)
	}
}

func TestNewCAInvalidClusterID(t *testing.T) {
	for _, id := range []string{"", "a/b", "a b", ".a", "a.", "a..b", "é", strings.Repeat("a", 65), "a:1", "a@b"} {
		if _, err := NewCA(id, t0); !errors.Is(err, ErrInvalidID) {
			t.Errorf("NewCA(%q) = %v, want ErrInvalidID", id, err)
		}
	}
	for _, id := range []string{"default", "A_b-9.c", strings.Repeat("a", 64)} {
		if _, err := NewCA(id, t0); err != nil {
			t.Errorf("NewCA(%q): %v", id, err)
		}
	}
}

func TestLoadCARoundTrip(t *testing.T) {
	ca := mustCA(t, "c1", t0)
	keyPEM, err := ca.KeyPEM()
	if err != nil {
		t.Fatal(err)
	}
	loaded, err := LoadCA(ca.CertPEM(), keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	if loaded.ClusterID() != "c1" || loaded.Roots().Fingerprint() != ca.Roots().Fingerprint() {
		t.Fatalf("loaded CA differs: %q", loaded.ClusterID())
	}
	// A certificate from the loaded CA verifies against the original.
	leaf, _ := mustIssue(t, loaded, "n1", t0)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: ca.Roots().Pool(), CurrentTime: t0,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatal(err)
	}

	// SEC 1 ("EC PRIVATE KEY") is accepted too.
	b, _ := pem.Decode(keyPEM)
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	sec1, err := x509.MarshalECPrivateKey(k.(*ecdsa.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := LoadCA(ca.CertPEM(), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1})); err != nil {
		t.Fatalf("SEC 1 key: %v", err)
	}
}

func TestLoadCAErrors(t *testing.T) {
	ca := mustCA(t, "c1", t0)
	other := mustCA(t, "c1", t0)
	keyPEM, _ := ca.KeyPEM()
	otherKey, _ := other.KeyPEM()
	_, nodeChain := mustIssue(t, ca, "n1", t0)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	rsaDER, _ := x509.MarshalPKCS8PrivateKey(rsaKey)
	rsaPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: rsaDER})
	foreignCA := selfSigned(t, &x509.Certificate{Subject: pkix.Name{CommonName: "Some Other CA"}, IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign})
	noCertSign := selfSigned(t, &x509.Certificate{Subject: pkix.Name{CommonName: "wormhole CA c1"}, IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageDigitalSignature, URIs: []*url.URL{clusterURI("c1")}})
	badCN := selfSigned(t, &x509.Certificate{Subject: pkix.Name{CommonName: "wormhole CA c2"}, IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign, URIs: []*url.URL{clusterURI("c1")}})

	tests := []struct {
		name          string
		cert, key     []byte
		want          error
		wantInMessage string
	}{
		{"empty cert", nil, keyPEM, ErrNoPEM, "no PEM data"},
		{"garbage cert", []byte("hello"), keyPEM, ErrNoPEM, "no PEM data"},
		{"key as cert", keyPEM, keyPEM, ErrPEMType, `"PRIVATE KEY", want "CERTIFICATE"`},
		{"bad DER", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1, 2, 3}}), keyPEM, nil, "x509"},
		{"node cert", nodeChain, keyPEM, ErrNotCA, "may not sign"},
		{"foreign CA", foreignCA, keyPEM, ErrNotCA, "wormhole://<cluster-id>"},
		{"CA without cert sign", noCertSign, keyPEM, ErrNotCA, "may not sign"},
		{"CN disagrees", badCN, keyPEM, ErrNotCA, "CommonName disagrees"},
		{"empty key", ca.CertPEM(), nil, ErrNoPEM, "load CA key"},
		{"cert as key", ca.CertPEM(), ca.CertPEM(), ErrPEMType, `"CERTIFICATE", want "PRIVATE KEY"`},
		{"RSA key", ca.CertPEM(), rsaPEM, ErrUnsupportedKey, "*rsa.PublicKey"},
		{"other CA's key", ca.CertPEM(), otherKey, ErrKeyMismatch, "does not match"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := LoadCA(tc.cert, tc.key)
			if err == nil {
				t.Fatal("LoadCA succeeded")
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("error %v, want %v", err, tc.want)
			}
			if !strings.Contains(err.Error(), tc.wantInMessage) {
				t.Errorf("error %q does not mention %q", err, tc.wantInMessage)
			}
		})
	}
}

// selfSigned returns a PEM certificate self-signed with a new P-256 key.
func selfSigned(t *testing.T, tmpl *x509.Certificate) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl.SerialNumber = big.NewInt(1)
	tmpl.NotBefore, tmpl.NotAfter = t0.Add(-time.Hour), t0.Add(time.Hour)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func TestIssueNode(t *testing.T) {
	ca := mustCA(t, "c1", t0)
	leaf, chain := mustIssue(t, ca, "n1", t0.Add(time.Hour))
	certs := parseChain(t, chain)
	if len(certs) != 2 || !certs[1].Equal(ca.Roots().Certificate()) {
		t.Fatalf("chain has %d certificates, want node then CA", len(certs))
	}
	if got := leaf.NotAfter.Sub(t0.Add(time.Hour)); got != DefaultNodeValidity {
		t.Errorf("validity %v", got)
	}
	if len(leaf.ExtKeyUsage) != 2 || leaf.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth || leaf.ExtKeyUsage[1] != x509.ExtKeyUsageClientAuth {
		t.Errorf("ExtKeyUsage %v", leaf.ExtKeyUsage)
	}
	if leaf.IsCA {
		t.Error("node certificate is a CA")
	}
	if len(leaf.IPAddresses) != 1 || !leaf.IPAddresses[0].Equal(net.IPv4(127, 0, 0, 1)) ||
		len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != "node1.example" {
		t.Errorf("SANs %v %v", leaf.IPAddresses, leaf.DNSNames)
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != "wormhole://c1/node/n1" {
		t.Errorf("URIs %v", leaf.URIs)
	}
	for _, u := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: ca.Roots().Pool(), CurrentTime: t0.Add(2 * time.Hour),
			KeyUsages: []x509.ExtKeyUsage{u}}); err != nil {
			t.Errorf("verify for %v: %v", u, err)
		}
	}

	// Ed25519 keys are accepted; the configured validity applies.
	ca2, err := ca.WithNodeValidity(48 * time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	out, err := ca2.IssueNode("n2", nil, pub, t0)
	if err != nil {
		t.Fatal(err)
	}
	if got := parseChain(t, out)[0].NotAfter.Sub(t0); got != 48*time.Hour {
		t.Errorf("WithNodeValidity: validity %v", got)
	}
	if _, err := ca.WithNodeValidity(0); err == nil {
		t.Error("WithNodeValidity(0) accepted")
	}

	// A node certificate never outlives the CA.
	late := t0.Add(CAValidity - 24*time.Hour)
	leaf, _ = mustIssue(t, ca, "n3", late)
	if !leaf.NotAfter.Equal(ca.Roots().Certificate().NotAfter) {
		t.Errorf("NotAfter %v, want clamped to CA's %v", leaf.NotAfter, ca.Roots().Certificate().NotAfter)
	}
}

func TestIssueNodeErrors(t *testing.T) {
	ca := mustCA(t, "c1", t0)
	key, _, _ := NewNodeKey()
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	tests := []struct {
		name   string
		nodeID string
		hosts  []string
		pub    any
		now    time.Time
		want   error
	}{
		{"empty node id", "", nil, key.Public(), t0, ErrInvalidID},
		{"long node id", strings.Repeat("x", 65), nil, key.Public(), t0, ErrInvalidID},
		{"control char", "a\nb", nil, key.Public(), t0, ErrInvalidID},
		{"bad UTF-8", "a\xffb", nil, key.Public(), t0, ErrInvalidID},
		{"RSA", "n1", nil, rsaKey.Public(), t0, ErrUnsupportedKey},
		{"P-224", "n1", nil, p224.Public(), t0, ErrUnsupportedKey},
		{"nil key", "n1", nil, nil, t0, ErrUnsupportedKey},
		{"CA expired", "n1", nil, key.Public(), t0.Add(CAValidity), ErrCAExpired},
		{"CA not yet valid", "n1", nil, key.Public(), t0.Add(-time.Hour), ErrCAExpired},
		{"bad host", "n1", []string{"a b"}, key.Public(), t0, nil},
		{"empty host", "n1", []string{""}, key.Public(), t0, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ca.IssueNode(tc.nodeID, tc.hosts, tc.pub, tc.now)
			if err == nil {
				t.Fatal("IssueNode succeeded")
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("error %v, want %v", err, tc.want)
			}
			t.Log(err)
		})
	}
}

func TestNodeIDFromCert(t *testing.T) {
	ca := mustCA(t, "c1", t0)
	for _, id := range []string{"n1", "node/with/slashes", "ünïcode node", "100%", "a?b#c", "..", strings.Repeat("z", 64)} {
		leaf, _ := mustIssue(t, ca, id, t0)
		got, err := NodeIDFromCert(leaf, "c1")
		if err != nil || got != id {
			t.Errorf("NodeIDFromCert(%q) = %q, %v", id, got, err)
		}
		if _, err := NodeIDFromCert(leaf, "c2"); !errors.Is(err, ErrWrongCluster) {
			t.Errorf("other cluster: %v, want ErrWrongCluster", err)
		}
	}
	// The CA's own certificate names no node.
	if _, err := NodeIDFromCert(ca.Roots().Certificate(), "c1"); !errors.Is(err, ErrNoNodeID) {
		t.Errorf("CA cert: %v, want ErrNoNodeID", err)
	}
	if _, err := NodeIDFromCert(nil, "c1"); !errors.Is(err, ErrNoNodeID) {
		t.Errorf("nil: %v", err)
	}
	// Hand-made URIs: ambiguous or non-canonical ones are refused.
	mk := func(uris ...string) *x509.Certificate {
		c := &x509.Certificate{}
		for _, s := range uris {
			u, err := url.Parse(s)
			if err != nil {
				t.Fatal(err)
			}
			c.URIs = append(c.URIs, u)
		}
		return c
	}
	for _, tc := range []struct {
		uris []string
		want error
	}{
		{[]string{"wormhole://c1/node/a", "wormhole://c1/node/b"}, ErrNoNodeID},
		{[]string{"wormhole://c1/node/"}, ErrNoNodeID},
		{[]string{"wormhole://c1/node/a/b"}, ErrNoNodeID},
		{[]string{"wormhole://c1/node/a?x=1"}, ErrNoNodeID},
		{[]string{"wormhole://u@c1/node/a"}, ErrNoNodeID},
		{[]string{"wormhole://c1/nodes/a"}, ErrNoNodeID},
		{[]string{"spiffe://c1/node/a"}, ErrNoNodeID},
		{[]string{"wormhole://c2/node/a"}, ErrWrongCluster},
	} {
		if _, err := NodeIDFromCert(mk(tc.uris...), "c1"); !errors.Is(err, tc.want) {
			t.Errorf("%v: %v, want %v", tc.uris, err, tc.want)
		}
	}
	if id, err := NodeIDFromCert(mk("spiffe://x/y", "wormhole://c2/node/b", "wormhole://c1/node/a"), "c1"); err != nil || id != "a" {
		t.Errorf("mixed URIs: %q, %v", id, err)
	}
}

func TestNewNodeKey(t *testing.T) {
	key, keyPEM, err := NewNodeKey()
	if err != nil {
		t.Fatal(err)
	}
	got, err := parseKeyPEM(keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Public().(*ecdsa.PublicKey).Equal(key.Public()) {
		t.Fatal("PEM holds another key")
	}
}
