package peer_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/wormhole-fs/wormhole/chunker"
	"github.com/wormhole-fs/wormhole/chunker/chunk"
	"github.com/wormhole-fs/wormhole/chunker/peer"
)

var (
	_ peer.Lister = (*chunker.LocalStore)(nil)
	_ peer.Lister = (*peer.Client)(nil)
)

func compareIDs(a, b chunk.ID) int { return bytes.Compare(a[:], b[:]) }

// listAll lists the peer's chunks, sorted.
func listAll(ctx context.Context, c *peer.Client) ([]chunk.ID, error) {
	var ids []chunk.ID
	err := c.List(ctx, func(id chunk.ID) error {
		ids = append(ids, id)
		return nil
	})
	slices.SortFunc(ids, compareIDs)
	return ids, err
}

func TestListLocalStore(t *testing.T) {
	store, _, c, _ := setup(t, peer.ServerOptions{})
	ctx := t.Context()

	ids, err := listAll(ctx, c)
	if err != nil || len(ids) != 0 {
		t.Fatalf("List of an empty store = %v, %v", ids, err)
	}

	var want []chunk.ID
	for i := range 30 {
		id := chunk.NewID()
		if _, err := c.Put(ctx, id, pattern(100, byte(i))); err != nil {
			t.Fatal(err)
		}
		want = append(want, id)
	}
	if err := c.Delete(ctx, want[7]); err != nil {
		t.Fatal(err)
	}
	want = slices.Delete(want, 7, 8)
	slices.SortFunc(want, compareIDs)
	ids, err = listAll(ctx, c)
	if err != nil || !slices.Equal(ids, want) {
		t.Fatalf("List = %d chunks, %v; want the %d stored", len(ids), err, len(want))
	}
	// The local view agrees.
	var local []chunk.ID
	if err := store.List(ctx, func(id chunk.ID) error { local = append(local, id); return nil }); err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(local, compareIDs)
	if !slices.Equal(local, want) {
		t.Fatalf("LocalStore.List = %d chunks, want %d", len(local), len(want))
	}
}

// listStore is a store whose List reports ids, then fails with err (if
// not nil) or, if block, waits for its context to end.
type listStore struct {
	failingStore
	ids   []chunk.ID
	err   error
	block bool
	ended chan error // receives List's result, if not nil
}

func (s *listStore) List(ctx context.Context, fn func(chunk.ID) error) (err error) {
	if s.ended != nil {
		defer func() { s.ended <- err }()
	}
	for _, id := range s.ids {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := fn(id); err != nil {
			return err
		}
	}
	if s.block {
		<-ctx.Done()
		return ctx.Err()
	}
	return s.err
}

func randomIDs(n int) []chunk.ID {
	ids := make([]chunk.ID, n)
	for i := range ids {
		ids[i] = chunk.NewID()
	}
	return ids
}

func TestListLong(t *testing.T) {
	ca := newCA(t, "cluster")
	// Several server batches, and a zero ID the server must not send.
	ids := randomIDs(3*4096 + 17)
	store := &listStore{failingStore: failingStore{errors.New("unused")}, ids: append(slices.Clone(ids), chunk.ID{})}
	n := startNode(t, store, ca.serverTLS(t), peer.ServerOptions{}, nil)
	c := newClient(t, n.addr, ca.clientTLS(t), peer.ClientOptions{})
	got, err := listAll(t.Context(), c)
	slices.SortFunc(ids, compareIDs)
	if err != nil || !slices.Equal(got, ids) {
		t.Fatalf("List = %d chunks, %v; want the %d listed", len(got), err, len(ids))
	}
}

func TestListUnsupported(t *testing.T) {
	ca := newCA(t, "cluster")
	n := startNode(t, failingStore{errors.New("unused")}, ca.serverTLS(t), peer.ServerOptions{}, nil)
	c := newClient(t, n.addr, ca.clientTLS(t), peer.ClientOptions{})
	err := c.List(t.Context(), func(chunk.ID) error { t.Fatal("fn called"); return nil })
	se, ok := errors.AsType[*peer.StatusError](err)
	if !ok || se.Status != http.StatusNotImplemented || !errors.Is(err, errors.ErrUnsupported) || peer.IsRetryable(err) {
		t.Fatalf("List from a store that cannot list: %v, want a permanent 501 wrapping errors.ErrUnsupported", err)
	}
	if !strings.Contains(err.Error(), "list chunks") || strings.Contains(err.Error(), "0000000000") {
		t.Errorf("error %q should name the list, not a zero chunk ID", err)
	}
}

func TestListMethodNotAllowed(t *testing.T) {
	_, n, _, ca := setup(t, peer.ServerOptions{})
	for _, m := range []string{http.MethodPost, http.MethodPut, http.MethodDelete} {
		if status, msg := rawRequest(t, ca, m, "https://"+n.addr+"/v1/chunks", nil, nil); status != http.StatusMethodNotAllowed {
			t.Errorf("%s /v1/chunks: %d (%s), want 405", m, status, msg)
		}
	}
}

func TestListWithoutValidCertificateRefused(t *testing.T) {
	_, n, _, ca := setup(t, peer.ServerOptions{})
	c := newClient(t, n.addr, &tls.Config{RootCAs: ca.pool, MinVersion: tls.VersionTLS13}, peer.ClientOptions{})
	if err := c.List(t.Context(), func(chunk.ID) error { return nil }); err == nil {
		t.Fatal("List without a client certificate succeeded")
	}
}

func TestListFnErrorStops(t *testing.T) {
	ca := newCA(t, "cluster")
	store := &listStore{failingStore: failingStore{errors.New("unused")}, ids: randomIDs(10000), ended: make(chan error, 1)}
	n := startNode(t, store, ca.serverTLS(t), peer.ServerOptions{}, nil)
	c := newClient(t, n.addr, ca.clientTLS(t), peer.ClientOptions{})
	stop := errors.New("enough")
	calls := 0
	err := c.List(t.Context(), func(chunk.ID) error {
		calls++
		if calls == 10 {
			return stop
		}
		return nil
	})
	if err != stop || calls != 10 { //nolint:errorlint // fn's error comes back unchanged
		t.Fatalf("List = %v after %d calls, want fn's error after 10", err, calls)
	}
	_ = c.Close()
	// The server finishes (sends everything into its buffers) or
	// notices the client left; either way its List returns.
	select {
	case <-store.ended:
	case <-time.After(10 * time.Second):
		t.Fatal("server still listing after the client stopped")
	}
}

func TestListCancelled(t *testing.T) {
	ca := newCA(t, "cluster")
	store := &listStore{failingStore: failingStore{errors.New("unused")}, ids: randomIDs(5000), block: true, ended: make(chan error, 1)}
	n := startNode(t, store, ca.serverTLS(t), peer.ServerOptions{}, nil)
	c := newClient(t, n.addr, ca.clientTLS(t), peer.ClientOptions{})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	calls := 0
	err := c.List(ctx, func(chunk.ID) error {
		if calls++; calls == 4096 {
			cancel()
		}
		return nil
	})
	if !errors.Is(err, context.Canceled) || peer.IsRetryable(err) {
		t.Fatalf("cancelled List = %v, want context.Canceled, not retryable", err)
	}
	select {
	case <-store.ended:
		// The store blocks until its context ends or a send fails, so
		// ending at all means the server stopped. It learns of the
		// cancellation either from its request context or from the failed
		// send of the batch the client was reading when it gave up; which
		// comes first is a race, so the error itself is not checked.
	case <-time.After(10 * time.Second):
		t.Fatal("server still listing after the client cancelled")
	}
}

func TestListStalledPeer(t *testing.T) {
	ca := newCA(t, "cluster")
	// One batch arrives, then nothing.
	store := &listStore{failingStore: failingStore{errors.New("unused")}, ids: randomIDs(4096), block: true, ended: make(chan error, 1)}
	n := startNode(t, store, ca.serverTLS(t), peer.ServerOptions{}, nil)
	c := newClient(t, n.addr, ca.clientTLS(t), peer.ClientOptions{Timeout: time.Second})
	calls := 0
	err := c.List(t.Context(), func(chunk.ID) error { calls++; return nil })
	if !errors.Is(err, context.DeadlineExceeded) || !peer.IsRetryable(err) || calls != 4096 {
		t.Fatalf("List from a stalled peer = %v (retryable %v) after %d IDs, want a retryable deadline error after 4096",
			err, peer.IsRetryable(err), calls)
	}
	if _, ok := errors.AsType[*peer.TransportError](err); !ok || !strings.Contains(err.Error(), n.addr) {
		t.Errorf("error %q: want a TransportError naming the peer", err)
	}
	<-store.ended
}

func TestListSlowButSteadyPeer(t *testing.T) {
	ca := newCA(t, "cluster")
	ids := randomIDs(6 * 4096)
	store := &slowListStore{ids: ids, pause: 250 * time.Millisecond}
	n := startNode(t, store, ca.serverTLS(t), peer.ServerOptions{}, nil)
	// The whole list takes longer than Timeout; each wait does not.
	c := newClient(t, n.addr, ca.clientTLS(t), peer.ClientOptions{Timeout: time.Second})
	start := time.Now()
	got, err := listAll(t.Context(), c)
	if err != nil || len(got) != len(ids) {
		t.Fatalf("List = %d IDs, %v after %v; want %d", len(got), err, time.Since(start), len(ids))
	}
}

// slowListStore lists ids, pausing after each 4096.
type slowListStore struct {
	failingStore
	ids   []chunk.ID
	pause time.Duration
}

func (s *slowListStore) List(ctx context.Context, fn func(chunk.ID) error) error {
	for i, id := range s.ids {
		if i > 0 && i%4096 == 0 {
			select {
			case <-time.After(s.pause):
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		if err := fn(id); err != nil {
			return err
		}
	}
	return nil
}

func TestListServerFailure(t *testing.T) {
	ca := newCA(t, "cluster")
	disk := errors.New("disk on fire")
	t.Run("before the first batch", func(t *testing.T) {
		store := &listStore{failingStore: failingStore{disk}, ids: randomIDs(10), err: disk}
		n := startNode(t, store, ca.serverTLS(t), peer.ServerOptions{}, nil)
		c := newClient(t, n.addr, ca.clientTLS(t), peer.ClientOptions{})
		err := c.List(t.Context(), func(chunk.ID) error { t.Fatal("fn called"); return nil })
		se, ok := errors.AsType[*peer.StatusError](err)
		if !ok || se.Status != http.StatusInternalServerError || !peer.IsRetryable(err) {
			t.Fatalf("List = %v, want a retryable 500", err)
		}
	})
	t.Run("midway", func(t *testing.T) {
		store := &listStore{failingStore: failingStore{disk}, ids: randomIDs(5000), err: disk}
		n := startNode(t, store, ca.serverTLS(t), peer.ServerOptions{}, nil)
		c := newClient(t, n.addr, ca.clientTLS(t), peer.ClientOptions{})
		calls := 0
		err := c.List(t.Context(), func(chunk.ID) error { calls++; return nil })
		if !errors.Is(err, io.ErrUnexpectedEOF) || !peer.IsRetryable(err) || calls != 4096 {
			t.Fatalf("List cut short = %v (retryable %v) after %d IDs, want a retryable truncation after 4096",
				err, peer.IsRetryable(err), calls)
		}
	})
}

// listBody encodes ids and an end record counting count.
func listBody(ids []chunk.ID, count uint64) []byte {
	var b []byte
	for _, id := range ids {
		b = append(b, id[:]...)
	}
	b = append(b, make([]byte, chunk.IDSize)...)
	return binary.LittleEndian.AppendUint64(b, count)
}

// TestListMalformed checks that the client accepts a list only with its
// end record and the right count.
func TestListMalformed(t *testing.T) {
	ca := newCA(t, "cluster")
	ids := randomIDs(3)
	good := listBody(ids, 3)
	for _, tt := range []struct {
		name string
		body []byte
		want error // nil: success
	}{
		{"good", good, nil},
		{"empty list", listBody(nil, 0), nil},
		{"empty body", nil, io.ErrUnexpectedEOF},
		{"no end record", good[:3*chunk.IDSize], io.ErrUnexpectedEOF},
		{"half an ID", good[:chunk.IDSize+5], io.ErrUnexpectedEOF},
		{"end record without count", good[:4*chunk.IDSize], io.ErrUnexpectedEOF},
		{"short count", good[:len(good)-1], io.ErrUnexpectedEOF},
		{"wrong count", listBody(ids, 4), peer.ErrProtocol},
		{"data after the end", append(slices.Clone(good), 0), peer.ErrProtocol},
	} {
		t.Run(tt.name, func(t *testing.T) {
			addr := lyingServer(t, ca, http.StatusOK, tt.body, "")
			c := newClient(t, addr, ca.clientTLS(t), peer.ClientOptions{})
			got, err := listAll(t.Context(), c)
			if tt.want == nil {
				want := slices.SortedFunc(slices.Values(ids), compareIDs)
				if len(tt.body) == len(listBody(nil, 0)) {
					want = nil
				}
				if err != nil || !slices.Equal(got, want) {
					t.Fatalf("List = %v, %v; want %v", got, err, want)
				}
				return
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("List = %v, want %v", err, tt.want)
			}
		})
	}
}

// TestListFromOldPeer checks how a peer that predates the list request
// (it answers 400 for the unknown path) is reported.
func TestListFromOldPeer(t *testing.T) {
	ca := newCA(t, "cluster")
	addr := lyingServer(t, ca, http.StatusBadRequest, []byte(`unknown path "/v1/chunks"`), "")
	c := newClient(t, addr, ca.clientTLS(t), peer.ClientOptions{})
	err := c.List(t.Context(), func(chunk.ID) error { return nil })
	if !errors.Is(err, peer.ErrBadRequest) || peer.IsRetryable(err) {
		t.Fatalf("List from an old peer = %v, want a permanent ErrBadRequest", err)
	}
}

// TestListOutlastsRequestTimeout checks that a list that takes longer than
// the server's RequestTimeout, but sends a batch within each, completes,
// over HTTP/2 (the Client) and HTTP/1.1.
func TestListOutlastsRequestTimeout(t *testing.T) {
	ca := newCA(t, "cluster")
	ids := randomIDs(6 * 4096)
	store := &slowListStore{ids: ids, pause: 250 * time.Millisecond}
	n := startNode(t, store, ca.serverTLS(t), peer.ServerOptions{RequestTimeout: time.Second}, nil)

	c := newClient(t, n.addr, ca.clientTLS(t), peer.ClientOptions{})
	if got, err := listAll(t.Context(), c); err != nil || len(got) != len(ids) {
		t.Fatalf("HTTP/2: List = %d IDs, %v; want %d", len(got), err, len(ids))
	}

	tr := &http.Transport{TLSClientConfig: ca.clientTLS(t), TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{}}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, "https://"+n.addr+"/v1/chunks", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	if resp.ProtoMajor != 1 || err != nil || len(body) != 16*len(ids)+24 {
		t.Fatalf("HTTP/%d.%d: %d bytes, %v; want %d", resp.ProtoMajor, resp.ProtoMinor, len(body), err, 16*len(ids)+24)
	}
	if want := listBody(nil, uint64(len(ids))); !bytes.Equal(body[len(body)-24:], want) {
		t.Fatalf("HTTP/1.1: end record %x, want %x", body[len(body)-24:], want)
	}
}
