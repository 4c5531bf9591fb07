package join

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/wormhole-fs/wormhole/cluster/pki"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeAdmitter is an in-memory Admitter.
type fakeAdmitter struct {
	mu       sync.Mutex
	records  map[string]pki.TokenRecord
	taken    map[string]bool // node ids of live members
	lookups  int
	admitted []Request
	// admit, when set, replaces the default Admit.
	admit func(ctx context.Context, req Request) (Response, error)
}

func newFakeAdmitter(tokens ...pki.Token) *fakeAdmitter {
	a := &fakeAdmitter{records: map[string]pki.TokenRecord{}, taken: map[string]bool{}}
	for _, t := range tokens {
		a.records[t.ID()] = t.Record()
	}
	return a
}

func (a *fakeAdmitter) TokenRecord(_ context.Context, id string) (pki.TokenRecord, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.lookups++
	rec, ok := a.records[id]
	if !ok {
		return pki.TokenRecord{}, fmt.Errorf("token %s: %w", id, ErrUnknownToken)
	}
	return rec, nil
}

func (a *fakeAdmitter) Admit(ctx context.Context, req Request) (Response, error) {
	a.mu.Lock()
	a.admitted = append(a.admitted, req)
	taken := a.taken[req.NodeID]
	admit := a.admit
	a.mu.Unlock()
	if admit != nil {
		return admit(ctx, req)
	}
	if taken {
		return Response{}, fmt.Errorf("node %q is a live member: %w", req.NodeID, ErrNodeIDTaken)
	}
	return Response{
		Secret:         bytes.Repeat([]byte{7}, 32),
		Role:           RoleVoter,
		InitialCluster: fmt.Sprintf("seed=https://127.0.0.1:2380,%s=https://%s:%d", req.NodeID, req.Advertise, req.EtcdPeerPort),
		MemberID:       42,
		EtcdEndpoints:  []string{"https://127.0.0.1:2379"},
		GossipSeeds:    []string{"127.0.0.1:7946"},
	}, nil
}

func (a *fakeAdmitter) counts() (lookups, admits int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.lookups, len(a.admitted)
}

// logBuffer collects log output from several goroutines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// newCA makes the CA of a test cluster.
func newCA(t *testing.T, clusterID string) *pki.CA {
	t.Helper()
	ca, err := pki.NewCA(clusterID, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// newToken makes a token of ca valid for ttl from now.
func newToken(t *testing.T, ca *pki.CA, ttl time.Duration, now time.Time) pki.Token {
	t.Helper()
	tok, err := pki.NewJoinToken(ca, ttl, now)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// seed is a running join Server on a loopback socket.
type seed struct {
	addr string
	adm  *fakeAdmitter
	logs *logBuffer
	stop func() error // cancels Serve's context and returns its result
}

// startSeed serves join requests for ca, with a node certificate of ca,
// until the test ends (or stop is called).
func startSeed(t *testing.T, ca *pki.CA, adm *fakeAdmitter, opts ServerOptions) *seed {
	t.Helper()
	logs := &logBuffer{}
	srv := NewServer(ca, adm, zerolog.New(logs), opts)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, l, pki.JoinServerTLS(pki.NewNodeCert(seedCert(t, ca)))) }()
	var once sync.Once
	var serveErr error
	stop := func() error {
		once.Do(func() {
			cancel()
			serveErr = <-done
		})
		return serveErr
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return &seed{addr: l.Addr().String(), adm: adm, logs: logs, stop: stop}
}

// seedCert issues the seed's own certificate chain.
func seedCert(t *testing.T, ca *pki.CA) tls.Certificate {
	t.Helper()
	key, keyPEM, err := pki.NewNodeKey()
	if err != nil {
		t.Fatal(err)
	}
	certPEM, err := ca.IssueNode("seed", []string{"127.0.0.1"}, key.Public(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// newRequest makes the request of a joining node with a fresh key, and
// returns the key's PEM.
func newRequest(t *testing.T, nodeID string) (Request, []byte) {
	t.Helper()
	key, keyPEM, err := pki.NewNodeKey()
	if err != nil {
		t.Fatal(err)
	}
	pub, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	return Request{
		NodeID:       nodeID,
		PublicKey:    pub,
		Hosts:        []string{"127.0.0.1", "node.example"},
		Advertise:    "127.0.0.1",
		EtcdPeerPort: 2380,
		GossipPort:   7946,
		DataPort:     7947,
		NFSPort:      2049,
	}, keyPEM
}

// secretOf returns the secret part of a token string.
func secretOf(tok pki.Token) string { return strings.Split(tok.String(), ".")[2] }

// checkNoSecret fails if s holds the secret of tok.
func checkNoSecret(t *testing.T, what, s string, tok pki.Token) {
	t.Helper()
	if strings.Contains(s, secretOf(tok)) {
		t.Errorf("%s holds the token secret:\n%s", what, s)
	}
}

// wantErr checks errors.Is(err, target) and that the text says each of
// says.
func wantErr(t *testing.T, err, target error, says ...string) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("error %v, want one wrapping %v", err, target)
	}
	for _, s := range says {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not say %q", err, s)
		}
	}
}
