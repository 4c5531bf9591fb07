package join

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/wormhole-fs/wormhole/cluster/pki"
)

// Error codes of the wire protocol's error body.
const (
	codeBadRequest     = "bad_request"
	codeTokenMalformed = "token_malformed"
	codeTokenInvalid   = "token_invalid"
	codeTokenExpired   = "token_expired"
	codeNotFound       = "not_found"
	codeBadMethod      = "bad_method"
	codeNodeIDTaken    = "node_id_taken"
	codeTooLarge       = "too_large"
	codeInternal       = "internal"
	codeUnavailable    = "unavailable"
)

// wireError is the JSON body of a failed request.
type wireError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// errTooLarge marks a request body over MaxRequestBytes.
var errTooLarge = fmt.Errorf("request body over %d bytes: %w", MaxRequestBytes, ErrBadRequest)

// codeOf is the server's one mapping from errors to an HTTP status and
// an error code.
func codeOf(err error) (int, string) {
	switch {
	case errors.Is(err, errTooLarge):
		return http.StatusRequestEntityTooLarge, codeTooLarge
	case errors.Is(err, pki.ErrTokenMalformed):
		return http.StatusUnauthorized, codeTokenMalformed
	case errors.Is(err, pki.ErrTokenInvalid):
		return http.StatusUnauthorized, codeTokenInvalid
	case errors.Is(err, pki.ErrTokenExpired):
		return http.StatusUnauthorized, codeTokenExpired
	case errors.Is(err, ErrNodeIDTaken):
		return http.StatusConflict, codeNodeIDTaken
	case errors.Is(err, ErrBadRequest):
		return http.StatusBadRequest, codeBadRequest
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return http.StatusServiceUnavailable, codeUnavailable
	default:
		return http.StatusInternalServerError, codeInternal
	}
}

// sentinelOf is the client's one mapping from an error code (or, for an
// answer without one, the HTTP status) back to a sentinel: the inverse of
// codeOf.
func sentinelOf(code string, status int) error {
	switch code {
	case codeTokenMalformed:
		return pki.ErrTokenMalformed
	case codeTokenInvalid:
		return pki.ErrTokenInvalid
	case codeTokenExpired:
		return pki.ErrTokenExpired
	case codeNodeIDTaken:
		return ErrNodeIDTaken
	case codeBadRequest, codeNotFound, codeBadMethod, codeTooLarge:
		return ErrBadRequest
	case codeInternal, codeUnavailable:
		return ErrSeedFailed
	}
	switch {
	case status == http.StatusUnauthorized:
		return pki.ErrTokenInvalid
	case status == http.StatusConflict:
		return ErrNodeIDTaken
	case status >= 400 && status < 500:
		return ErrBadRequest
	default:
		return ErrSeedFailed
	}
}

// tokenHint follows the pki token sentinels, whose text ends "ask the
// cluster for a new token with `wormhole token create`".
const tokenHint = " on any node of the cluster"

// remoteError is a seed's refusal: the seed's message, wrapping the
// sentinel its code stands for.
type remoteError struct {
	Status  int
	Code    string
	Message string
	err     error
}

// newRemoteError builds the error for a refusal. The seed's message is
// cleaned for a terminal; when it does not already say what the sentinel
// says, the sentinel's text is added.
func newRemoteError(status int, w wireError) *remoteError {
	e := &remoteError{Status: status, Code: w.Code, err: sentinelOf(w.Code, status)}
	msg := cleanMessage(w.Message)
	if msg == "" {
		msg = http.StatusText(status)
	}
	if !strings.Contains(msg, e.err.Error()) {
		msg += ": " + e.err.Error()
	}
	if errors.Is(e.err, pki.ErrTokenInvalid) || errors.Is(e.err, pki.ErrTokenExpired) || errors.Is(e.err, pki.ErrTokenMalformed) {
		msg += tokenHint
	}
	e.Message = msg
	return e
}

func (e *remoteError) Error() string { return e.Message }
func (e *remoteError) Unwrap() error { return e.err }

// cleanMessage drops control characters and bounds the length of text
// from the seed before it is shown to the operator.
func cleanMessage(s string) string {
	const max = 1024
	if len(s) > max {
		s = s[:max] + "…"
	}
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return ' '
		}
		return r
	}, strings.TrimSpace(s))
}
