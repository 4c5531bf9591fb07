package etcdmeta

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
	"github.com/wormhole-fs/wormhole/tests/freeport"
)

// testMember is one embedded member of a test cluster on loopback.
type testMember struct {
	cfg EmbedConfig
	e   *Embedded
}

// freeURL returns scheme://127.0.0.1:port for a port free a moment ago.
func freeURL(t *testing.T, scheme string) string {
	t.Helper()
	addr, err := freeport.Addr()
	if err != nil {
		t.Fatal(err)
	}
	return scheme + "://" + addr
}

// newTestMember configures a member in its own directory with fixed
// loopback peer and client ports.
func newTestMember(t *testing.T, name string, tlsCfg *EmbedTLS) *testMember {
	t.Helper()
	scheme := "http"
	if tlsCfg != nil {
		scheme = "https"
	}
	return &testMember{cfg: EmbedConfig{
		Dir:           t.TempDir(),
		Name:          name,
		PeerURL:       freeURL(t, scheme),
		ClientURL:     freeURL(t, scheme),
		TLS:           tlsCfg,
		UnsafeNoFsync: true,
	}}
}

// start starts m (joining when join is not nil) and closes it at the end
// of the test.
func (m *testMember) start(t *testing.T, join *JoinSpec) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	cfg := m.cfg
	cfg.Join = join
	e, err := StartEmbedded(ctx, cfg, testLog(t))
	if err != nil {
		t.Fatalf("start %s: %v", cfg.Name, err)
	}
	m.e = e
	t.Cleanup(func() { _ = e.Close() })
}

// join adds m as a learner through via, starts it and promotes it, and
// logs how long each step took.
func (m *testMember) join(t *testing.T, via *Embedded) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	t0 := time.Now()
	id, initial, err := AddLearner(ctx, via.Client(), m.cfg.Name, m.cfg.PeerURL)
	if err != nil {
		t.Fatal(err)
	}
	t1 := time.Now()
	m.start(t, &JoinSpec{InitialCluster: initial})
	if m.e.ID() != id {
		t.Fatalf("%s started as member %x, added as %x", m.cfg.Name, m.e.ID(), id)
	}
	if !m.e.IsLearner() {
		t.Fatalf("%s joined as a voter", m.cfg.Name)
	}
	t2 := time.Now()
	if err := PromoteWhenReady(ctx, via.Client(), id); err != nil {
		t.Fatal(err)
	}
	t3 := time.Now()
	t.Logf("member %s: AddLearner %v, start as learner %v, PromoteWhenReady %v; learner to voter %v",
		m.cfg.Name, t1.Sub(t0).Round(time.Millisecond), t2.Sub(t1).Round(time.Millisecond),
		t3.Sub(t2).Round(time.Millisecond), t3.Sub(t0).Round(time.Millisecond))
}

// waitFor polls cond every 20 ms until it returns nil, failing the test
// with cond's last error after timeout.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func(ctx context.Context) error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		err := cond(ctx)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %v", what, timeout, err)
		}
		<-tick.C
	}
}

// voters returns a check that the cluster seen through e has exactly n
// voting members and no learners.
func voters(e *Embedded, n int) func(ctx context.Context) error {
	return func(ctx context.Context) error {
		ms, err := Members(ctx, e.Client())
		if err != nil {
			return err
		}
		v := 0
		for _, m := range ms {
			if m.IsLearner {
				return fmt.Errorf("member %s is a learner", m.Name)
			}
			v++
		}
		if v != n {
			return fmt.Errorf("%d voters, want %d: %+v", v, n, ms)
		}
		return nil
	}
}

// put writes a key through e's in-process client within 10 s.
func put(e *Embedded, key string) func(ctx context.Context) error {
	return func(ctx context.Context) error {
		_, err := e.Client().Put(ctx, key, "v")
		return err
	}
}

// TestCluster grows a cluster of three members through learners, loses
// one and then two of them, and restarts them.
func TestCluster(t *testing.T) {
	a := newTestMember(t, "a", nil)
	b := newTestMember(t, "b", nil)
	c := newTestMember(t, "c", nil)
	a.start(t, nil)
	if a.e.IsLearner() {
		t.Fatal("bootstrap member is a learner")
	}

	// Grow to three voters through learners.
	b.join(t, a.e)
	c.join(t, a.e)
	waitFor(t, 10*time.Second, "three voters", voters(a.e, 3))
	// Each member learns of its promotion when it applies the entry.
	waitFor(t, 10*time.Second, "promoted members know it", func(context.Context) error {
		if b.e.IsLearner() || c.e.IsLearner() {
			return errors.New("a promoted member still thinks it is a learner")
		}
		return nil
	})

	// A Store on a sees, at once, what a Store on b created: reads are
	// linearizable across members.
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	sa, err := New(ctx, a.e.Client(), "cluster", testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	sb, err := New(ctx, b.e.Client(), "cluster", testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	created, err := sb.Create(ctx, meta.RootIno, "from-b", meta.CreateArgs{Type: meta.TypeRegular, Mode: 0o644})
	if err != nil {
		t.Fatal(err)
	}
	got, err := sa.Lookup(ctx, meta.RootIno, "from-b")
	if err != nil {
		t.Fatalf("a does not see b's create: %v", err)
	}
	if got.Ino != created.Ino {
		t.Fatalf("a sees inode %d, b created %d", got.Ino, created.Ino)
	}

	t.Run("DialExternal", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		cli, err := DialExternal(ctx, []string{a.cfg.ClientURL}, nil, testLog(t))
		if err != nil {
			t.Fatal(err)
		}
		defer cli.Close()
		ms, err := Members(ctx, cli)
		if err != nil {
			t.Fatal(err)
		}
		if len(ms) != 3 {
			t.Fatalf("%d members through the external client, want 3", len(ms))
		}
		for _, m := range ms {
			if len(m.ClientURLs) != 1 || !strings.HasPrefix(m.ClientURLs[0], "http://127.0.0.1:") {
				t.Errorf("member %s advertises client URLs %v", m.Name, m.ClientURLs)
			}
		}
		if _, err := cli.Put(ctx, "external", "v"); err != nil {
			t.Fatal(err)
		}

		dead := freeURL(t, "http") // nothing listens here
		dctx, dcancel := context.WithTimeout(t.Context(), 2*time.Second)
		defer dcancel()
		begin := time.Now()
		_, err = DialExternal(dctx, []string{dead}, nil, testLog(t))
		took := time.Since(begin)
		if err == nil || !strings.Contains(err.Error(), dead) {
			t.Fatalf("dial %s: %v, want an error naming it", dead, err)
		}
		if took > 3*time.Second {
			t.Fatalf("dial %s took %v with a 2 s deadline", dead, took)
		}
		t.Logf("dead endpoint after %v: %v", took, err)
	})

	// A fourth voter would leave an even count: refused before etcd is
	// asked, and the learner can be removed again.
	t.Run("EvenVotersRefused", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		id, _, err := AddLearner(ctx, a.e.Client(), "d", freeURL(t, "http"))
		if err != nil {
			t.Fatal(err)
		}
		if err := PromoteWhenReady(ctx, a.e.Client(), id); !errors.Is(err, ErrVoterLayout) {
			t.Fatalf("promote a 4th voter: %v, want ErrVoterLayout", err)
		}
		if err := RemoveMember(ctx, a.e.Client(), id); err != nil {
			t.Fatal(err)
		}
		if err := RemoveMember(ctx, a.e.Client(), id); !errors.Is(err, ErrNotMember) {
			t.Fatalf("remove twice: %v, want ErrNotMember", err)
		}
		waitFor(t, 10*time.Second, "three voters", voters(a.e, 3))
	})

	// One of three gone: the other two still have a quorum.
	if err := c.e.Close(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 15*time.Second, "write through a with c down", put(a.e, "one-down-a"))
	waitFor(t, 15*time.Second, "write through b with c down", put(b.e, "one-down-b"))
	if _, err := sa.Create(ctx, meta.RootIno, "one-down", meta.CreateArgs{Type: meta.TypeRegular, Mode: 0o644}); err != nil {
		t.Fatalf("create with one member down: %v", err)
	}

	// Two of three gone: a write fails when its deadline passes, no later,
	// with an error that says to try again (the client's deadline, or
	// etcd's own timeout of the proposal: meta.ErrUnavailable).
	if err := b.e.Close(); err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer wcancel()
	begin := time.Now()
	_, err = sa.Create(wctx, meta.RootIno, "no-quorum", meta.CreateArgs{Type: meta.TypeRegular, Mode: 0o644})
	took := time.Since(begin)
	if err == nil {
		t.Fatal("create without quorum succeeded")
	}
	if took > 3*time.Second {
		t.Fatalf("create without quorum returned after %v with a 2 s deadline", took)
	}
	t.Logf("create without quorum failed after %v: %v", took, err)
	if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, meta.ErrUnavailable) {
		t.Fatalf("create without quorum: %v, want a deadline error or meta.ErrUnavailable", err)
	}
	waitFor(t, 10*time.Second, "a loses its leader", func(context.Context) error {
		if a.e.HasLeader() {
			return errors.New("a still has a leader")
		}
		return nil
	})

	// Restart the closed members on their data directories, without Join:
	// their logs know the cluster.
	b.start(t, nil)
	waitFor(t, 15*time.Second, "write through a after b restarted", put(a.e, "b-back"))
	c.start(t, nil)
	waitFor(t, 15*time.Second, "c serves linearizable reads after restart", func(ctx context.Context) error {
		resp, err := c.e.Client().Get(ctx, "b-back")
		if err != nil {
			return err
		}
		if len(resp.Kvs) != 1 {
			return errors.New("c does not see a write made while it was down")
		}
		return nil
	})
	waitFor(t, 10*time.Second, "three voters after restarts", voters(c.e, 3))
	sc, err := New(ctx, c.e.Client(), "cluster", testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sc.Lookup(ctx, meta.RootIno, "one-down"); err != nil {
		t.Fatalf("c after restart: %v", err)
	}
}

// TestClusterTLS forms a cluster of two members over mutual TLS and checks
// that clients need a certificate from the CA.
func TestClusterTLS(t *testing.T) {
	caPEM, certPEM, keyPEM := testCerts(t)
	etls := &EmbedTLS{CertPEM: certPEM, KeyPEM: keyPEM, CAPEM: caPEM}
	a := newTestMember(t, "a", etls)
	b := newTestMember(t, "b", etls)
	a.start(t, nil)
	b.join(t, a.e)
	waitFor(t, 10*time.Second, "two voters", voters(a.e, 2))

	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	cli, err := DialExternal(ctx, []string{b.cfg.ClientURL}, &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13}, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if _, err := cli.Put(ctx, "tls", "v"); err != nil {
		t.Fatal(err)
	}

	nctx, ncancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer ncancel()
	if cli, err := DialExternal(nctx, []string{a.cfg.ClientURL}, &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13}, testLog(t)); err == nil {
		cli.Close()
		t.Fatal("a client without a certificate was let in")
	}
}

// testCerts returns a CA and a certificate for 127.0.0.1 it signed, valid
// for server and client authentication, all as PEM.
func testCerts(t *testing.T) (caPEM, certPEM, keyPEM []byte) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "node"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses:  []net.IP{netip.MustParseAddr("127.0.0.1").AsSlice()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
}

func TestVoterTarget(t *testing.T) {
	for n, want := range map[int]int{0: 1, 1: 1, 2: 1, 3: 3, 4: 3, 5: 5, 6: 5, 100: 5} {
		if got := VoterTarget(n); got != want {
			t.Errorf("VoterTarget(%d) = %d, want %d", n, got, want)
		}
	}
}

func TestCheckPromotion(t *testing.T) {
	for _, tc := range []struct {
		voters, otherLearners int
		ok                    bool
	}{
		{1, 0, true},  // 2: the only way from 1 to 3
		{2, 0, true},  // 3
		{3, 0, false}, // 4 and nothing to follow
		{3, 1, true},  // 4 on the way to 5
		{4, 0, true},  // 5
		{5, 0, false}, // 6
		{5, 1, false},
	} {
		err := checkPromotion(tc.voters, tc.otherLearners)
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrVoterLayout)) {
			t.Errorf("checkPromotion(%d, %d) = %v, want ok=%v", tc.voters, tc.otherLearners, err, tc.ok)
		}
	}
}

func TestEmbedConfigValidateCluster(t *testing.T) {
	pems := &EmbedTLS{CertPEM: []byte("c"), KeyPEM: []byte("k"), CAPEM: []byte("a")}
	join := &JoinSpec{InitialCluster: "a=http://10.0.0.1:2380,b=http://10.0.0.2:2380"}
	for _, tc := range []struct {
		cfg EmbedConfig
		ok  bool
	}{
		{EmbedConfig{Dir: "/x", Name: "b", PeerURL: "http://10.0.0.2:2380", Join: join}, true},
		{EmbedConfig{Dir: "/x", Name: "c", PeerURL: "http://10.0.0.3:2380", Join: join}, false}, // not listed
		{EmbedConfig{Dir: "/x", Name: "b", Join: join}, false},                                  // port 0
		{EmbedConfig{Dir: "/x", Name: "b", PeerURL: "http://10.0.0.2:2380", Join: &JoinSpec{InitialCluster: "garbage"}}, false},
		{EmbedConfig{Dir: "/x", TLS: pems}, true}, // https and unixs defaults
		{EmbedConfig{Dir: "/x", TLS: pems, PeerURL: "http://10.0.0.1:2380"}, false},
		{EmbedConfig{Dir: "/x", TLS: pems, ClientURL: "http://10.0.0.1:2379"}, false},
		{EmbedConfig{Dir: "/x", TLS: pems, ClientURL: "https://10.0.0.1:2379", PeerURL: "https://10.0.0.1:2380"}, true},
		{EmbedConfig{Dir: "/x", PeerURL: "https://10.0.0.1:2380"}, false},
		{EmbedConfig{Dir: "/x", TLS: &EmbedTLS{CertFile: "c", KeyFile: "k"}}, false},
		{EmbedConfig{Dir: "/x", TLS: &EmbedTLS{CertFile: "c", KeyFile: "k", CAFile: "a", CAPEM: []byte("a")}}, false},
		{EmbedConfig{Dir: "/x", TLS: &EmbedTLS{}}, false},
	} {
		if err := tc.cfg.Validate(); (err == nil) != tc.ok {
			t.Errorf("Validate(%+v) = %v, want ok=%v", tc.cfg, err, tc.ok)
		}
	}
}
