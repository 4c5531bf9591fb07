package peer

import (
	"context"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	stdlog "log"
	"math"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"github.com/zeebo/blake3"

	"github.com/wormhole-fs/wormhole/chunker/chunk"
)

// Protocol constants; see the package documentation.
const (
	// SumHeader carries the hex BLAKE3-256 sum of a chunk's data.
	SumHeader = "X-Wormhole-Sum"
	// pathPrefix starts the path of every chunk resource.
	pathPrefix = "/v1/chunks/"
)

// DefaultMaxChunk is the default largest chunk a Server accepts and a
// Client fetches: chunker.MaxChunkSize (which this package does not import;
// a test keeps the two equal).
const DefaultMaxChunk = 64 << 20

// Store is the chunk store a Server exposes: chunker.LocalStore satisfies
// it. Methods must be safe for concurrent use; see chunker.Blobs for their
// contracts.
type Store interface {
	// Put stores data as chunk id durably and returns its checksum.
	Put(ctx context.Context, id chunk.ID, data []byte) (chunk.Sum, error)
	// Get returns the verified data of chunk id.
	Get(ctx context.Context, id chunk.ID) ([]byte, error)
	// Delete removes chunk id; a missing chunk is not an error.
	Delete(ctx context.Context, id chunk.ID) error
}

// summedStore is implemented by stores that can store data whose sum
// the caller has checked, without hashing it again (chunker.LocalStore).
type summedStore interface {
	PutSummed(ctx context.Context, id chunk.ID, data []byte, sum chunk.Sum) error
}

// streamStore is implemented by stores that can store a chunk while its
// bytes arrive, checking them against their sum on the way
// (chunker.LocalStore): receiving, hashing and writing then overlap. A
// mismatch fails with an error wrapping chunk.ErrSumMismatch; a read
// error of r is returned wrapped.
type streamStore interface {
	PutFrom(ctx context.Context, id chunk.ID, r io.Reader, n int64, want chunk.Sum) error
}

// summedGetter is implemented by stores that return a chunk's checksum
// with its verified data (chunker.LocalStore); others' chunks are hashed
// again for the sum a GET sends.
type summedGetter interface {
	GetSummed(ctx context.Context, id chunk.ID) ([]byte, chunk.Sum, error)
}

// rangeStore is implemented by stores that can read part of a chunk into
// the caller's buffer, verifying only the blocks that hold it, clamped to
// the chunk's length (chunker.LocalStore). Stores without it answer a
// range GET with the whole chunk.
type rangeStore interface {
	ReadRange(ctx context.Context, id chunk.ID, p []byte, off int64) (int, error)
}

// hasStore is implemented by stores that can tell whether they hold a
// good copy of a chunk without returning it. Stores without it answer HEAD
// by reading (and so verifying) the chunk.
type hasStore interface {
	Has(ctx context.Context, id chunk.ID) (bool, error)
}

// ServerOptions tunes a Server. Zero values select the defaults.
type ServerOptions struct {
	// MaxChunk is the largest chunk accepted, in bytes; larger PUTs get
	// 413 before their body is read. Default DefaultMaxChunk.
	MaxChunk int64
	// MaxConcurrent bounds the requests served at once; more wait for a
	// slot (while their context lasts). Memory held by chunk data is at
	// most about MaxConcurrent*MaxChunk. Default 16.
	MaxConcurrent int
	// ReadHeaderTimeout bounds reading a request's headers. Default 10s.
	ReadHeaderTimeout time.Duration
	// RequestTimeout bounds reading a whole request and writing its
	// response. Default 2 minutes.
	RequestTimeout time.Duration
	// IdleTimeout closes connections idle that long. Default 2 minutes.
	IdleTimeout time.Duration
	// ShutdownTimeout bounds how long Serve waits for requests in flight
	// once its context is done; then it closes the remaining connections.
	// Default 30s.
	ShutdownTimeout time.Duration
}

func (o ServerOptions) withDefaults() ServerOptions {
	if o.MaxChunk <= 0 {
		o.MaxChunk = DefaultMaxChunk
	}
	if o.MaxConcurrent <= 0 {
		o.MaxConcurrent = 16
	}
	if o.ReadHeaderTimeout <= 0 {
		o.ReadHeaderTimeout = 10 * time.Second
	}
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = 2 * time.Minute
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = 2 * time.Minute
	}
	if o.ShutdownTimeout <= 0 {
		o.ShutdownTimeout = 30 * time.Second
	}
	return o
}

// Server exposes a chunk store to peers over HTTPS; see the package
// documentation for the protocol. It is an http.Handler; Serve runs it on
// a listener. A Server is safe for concurrent use and may serve several
// listeners.
type Server struct {
	store Store
	log   zerolog.Logger
	opts  ServerOptions
	slots chan struct{} // one token per request being served

	// onShutdown, when set (by tests), runs once Serve has begun its
	// graceful shutdown and closed the listener.
	onShutdown func()
}

// NewServer returns a Server over store. It starts nothing.
func NewServer(store Store, log zerolog.Logger, opts ServerOptions) *Server {
	opts = opts.withDefaults()
	return &Server{
		store: store,
		log:   log.With().Str("component", "peer-server").Logger(),
		opts:  opts,
		slots: make(chan struct{}, opts.MaxConcurrent),
	}
}

// Serve serves peers on l over TLS with tlsConf, which must hold the
// node's certificate; to authenticate peers it should require and verify
// client certificates (tls.RequireAndVerifyClientCert), and Serve logs a
// warning when it does not. Serve blocks until ctx is done, then stops
// accepting connections, waits up to ShutdownTimeout for requests in
// flight to finish (their own contexts are not cancelled) and returns nil;
// it returns an error if l fails first or requests had to be cut off. It
// closes l.
func (s *Server) Serve(ctx context.Context, l net.Listener, tlsConf *tls.Config) error {
	if tlsConf == nil {
		_ = l.Close()
		return errors.New("peer server: no TLS configuration")
	}
	conf := tlsConf.Clone()
	if conf.ClientAuth != tls.RequireAndVerifyClientCert {
		s.log.Warn().Str("client_auth", conf.ClientAuth.String()).
			Msg("peer server does not require verified client certificates; peers are not authenticated")
	}
	hs := &http.Server{
		Handler:           s,
		TLSConfig:         conf,
		ReadHeaderTimeout: s.opts.ReadHeaderTimeout,
		ReadTimeout:       s.opts.RequestTimeout,
		WriteTimeout:      s.opts.RequestTimeout,
		IdleTimeout:       s.opts.IdleTimeout,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          stdlog.New(logWriter{s.log}, "", 0),
	}
	if s.onShutdown != nil {
		hs.RegisterOnShutdown(s.onShutdown)
	}
	addr := l.Addr().String()
	errc := make(chan error, 1)
	go func() { errc <- hs.ServeTLS(l, "", "") }()
	s.log.Info().Str("addr", addr).Msg("peer server listening")

	select {
	case err := <-errc:
		return fmt.Errorf("peer server on %s: %w", addr, err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), s.opts.ShutdownTimeout)
	defer cancel()
	err := hs.Shutdown(sctx)
	if err != nil {
		err = fmt.Errorf("peer server on %s: shutdown: %w", addr, errors.Join(err, hs.Close()))
	}
	if serr := <-errc; !errors.Is(serr, http.ErrServerClosed) {
		err = errors.Join(err, fmt.Errorf("peer server on %s: %w", addr, serr))
	}
	s.log.Info().Str("addr", addr).Err(err).Msg("peer server stopped")
	return err
}

// logWriter turns net/http's log lines (TLS handshake failures, panics)
// into warnings.
type logWriter struct{ log zerolog.Logger }

func (w logWriter) Write(p []byte) (int, error) {
	w.log.Warn().Str("source", "net/http").Msg(strings.TrimSpace(string(p)))
	return len(p), nil
}

// ServeHTTP serves one request of the peer protocol.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == listPath {
		s.serveList(w, r)
		return
	}
	rest, ok := strings.CutPrefix(r.URL.Path, pathPrefix)
	if !ok {
		s.fail(w, r, "", chunk.ID{}, fmt.Errorf("%w: unknown path %q", ErrBadRequest, r.URL.Path))
		return
	}
	id, err := chunk.ParseID(rest)
	if err != nil {
		s.fail(w, r, "", id, fmt.Errorf("%w: %w", ErrBadRequest, err))
		return
	}
	op := ""
	switch r.Method {
	case http.MethodPut:
		op = "put"
	case http.MethodGet:
		op = "get"
	case http.MethodHead:
		op = "has"
	case http.MethodDelete:
		op = "delete"
	default:
		w.Header().Set("Allow", "PUT, GET, HEAD, DELETE")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	ctx := r.Context()
	if op == "put" && r.ContentLength > s.opts.MaxChunk {
		// Refuse before reading the body (or sending 100 Continue).
		s.fail(w, r, op, id, fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, r.ContentLength, s.opts.MaxChunk))
		return
	}
	select {
	case s.slots <- struct{}{}:
		defer func() { <-s.slots }()
	case <-ctx.Done():
		s.fail(w, r, op, id, fmt.Errorf("wait for a request slot: %w", ctx.Err()))
		return
	}
	switch op {
	case "put":
		err = s.put(ctx, w, r, id)
	case "get":
		err = s.get(ctx, w, r, id)
	case "has":
		err = s.has(ctx, w, id)
	case "delete":
		err = s.store.Delete(ctx, id)
		if err == nil {
			w.WriteHeader(http.StatusNoContent)
		}
	}
	if err != nil {
		s.fail(w, r, op, id, err)
	}
}

// put serves PUT: read the body within the limit, check its sum, store it.
func (s *Server) put(ctx context.Context, w http.ResponseWriter, r *http.Request, id chunk.ID) error {
	want, err := parseSum(r.Header.Get(SumHeader))
	if err != nil {
		return fmt.Errorf("%w: %w", ErrBadRequest, err)
	}
	body := http.MaxBytesReader(w, r.Body, s.opts.MaxChunk)
	if ss, ok := s.store.(streamStore); ok && r.ContentLength >= 0 {
		// The length was checked against MaxChunk before.
		return s.putStream(ctx, w, ss, id, &readErr{r: body}, r.ContentLength, want)
	}
	var data []byte
	if r.ContentLength >= 0 {
		data = make([]byte, r.ContentLength)
		_, err = io.ReadFull(body, data)
	} else {
		data, err = io.ReadAll(body)
	}
	if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
		return fmt.Errorf("%w: body exceeds %d bytes", ErrTooLarge, s.opts.MaxChunk)
	}
	if err != nil {
		return fmt.Errorf("%w: read body: %w", ErrBadRequest, err)
	}
	if got := chunk.Sum(blake3.Sum256(data)); got != want {
		return fmt.Errorf("%w: %d bytes have sum %x, sender said %x", ErrSumMismatch, len(data), got, want)
	}
	stored := want
	if ss, ok := s.store.(summedStore); ok {
		// The sum was just checked: the store need not hash the data
		// whole again.
		err = ss.PutSummed(ctx, id, data, want)
	} else {
		stored, err = s.store.Put(ctx, id, data)
	}
	if err != nil {
		return err
	}
	if stored != want {
		// The store hashed different bytes than we did: a bug or bad
		// memory, not the sender's fault.
		return fmt.Errorf("store returned sum %x for data with sum %x", stored, want)
	}
	w.Header().Set(SumHeader, hex.EncodeToString(stored[:]))
	w.WriteHeader(http.StatusCreated)
	return nil
}

// putStream serves a PUT of n bytes into a store that writes them as they
// arrive.
func (s *Server) putStream(ctx context.Context, w http.ResponseWriter, ss streamStore, id chunk.ID, body *readErr, n int64, want chunk.Sum) error {
	err := ss.PutFrom(ctx, id, body, n, want)
	switch {
	case err == nil:
	case body.err != nil && !errors.Is(body.err, io.EOF):
		return fmt.Errorf("%w: read body: %w", ErrBadRequest, body.err)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Errorf("%w: body shorter than its %d-byte length: %w", ErrBadRequest, n, err)
	case errors.Is(err, chunk.ErrSumMismatch):
		return fmt.Errorf("%w: %w", ErrSumMismatch, err)
	default:
		return err
	}
	w.Header().Set(SumHeader, hex.EncodeToString(want[:]))
	w.WriteHeader(http.StatusCreated)
	return nil
}

// readErr is a reader that keeps the first error its reader returned, so
// that a failure to receive is told from a failure to store.
type readErr struct {
	r   io.Reader
	err error
}

func (r *readErr) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if err != nil && r.err == nil {
		r.err = err
	}
	return n, err
}

// get serves GET: the verified data and its sum.
func (s *Server) get(ctx context.Context, w http.ResponseWriter, r *http.Request, id chunk.ID) error {
	if rs, ok := s.store.(rangeStore); ok {
		if off, n, ok := parseRange(r.Header.Get("Range")); ok {
			return s.getRange(ctx, w, r, rs, id, off, min(n, s.opts.MaxChunk))
		}
	}
	var data []byte
	var sum chunk.Sum
	var err error
	if ss, ok := s.store.(summedGetter); ok {
		// Verified against this sum as it was read: no second pass.
		data, sum, err = ss.GetSummed(ctx, id)
	} else if data, err = s.store.Get(ctx, id); err == nil {
		sum = blake3.Sum256(data)
	}
	if err != nil {
		return err
	}
	h := w.Header()
	h.Set(SumHeader, hex.EncodeToString(sum[:]))
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Content-Length", strconv.Itoa(len(data)))
	w.WriteHeader(http.StatusOK)
	if _, err := w.Write(data); err != nil {
		// The status is sent; the client sees a short body.
		s.log.Debug().Err(err).Str("peer", r.RemoteAddr).Str("chunk", id.String()).Msg("send chunk")
	}
	return nil
}

// getRange serves a range GET: 206 with the n bytes at off of the chunk
// (fewer where the chunk ends first), read and verified by the store.
func (s *Server) getRange(ctx context.Context, w http.ResponseWriter, r *http.Request, rs rangeStore, id chunk.ID, off, n int64) error {
	p := make([]byte, n)
	k, err := rs.ReadRange(ctx, id, p, off)
	if err != nil {
		return err
	}
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Content-Length", strconv.Itoa(k))
	if k > 0 {
		h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/*", off, off+int64(k)-1))
	}
	w.WriteHeader(http.StatusPartialContent)
	if _, err := w.Write(p[:k]); err != nil {
		s.log.Debug().Err(err).Str("peer", r.RemoteAddr).Str("chunk", id.String()).Msg("send chunk range")
	}
	return nil
}

// parseRange parses a Range header of one byte range with both ends,
// "bytes=first-last", into its offset and length. Anything else (no
// header, several ranges, open ends) is not ok: the whole chunk is sent.
func parseRange(v string) (off, n int64, ok bool) {
	spec, found := strings.CutPrefix(v, "bytes=")
	if !found {
		return 0, 0, false
	}
	a, b, found := strings.Cut(spec, "-")
	if !found {
		return 0, 0, false
	}
	first, err1 := strconv.ParseInt(a, 10, 64)
	last, err2 := strconv.ParseInt(b, 10, 64)
	if err1 != nil || err2 != nil || first < 0 || last < first || last == math.MaxInt64 {
		return 0, 0, false
	}
	return first, last - first + 1, true
}

// has serves HEAD: 200 if the store holds a good copy.
func (s *Server) has(ctx context.Context, w http.ResponseWriter, id chunk.ID) error {
	if hs, ok := s.store.(hasStore); ok {
		found, err := hs.Has(ctx, id)
		if err != nil {
			return err
		}
		if !found {
			return fmt.Errorf("chunk %s: %w", id, chunk.ErrNotFound)
		}
		w.WriteHeader(http.StatusOK)
		return nil
	}
	data, err := s.store.Get(ctx, id)
	if err != nil {
		return err
	}
	sum := blake3.Sum256(data)
	w.Header().Set(SumHeader, hex.EncodeToString(sum[:]))
	w.Header().Set("Content-Length", strconv.Itoa(len(data)))
	w.WriteHeader(http.StatusOK)
	return nil
}

// fail answers a failed request with the status statusOf chooses and logs
// it: server-side failures and corrupt copies loudly, the rest at debug.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, op string, id chunk.ID, err error) {
	status := statusOf(err)
	var ev *zerolog.Event
	switch {
	case status >= 500 && status != http.StatusServiceUnavailable:
		ev = s.log.Error()
	case status == http.StatusConflict || status == http.StatusUnprocessableEntity:
		ev = s.log.Warn()
	default:
		ev = s.log.Debug()
	}
	ev = ev.Err(err).Str("peer", r.RemoteAddr).Str("op", op)
	if !id.IsZero() {
		ev = ev.Str("chunk", id.String())
	}
	ev.Int("status", status).Msg("peer request failed")
	http.Error(w, err.Error(), status)
}

// parseSum parses the hex sum of SumHeader.
func parseSum(s string) (chunk.Sum, error) {
	var sum chunk.Sum
	if s == "" {
		return sum, fmt.Errorf("missing %s header", SumHeader)
	}
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != chunk.SumSize {
		return sum, fmt.Errorf("malformed %s header %q", SumHeader, s)
	}
	copy(sum[:], b)
	return sum, nil
}
