package pki

import (
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"strings"
	"testing"
	"time"
)

// nodeCert issues a certificate for nodeID from ca, valid from the real
// current time (the TLS stack reads the clock), as a tls.Certificate.
func nodeCert(t *testing.T, ca *CA, nodeID string) tls.Certificate {
	t.Helper()
	key, keyPEM, err := NewNodeKey()
	if err != nil {
		t.Fatal(err)
	}
	chain, err := ca.IssueNode(nodeID, []string{"127.0.0.1"}, key.Public(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	c, err := tls.X509KeyPair(chain, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// result is one side's view of a handshake over loopback.
type result struct {
	err   error
	state tls.ConnectionState
}

// exchange runs one TLS connection over 127.0.0.1: the server handshakes
// and, if that succeeds, writes one byte; the client handshakes and reads
// it. In TLS 1.3 the client's handshake finishes before the server has
// checked the client certificate, so a refusal by the server reaches the
// client as an error from that read.
func exchange(t *testing.T, serverCfg, clientCfg *tls.Config) (server, client result) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	deadline := time.Now().Add(10 * time.Second)
	done := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		defer c.Close()
		c.SetDeadline(deadline)
		tc := tls.Server(c, serverCfg)
		if err := tc.Handshake(); err != nil {
			done <- result{err: err}
			return
		}
		_, err = tc.Write([]byte{'k'})
		done <- result{err: err, state: tc.ConnectionState()}
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.SetDeadline(deadline)
	tc := tls.Client(raw, clientCfg)
	if err := tc.Handshake(); err != nil {
		client.err = err
	} else {
		var b [1]byte
		if _, err := tc.Read(b[:]); err != nil {
			client.err = err
		}
		client.state = tc.ConnectionState()
	}
	raw.Close() // unblock a server still waiting
	server = <-done
	return server, client
}

func TestMTLS(t *testing.T) {
	ca := mustCA(t, "c1", time.Now())
	srv := ServerTLS(ca.Roots(), NewNodeCert(nodeCert(t, ca, "server-node")))
	cli := ClientTLS(ca.Roots(), NewNodeCert(nodeCert(t, ca, "client-node")), "server-node")
	s, c := exchange(t, srv, cli)
	if s.err != nil || c.err != nil {
		t.Fatalf("server: %v; client: %v", s.err, c.err)
	}
	if s.state.Version != tls.VersionTLS13 {
		t.Errorf("version %x", s.state.Version)
	}
	if id, err := PeerNodeID(s.state, "c1"); err != nil || id != "client-node" {
		t.Errorf("server sees client %q, %v", id, err)
	}
	if id, err := PeerNodeID(c.state, "c1"); err != nil || id != "server-node" {
		t.Errorf("client sees server %q, %v", id, err)
	}

	// An empty peer node id accepts any node of the cluster.
	if s, c := exchange(t, srv, ClientTLS(ca.Roots(), NewNodeCert(nodeCert(t, ca, "client-node")), "")); s.err != nil || c.err != nil {
		t.Fatalf("any node: server: %v; client: %v", s.err, c.err)
	}
	// A CA loaded from PEM (another process) interoperates.
	roots, err := LoadRoots(ca.CertPEM())
	if err != nil {
		t.Fatal(err)
	}
	if s, c := exchange(t, srv, ClientTLS(roots, NewNodeCert(nodeCert(t, ca, "client-node")), "server-node")); s.err != nil || c.err != nil {
		t.Fatalf("loaded roots: server: %v; client: %v", s.err, c.err)
	}
}

func TestMTLSClientFromOtherCARefused(t *testing.T) {
	ca := mustCA(t, "c1", time.Now())
	impostorCA := mustCA(t, "c1", time.Now()) // same cluster id, other key
	srv := ServerTLS(ca.Roots(), NewNodeCert(nodeCert(t, ca, "server-node")))
	// The impostor trusts the real CA so that its side of the handshake
	// completes and the refusal is the server's.
	cli := ClientTLS(ca.Roots(), NewNodeCert(nodeCert(t, impostorCA, "client-node")), "server-node")
	s, c := exchange(t, srv, cli)
	var unknown x509.UnknownAuthorityError
	if !errors.As(s.err, &unknown) {
		t.Fatalf("server error %v, want x509.UnknownAuthorityError", s.err)
	}
	if !strings.Contains(s.err.Error(), "certificate signed by unknown authority") {
		t.Errorf("server error %q gives no clear reason", s.err)
	}
	if c.err == nil || !strings.Contains(c.err.Error(), "remote error: tls: unknown certificate authority") {
		t.Errorf("client error %v, want the server's refusal", c.err)
	}
	t.Logf("server: %v\nclient: %v", s.err, c.err)
}

func TestMTLSClientWithoutCertRefused(t *testing.T) {
	ca := mustCA(t, "c1", time.Now())
	srv := ServerTLS(ca.Roots(), NewNodeCert(nodeCert(t, ca, "server-node")))
	cli := ClientTLS(ca.Roots(), NewNodeCert(tls.Certificate{}), "server-node")
	cli.Certificates = nil
	s, c := exchange(t, srv, cli)
	if s.err == nil || !strings.Contains(s.err.Error(), "client didn't provide a certificate") {
		t.Errorf("server error %v, want a missing-certificate error", s.err)
	}
	if c.err == nil || !strings.Contains(c.err.Error(), "remote error: tls: certificate required") {
		t.Errorf("client error %v, want the server's refusal", c.err)
	}
	t.Logf("server: %v\nclient: %v", s.err, c.err)
}

func TestMTLSServerRefused(t *testing.T) {
	ca := mustCA(t, "c1", time.Now())
	impostorCA := mustCA(t, "c1", time.Now())
	cli := ClientTLS(ca.Roots(), NewNodeCert(nodeCert(t, ca, "client-node")), "server-node")

	t.Run("other CA", func(t *testing.T) {
		srv := ServerTLS(ca.Roots(), NewNodeCert(nodeCert(t, impostorCA, "server-node")))
		s, c := exchange(t, srv, cli)
		var unknown x509.UnknownAuthorityError
		if !errors.As(c.err, &unknown) || !strings.Contains(c.err.Error(), `not trusted by cluster "c1"`) {
			t.Errorf("client error %v, want an untrusted-server error", c.err)
		}
		if s.err == nil || !strings.Contains(s.err.Error(), "bad certificate") {
			t.Errorf("server error %v, want the client's refusal", s.err)
		}
	})
	t.Run("wrong node", func(t *testing.T) {
		srv := ServerTLS(ca.Roots(), NewNodeCert(nodeCert(t, ca, "another-node")))
		_, c := exchange(t, srv, cli)
		if !errors.Is(c.err, ErrWrongNode) || !strings.Contains(c.err.Error(), `dialed node "server-node" but the server is node "another-node"`) {
			t.Errorf("client error %v, want ErrWrongNode", c.err)
		}
	})
	t.Run("expired at injected time", func(t *testing.T) {
		srv := ServerTLS(ca.Roots(), NewNodeCert(nodeCert(t, ca, "server-node")))
		late := ClientTLS(ca.Roots(), NewNodeCert(nodeCert(t, ca, "client-node")), "server-node")
		late.Time = func() time.Time { return time.Now().Add(DefaultNodeValidity + time.Hour) }
		_, c := exchange(t, srv, late)
		var invalid x509.CertificateInvalidError
		if !errors.As(c.err, &invalid) || invalid.Reason != x509.Expired {
			t.Errorf("client error %v, want an expired certificate", c.err)
		}
	})
}

func TestJoin(t *testing.T) {
	ca := mustCA(t, "c1", time.Now())
	tok, err := NewJoinToken(ca, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	presented, err := ParseToken(tok.String())
	if err != nil {
		t.Fatal(err)
	}

	t.Run("right seed", func(t *testing.T) {
		s, c := exchange(t, JoinServerTLS(NewNodeCert(nodeCert(t, ca, "seed"))), JoinClientTLS(presented))
		if s.err != nil || c.err != nil {
			t.Fatalf("server: %v; client: %v", s.err, c.err)
		}
		if len(s.state.PeerCertificates) != 0 {
			t.Error("joining node sent a certificate")
		}
		roots, err := JoinedRoots(c.state, presented, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if roots.ClusterID() != "c1" || roots.Fingerprint() != ca.Roots().Fingerprint() {
			t.Errorf("joined %q", roots.ClusterID())
		}
		// The seed can verify the token sent over this channel.
		if err := VerifyToken(tok.Record(), presented, time.Now()); err != nil {
			t.Error(err)
		}
	})
	t.Run("seed of another CA", func(t *testing.T) {
		other := mustCA(t, "c1", time.Now())
		s, c := exchange(t, JoinServerTLS(NewNodeCert(nodeCert(t, other, "seed"))), JoinClientTLS(presented))
		if !errors.Is(c.err, ErrCAPinMismatch) {
			t.Fatalf("client error %v, want ErrCAPinMismatch", c.err)
		}
		want := fingerprintString(ca.Roots().Fingerprint())
		got := fingerprintString(other.Roots().Fingerprint())
		if msg := c.err.Error(); !strings.Contains(msg, "fingerprint does not match") ||
			!strings.Contains(msg, want) || !strings.Contains(msg, got) {
			t.Errorf("client error %q does not show both fingerprints", msg)
		}
		if s.err == nil {
			t.Error("server saw no error")
		}
		t.Logf("client: %v", c.err)
	})
	t.Run("impostor presenting the pinned CA", func(t *testing.T) {
		// The CA certificate is public: an impostor can send it after its
		// own certificate. The chain must verify, not just contain it.
		other := mustCA(t, "c1", time.Now())
		fake := nodeCert(t, other, "seed")
		fake.Certificate = [][]byte{fake.Certificate[0], ca.Roots().Certificate().Raw}
		_, c := exchange(t, JoinServerTLS(NewNodeCert(fake)), JoinClientTLS(presented))
		var unknown x509.UnknownAuthorityError
		if !errors.As(c.err, &unknown) {
			t.Fatalf("client error %v, want x509.UnknownAuthorityError", c.err)
		}
	})
	t.Run("seed without chain", func(t *testing.T) {
		leafOnly := nodeCert(t, ca, "seed")
		leafOnly.Certificate = leafOnly.Certificate[:1]
		_, c := exchange(t, JoinServerTLS(NewNodeCert(leafOnly)), JoinClientTLS(presented))
		if !errors.Is(c.err, ErrCAPinMismatch) || !strings.Contains(c.err.Error(), "only its own certificate") {
			t.Fatalf("client error %v, want ErrCAPinMismatch naming the missing CA", c.err)
		}
	})
}

func TestPeerNodeIDErrors(t *testing.T) {
	if _, err := PeerNodeID(tls.ConnectionState{}, "c1"); err == nil {
		t.Error("incomplete handshake accepted")
	}
	if _, err := PeerNodeID(tls.ConnectionState{HandshakeComplete: true}, "c1"); !errors.Is(err, ErrNoNodeID) {
		t.Errorf("no certificate: %v", err)
	}
}

func TestMTLSClientWithoutNodeIDRefused(t *testing.T) {
	// A certificate the cluster CA signed without a node URI (not one
	// IssueNode makes) is still refused by the server.
	ca := mustCA(t, "c1", time.Now())
	good := nodeCert(t, ca, "client-node")
	leaf, err := x509.ParseCertificate(good.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	tmpl := *leaf
	tmpl.URIs = nil
	tmpl.SerialNumber = newSerial()
	der, err := x509.CreateCertificate(rand.Reader, &tmpl, ca.Roots().Certificate(), leaf.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	bad := good
	bad.Certificate = [][]byte{der, good.Certificate[1]}
	bad.Leaf = nil
	srv := ServerTLS(ca.Roots(), NewNodeCert(nodeCert(t, ca, "server-node")))
	s, c := exchange(t, srv, ClientTLS(ca.Roots(), NewNodeCert(bad), "server-node"))
	if !errors.Is(s.err, ErrNoNodeID) || !strings.Contains(s.err.Error(), "client certificate") {
		t.Errorf("server error %v, want ErrNoNodeID", s.err)
	}
	if c.err == nil || !strings.Contains(c.err.Error(), "remote error: tls: bad certificate") {
		t.Errorf("client error %v, want the server's refusal", c.err)
	}
}

// TestNodeCertReplaced: configurations made from a NodeCert present, at
// each handshake, the certificate it holds then, on both sides.
func TestNodeCertReplaced(t *testing.T) {
	ca := mustCA(t, "c1", time.Now())
	srvCert, cliCert := NewNodeCert(nodeCert(t, ca, "server-node")), NewNodeCert(nodeCert(t, ca, "client-node"))
	srv := ServerTLS(ca.Roots(), srvCert)
	cli := ClientTLS(ca.Roots(), cliCert, "server-node")
	serials := func() (server, client string) {
		t.Helper()
		s, c := exchange(t, srv, cli)
		if s.err != nil || c.err != nil {
			t.Fatalf("handshake: server %v, client %v", s.err, c.err)
		}
		return c.state.PeerCertificates[0].SerialNumber.String(), s.state.PeerCertificates[0].SerialNumber.String()
	}
	s1, c1 := serials()
	srvCert.Replace(nodeCert(t, ca, "server-node"))
	cliCert.Replace(nodeCert(t, ca, "client-node"))
	s2, c2 := serials()
	if s1 == s2 || c1 == c2 {
		t.Fatalf("after Replace the same certificates were presented: server %s -> %s, client %s -> %s", s1, s2, c1, c2)
	}
	if want := srvCert.Current().Leaf.SerialNumber.String(); s2 != want {
		t.Fatalf("server presented serial %s, holds %s", s2, want)
	}
}
