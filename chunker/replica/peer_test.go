package replica_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wormhole-fs/wormhole/chunker"
	"github.com/wormhole-fs/wormhole/chunker/chunk"
	"github.com/wormhole-fs/wormhole/chunker/peer"
	"github.com/wormhole-fs/wormhole/chunker/placement"
	"github.com/wormhole-fs/wormhole/chunker/replica"
)

// testCA is a tiny certificate authority (as in chunker/peer's tests).
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "test cluster"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

// issue returns a server and client certificate for node name on 127.0.0.1.
func (ca *testCA) issue(t *testing.T, name string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sn, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: sn,
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// tlsNode is a node of the integration cluster: a LocalStore served by a
// peer.Server over mutual TLS.
type tlsNode struct {
	id     string
	store  *chunker.LocalStore
	addr   string
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
}

// stop shuts the node's server down; the node stays in the membership, so
// peers see connection failures.
func (n *tlsNode) stop(t *testing.T) {
	n.once.Do(func() {
		n.cancel()
		if err := <-n.done; err != nil {
			t.Errorf("node %s: Serve: %v", n.id, err)
		}
	})
}

// tlsCluster is 3 nodes wired with real peer clients and servers.
type tlsCluster struct {
	nodes   map[string]*tlsNode
	members []replica.Node
	clients map[string]*peer.Client // the clients of one dialing node
}

// peerDialer gives each node its own peer.Clients, with its own
// certificate.
type peerDialer struct{ clients map[string]*peer.Client }

func (d peerDialer) Remote(node string) (replica.Remote, error) {
	c, ok := d.clients[node]
	if !ok {
		return nil, fmt.Errorf("no address for node %s", node)
	}
	return c, nil
}

type staticMembers struct {
	self  string
	nodes []replica.Node
}

func (m staticMembers) SelfID() string        { return m.self }
func (m staticMembers) Nodes() []replica.Node { return m.nodes }

func startTLSCluster(t *testing.T, ca *testCA, ids ...string) *tlsCluster {
	t.Helper()
	tc := &tlsCluster{nodes: map[string]*tlsNode{}}
	for _, id := range ids {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		n := &tlsNode{id: id, store: openStore(t), addr: l.Addr().String(), cancel: cancel, done: make(chan error, 1)}
		srv := peer.NewServer(n.store, testLogger(t), peer.ServerOptions{})
		conf := &tls.Config{
			Certificates: []tls.Certificate{ca.issue(t, id)},
			ClientCAs:    ca.pool,
			ClientAuth:   tls.RequireAndVerifyClientCert,
			MinVersion:   tls.VersionTLS13,
		}
		go func() { n.done <- srv.Serve(ctx, l, conf) }()
		t.Cleanup(func() { n.stop(t) })
		tc.nodes[id] = n
		tc.members = append(tc.members, replica.Node{ID: id, Weight: 1 << 30, Alive: true})
	}
	return tc
}

// replicaFor returns node self's replicator, with its own peer clients.
func (tc *tlsCluster) replicaFor(t *testing.T, ca *testCA, self string, cfg replica.Config) *replica.Store {
	t.Helper()
	conf := &tls.Config{
		Certificates: []tls.Certificate{ca.issue(t, self)},
		RootCAs:      ca.pool,
		MinVersion:   tls.VersionTLS13,
	}
	clients := map[string]*peer.Client{}
	for id, n := range tc.nodes {
		if id == self {
			continue
		}
		c := peer.NewClient(n.addr, conf, peer.ClientOptions{Timeout: 10 * time.Second})
		t.Cleanup(func() { _ = c.Close() })
		clients[id] = c
	}
	s, err := replica.New(cfg, tc.nodes[self].store, staticMembers{self: self, nodes: tc.members},
		peerDialer{clients: clients}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (tc *tlsCluster) ranking(id chunk.ID) []string {
	var cands []placement.Candidate
	for _, n := range tc.members {
		cands = append(cands, placement.Candidate{ID: n.ID, Weight: n.Weight})
	}
	return placement.Place(id[:], len(cands), cands)
}

func (tc *tlsCluster) holding(t *testing.T, id chunk.ID) []string {
	t.Helper()
	var out []string
	for node, n := range tc.nodes {
		_, err := n.store.Get(t.Context(), id)
		switch {
		case err == nil:
			out = append(out, node)
		case !errors.Is(err, chunk.ErrNotFound):
			t.Fatalf("node %s: %v", node, err)
		}
	}
	slices.Sort(out)
	return out
}

// TestOverPeerTLS runs three nodes with real peer servers and clients over
// loopback mutual TLS.
func TestOverPeerTLS(t *testing.T) {
	ca := newCA(t)
	tc := startTLSCluster(t, ca, "n1", "n2", "n3")
	ctx := t.Context()
	cfg := replica.Config{Copies: 2, Timeout: 10 * time.Second}
	s1 := tc.replicaFor(t, ca, "n1", cfg)
	s2 := tc.replicaFor(t, ca, "n2", cfg)
	s3 := tc.replicaFor(t, ca, "n3", cfg)

	t.Run("put lands on placement, any node reads", func(t *testing.T) {
		for i := range 10 {
			id := chunk.NewID()
			data := []byte(fmt.Sprintf("chunk %d over TLS", i))
			if _, err := s1.Put(ctx, id, data); err != nil {
				t.Fatalf("Put: %v", err)
			}
			if got, want := tc.holding(t, id), sorted(tc.ranking(id)[:2]); !slices.Equal(got, want) {
				t.Fatalf("chunk on %v, placement says %v", got, want)
			}
			for _, s := range []*replica.Store{s1, s2, s3} {
				mustGet(t, s, id, data)
			}
		}
	})

	t.Run("corrupt remote copy is skipped and reported", func(t *testing.T) {
		// A chunk n3 does not hold, so its reads go to the network.
		id := idWhere(t, tc.ranking, func(r []string) bool { return !slices.Contains(r[:2], "n3") })
		data := []byte("verified end to end")
		if _, err := s1.Put(ctx, id, data); err != nil {
			t.Fatal(err)
		}
		first := tc.ranking(id)[0]
		corruptChunk(t, tc.nodes[first].store, id)
		drain(s3)
		mustGet(t, s3, id, data)
		r := drain(s3)
		if len(r) != 1 || r[0].Reason != replica.ReasonCorrupt || r[0].Node != first {
			t.Fatalf("reports = %+v, want corrupt copy on %s", r, first)
		}
	})

	t.Run("range reads of a remote chunk", func(t *testing.T) {
		id := idWhere(t, tc.ranking, func(r []string) bool { return !slices.Contains(r[:2], "n3") })
		data := make([]byte, 300<<10)
		for i := range data {
			data[i] = byte(i*7 + i>>9)
		}
		if _, err := s1.Put(ctx, id, data); err != nil {
			t.Fatal(err)
		}
		readRange := func(off, n int) []byte {
			t.Helper()
			p := make([]byte, n)
			k, err := s3.ReadRange(ctx, id, p, int64(off))
			if err != nil {
				t.Fatalf("ReadRange of %d bytes at %d: %v", n, off, err)
			}
			return p[:k]
		}
		if got := readRange(100<<10, 10<<10); !bytes.Equal(got, data[100<<10:110<<10]) {
			t.Errorf("ReadRange inside the chunk: %d bytes, not the chunk's", len(got))
		}
		if got := readRange(len(data)-1000, 64<<10); !bytes.Equal(got, data[len(data)-1000:]) {
			t.Errorf("ReadRange past the chunk's end: %d bytes, want its last 1000", len(got))
		}
		// The first holder's last block goes bad: the range is read
		// from the other holder, and the bad copy reported.
		first := tc.ranking(id)[0]
		corruptChunk(t, tc.nodes[first].store, id)
		drain(s3)
		if got := readRange(len(data)-4096, 4096); !bytes.Equal(got, data[len(data)-4096:]) {
			t.Errorf("ReadRange with the first holder's copy corrupt: %d bytes, not the chunk's", len(got))
		}
		if r := drain(s3); len(r) != 1 || r[0].Reason != replica.ReasonCorrupt || r[0].Node != first {
			t.Fatalf("reports = %+v, want corrupt copy on %s", r, first)
		}
	})

	t.Run("delete everywhere", func(t *testing.T) {
		id := chunk.NewID()
		if _, err := s2.Put(ctx, id, []byte("bye")); err != nil {
			t.Fatal(err)
		}
		if err := s3.Delete(ctx, id); err != nil {
			t.Fatalf("Delete: %v", err)
		}
		if got := tc.holding(t, id); len(got) != 0 {
			t.Fatalf("after Delete the chunk is on %v", got)
		}
	})

	// From here on n3 is down, though membership still says alive.
	tc.nodes["n3"].stop(t)

	t.Run("put fails over from a stopped node", func(t *testing.T) {
		id := idWhere(t, tc.ranking, func(r []string) bool { return slices.Contains(r[:2], "n3") })
		data := []byte("failover over TLS")
		if _, err := s1.Put(ctx, id, data); err != nil {
			t.Fatalf("Put: %v", err)
		}
		if got := tc.holding(t, id); !slices.Equal(got, []string{"n1", "n2"}) {
			t.Fatalf("chunk on %v, want [n1 n2]", got)
		}
		mustGet(t, s2, id, data)
	})

	t.Run("range read with the placement target stopped", func(t *testing.T) {
		// One copy, placed on n3, which is stopped: the write fails
		// over to another node, and a read of part of the chunk from
		// the third finds it there.
		cfg := replica.Config{Copies: 1, Timeout: 10 * time.Second}
		id := idWhere(t, tc.ranking, func(r []string) bool { return r[0] == "n3" })
		data := make([]byte, 200<<10)
		for i := range data {
			data[i] = byte(i*13 + i>>10)
		}
		if _, err := tc.replicaFor(t, ca, "n1", cfg).Put(ctx, id, data); err != nil {
			t.Fatalf("Put: %v", err)
		}
		holders := tc.holding(t, id)
		if len(holders) != 1 || holders[0] == "n3" {
			t.Fatalf("chunk on %v, want one node other than n3", holders)
		}
		reader := "n1"
		if holders[0] == "n1" {
			reader = "n2"
		}
		p := make([]byte, 5000)
		k, err := tc.replicaFor(t, ca, reader, cfg).ReadRange(ctx, id, p, 70000)
		if err != nil || !bytes.Equal(p[:k], data[70000:75000]) {
			t.Fatalf("ReadRange through %s: %d bytes, %v; want the chunk's 5000", reader, k, err)
		}
	})

	t.Run("three copies required, one node stopped", func(t *testing.T) {
		s := tc.replicaFor(t, ca, "n2", replica.Config{Copies: 3, Timeout: 10 * time.Second})
		id := chunk.NewID()
		_, err := s.Put(ctx, id, []byte("needs three"))
		if !errors.Is(err, replica.ErrNotEnoughNodes) {
			t.Fatalf("Put = %v, want ErrNotEnoughNodes", err)
		}
		if got := tc.holding(t, id); len(got) != 0 {
			t.Fatalf("failed Put left copies on %v", got)
		}
	})
}

// A placement target that accepts connections and never answers is waited
// for once: when the range read from it times out, the search for another
// copy does not ask it again.
func TestRangeReadWaitsOnceForAHungTarget(t *testing.T) {
	ca := newCA(t)
	tc := startTLSCluster(t, ca, "n1", "n2")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var accepted atomic.Int64
	var held []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			mu.Lock()
			held = append(held, c) // never read, never answered
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range held {
			c.Close()
		}
	})
	members := append(slices.Clone(tc.members), replica.Node{ID: "hung", Weight: 1 << 30, Alive: true})
	var cands []placement.Candidate
	for _, n := range members {
		cands = append(cands, placement.Candidate{ID: n.ID, Weight: n.Weight})
	}
	id := idWhere(t, func(id chunk.ID) []string { return placement.Place(id[:], len(cands), cands) },
		func(r []string) bool { return r[0] == "hung" && r[1] == "n2" })
	data := bytes.Repeat([]byte("hung "), 1000)
	if _, err := tc.nodes["n2"].store.Put(t.Context(), id, data); err != nil {
		t.Fatal(err)
	}
	conf := &tls.Config{Certificates: []tls.Certificate{ca.issue(t, "n1")}, RootCAs: ca.pool, MinVersion: tls.VersionTLS13}
	clients := map[string]*peer.Client{}
	for id, addr := range map[string]string{"n2": tc.nodes["n2"].addr, "hung": l.Addr().String()} {
		c := peer.NewClient(addr, conf, peer.ClientOptions{Timeout: 500 * time.Millisecond})
		t.Cleanup(func() { _ = c.Close() })
		clients[id] = c
	}
	s, err := replica.New(replica.Config{Copies: 1, Timeout: 500 * time.Millisecond}, tc.nodes["n1"].store,
		staticMembers{self: "n1", nodes: members}, peerDialer{clients: clients}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 100)
	k, err := s.ReadRange(t.Context(), id, p, 50)
	if err != nil || !bytes.Equal(p[:k], data[50:150]) {
		t.Fatalf("ReadRange: %d bytes, %v; want the chunk's 100", k, err)
	}
	if n := accepted.Load(); n != 1 {
		t.Errorf("the hung target was connected to %d times, want 1", n)
	}
}
