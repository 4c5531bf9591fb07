package peer

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"syscall"

	"github.com/wormhole-fs/wormhole/chunker/chunk"
)

// Errors of the transfer itself. Errors of the remote store wrap the
// chunk sentinels (chunk.ErrNotFound, chunk.ErrCorrupt, chunk.ErrNoSpace).
var (
	// ErrTooLarge means the chunk exceeds the receiving node's limit.
	ErrTooLarge = errors.New("chunk too large for peer")
	// ErrSumMismatch means the receiving node found that the data it got
	// does not match the sum the sender computed, and stored nothing.
	ErrSumMismatch = errors.New("chunk checksum mismatch in transfer")
	// ErrBadRequest means the peer refused a malformed request; it points
	// to a bug or a protocol version mismatch.
	ErrBadRequest = errors.New("request refused by peer")
)

// StatusError is a peer's answer other than success. It wraps the sentinel
// that the status stands for, if any, so errors.Is works on it.
type StatusError struct {
	Peer    string   // address of the peer
	Op      string   // "put", "get", "has", "delete" or "list"
	ID      chunk.ID // the chunk; zero for "list"
	Status  int      // HTTP status code
	Message string   // the peer's message, possibly truncated
	err     error
}

// Error implements error.
func (e *StatusError) Error() string {
	s := fmt.Sprintf("peer %s: %s: %d %s", e.Peer, opName(e.Op, e.ID), e.Status, http.StatusText(e.Status))
	if e.Message != "" {
		s += ": " + e.Message
	}
	if e.err != nil {
		s += ": " + e.err.Error()
	}
	return s
}

// Unwrap returns the sentinel the status stands for, or nil.
func (e *StatusError) Unwrap() error { return e.err }

// TransportError is a failure to exchange a request with a peer: no
// connection, TLS handshake failure, timeout, connection lost while
// sending or receiving. Unless it is a TLS authentication failure or a
// cancellation, it is retryable.
type TransportError struct {
	Peer string   // address of the peer
	Op   string   // "put", "get", "has", "delete" or "list"
	ID   chunk.ID // the chunk; zero for "list"
	Err  error
}

// Error implements error.
func (e *TransportError) Error() string {
	return fmt.Sprintf("peer %s: %s: %v", e.Peer, opName(e.Op, e.ID), e.Err)
}

// opName names an operation in an error: "get chunk <id>", or "list
// chunks" for an operation on no one chunk.
func opName(op string, id chunk.ID) string {
	if id.IsZero() {
		return op + " chunks"
	}
	return op + " chunk " + id.String()
}

// Unwrap returns the underlying error.
func (e *TransportError) Unwrap() error { return e.Err }

// statusOf is the server's one mapping from errors to HTTP status codes.
func statusOf(err error) int {
	switch {
	case errors.Is(err, chunk.ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, chunk.ErrCorrupt):
		return http.StatusConflict
	case errors.Is(err, chunk.ErrNoSpace):
		return http.StatusInsufficientStorage
	case errors.Is(err, ErrTooLarge):
		return http.StatusRequestEntityTooLarge
	case errors.Is(err, ErrSumMismatch):
		return http.StatusUnprocessableEntity
	case errors.Is(err, ErrBadRequest):
		return http.StatusBadRequest
	case errors.Is(err, errors.ErrUnsupported):
		return http.StatusNotImplemented
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return http.StatusServiceUnavailable
	default:
		return http.StatusInternalServerError
	}
}

// sentinelOf is the client's one mapping from HTTP status codes back to
// errors: the inverse of statusOf.
func sentinelOf(status int) error {
	switch status {
	case http.StatusNotFound:
		return chunk.ErrNotFound
	case http.StatusConflict:
		return chunk.ErrCorrupt
	case http.StatusInsufficientStorage:
		return chunk.ErrNoSpace
	case http.StatusRequestEntityTooLarge:
		return ErrTooLarge
	case http.StatusUnprocessableEntity:
		return ErrSumMismatch
	case http.StatusBadRequest, http.StatusMethodNotAllowed:
		return ErrBadRequest
	case http.StatusNotImplemented:
		return errors.ErrUnsupported
	default:
		return nil
	}
}

// IsRetryable reports whether a Client error is worth retrying, on the
// same node later or on another: timeouts, connection failures and 5xx
// answers other than 501 and 507 are; the node's refusals (4xx), a
// request it cannot serve (501), a full node (507), corrupt data, TLS
// authentication failures and a cancelled context are not.
func IsRetryable(err error) bool {
	if err == nil {
		return false
	}
	if se, ok := errors.AsType[*StatusError](err); ok {
		switch se.Status {
		case http.StatusRequestTimeout, http.StatusTooManyRequests:
			return true
		case http.StatusInsufficientStorage, http.StatusNotImplemented:
			return false
		}
		return se.Status >= 500
	}
	switch {
	case errors.Is(err, chunk.ErrCorrupt), errors.Is(err, chunk.ErrNotFound),
		errors.Is(err, chunk.ErrNoSpace), errors.Is(err, context.Canceled):
		return false
	case errors.Is(err, context.DeadlineExceeded):
		return true
	}
	// TLS failures come wrapped in *net.OpError: check them first. An
	// alert from the peer (crypto/tls reports it as a *net.OpError with
	// Op "remote error") means it refused us: a bad or missing client
	// certificate, no common protocol version.
	if oe, ok := errors.AsType[*net.OpError](err); ok && oe.Op == "remote error" {
		return false
	}
	if _, ok := errors.AsType[tls.AlertError](err); ok {
		return false
	}
	if _, ok := errors.AsType[*tls.CertificateVerificationError](err); ok {
		return false
	}
	if _, ok := errors.AsType[x509.UnknownAuthorityError](err); ok {
		return false
	}
	if _, ok := errors.AsType[x509.HostnameError](err); ok {
		return false
	}
	if _, ok := errors.AsType[x509.CertificateInvalidError](err); ok {
		return false
	}
	if _, ok := errors.AsType[tls.RecordHeaderError](err); ok {
		return false // the peer does not speak TLS
	}
	if _, ok := errors.AsType[*TransportError](err); ok {
		return true
	}
	if _, ok := errors.AsType[net.Error](err); ok {
		return true
	}
	return errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE)
}
