package join

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	stdlog "log"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/wormhole-fs/wormhole/cluster/pki"
)

// Admitter is the seed-side policy, implemented by the appliance. Its
// methods are called concurrently, at most ServerOptions.MaxConcurrent
// requests at a time; ctx ends when the request times out or the server
// stops.
type Admitter interface {
	// TokenRecord returns the stored record for token id, or an error
	// wrapping ErrUnknownToken.
	TokenRecord(ctx context.Context, id string) (pki.TokenRecord, error)
	// Admit decides the node's role and does the etcd side (AddLearner),
	// and returns the response fields other than the certificate, CA
	// and cluster id. It gets the verified request, with the token
	// redacted; the node certificate has been signed already (and is
	// dropped if Admit fails), so Admit is the last step that can refuse.
	// Errors wrapping ErrNodeIDTaken or ErrBadRequest reach the joining
	// node as such; the text of any error is shown to its operator.
	Admit(ctx context.Context, req Request) (Response, error)
}

// ServerOptions tunes a Server. Zero values select the defaults.
type ServerOptions struct {
	// MaxConcurrent bounds the requests served at once; more wait for a
	// slot while their context lasts. Default 4.
	MaxConcurrent int
	// ReadHeaderTimeout bounds reading a request's headers (and the TLS
	// handshake). Default 10s.
	ReadHeaderTimeout time.Duration
	// RequestTimeout bounds serving a request, from reading its headers
	// to writing its response, Admit included. Default 1 minute.
	RequestTimeout time.Duration
	// ShutdownTimeout bounds how long Serve waits for requests in flight
	// once its context is done; then it cancels their contexts, closes
	// their connections and waits for the handlers to return.
	// Default 30s.
	ShutdownTimeout time.Duration
}

func (o ServerOptions) withDefaults() ServerOptions {
	if o.MaxConcurrent <= 0 {
		o.MaxConcurrent = 4
	}
	if o.ReadHeaderTimeout <= 0 {
		o.ReadHeaderTimeout = 10 * time.Second
	}
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = time.Minute
	}
	if o.ShutdownTimeout <= 0 {
		o.ShutdownTimeout = 30 * time.Second
	}
	return o
}

// Server serves join requests; see the package documentation for the
// protocol. It is an http.Handler; Serve runs it on a listener. A Server
// is safe for concurrent use and may serve several listeners.
type Server struct {
	ca    *pki.CA
	adm   Admitter
	log   zerolog.Logger
	opts  ServerOptions
	slots chan struct{} // one per request being served
}

// NewServer returns a Server that admits nodes to the cluster of ca with
// the policy a. It starts nothing.
func NewServer(ca *pki.CA, a Admitter, log zerolog.Logger, opts ServerOptions) *Server {
	opts = opts.withDefaults()
	return &Server{
		ca:    ca,
		adm:   a,
		log:   log.With().Str("component", "join-server").Logger(),
		opts:  opts,
		slots: make(chan struct{}, opts.MaxConcurrent),
	}
}

// Serve serves join requests on l over TLS with tlsConf, which should be
// pki.JoinServerTLS(nodeCert). It blocks until ctx is done, then stops
// accepting connections, waits up to ShutdownTimeout for requests in
// flight, cancels and cuts off the rest, waits for their handlers to
// return, and returns nil (or an error if requests had to be cut off). It
// returns early with an error if l fails. It closes l.
func (s *Server) Serve(ctx context.Context, l net.Listener, tlsConf *tls.Config) error {
	if tlsConf == nil {
		_ = l.Close()
		return errors.New("join server: no TLS configuration")
	}
	// Handlers run under hardCtx: not cancelled when ctx ends (requests
	// in flight may finish), only when the shutdown grace period is over.
	hardCtx, hardStop := context.WithCancel(context.WithoutCancel(ctx))
	defer hardStop()
	var handlers tracker
	hs := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !handlers.add() {
				s.fail(w, r, fmt.Errorf("join server is shutting down: %w", context.Canceled))
				return
			}
			defer handlers.done()
			s.ServeHTTP(w, r)
		}),
		TLSConfig:         tlsConf.Clone(),
		Protocols:         http1Only(),
		ReadHeaderTimeout: s.opts.ReadHeaderTimeout,
		ReadTimeout:       s.opts.ReadHeaderTimeout + s.opts.RequestTimeout,
		WriteTimeout:      s.opts.ReadHeaderTimeout + s.opts.RequestTimeout,
		IdleTimeout:       s.opts.ReadHeaderTimeout,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          stdlog.New(logWriter{s.log}, "", 0),
		BaseContext:       func(net.Listener) context.Context { return hardCtx },
	}
	addr := l.Addr().String()
	errc := make(chan error, 1)
	go func() { errc <- hs.ServeTLS(l, "", "") }()
	s.log.Info().Str("addr", addr).Msg("join server listening")

	var err error
	select {
	case serr := <-errc:
		err = fmt.Errorf("join server on %s: %w", addr, serr)
		_ = hs.Close()
		hardStop()
		handlers.wait()
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), s.opts.ShutdownTimeout)
	defer cancel()
	if serr := hs.Shutdown(sctx); serr != nil {
		hardStop()
		err = fmt.Errorf("join server on %s: requests cut off at shutdown: %w", addr, errors.Join(serr, hs.Close()))
	}
	if serr := <-errc; !errors.Is(serr, http.ErrServerClosed) {
		err = errors.Join(err, fmt.Errorf("join server on %s: %w", addr, serr))
	}
	handlers.wait()
	s.log.Info().Str("addr", addr).Err(err).Msg("join server stopped")
	return err
}

// http1Only selects HTTP/1.1: one small request per connection needs no
// HTTP/2.
func http1Only() *http.Protocols {
	var p http.Protocols
	p.SetHTTP1(true)
	return &p
}

// tracker counts running handlers, so Serve can wait for them even after
// http.Server.Close, which does not. Once wait has begun, add refuses.
type tracker struct {
	mu     sync.Mutex
	wg     sync.WaitGroup
	closed bool
}

func (t *tracker) add() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return false
	}
	t.wg.Add(1)
	return true
}

func (t *tracker) done() { t.wg.Done() }

func (t *tracker) wait() {
	t.mu.Lock()
	t.closed = true
	t.mu.Unlock()
	t.wg.Wait()
}

// logWriter turns net/http's log lines (TLS handshake failures, such as
// a joining node refusing the seed's CA, and panics) into warnings.
type logWriter struct{ log zerolog.Logger }

func (w logWriter) Write(p []byte) (int, error) {
	w.log.Warn().Str("source", "net/http").Msg(strings.TrimSpace(string(p)))
	return len(p), nil
}

// ServeHTTP serves one request of the join protocol.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != Path {
		s.reply(w, r, http.StatusNotFound, wireError{codeNotFound, fmt.Sprintf("unknown path %q, want %s", r.URL.Path, Path)})
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		s.reply(w, r, http.StatusMethodNotAllowed, wireError{codeBadMethod, "method " + r.Method + " not allowed, want POST"})
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.opts.RequestTimeout)
	defer cancel()
	// The body is read before taking a slot, so slow clients cannot
	// hold the slots.
	req, err := s.readRequest(w, r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	select {
	case s.slots <- struct{}{}:
		defer func() { <-s.slots }()
	case <-ctx.Done():
		s.fail(w, r, fmt.Errorf("wait for a request slot: %w", ctx.Err()))
		return
	}
	resp, err := s.join(ctx, r, req)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	body, err := json.Marshal(resp)
	if err != nil {
		s.fail(w, r, &authedError{fmt.Errorf("encode response: %w", err)})
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	if _, err := w.Write(body); err != nil {
		s.log.Warn().Err(err).Str("remote", r.RemoteAddr).Str("node_id", req.NodeID).Msg("join answer not delivered")
	}
}

// authedError marks an error that happened after the token was verified:
// its text may be shown to the client.
type authedError struct{ err error }

func (e *authedError) Error() string { return e.err.Error() }
func (e *authedError) Unwrap() error { return e.err }

// readRequest reads and decodes the request body, at most
// MaxRequestBytes.
func (s *Server) readRequest(w http.ResponseWriter, r *http.Request) (Request, error) {
	var req Request
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, MaxRequestBytes))
	err := dec.Decode(&req)
	if err == nil && dec.More() {
		err = errors.New("data after the JSON object")
	}
	if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
		return Request{}, errTooLarge
	}
	if err != nil {
		return Request{}, fmt.Errorf("%w: body is not a JSON join request: %w", ErrBadRequest, err)
	}
	return req, nil
}

// join checks and admits one request.
func (s *Server) join(ctx context.Context, r *http.Request, req Request) (Response, error) {
	tok, err := pki.ParseToken(req.Token)
	if err != nil {
		return Response{}, err
	}
	log := s.log.With().Str("token", tok.Redacted()).Str("remote", r.RemoteAddr).Str("node_id", req.NodeID).Logger()
	rec, err := s.adm.TokenRecord(ctx, tok.ID())
	if errors.Is(err, ErrUnknownToken) {
		// The same answer as for a wrong secret.
		err = fmt.Errorf("token %s: %w", tok.ID(), pki.ErrTokenInvalid)
	} else if err != nil {
		log.Error().Err(err).Msg("join: cannot look up token")
		return Response{}, fmt.Errorf("look up token: %w", err)
	}
	if err == nil {
		err = pki.VerifyToken(rec, tok, time.Now())
	}
	if err != nil {
		log.Warn().Err(err).Msg("join refused: token")
		return Response{}, err
	}

	// The token is good: from here on, errors are described to the client.
	now := time.Now()
	pub, err := req.validate()
	var certPEM []byte
	if err == nil {
		// Signing checks the node id and key type, so it comes before
		// Admit, the only step with side effects.
		certPEM, err = s.ca.IssueNode(req.NodeID, req.Hosts, pub, now)
		if errors.Is(err, pki.ErrInvalidID) || errors.Is(err, pki.ErrUnsupportedKey) {
			err = fmt.Errorf("%w: %w", ErrBadRequest, err)
		}
	}
	if err != nil {
		log.Warn().Err(err).Msg("join refused: request")
		return Response{}, &authedError{err}
	}

	req.Token = tok.Redacted()
	resp, err := s.adm.Admit(ctx, req)
	if err != nil {
		log.Warn().Err(err).Msg("join refused: admit")
		return Response{}, &authedError{fmt.Errorf("admit node %q: %w", req.NodeID, err)}
	}
	if err := checkAdmission(&resp); err != nil {
		log.Error().Err(err).Msg("join: admitter answered an invalid response")
		return Response{}, &authedError{fmt.Errorf("admit node %q: %w", req.NodeID, err)}
	}
	resp.ClusterID = s.ca.ClusterID()
	resp.CACertPEM = s.ca.CertPEM()
	resp.NodeCertPEM = certPEM
	log.Info().Str("role", resp.Role).Uint64("member_id", resp.MemberID).Str("advertise", req.Advertise).Msg("node admitted")
	return resp, nil
}

// fail answers err with its status and code. Internal errors before the
// token was verified are not described to the client.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	status, code := codeOf(err)
	msg := err.Error()
	if _, authed := errors.AsType[*authedError](err); code == codeInternal && !authed {
		msg = "internal error on the seed; see its log"
	}
	if code == codeUnavailable {
		msg = "the seed is shutting down or too busy, try again: " + msg
	}
	s.reply(w, r, status, wireError{code, msg})
}

// reply writes an error body.
func (s *Server) reply(w http.ResponseWriter, r *http.Request, status int, e wireError) {
	if status >= 500 {
		s.log.Warn().Str("remote", r.RemoteAddr).Int("status", status).Str("code", e.Code).Str("error", e.Message).Msg("join request failed")
	}
	body, _ := json.Marshal(e) // strings only: cannot fail
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}
