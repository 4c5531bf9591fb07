package peer

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/zeebo/blake3"

	"github.com/wormhole-fs/wormhole/chunker/chunk"
)

// ErrProtocol means a peer's answer broke the protocol (a missing or
// malformed header, an unexpected status); the data is not used.
var ErrProtocol = errors.New("peer protocol violation")

// ClientOptions tunes a Client. Zero values select the defaults.
type ClientOptions struct {
	// Timeout bounds each request, from sending it to reading the whole
	// response; for List, each wait for more of the list instead.
	// Default 30s.
	Timeout time.Duration
	// MaxChunk is the largest chunk Get accepts. Default DefaultMaxChunk.
	MaxChunk int64
	// MaxIdleConns is how many idle connections to the peer are kept for
	// reuse (HTTP/2 multiplexes requests on one). Default 4.
	MaxIdleConns int
	// HealthCheck is how long a connection may receive nothing before it
	// is pinged, and how long the ping may go unanswered before the
	// connection is closed, failing the requests on it. A peer that
	// stops answering (partitioned away, frozen, its machine gone)
	// leaves an HTTP/2 connection that the kernel still holds open for
	// many minutes; without the check every request multiplexed on it
	// would wait for its whole Timeout, and so would every request after
	// the peer came back, until TCP's retransmission backoff let the
	// connection through again. Default 5s.
	HealthCheck time.Duration
}

func (o ClientOptions) withDefaults() ClientOptions {
	if o.Timeout <= 0 {
		o.Timeout = 30 * time.Second
	}
	if o.MaxChunk <= 0 {
		o.MaxChunk = DefaultMaxChunk
	}
	if o.MaxIdleConns <= 0 {
		o.MaxIdleConns = 4
	}
	if o.HealthCheck <= 0 {
		o.HealthCheck = 5 * time.Second
	}
	return o
}

// maxMessage bounds how much of an error response is kept.
const maxMessage = 1 << 10

// Client stores and fetches chunks on one peer. It implements Store (and
// chunker.Blobs): every method is safe for concurrent use and idempotent.
// Its errors name the peer and classify with IsRetryable: a refusal is a
// *StatusError wrapping the matching sentinel (chunk.ErrNotFound,
// chunk.ErrCorrupt, chunk.ErrNoSpace, ErrTooLarge, ErrSumMismatch,
// ErrBadRequest), a failed exchange a *TransportError.
type Client struct {
	addr    string
	base    string // URL prefix of chunk resources
	listURL string // URL of the chunk list
	tr      *http.Transport
	hc      *http.Client
	opts    ClientOptions
}

// NewClient returns a client for the peer at addr ("host:port", or an
// "https://host:port" URL) using tlsConf, which should carry this node's
// client certificate and the cluster's CA; nil uses Go's defaults (system
// roots, no client certificate). Connections are made on demand, reused,
// and released by Close.
func NewClient(addr string, tlsConf *tls.Config, opts ClientOptions) *Client {
	opts = opts.withDefaults()
	host := strings.TrimSuffix(strings.TrimPrefix(addr, "https://"), "/")
	var conf *tls.Config
	if tlsConf != nil {
		conf = tlsConf.Clone()
	}
	dialer := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}
	tr := &http.Transport{
		Proxy:                 nil, // peers are reached directly, whatever the environment says
		DialContext:           dialer.DialContext,
		TLSClientConfig:       conf,
		TLSHandshakeTimeout:   10 * time.Second,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          opts.MaxIdleConns,
		MaxIdleConnsPerHost:   opts.MaxIdleConns,
		IdleConnTimeout:       90 * time.Second,
		ExpectContinueTimeout: time.Second,
		DisableCompression:    true,
		// A dead peer's connection is closed within twice HealthCheck,
		// and one that cannot take a write within Timeout too.
		HTTP2: &http.HTTP2Config{
			SendPingTimeout:  opts.HealthCheck,
			PingTimeout:      opts.HealthCheck,
			WriteByteTimeout: opts.Timeout,
		},
	}
	return &Client{
		addr:    host,
		base:    "https://" + host + pathPrefix,
		listURL: "https://" + host + listPath,
		tr:      tr,
		hc: &http.Client{
			Transport:     tr,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		opts: opts,
	}
}

// Addr returns the peer's address.
func (c *Client) Addr() string { return c.addr }

// Close releases the client's idle connections. Requests in flight are not
// affected; the client remains usable.
func (c *Client) Close() error {
	c.tr.CloseIdleConnections()
	return nil
}

// do sends a request for chunk id. On success the caller must close the
// response body and then call the returned cancel function.
func (c *Client) do(ctx context.Context, op, method string, id chunk.ID, body []byte, sum *chunk.Sum) (*http.Response, context.CancelFunc, error) {
	return c.doWith(ctx, op, method, id, body, sum, "")
}

// doWith is do with a Range header, when rng is not empty.
func (c *Client) doWith(ctx context.Context, op, method string, id chunk.ID, body []byte, sum *chunk.Sum, rng string) (*http.Response, context.CancelFunc, error) {
	ctx, cancel := context.WithTimeout(ctx, c.opts.Timeout)
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+id.String(), rd)
	if err != nil {
		cancel()
		return nil, nil, fmt.Errorf("peer %s: %s chunk %s: %w", c.addr, op, id, err)
	}
	if rng != "" {
		req.Header.Set("Range", rng)
	}
	if sum != nil {
		req.Header.Set(SumHeader, hex.EncodeToString(sum[:]))
		req.Header.Set("Content-Type", "application/octet-stream")
		if len(body) > 0 {
			// Lets the peer refuse (too large, ...) before the body
			// is sent.
			req.Header.Set("Expect", "100-continue")
		}
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		cancel()
		return nil, nil, c.transportError(op, id, err)
	}
	return resp, cancel, nil
}

// transportError wraps a failed exchange.
func (c *Client) transportError(op string, id chunk.ID, err error) error {
	if ue, ok := errors.AsType[*url.Error](err); ok {
		err = ue.Err // the URL is in our message already
	}
	return &TransportError{Peer: c.addr, Op: op, ID: id, Err: err}
}

// responseError is the client's one mapping from an unsuccessful response
// to an error; it consumes and closes the body.
func (c *Client) responseError(resp *http.Response, op string, id chunk.ID) error {
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, maxMessage))
	_ = resp.Body.Close()
	return &StatusError{
		Peer:    c.addr,
		Op:      op,
		ID:      id,
		Status:  resp.StatusCode,
		Message: strings.TrimSpace(string(msg)),
		err:     sentinelOf(resp.StatusCode),
	}
}

// Put stores data as chunk id on the peer and returns its checksum. When
// it returns nil the peer has verified the data against the checksum this
// client computed and stored it durably.
func (c *Client) Put(ctx context.Context, id chunk.ID, data []byte) (chunk.Sum, error) {
	sum := chunk.Sum(blake3.Sum256(data))
	if err := c.PutSummed(ctx, id, data, sum); err != nil {
		return chunk.Sum{}, err
	}
	return sum, nil
}

// PutSummed is Put for data whose checksum the caller computed (the
// replica layer, which hashes each chunk once for all its copies): the
// peer verifies the data against sum
// before storing it, so a wrong sum fails with ErrSumMismatch and stores
// nothing.
func (c *Client) PutSummed(ctx context.Context, id chunk.ID, data []byte, sum chunk.Sum) error {
	if data == nil {
		data = []byte{}
	}
	resp, cancel, err := c.do(ctx, "put", http.MethodPut, id, data, &sum)
	if err != nil {
		return err
	}
	defer cancel()
	if resp.StatusCode != http.StatusCreated {
		return c.responseError(resp, "put", id)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxMessage))
	_ = resp.Body.Close()
	got, err := parseSum(resp.Header.Get(SumHeader))
	if err != nil {
		return fmt.Errorf("peer %s: put chunk %s: %w: %w", c.addr, id, ErrProtocol, err)
	}
	if got != sum {
		return fmt.Errorf("peer %s: put chunk %s: peer stored sum %x, want %x: %w", c.addr, id, got, sum, ErrSumMismatch)
	}
	return nil
}

// Get fetches chunk id from the peer and verifies it against the sum the
// peer sent. A missing chunk yields an error wrapping chunk.ErrNotFound;
// a bad copy on the peer, or data that does not match its sum, an error
// wrapping chunk.ErrCorrupt, and no data.
func (c *Client) Get(ctx context.Context, id chunk.ID) ([]byte, error) {
	resp, cancel, err := c.do(ctx, "get", http.MethodGet, id, nil, nil)
	if err != nil {
		return nil, err
	}
	defer cancel()
	if resp.StatusCode != http.StatusOK {
		return nil, c.responseError(resp, "get", id)
	}
	return c.readWhole(resp, id)
}

// readWhole reads a 200 answer to a GET, the whole chunk, and verifies it
// against the sum the peer sent; it closes the body.
func (c *Client) readWhole(resp *http.Response, id chunk.ID) ([]byte, error) {
	defer func() { _ = resp.Body.Close() }()
	want, err := parseSum(resp.Header.Get(SumHeader))
	if err != nil {
		return nil, fmt.Errorf("peer %s: get chunk %s: %w: %w", c.addr, id, ErrProtocol, err)
	}
	if resp.ContentLength > c.opts.MaxChunk {
		return nil, fmt.Errorf("peer %s: get chunk %s: %d bytes exceed the %d-byte limit: %w",
			c.addr, id, resp.ContentLength, c.opts.MaxChunk, ErrProtocol)
	}
	var data []byte
	if resp.ContentLength >= 0 {
		data = make([]byte, resp.ContentLength)
		_, err = io.ReadFull(resp.Body, data)
	} else {
		data, err = io.ReadAll(io.LimitReader(resp.Body, c.opts.MaxChunk+1))
		if err == nil && int64(len(data)) > c.opts.MaxChunk {
			return nil, fmt.Errorf("peer %s: get chunk %s: more than %d bytes: %w", c.addr, id, c.opts.MaxChunk, ErrProtocol)
		}
	}
	if err != nil {
		return nil, c.transportError("get", id, fmt.Errorf("read body: %w", err))
	}
	if got := chunk.Sum(blake3.Sum256(data)); got != want {
		return nil, fmt.Errorf("peer %s: get chunk %s: %d bytes received have sum %x, peer sent %x: %w",
			c.addr, id, len(data), got, want, chunk.ErrCorrupt)
	}
	return data, nil
}

// ReadRange reads bytes [off, off+len(p)) of chunk id into p, clamped to
// the chunk's length, and returns how many it read: a range GET, for
// which the peer reads and verifies only the blocks holding the range (as
// a read of this node's own copy would), and the bytes travel under TLS's
// integrity protection. A peer that sends the whole chunk instead has it
// verified against its sum here, as Get does. Errors are Get's.
func (c *Client) ReadRange(ctx context.Context, id chunk.ID, p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("peer %s: get chunk %s: invalid range of %d bytes at %d", c.addr, id, len(p), off)
	}
	if len(p) == 0 {
		return 0, nil
	}
	rng := fmt.Sprintf("bytes=%d-%d", off, off+int64(len(p))-1)
	resp, cancel, err := c.doWith(ctx, "get", http.MethodGet, id, nil, nil, rng)
	if err != nil {
		return 0, err
	}
	defer cancel()
	switch resp.StatusCode {
	case http.StatusPartialContent:
		defer func() { _ = resp.Body.Close() }()
		if resp.ContentLength < 0 || resp.ContentLength > int64(len(p)) {
			return 0, fmt.Errorf("peer %s: get chunk %s: %d bytes for a range of %d: %w",
				c.addr, id, resp.ContentLength, len(p), ErrProtocol)
		}
		n, err := io.ReadFull(resp.Body, p[:resp.ContentLength])
		if err != nil {
			return 0, c.transportError("get", id, fmt.Errorf("read body: %w", err))
		}
		return n, nil
	case http.StatusOK:
		data, err := c.readWhole(resp, id)
		if err != nil {
			return 0, err
		}
		return copy(p, data[min(off, int64(len(data))):]), nil
	default:
		return 0, c.responseError(resp, "get", id)
	}
}

// Has reports whether the peer holds a good copy of chunk id. A corrupt
// copy yields an error wrapping chunk.ErrCorrupt.
func (c *Client) Has(ctx context.Context, id chunk.ID) (bool, error) {
	resp, cancel, err := c.do(ctx, "has", http.MethodHead, id, nil, nil)
	if err != nil {
		return false, err
	}
	defer cancel()
	switch resp.StatusCode {
	case http.StatusOK:
		_ = resp.Body.Close()
		return true, nil
	case http.StatusNotFound:
		_ = resp.Body.Close()
		return false, nil
	}
	return false, c.responseError(resp, "has", id)
}

// Delete removes chunk id from the peer; a missing chunk is not an error.
func (c *Client) Delete(ctx context.Context, id chunk.ID) error {
	resp, cancel, err := c.do(ctx, "delete", http.MethodDelete, id, nil, nil)
	if err != nil {
		return err
	}
	defer cancel()
	switch resp.StatusCode {
	case http.StatusNoContent, http.StatusOK, http.StatusNotFound:
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxMessage))
		_ = resp.Body.Close()
		return nil
	}
	return c.responseError(resp, "delete", id)
}

var _ Store = (*Client)(nil)
