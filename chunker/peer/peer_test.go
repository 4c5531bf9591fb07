package peer_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/zeebo/blake3"
	"go.uber.org/goleak"

	"github.com/wormhole-fs/wormhole/chunker"
	"github.com/wormhole-fs/wormhole/chunker/chunk"
	"github.com/wormhole-fs/wormhole/chunker/peer"
)

var (
	_ chunker.Blobs = (*peer.Client)(nil)
	_ peer.Store    = (*chunker.LocalStore)(nil)
)

func testLogger(t testing.TB) zerolog.Logger {
	return zerolog.New(zerolog.NewTestWriter(t))
}

func openStore(t *testing.T) *chunker.LocalStore {
	t.Helper()
	s, err := chunker.OpenLocal(filepath.Join(t.TempDir(), "chunks"), testLogger(t))
	if err != nil {
		t.Fatalf("OpenLocal: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// node is a running peer server.
type node struct {
	addr   string
	server *peer.Server
	cancel context.CancelFunc
	done   chan error // Serve's result
	accept *atomic.Int64
}

// stop cancels Serve and returns its result.
func (n *node) stop(t *testing.T) error {
	t.Helper()
	n.cancel()
	return <-n.done
}

// startNode serves store on 127.0.0.1:0 with conf; the server is stopped,
// and must stop cleanly, at the end of the test. hook, if not nil, runs
// when shutdown begins.
func startNode(t *testing.T, store peer.Store, conf *tls.Config, opts peer.ServerOptions, hook func()) *node {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	n := &node{
		addr:   l.Addr().String(),
		server: peer.NewServer(store, testLogger(t), opts),
		done:   make(chan error, 1),
		accept: new(atomic.Int64),
	}
	if hook != nil {
		peer.SetShutdownHook(n.server, hook)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n.cancel = cancel
	go func() { n.done <- n.server.Serve(ctx, countingListener{l, n.accept}, conf) }()
	var once sync.Once
	t.Cleanup(func() {
		once.Do(func() {
			if err := n.stop(t); err != nil {
				t.Errorf("Serve: %v", err)
			}
		})
	})
	return n
}

// countingListener counts accepted connections.
type countingListener struct {
	net.Listener
	n *atomic.Int64
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

func newClient(t *testing.T, addr string, conf *tls.Config, opts peer.ClientOptions) *peer.Client {
	t.Helper()
	c := peer.NewClient(addr, conf, opts)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// setup starts a node over a fresh LocalStore and returns it with a client
// holding a valid certificate.
func setup(t *testing.T, opts peer.ServerOptions) (*chunker.LocalStore, *node, *peer.Client, *testCA) {
	t.Helper()
	ca := newCA(t, "cluster")
	store := openStore(t)
	n := startNode(t, store, ca.serverTLS(t), opts, nil)
	return store, n, newClient(t, n.addr, ca.clientTLS(t), peer.ClientOptions{}), ca
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7) + seed
	}
	return b
}

func TestMaxChunkMatchesChunker(t *testing.T) {
	if peer.DefaultMaxChunk != chunker.MaxChunkSize {
		t.Fatalf("peer.DefaultMaxChunk = %d, chunker.MaxChunkSize = %d", peer.DefaultMaxChunk, chunker.MaxChunkSize)
	}
}

func TestRoundTrip(t *testing.T) {
	store, _, c, _ := setup(t, peer.ServerOptions{})
	ctx := t.Context()
	for _, size := range []int{0, 1, 4096, 1<<20 + 3} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			id := chunk.NewID()
			data := pattern(size, byte(size))
			sum, err := c.Put(ctx, id, data)
			if err != nil {
				t.Fatalf("Put: %v", err)
			}
			if want := chunk.Sum(blake3.Sum256(data)); sum != want {
				t.Fatalf("Put sum = %x, want %x", sum, want)
			}
			local, err := store.Get(ctx, id)
			if err != nil || !bytes.Equal(local, data) {
				t.Fatalf("server store has %d bytes, err %v; want the %d bytes put", len(local), err, len(data))
			}
			got, err := c.Get(ctx, id)
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("Get = %d bytes, %v; want the %d bytes put", len(got), err, len(data))
			}
			if ok, err := c.Has(ctx, id); !ok || err != nil {
				t.Fatalf("Has = %v, %v; want true", ok, err)
			}
			for range 2 { // idempotent
				if err := c.Delete(ctx, id); err != nil {
					t.Fatalf("Delete: %v", err)
				}
			}
			if ok, err := c.Has(ctx, id); ok || err != nil {
				t.Fatalf("Has after Delete = %v, %v; want false", ok, err)
			}
			if _, err := store.Get(ctx, id); !errors.Is(err, chunk.ErrNotFound) {
				t.Fatalf("server store Get after Delete: %v, want ErrNotFound", err)
			}
		})
	}
}

func TestMissing(t *testing.T) {
	_, _, c, _ := setup(t, peer.ServerOptions{})
	_, err := c.Get(t.Context(), chunk.NewID())
	if !errors.Is(err, chunk.ErrNotFound) {
		t.Fatalf("Get of a missing chunk: %v, want ErrNotFound", err)
	}
	if se, ok := errors.AsType[*peer.StatusError](err); !ok || se.Status != http.StatusNotFound {
		t.Fatalf("Get of a missing chunk: %#v, want a 404 StatusError", err)
	}
	if peer.IsRetryable(err) {
		t.Errorf("IsRetryable(%v) = true", err)
	}
}

// corruptNearEnd flips a bit of the last data block of chunk id's file in
// store.
func corruptNearEnd(t *testing.T, store *chunker.LocalStore, id chunk.ID) {
	t.Helper()
	path := store.Path(id)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)-10] ^= 0x40
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestCorruptCopyOnServer(t *testing.T) {
	store, _, c, _ := setup(t, peer.ServerOptions{})
	ctx := t.Context()
	id := chunk.NewID()
	if _, err := c.Put(ctx, id, pattern(1000, 1)); err != nil {
		t.Fatal(err)
	}
	corruptNearEnd(t, store, id)

	data, err := c.Get(ctx, id)
	if !errors.Is(err, chunk.ErrCorrupt) || data != nil {
		t.Fatalf("Get of a corrupt copy = %d bytes, %v; want no data and ErrCorrupt", len(data), err)
	}
	if peer.IsRetryable(err) {
		t.Errorf("IsRetryable(%v) = true", err)
	}
	if ok, err := c.Has(ctx, id); ok || !errors.Is(err, chunk.ErrCorrupt) {
		t.Fatalf("Has of a corrupt copy = %v, %v; want ErrCorrupt", ok, err)
	}
	// A fresh Put repairs it.
	if _, err := c.Put(ctx, id, pattern(1000, 1)); err != nil {
		t.Fatal(err)
	}
	if got, err := c.Get(ctx, id); err != nil || !bytes.Equal(got, pattern(1000, 1)) {
		t.Fatalf("Get after repair: %v", err)
	}
}

// rawRequest sends a request to the node outside the Client.
func rawRequest(t *testing.T, ca *testCA, method, url string, body io.Reader, hdr map[string]string) (int, string) {
	t.Helper()
	tr := &http.Transport{TLSClientConfig: ca.clientTLS(t), ForceAttemptHTTP2: true}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(t.Context(), method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer func() { _ = resp.Body.Close() }()
	msg, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(msg)
}

func TestPutSumMismatchStoresNothing(t *testing.T) {
	store, n, _, ca := setup(t, peer.ServerOptions{})
	data := pattern(5000, 3)
	other := blake3.Sum256([]byte("something else"))
	good := blake3.Sum256(data)
	tests := []struct {
		name string
		sum  string
		want int
	}{
		{"wrong sum", hex.EncodeToString(other[:]), http.StatusUnprocessableEntity},
		{"missing sum", "", http.StatusBadRequest},
		{"malformed sum", "xyz", http.StatusBadRequest},
		{"short sum", hex.EncodeToString(good[:31]), http.StatusBadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := chunk.NewID()
			hdr := map[string]string{}
			if tt.sum != "" {
				hdr[peer.SumHeader] = tt.sum
			}
			status, msg := rawRequest(t, ca, http.MethodPut, "https://"+n.addr+"/v1/chunks/"+id.String(), bytes.NewReader(data), hdr)
			if status != tt.want {
				t.Fatalf("status %d (%s), want %d", status, msg, tt.want)
			}
			if _, err := store.Get(t.Context(), id); !errors.Is(err, chunk.ErrNotFound) {
				t.Fatalf("store after refused PUT: %v, want ErrNotFound", err)
			}
		})
	}
}

func TestBadRequests(t *testing.T) {
	_, n, _, ca := setup(t, peer.ServerOptions{})
	base := "https://" + n.addr
	id := chunk.NewID().String()
	for _, tt := range []struct {
		method, path string
		want         int
	}{
		{http.MethodGet, "/v1/chunks/nothex", http.StatusBadRequest},
		{http.MethodGet, "/v1/chunks/" + id[:30], http.StatusBadRequest},
		{http.MethodGet, "/v2/chunks/" + id, http.StatusBadRequest},
		{http.MethodPost, "/v1/chunks/" + id, http.StatusMethodNotAllowed},
		{http.MethodGet, "/v1/chunks/" + id, http.StatusNotFound},
	} {
		if status, msg := rawRequest(t, ca, tt.method, base+tt.path, nil, nil); status != tt.want {
			t.Errorf("%s %s: %d (%s), want %d", tt.method, tt.path, status, msg, tt.want)
		}
	}
}

func TestOversizeRefused(t *testing.T) {
	store, n, c, ca := setup(t, peer.ServerOptions{MaxChunk: 1024})
	ctx := t.Context()
	if _, err := c.Put(ctx, chunk.NewID(), pattern(1024, 0)); err != nil {
		t.Fatalf("Put of MaxChunk bytes: %v", err)
	}
	id := chunk.NewID()
	_, err := c.Put(ctx, id, pattern(1025, 0))
	if !errors.Is(err, peer.ErrTooLarge) || peer.IsRetryable(err) {
		t.Fatalf("Put over MaxChunk: %v (retryable %v), want ErrTooLarge, not retryable", err, peer.IsRetryable(err))
	}
	// Without a Content-Length the limit applies while reading.
	data := pattern(4096, 0)
	sum := blake3.Sum256(data)
	status, msg := rawRequest(t, ca, http.MethodPut, "https://"+n.addr+"/v1/chunks/"+id.String(),
		io.MultiReader(bytes.NewReader(data)), map[string]string{peer.SumHeader: hex.EncodeToString(sum[:])})
	if status != http.StatusRequestEntityTooLarge {
		t.Fatalf("streamed oversize PUT: %d (%s), want 413", status, msg)
	}
	if _, err := store.Get(ctx, id); !errors.Is(err, chunk.ErrNotFound) {
		t.Fatalf("store after oversize PUT: %v, want ErrNotFound", err)
	}
}

func TestClientWithoutValidCertificateRefused(t *testing.T) {
	store, n, _, ca := setup(t, peer.ServerOptions{})
	other := newCA(t, "intruder")
	for _, tt := range []struct {
		name string
		conf *tls.Config
	}{
		{"no certificate", &tls.Config{RootCAs: ca.pool, MinVersion: tls.VersionTLS13}},
		{"certificate of another CA", &tls.Config{RootCAs: ca.pool, Certificates: []tls.Certificate{other.issue(t, "x")}, MinVersion: tls.VersionTLS13}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := newClient(t, n.addr, tt.conf, peer.ClientOptions{})
			id := chunk.NewID()
			if _, err := c.Put(t.Context(), id, pattern(100, 0)); err == nil {
				t.Fatal("Put without a valid client certificate succeeded")
			} else {
				t.Logf("Put: %v (retryable %v)", err, peer.IsRetryable(err))
			}
			if _, err := c.Get(t.Context(), id); err == nil || errors.Is(err, chunk.ErrNotFound) {
				t.Fatalf("Get without a valid client certificate: %v, want a TLS failure", err)
			}
			if _, err := store.Get(t.Context(), id); !errors.Is(err, chunk.ErrNotFound) {
				t.Fatalf("store after refused client: %v, want ErrNotFound", err)
			}
		})
	}
	// The client side refuses a server it does not trust.
	c := newClient(t, n.addr, other.clientTLS(t), peer.ClientOptions{})
	_, err := c.Get(t.Context(), chunk.NewID())
	if err == nil || peer.IsRetryable(err) {
		t.Fatalf("Get from an untrusted server: %v (retryable %v), want a permanent error", err, peer.IsRetryable(err))
	}
}

// blockingStore blocks Put and Get until release is closed.
type blockingStore struct {
	peer.Store
	entered  chan struct{} // receives once per blocked call
	release  chan struct{}
	returned atomic.Int64 // calls that returned
}

func newBlockingStore(inner peer.Store) *blockingStore {
	return &blockingStore{Store: inner, entered: make(chan struct{}, 16), release: make(chan struct{})}
}

func (b *blockingStore) Put(ctx context.Context, id chunk.ID, data []byte) (chunk.Sum, error) {
	b.entered <- struct{}{}
	<-b.release
	defer b.returned.Add(1)
	return b.Store.Put(ctx, id, data)
}

func (b *blockingStore) Get(ctx context.Context, id chunk.ID) ([]byte, error) {
	b.entered <- struct{}{}
	select {
	case <-b.release:
	case <-ctx.Done():
	}
	defer b.returned.Add(1)
	return b.Store.Get(ctx, id)
}

func TestShutdownWaitsForInFlightRequests(t *testing.T) {
	// The server and client goroutines must all be gone at the end.
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())

	ca := newCA(t, "cluster")
	local := openStore(t)
	store := newBlockingStore(local)
	shutdown := make(chan struct{})
	n := startNode(t, store, ca.serverTLS(t), peer.ServerOptions{}, func() { close(shutdown) })
	c := peer.NewClient(n.addr, ca.clientTLS(t), peer.ClientOptions{})
	defer func() { _ = c.Close() }()

	id := chunk.NewID()
	data := pattern(10000, 9)
	putErr := make(chan error, 1)
	go func() {
		_, err := c.Put(context.Background(), id, data)
		putErr <- err
	}()
	<-store.entered // the PUT is in flight
	n.cancel()
	<-shutdown // Serve has closed the listener and is waiting
	select {
	case err := <-n.done:
		t.Fatalf("Serve returned %v with a request in flight", err)
	default:
	}
	close(store.release)
	if err := <-n.done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if store.returned.Load() != 1 {
		t.Fatal("Serve returned before the in-flight Put finished")
	}
	n.done <- nil // for the cleanup's stop
	if err := <-putErr; err != nil {
		t.Fatalf("in-flight Put: %v", err)
	}
	if got, err := local.Get(t.Context(), id); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("in-flight Put not stored: %v", err)
	}
	// The server is gone: a new request fails with a retryable error.
	_, err := c.Get(t.Context(), id)
	if err == nil || !peer.IsRetryable(err) {
		t.Fatalf("Get after shutdown: %v (retryable %v), want a retryable error", err, peer.IsRetryable(err))
	}
	_ = c.Close()
}

func TestClientTimeout(t *testing.T) {
	ca := newCA(t, "cluster")
	store := newBlockingStore(openStore(t))
	n := startNode(t, store, ca.serverTLS(t), peer.ServerOptions{}, nil)
	t.Cleanup(func() { close(store.release) }) // before the server stops
	c := newClient(t, n.addr, ca.clientTLS(t), peer.ClientOptions{Timeout: 100 * time.Millisecond})
	_, err := c.Get(t.Context(), chunk.NewID())
	if !errors.Is(err, context.DeadlineExceeded) || !peer.IsRetryable(err) {
		t.Fatalf("Get from a stuck peer: %v (retryable %v), want a retryable deadline error", err, peer.IsRetryable(err))
	}
	if !strings.Contains(err.Error(), n.addr) {
		t.Errorf("error %q does not name the peer %s", err, n.addr)
	}
}

func TestConnectionReuse(t *testing.T) {
	_, n, c, _ := setup(t, peer.ServerOptions{})
	ctx := t.Context()
	for i := range 20 {
		id := chunk.NewID()
		if _, err := c.Put(ctx, id, pattern(2000, byte(i))); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Get(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if got := n.accept.Load(); got != 1 {
		t.Fatalf("40 sequential requests used %d connections, want 1", got)
	}
}

func TestConcurrent(t *testing.T) {
	store, _, c, _ := setup(t, peer.ServerOptions{MaxConcurrent: 3})
	ctx := t.Context()
	shared := chunk.NewID()
	sharedData := pattern(50000, 42)
	if _, err := c.Put(ctx, shared, sharedData); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8*20)
	for w := range 8 {
		wg.Go(func() {
			for i := range 20 {
				id := chunk.NewID()
				data := pattern(1000+w*100+i, byte(w))
				if _, err := c.Put(ctx, id, data); err != nil {
					errs <- err
					return
				}
				got, err := c.Get(ctx, id)
				if err != nil || !bytes.Equal(got, data) {
					errs <- fmt.Errorf("get own chunk: %v", err)
					return
				}
				// Rewrite and read the shared chunk concurrently.
				if _, err := c.Put(ctx, shared, sharedData); err != nil {
					errs <- err
					return
				}
				if got, err := c.Get(ctx, shared); err != nil || !bytes.Equal(got, sharedData) {
					errs <- fmt.Errorf("get shared chunk: %v", err)
					return
				}
				if i%2 == 0 {
					if err := c.Delete(ctx, id); err != nil {
						errs <- err
						return
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got, err := store.Get(ctx, shared); err != nil || !bytes.Equal(got, sharedData) {
		t.Fatalf("shared chunk after concurrent rewrites: %v", err)
	}
}

// lyingServer answers every request with status and, for GET, body with
// the given sum header.
func lyingServer(t *testing.T, ca *testCA, status int, body []byte, sum string) string {
	t.Helper()
	ts := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		if sum != "" {
			w.Header().Set(peer.SumHeader, sum)
		}
		w.WriteHeader(status)
		_, _ = w.Write(body)
	}))
	ts.TLS = ca.serverTLS(t)
	ts.StartTLS()
	t.Cleanup(ts.Close)
	return ts.Listener.Addr().String()
}

func TestClientVerifiesReceivedData(t *testing.T) {
	ca := newCA(t, "cluster")
	data := pattern(3000, 5)
	good := blake3.Sum256(data)
	bad := blake3.Sum256([]byte("other"))
	for _, tt := range []struct {
		name string
		sum  string
		want error
	}{
		{"sum mismatch", hex.EncodeToString(bad[:]), chunk.ErrCorrupt},
		{"no sum", "", peer.ErrProtocol},
		{"good", hex.EncodeToString(good[:]), nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			addr := lyingServer(t, ca, http.StatusOK, data, tt.sum)
			c := newClient(t, addr, ca.clientTLS(t), peer.ClientOptions{})
			got, err := c.Get(t.Context(), chunk.NewID())
			if tt.want == nil {
				if err != nil || !bytes.Equal(got, data) {
					t.Fatalf("Get = %d bytes, %v", len(got), err)
				}
				return
			}
			if !errors.Is(err, tt.want) || got != nil {
				t.Fatalf("Get = %d bytes, %v; want no data and %v", len(got), err, tt.want)
			}
		})
	}
}

// TestClientErrorMapping checks how every status a peer may answer is
// mapped and classified.
func TestClientErrorMapping(t *testing.T) {
	ca := newCA(t, "cluster")
	for _, tt := range []struct {
		status    int
		want      error
		retryable bool
	}{
		{http.StatusBadRequest, peer.ErrBadRequest, false},
		{http.StatusNotFound, chunk.ErrNotFound, false},
		{http.StatusConflict, chunk.ErrCorrupt, false},
		{http.StatusRequestEntityTooLarge, peer.ErrTooLarge, false},
		{http.StatusUnprocessableEntity, peer.ErrSumMismatch, false},
		{http.StatusInsufficientStorage, chunk.ErrNoSpace, false},
		{http.StatusInternalServerError, nil, true},
		{http.StatusServiceUnavailable, nil, true},
		{http.StatusTooManyRequests, nil, true},
		{http.StatusForbidden, nil, false},
	} {
		t.Run(fmt.Sprint(tt.status), func(t *testing.T) {
			addr := lyingServer(t, ca, tt.status, []byte("peer says no"), "")
			c := newClient(t, addr, ca.clientTLS(t), peer.ClientOptions{})
			_, err := c.Put(t.Context(), chunk.NewID(), []byte("data"))
			se, ok := errors.AsType[*peer.StatusError](err)
			if !ok || se.Status != tt.status || se.Message != "peer says no" || se.Peer != addr {
				t.Fatalf("Put: %#v, want a StatusError %d from %s", err, tt.status, addr)
			}
			if tt.want != nil && !errors.Is(err, tt.want) {
				t.Errorf("Put: %v, want it to wrap %v", err, tt.want)
			}
			if got := peer.IsRetryable(err); got != tt.retryable {
				t.Errorf("IsRetryable(%v) = %v, want %v", err, got, tt.retryable)
			}
		})
	}
}

// TestServerErrorMapping checks the store errors a server maps to status
// codes, through the client.
func TestServerErrorMapping(t *testing.T) {
	ca := newCA(t, "cluster")
	for _, tt := range []struct {
		err       error
		want      error
		retryable bool
	}{
		{fmt.Errorf("disk: %w", chunk.ErrNoSpace), chunk.ErrNoSpace, false},
		{fmt.Errorf("disk: %w", chunk.ErrCorrupt), chunk.ErrCorrupt, false},
		{fmt.Errorf("disk: %w", chunk.ErrNotFound), chunk.ErrNotFound, false},
		{errors.New("disk on fire"), nil, true},
	} {
		t.Run(tt.err.Error(), func(t *testing.T) {
			n := startNode(t, failingStore{tt.err}, ca.serverTLS(t), peer.ServerOptions{}, nil)
			c := newClient(t, n.addr, ca.clientTLS(t), peer.ClientOptions{})
			_, err := c.Put(t.Context(), chunk.NewID(), []byte("x"))
			if tt.want != nil && !errors.Is(err, tt.want) {
				t.Errorf("Put: %v, want it to wrap %v", err, tt.want)
			}
			if err == nil || peer.IsRetryable(err) != tt.retryable {
				t.Errorf("Put: %v, retryable %v, want %v", err, peer.IsRetryable(err), tt.retryable)
			}
		})
	}
}

// failingStore fails every call with err.
type failingStore struct{ err error }

func (f failingStore) Put(context.Context, chunk.ID, []byte) (chunk.Sum, error) {
	return chunk.Sum{}, f.err
}
func (f failingStore) Get(context.Context, chunk.ID) ([]byte, error) { return nil, f.err }
func (f failingStore) Delete(context.Context, chunk.ID) error        { return f.err }

func TestIsRetryable(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"corrupt", fmt.Errorf("x: %w", chunk.ErrCorrupt), false},
		{"cancelled", &peer.TransportError{Err: context.Canceled}, false},
		{"deadline", &peer.TransportError{Err: context.DeadlineExceeded}, true},
		{"refused", &peer.TransportError{Err: &net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}}, true},
		{"reset", fmt.Errorf("x: %w", syscall.ECONNRESET), true},
		{"unexpected EOF", &peer.TransportError{Err: io.ErrUnexpectedEOF}, true},
		{"tls alert", &peer.TransportError{Err: &net.OpError{Op: "remote error", Err: errors.New("tls: certificate required")}}, false},
		{"quic tls alert", &peer.TransportError{Err: tls.AlertError(116)}, false},
		{"bad server certificate", &peer.TransportError{Err: &tls.CertificateVerificationError{Err: x509.UnknownAuthorityError{}}}, false},
		{"protocol", fmt.Errorf("x: %w", peer.ErrProtocol), false},
		{"507", &peer.StatusError{Status: http.StatusInsufficientStorage}, false},
		{"502", &peer.StatusError{Status: http.StatusBadGateway}, true},
		{"409", &peer.StatusError{Status: http.StatusConflict}, false},
	}
	for _, tt := range tests {
		if got := peer.IsRetryable(tt.err); got != tt.want {
			t.Errorf("%s: IsRetryable(%v) = %v, want %v", tt.name, tt.err, got, tt.want)
		}
	}
}

func TestServeWithoutTLSConfig(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := peer.NewServer(openStore(t), testLogger(t), peer.ServerOptions{})
	if err := s.Serve(t.Context(), l, nil); err == nil {
		t.Fatal("Serve without TLS succeeded")
	}
}

// freezer is a TCP proxy to a peer that can stop forwarding, as a peer
// partitioned away or stopped with SIGSTOP does: its connections stay
// open, and nothing comes back on them.
type freezer struct {
	l      net.Listener
	to     string
	frozen atomic.Bool
}

func newFreezer(t *testing.T, to string) *freezer {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &freezer{l: l, to: to}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		_ = l.Close()
		mu.Lock()
		for _, c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", to)
			if err != nil {
				_ = c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, u)
			mu.Unlock()
			wg.Go(func() { f.pipe(u, c) })
			wg.Go(func() { f.pipe(c, u) })
		}
	})
	return f
}

// pipe copies src to dst until either closes; while frozen, what it reads
// is dropped.
func (f *freezer) pipe(dst, src net.Conn) {
	b := make([]byte, 32<<10)
	for {
		n, err := src.Read(b)
		if n > 0 && !f.frozen.Load() {
			if _, werr := dst.Write(b[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// A request on a connection to a peer that stopped answering fails after
// the health check (a ping that gets no answer), not after the request's
// whole timeout, and so does every request after it until a new
// connection is made.
func TestHealthCheckClosesDeadConnection(t *testing.T) {
	ca := newCA(t, "cluster")
	n := startNode(t, openStore(t), ca.serverTLS(t), peer.ServerOptions{}, nil)
	f := newFreezer(t, n.addr)
	const check = 200 * time.Millisecond
	c := newClient(t, f.l.Addr().String(), ca.clientTLS(t), peer.ClientOptions{Timeout: time.Minute, HealthCheck: check})
	id := chunk.NewID()
	if _, err := c.Put(t.Context(), id, pattern(1000, 1)); err != nil {
		t.Fatal(err)
	}
	f.frozen.Store(true)
	start := time.Now()
	_, err := c.Get(t.Context(), id)
	took := time.Since(start)
	if err == nil || !peer.IsRetryable(err) {
		t.Fatalf("Get through a frozen connection: %v (retryable %v), want a retryable error", err, peer.IsRetryable(err))
	}
	// Bound: a ping after check without frames, closed check later;
	// generous for a loaded machine, and far below the minute of Timeout.
	if took > 20*check {
		t.Errorf("Get through a frozen connection failed after %v, want about %v", took, 2*check)
	}
	t.Logf("Get through a frozen connection failed after %v: %v", took, err)
}

// TestPutSummed checks the put that carries the caller's checksum: the
// peer stores data that matches it, and refuses (storing nothing) data
// that does not.
func TestPutSummed(t *testing.T) {
	store, _, c, _ := setup(t, peer.ServerOptions{})
	ctx := t.Context()
	id := chunk.NewID()
	data := pattern(3<<16+5, 7)
	if err := c.PutSummed(ctx, id, data, chunk.Sum(blake3.Sum256(data))); err != nil {
		t.Fatalf("PutSummed: %v", err)
	}
	if got, err := store.Get(ctx, id); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("server store has %d bytes, err %v; want the %d bytes put", len(got), err, len(data))
	}
	bad := chunk.NewID()
	if err := c.PutSummed(ctx, bad, data, chunk.Sum(blake3.Sum256(data[1:]))); !errors.Is(err, peer.ErrSumMismatch) {
		t.Fatalf("PutSummed with a wrong sum: %v, want ErrSumMismatch", err)
	}
	if ok, err := c.Has(ctx, bad); ok || err != nil {
		t.Fatalf("Has after a refused put = %v, %v; want false", ok, err)
	}
}

// wholeStore hides a store's range reads: a peer that can only send whole
// chunks (as one running an older version).
type wholeStore struct{ peer.Store }

// A range GET moves the range alone (206 with those bytes); ReadRange
// gives the bytes of the range, clamped to the chunk, from such a peer and
// from one that sends whole chunks; a corrupt block in the range fails
// the read with ErrCorrupt, as a corrupt whole chunk fails Get.
func TestReadRange(t *testing.T) {
	store, n, c, ca := setup(t, peer.ServerOptions{})
	whole := startNode(t, wholeStore{store}, ca.serverTLS(t), peer.ServerOptions{}, nil)
	cw := newClient(t, whole.addr, ca.clientTLS(t), peer.ClientOptions{})
	ctx := t.Context()
	id := chunk.NewID()
	data := pattern(300<<10, 3)
	if _, err := c.Put(ctx, id, data); err != nil {
		t.Fatal(err)
	}

	status, body := rawRequest(t, ca, http.MethodGet, "https://"+n.addr+"/v1/chunks/"+id.String(), nil,
		map[string]string{"Range": "bytes=1000-1999"})
	if status != http.StatusPartialContent || body != string(data[1000:2000]) {
		t.Errorf("range GET: status %d with %d bytes, want 206 with the 1000 bytes asked for", status, len(body))
	}

	for _, tt := range []struct {
		off, n int
		want   []byte
	}{
		{0, 4096, data[:4096]},
		{65536 - 10, 100, data[65536-10 : 65536+90]},
		{len(data) - 500, 4096, data[len(data)-500:]},
		{len(data) + 10, 100, nil},
	} {
		for name, cl := range map[string]*peer.Client{"range peer": c, "whole-chunk peer": cw} {
			p := make([]byte, tt.n)
			k, err := cl.ReadRange(ctx, id, p, int64(tt.off))
			if err != nil || !bytes.Equal(p[:k], tt.want) {
				t.Errorf("%s: ReadRange of %d bytes at %d: %d bytes, %v; want the chunk's %d", name, tt.n, tt.off, k, err, len(tt.want))
			}
		}
	}

	corruptNearEnd(t, store, id)
	for name, cl := range map[string]*peer.Client{"range peer": c, "whole-chunk peer": cw} {
		if _, err := cl.ReadRange(ctx, id, make([]byte, 100), int64(len(data)-100)); !errors.Is(err, chunk.ErrCorrupt) {
			t.Errorf("%s: ReadRange over a corrupt block: %v, want ErrCorrupt", name, err)
		}
	}
	if _, err := c.ReadRange(ctx, chunk.NewID(), make([]byte, 100), 0); !errors.Is(err, chunk.ErrNotFound) {
		t.Errorf("ReadRange of a missing chunk: %v, want ErrNotFound", err)
	}
}
