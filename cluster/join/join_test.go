package join

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/wormhole-fs/wormhole/cluster/pki"
)

func TestJoin(t *testing.T) {
	ca := newCA(t, "test-cluster")
	tok := newToken(t, ca, time.Hour, time.Now())
	s := startSeed(t, ca, newFakeAdmitter(tok), ServerOptions{})

	req, keyPEM := newRequest(t, "n1")
	resp, err := Join(t.Context(), s.addr, tok, req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.ClusterID != "test-cluster" {
		t.Errorf("ClusterID %q", resp.ClusterID)
	}
	if !bytes.Equal(resp.CACertPEM, ca.CertPEM()) {
		t.Error("CACertPEM is not the CA's certificate")
	}
	// The certificate goes with the node's key, chains to the CA and
	// names the node.
	cert, err := tls.X509KeyPair(resp.NodeCertPEM, keyPEM)
	if err != nil {
		t.Fatalf("node certificate and key: %v", err)
	}
	if len(cert.Certificate) != 2 {
		t.Errorf("chain of %d certificates, want node and CA", len(cert.Certificate))
	}
	leaf := cert.Leaf
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: ca.Roots().Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Errorf("node certificate does not chain to the CA: %v", err)
	}
	if id, err := pki.NodeIDFromCert(leaf, "test-cluster"); err != nil || id != "n1" {
		t.Errorf("node certificate names %q, %v; want n1", id, err)
	}
	if len(leaf.IPAddresses) != 1 || !leaf.IPAddresses[0].Equal(net.IPv4(127, 0, 0, 1)) || len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != "node.example" {
		t.Errorf("certificate hosts %v %v, want the requested ones", leaf.IPAddresses, leaf.DNSNames)
	}
	if !bytes.Equal(resp.Secret, bytes.Repeat([]byte{7}, 32)) || resp.Role != RoleVoter || resp.MemberID != 42 ||
		resp.InitialCluster != "seed=https://127.0.0.1:2380,n1=https://127.0.0.1:2380" ||
		len(resp.EtcdEndpoints) != 1 || len(resp.GossipSeeds) != 1 {
		t.Errorf("admission fields not passed on: %+v", resp)
	}

	// Admit got the request, with the token redacted.
	s.adm.mu.Lock()
	got := s.adm.admitted[0]
	s.adm.mu.Unlock()
	if got.Token != tok.Redacted() {
		t.Errorf("Admit got token %q, want the redacted %q", got.Token, tok.Redacted())
	}
	got.Token = req.Token
	if got.NodeID != req.NodeID || !bytes.Equal(got.PublicKey, req.PublicKey) || got.Advertise != req.Advertise ||
		got.EtcdPeerPort != req.EtcdPeerPort || got.GossipPort != req.GossipPort || got.DataPort != req.DataPort || got.NFSPort != req.NFSPort {
		t.Errorf("Admit got %+v, want %+v", got, req)
	}

	// Tokens are reusable until they expire.
	req2, _ := newRequest(t, "n2")
	if _, err := Join(t.Context(), s.addr, tok, req2); err != nil {
		t.Fatalf("second join with the same token: %v", err)
	}
	checkNoSecret(t, "seed log", s.logs.String(), tok)
	if !strings.Contains(s.logs.String(), "node admitted") {
		t.Errorf("seed log lacks the admission:\n%s", s.logs)
	}
}

func TestJoinOtherRoles(t *testing.T) {
	ca := newCA(t, "c")
	tok := newToken(t, ca, time.Hour, time.Now())
	for _, want := range []Response{
		{Secret: bytes.Repeat([]byte{1}, 40), Role: RoleClient, EtcdEndpoints: []string{"https://10.0.0.1:2379"}},
		{Secret: bytes.Repeat([]byte{1}, 32), Role: RoleExternal},
	} {
		t.Run(want.Role, func(t *testing.T) {
			adm := newFakeAdmitter(tok)
			adm.admit = func(context.Context, Request) (Response, error) { return want, nil }
			s := startSeed(t, ca, adm, ServerOptions{})
			req, _ := newRequest(t, "n1")
			resp, err := Join(t.Context(), s.addr, tok, req)
			if err != nil {
				t.Fatal(err)
			}
			if resp.Role != want.Role || resp.MemberID != 0 || resp.InitialCluster != "" ||
				len(resp.EtcdEndpoints) != len(want.EtcdEndpoints) || !bytes.Equal(resp.Secret, want.Secret) {
				t.Errorf("got %+v, want %+v", resp, want)
			}
		})
	}
}

func TestJoinTokenRefused(t *testing.T) {
	ca := newCA(t, "test-cluster")
	now := time.Now()
	good := newToken(t, ca, time.Hour, now)
	expired := newToken(t, ca, time.Hour, now.Add(-2*time.Hour))
	unknown := newToken(t, ca, time.Hour, now)
	// The right id with another secret.
	parts := strings.Split(good.String(), ".")
	parts[2] = secretOf(unknown)
	wrongSecret, err := pki.ParseToken(strings.Join(parts, "."))
	if err != nil {
		t.Fatal(err)
	}
	s := startSeed(t, ca, newFakeAdmitter(good, expired), ServerOptions{})

	for _, tc := range []struct {
		name   string
		tok    pki.Token
		target error
		says   string
	}{
		{"wrong secret", wrongSecret, pki.ErrTokenInvalid, "not recognized"},
		{"unknown token", unknown, pki.ErrTokenInvalid, "not recognized"},
		{"expired", expired, pki.ErrTokenExpired, "expired"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := newRequest(t, "n1")
			_, err := Join(t.Context(), s.addr, tc.tok, req)
			wantErr(t, err, tc.target, s.addr, tc.says, "ask the cluster for a new token with `wormhole token create` on any node of the cluster")
			checkNoSecret(t, "error", err.Error(), tc.tok)
			checkNoSecret(t, "seed log", s.logs.String(), tc.tok)
		})
	}
	if _, admits := s.adm.counts(); admits != 0 {
		t.Errorf("Admit called %d times for refused tokens", admits)
	}
}

func TestJoinPinMismatch(t *testing.T) {
	ours := newCA(t, "ours")
	tok := newToken(t, ours, time.Hour, time.Now())
	// A node of another cluster answers at the address.
	other := newCA(t, "other")
	s := startSeed(t, other, newFakeAdmitter(newToken(t, other, time.Hour, time.Now())), ServerOptions{})

	req, _ := newRequest(t, "n1")
	_, err := Join(t.Context(), s.addr, tok, req)
	wantErr(t, err, pki.ErrCAPinMismatch, s.addr, "not a node of the cluster")
	if lookups, admits := s.adm.counts(); lookups != 0 || admits != 0 {
		t.Errorf("the other cluster's seed got the request (%d lookups, %d admits)", lookups, admits)
	}
	checkNoSecret(t, "seed log", s.logs.String(), tok)
}

func TestJoinNodeIDTaken(t *testing.T) {
	ca := newCA(t, "c")
	tok := newToken(t, ca, time.Hour, time.Now())
	adm := newFakeAdmitter(tok)
	adm.taken["n1"] = true
	s := startSeed(t, ca, adm, ServerOptions{})

	req, _ := newRequest(t, "n1")
	_, err := Join(t.Context(), s.addr, tok, req)
	wantErr(t, err, ErrNodeIDTaken, s.addr, `"n1"`, "choose another node id")
	if errors.Is(err, ErrSeedFailed) || errors.Is(err, ErrBadRequest) {
		t.Errorf("error %v wraps other sentinels too", err)
	}
}

func TestJoinSeedFailed(t *testing.T) {
	ca := newCA(t, "c")
	tok := newToken(t, ca, time.Hour, time.Now())
	adm := newFakeAdmitter(tok)
	adm.admit = func(context.Context, Request) (Response, error) {
		return Response{}, errors.New("etcd allows at most two learners")
	}
	s := startSeed(t, ca, adm, ServerOptions{})
	req, _ := newRequest(t, "n1")
	_, err := Join(t.Context(), s.addr, tok, req)
	wantErr(t, err, ErrSeedFailed, "etcd allows at most two learners")

	// An admitter's broken answer is caught on the seed.
	adm.mu.Lock()
	adm.admit = func(context.Context, Request) (Response, error) { return Response{Role: RoleVoter}, nil }
	adm.mu.Unlock()
	_, err = Join(t.Context(), s.addr, tok, req)
	wantErr(t, err, ErrSeedFailed, "cluster secret")
}

func TestJoinSeedUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	_, port, _ := net.SplitHostPort(addr)

	ca := newCA(t, "c")
	req, _ := newRequest(t, "n1")
	_, err = Join(t.Context(), addr, newToken(t, ca, time.Hour, time.Now()), req)
	wantErr(t, err, ErrSeedUnreachable, addr, "is up", port+" is its join port")

	_, err = Join(t.Context(), "127.0.0.1", newToken(t, ca, time.Hour, time.Now()), req)
	if err == nil || !strings.Contains(err.Error(), "host:port") {
		t.Errorf("seed without port: %v", err)
	}
}

// TestJoinNotTLS: the address answers, but not with TLS.
func TestJoinNotTLS(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := l.Accept()
		if err != nil {
			return
		}
		_, _ = c.Write([]byte("SSH-2.0-OpenSSH_9.6\r\n"))
		_ = c.Close()
	}()
	defer func() { _ = l.Close(); <-done }()

	ca := newCA(t, "c")
	req, _ := newRequest(t, "n1")
	_, err = Join(t.Context(), l.Addr().String(), newToken(t, ca, time.Hour, time.Now()), req)
	if err == nil || !strings.Contains(err.Error(), "TLS handshake") || !strings.Contains(err.Error(), "join port") {
		t.Errorf("got %v, want a TLS handshake failure naming the join port", err)
	}
}

func TestJoinInvalidRequest(t *testing.T) {
	ca := newCA(t, "c")
	tok := newToken(t, ca, time.Hour, time.Now())
	s := startSeed(t, ca, newFakeAdmitter(tok), ServerOptions{})

	rsaKey, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	rsaPub, err := x509.MarshalPKIXPublicKey(&rsaKey.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		mod    func(*Request)
		says   string
		remote bool // found by the seed, not before dialing
	}{
		{"port 0", func(r *Request) { r.GossipPort = 0 }, "gossip port 0", false},
		{"port too big", func(r *Request) { r.NFSPort = 70000 }, "NFS port 70000", false},
		{"bad key", func(r *Request) { r.PublicKey = []byte("nope") }, "public key", false},
		{"bad host", func(r *Request) { r.Hosts = []string{"a b"} }, `host "a b"`, false},
		{"no advertise", func(r *Request) { r.Advertise = "" }, "advertise", false},
		{"unspecified advertise", func(r *Request) { r.Advertise = "0.0.0.0" }, "advertise", false},
		{"RSA key", func(r *Request) { r.PublicKey = rsaPub }, "unsupported key", true},
		{"empty node id", func(r *Request) { r.NodeID = "" }, "node id", true},
		{"control in node id", func(r *Request) { r.NodeID = "a\nb" }, "node id", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := newRequest(t, "n1")
			tc.mod(&req)
			before, _ := s.adm.counts()
			_, err := Join(t.Context(), s.addr, tok, req)
			wantErr(t, err, ErrBadRequest, tc.says)
			after, _ := s.adm.counts()
			if remote := after > before; remote != tc.remote {
				t.Errorf("seed asked: %v, want %v", remote, tc.remote)
			}
		})
	}
	if _, admits := s.adm.counts(); admits != 0 {
		t.Errorf("Admit called %d times for invalid requests", admits)
	}
}

// TestServerMalformed sends requests Join would not send.
func TestServerMalformed(t *testing.T) {
	ca := newCA(t, "c")
	tok := newToken(t, ca, time.Hour, time.Now())
	s := startSeed(t, ca, newFakeAdmitter(tok), ServerOptions{})
	tr := &http.Transport{TLSClientConfig: pki.JoinClientTLS(tok), DisableKeepAlives: true, Proxy: nil}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}

	good, _ := newRequest(t, "n1")
	good.Token = tok.String()
	goodJSON, err := json.Marshal(good)
	if err != nil {
		t.Fatal(err)
	}
	badPort := good
	badPort.DataPort = -1
	badPortJSON, _ := json.Marshal(badPort)
	badTok := good
	badTok.Token = "whj1.nope"
	badTokJSON, _ := json.Marshal(badTok)

	for _, tc := range []struct {
		name, method, path string
		body               []byte
		status             int
		code               string
	}{
		{"not JSON", "POST", Path, []byte("{not json"), 400, codeBadRequest},
		{"empty", "POST", Path, nil, 400, codeBadRequest},
		{"trailing data", "POST", Path, append(goodJSON, []byte(" {}")...), 400, codeBadRequest},
		{"wrong type", "POST", Path, []byte(`{"node_id": 5}`), 400, codeBadRequest},
		{"too large", "POST", Path, bytes.Repeat([]byte(" "), MaxRequestBytes+1), 413, codeTooLarge},
		{"bad port", "POST", Path, badPortJSON, 400, codeBadRequest},
		{"malformed token", "POST", Path, badTokJSON, 401, codeTokenMalformed},
		{"no token", "POST", Path, []byte(`{}`), 401, codeTokenMalformed},
		{"GET", "GET", Path, nil, 405, codeBadMethod},
		{"other path", "POST", "/v2/join", goodJSON, 404, codeNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hreq, err := http.NewRequestWithContext(t.Context(), tc.method, "https://"+s.addr+tc.path, bytes.NewReader(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			resp, err := client.Do(hreq)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = resp.Body.Close() }()
			body, _ := io.ReadAll(resp.Body)
			var we wireError
			if err := json.Unmarshal(body, &we); err != nil {
				t.Fatalf("error body %q: %v", body, err)
			}
			if resp.StatusCode != tc.status || we.Code != tc.code || we.Message == "" {
				t.Errorf("got %d %+v, want %d %s", resp.StatusCode, we, tc.status, tc.code)
			}
		})
	}
	if _, admits := s.adm.counts(); admits != 0 {
		t.Errorf("Admit called %d times for malformed requests", admits)
	}
}

// TestJoinVerifiesResponse: Join refuses answers that do not fit its
// request, from a seed that does hold the pinned CA.
func TestJoinVerifiesResponse(t *testing.T) {
	ca := newCA(t, "c")
	other := newCA(t, "other")
	tok := newToken(t, ca, time.Hour, time.Now())
	adm := newFakeAdmitter(tok)
	srv := NewServer(ca, adm, zerolog.Nop(), ServerOptions{})

	issue := func(ca *pki.CA, id string) []byte {
		r, _ := newRequest(t, id)
		pub, err := x509.ParsePKIXPublicKey(r.PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		pemData, err := ca.IssueNode(id, nil, pub, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return pemData
	}
	for _, tc := range []struct {
		name   string
		tamper func(*Response)
		target error
	}{
		{"other node id", func(r *Response) { r.NodeCertPEM = issue(ca, "n2") }, ErrBadResponse},
		{"other key", func(r *Response) { r.NodeCertPEM = issue(ca, "n1") }, ErrBadResponse},
		{"other CA's certificate", func(r *Response) { r.NodeCertPEM = issue(other, "n1") }, ErrBadResponse},
		{"no CA in chain", func(r *Response) {
			b, _ := pem.Decode(r.NodeCertPEM)
			r.NodeCertPEM = pem.EncodeToMemory(b)
		}, ErrBadResponse},
		{"other CA", func(r *Response) { r.CACertPEM = other.CertPEM() }, pki.ErrCAPinMismatch},
		{"other cluster id", func(r *Response) { r.ClusterID = "x" }, ErrBadResponse},
		{"unknown role", func(r *Response) { r.Role = "boss" }, ErrBadResponse},
		{"short secret", func(r *Response) { r.Secret = r.Secret[:16] }, ErrBadResponse},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := serveTampered(t, ca, srv, tc.tamper)
			req, _ := newRequest(t, "n1")
			_, err := Join(t.Context(), addr, tok, req)
			wantErr(t, err, tc.target, addr)
		})
	}
}

// serveTampered serves srv's answers, changed by tamper, until the test
// ends.
func serveTampered(t *testing.T, ca *pki.CA, srv *Server, tamper func(*Response)) string {
	t.Helper()
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := httptest.NewRecorder()
		srv.ServeHTTP(rec, r)
		var resp Response
		if rec.Code != 200 || json.Unmarshal(rec.Body.Bytes(), &resp) != nil {
			t.Errorf("seed answered %d %s", rec.Code, rec.Body)
			return
		}
		tamper(&resp)
		_ = json.NewEncoder(w).Encode(resp)
	})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: h, TLSConfig: pki.JoinServerTLS(pki.NewNodeCert(seedCert(t, ca))), ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() { defer close(done); _ = hs.ServeTLS(l, "", "") }()
	t.Cleanup(func() { _ = hs.Close(); <-done })
	return l.Addr().String()
}

// TestServeShutdown: when its context ends, Serve lets the request in
// flight finish, then returns; its goroutines end (TestMain checks).
func TestServeShutdown(t *testing.T) {
	ca := newCA(t, "c")
	tok := newToken(t, ca, time.Hour, time.Now())
	adm := newFakeAdmitter(tok)
	entered, release := make(chan struct{}), make(chan struct{})
	adm.admit = func(ctx context.Context, req Request) (Response, error) {
		close(entered)
		<-release
		if ctx.Err() != nil {
			return Response{}, ctx.Err()
		}
		return Response{Secret: bytes.Repeat([]byte{1}, 32), Role: RoleClient, EtcdEndpoints: []string{"https://127.0.0.1:2379"}}, nil
	}
	s := startSeed(t, ca, adm, ServerOptions{})

	joinErr := make(chan error, 1)
	go func() {
		req, _ := newRequest(t, "n1")
		_, err := Join(context.Background(), s.addr, tok, req)
		joinErr <- err
	}()
	<-entered
	serveErr := make(chan error, 1)
	go func() { serveErr <- s.stop() }()
	select {
	case err := <-serveErr:
		t.Fatalf("Serve returned %v with a request in flight", err)
	default:
	}
	close(release)
	if err := <-joinErr; err != nil {
		t.Errorf("join in flight at shutdown: %v", err)
	}
	if err := <-serveErr; err != nil {
		t.Errorf("Serve: %v", err)
	}
	// The listener is closed.
	req, _ := newRequest(t, "n2")
	_, err := Join(t.Context(), s.addr, tok, req)
	wantErr(t, err, ErrSeedUnreachable)
}

// TestServeShutdownCutsOff: a request still running after ShutdownTimeout
// is cancelled, and Serve waits for its handler and reports it.
func TestServeShutdownCutsOff(t *testing.T) {
	ca := newCA(t, "c")
	tok := newToken(t, ca, time.Hour, time.Now())
	adm := newFakeAdmitter(tok)
	entered, returned := make(chan struct{}), make(chan struct{})
	adm.admit = func(ctx context.Context, req Request) (Response, error) {
		defer close(returned)
		close(entered)
		<-ctx.Done()
		return Response{}, ctx.Err()
	}
	logs := &logBuffer{}
	srv := NewServer(ca, adm, zerolog.New(logs), ServerOptions{ShutdownTimeout: time.Millisecond})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ctx, l, pki.JoinServerTLS(pki.NewNodeCert(seedCert(t, ca)))) }()

	joinErr := make(chan error, 1)
	go func() {
		req, _ := newRequest(t, "n1")
		_, err := Join(context.Background(), l.Addr().String(), tok, req)
		joinErr <- err
	}()
	<-entered
	cancel()
	if err := <-serveErr; err == nil || !strings.Contains(err.Error(), "cut off") {
		t.Errorf("Serve returned %v, want requests cut off", err)
	}
	select {
	case <-returned:
	default:
		t.Error("Serve returned before the handler")
	}
	if err := <-joinErr; err == nil {
		t.Error("join cut off at shutdown succeeded")
	}
}

func TestServeNoTLS(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(newCA(t, "c"), newFakeAdmitter(), zerolog.Nop(), ServerOptions{})
	if err := srv.Serve(t.Context(), l, nil); err == nil {
		t.Error("Serve without TLS configuration succeeded")
	}
	if _, err := l.Accept(); err == nil {
		t.Error("listener not closed")
	}
}

// TestCodesRoundTrip: every error the seed maps to a code comes back as
// the same sentinel on the joining side.
func TestCodesRoundTrip(t *testing.T) {
	for _, sentinel := range []error{
		pki.ErrTokenMalformed, pki.ErrTokenInvalid, pki.ErrTokenExpired,
		ErrNodeIDTaken, ErrBadRequest, ErrSeedFailed,
	} {
		err := fmt.Errorf("context: %w", sentinel)
		status, code := codeOf(err)
		back := newRemoteError(status, wireError{code, err.Error()})
		if !errors.Is(back, sentinel) {
			t.Errorf("%v → %d %s → %v", sentinel, status, code, back)
		}
		// Without a code, the status alone says as much.
		if back := newRemoteError(status, wireError{}); !errors.Is(back, sentinel) &&
			!(errors.Is(sentinel, pki.ErrTokenMalformed) || errors.Is(sentinel, pki.ErrTokenExpired)) {
			t.Errorf("%v → %d → %v", sentinel, status, back)
		}
	}
	if status, code := codeOf(context.DeadlineExceeded); status != 503 || !errors.Is(newRemoteError(status, wireError{code, ""}), ErrSeedFailed) {
		t.Errorf("deadline → %d %s", status, code)
	}
}

func TestCleanMessage(t *testing.T) {
	if got := cleanMessage("a\x1b[31mb\nc"); got != "a [31mb c" {
		t.Errorf("got %q", got)
	}
	if got := cleanMessage(strings.Repeat("x", 5000)); len(got) > 1100 {
		t.Errorf("message of %d bytes not bounded", len(got))
	}
}

// TestServerBusy: with all slots taken, a request waits at most
// RequestTimeout and is told the seed is busy.
func TestServerBusy(t *testing.T) {
	ca := newCA(t, "c")
	tok := newToken(t, ca, time.Hour, time.Now())
	adm := newFakeAdmitter(tok)
	entered, release := make(chan struct{}), make(chan struct{})
	adm.admit = func(ctx context.Context, req Request) (Response, error) {
		close(entered)
		<-release
		return Response{Secret: bytes.Repeat([]byte{1}, 32), Role: RoleClient, EtcdEndpoints: []string{"https://127.0.0.1:2379"}}, nil
	}
	s := startSeed(t, ca, adm, ServerOptions{MaxConcurrent: 1, RequestTimeout: 100 * time.Millisecond})

	firstErr := make(chan error, 1)
	go func() {
		req, _ := newRequest(t, "n1")
		_, err := Join(context.Background(), s.addr, tok, req)
		firstErr <- err
	}()
	<-entered
	req, _ := newRequest(t, "n2")
	_, err := Join(t.Context(), s.addr, tok, req)
	wantErr(t, err, ErrSeedFailed, "busy")
	close(release)
	if err := <-firstErr; err != nil {
		t.Errorf("first join: %v", err)
	}
}
