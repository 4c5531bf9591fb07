package peer

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/wormhole-fs/wormhole/chunker/chunk"
)

// listPath is the resource of the list of chunks a node holds.
const listPath = "/v1/chunks"

// listBatchIDs is how many IDs the server buffers before writing them,
// and how often it extends the response's write deadline.
const listBatchIDs = 4096

// Lister is implemented by stores that can enumerate the chunks they hold
// (chunker.LocalStore does). A Server whose Store also implements Lister
// serves GET /v1/chunks; others answer it 501 Not Implemented. The Client
// implements it too.
type Lister interface {
	// List calls fn with the ID of every chunk held, each once, in no
	// particular order, and stops at the first error; an error of fn
	// is returned unchanged. It must not hold all IDs in memory at
	// once, and must return soon after ctx is done.
	List(ctx context.Context, fn func(id chunk.ID) error) error
}

// serveList serves GET /v1/chunks: the IDs the store holds, streamed as
// they are listed, then the end record (see the package documentation).
func (s *Server) serveList(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", "GET")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	l, ok := s.store.(Lister)
	if !ok {
		s.fail(w, r, "list", chunk.ID{}, fmt.Errorf("list chunks: this node's store cannot list: %w", errors.ErrUnsupported))
		return
	}
	ctx := r.Context()
	select {
	case s.slots <- struct{}{}:
		defer func() { <-s.slots }()
	case <-ctx.Done():
		s.fail(w, r, "list", chunk.ID{}, fmt.Errorf("wait for a request slot: %w", ctx.Err()))
		return
	}

	rc := http.NewResponseController(w)
	buf := make([]byte, 0, (listBatchIDs+1)*chunk.IDSize+8)
	started := false
	var n uint64
	send := func() error {
		if !started {
			w.Header().Set("Content-Type", "application/octet-stream")
			w.WriteHeader(http.StatusOK)
			started = true
		}
		// The server's read and write timeouts bound one request; a
		// long list instead gets RequestTimeout to send each batch.
		// Where a deadline cannot be moved the fixed one stays.
		deadline := time.Now().Add(s.opts.RequestTimeout)
		_ = rc.SetReadDeadline(deadline)
		_ = rc.SetWriteDeadline(deadline)
		_, err := w.Write(buf)
		buf = buf[:0]
		if err != nil {
			return fmt.Errorf("send chunk list: %w", err)
		}
		return nil
	}
	err := l.List(ctx, func(id chunk.ID) error {
		if id.IsZero() {
			// The zero ID names no chunk and marks the end of the
			// list on the wire.
			s.log.Warn().Msg("store lists a chunk with the zero ID; not sent")
			return nil
		}
		buf = append(buf, id[:]...)
		n++
		if len(buf) >= listBatchIDs*chunk.IDSize {
			return send()
		}
		return nil
	})
	if err == nil {
		buf = appendListEnd(buf, n)
		err = send()
	}
	switch {
	case err == nil:
	case !started:
		s.fail(w, r, "list", chunk.ID{}, err)
	default:
		// The status is sent: end the body without the end record,
		// which the client reports as a truncated list.
		s.log.Warn().Err(err).Str("peer", r.RemoteAddr).Uint64("sent", n).Msg("chunk list cut short")
	}
}

// errListStalled is the cause of the cancellation of a List that received
// nothing for the client's Timeout.
var errListStalled = errors.New("chunk list stalled")

// List calls fn with the ID of every chunk the peer holds, as the peer
// lists them: each once, in no particular order. IDs are streamed, so
// memory does not grow with the length of the list. It returns nil only
// when the peer sent the whole list (its end record, with the right
// count); on an error fn may already have been called for part of the
// list, which the caller should then discard.
//
// Timeout (ClientOptions) bounds each wait for more of the list, not the
// whole list; fn should return quickly, as time spent in it counts too.
// An error of fn stops the list and is returned unchanged. Other errors
// are a *StatusError (501 wraps errors.ErrUnsupported: the peer's store
// cannot list; a peer too old to know the request answers 400,
// ErrBadRequest), a *TransportError (also when the list is cut short), or
// wrap ErrProtocol.
func (c *Client) List(ctx context.Context, fn func(id chunk.ID) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stall := time.AfterFunc(c.opts.Timeout, func() { cancel(errListStalled) })
	defer stall.Stop()

	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.listURL, nil)
	if err != nil {
		return fmt.Errorf("peer %s: list chunks: %w", c.addr, err)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return c.listTransportError(ctx, err)
	}
	if resp.StatusCode != http.StatusOK {
		return c.responseError(resp, "list", chunk.ID{})
	}
	defer func() { _ = resp.Body.Close() }()

	br := bufio.NewReaderSize(progressReader{resp.Body, stall, c.opts.Timeout}, 64<<10)
	var fnErr error
	err = decodeList(br, func(id chunk.ID) error {
		fnErr = fn(id)
		return fnErr
	})
	switch {
	case err == nil:
		return nil
	case fnErr != nil:
		return fnErr
	case errors.Is(err, ErrProtocol):
		return fmt.Errorf("peer %s: list chunks: %w", c.addr, err)
	default:
		return c.listTransportError(ctx, err)
	}
}

// appendListEnd appends the end record of a list of n IDs to b.
func appendListEnd(b []byte, n uint64) []byte {
	b = append(b, make([]byte, chunk.IDSize)...)
	return binary.LittleEndian.AppendUint64(b, n)
}

// decodeList reads a list body from r, calling fn with each ID, and
// checks its end record. It returns fn's error unchanged, an error
// wrapping io.ErrUnexpectedEOF for a body cut short, one wrapping
// ErrProtocol for a wrong count or data after the end record, or the
// error of r.
func decodeList(r io.Reader, fn func(chunk.ID) error) error {
	var rec chunk.ID
	var n uint64
	for {
		if _, err := io.ReadFull(r, rec[:]); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return fmt.Errorf("list ended after %d chunks without its end record: %w", n, io.ErrUnexpectedEOF)
			}
			return err
		}
		if rec.IsZero() {
			break
		}
		n++
		if err := fn(rec); err != nil {
			return err
		}
	}
	var tail [9]byte // the count, and one byte too many
	k, err := io.ReadFull(r, tail[:])
	switch {
	case k < 8 && (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)):
		return fmt.Errorf("list ended after %d chunks within its end record: %w", n, io.ErrUnexpectedEOF)
	case k < 8:
		return err
	case k > 8:
		return fmt.Errorf("data after the end record: %w", ErrProtocol)
	case !errors.Is(err, io.ErrUnexpectedEOF):
		return err // neither the expected end of the body nor data
	}
	if got := binary.LittleEndian.Uint64(tail[:8]); got != n {
		return fmt.Errorf("end record counts %d chunks, %d received: %w", got, n, ErrProtocol)
	}
	return nil
}

// listTransportError wraps a failure to receive the list, reporting a
// stall as the timeout it is.
func (c *Client) listTransportError(ctx context.Context, err error) error {
	if errors.Is(context.Cause(ctx), errListStalled) {
		err = fmt.Errorf("%w: nothing received for %s: %w", errListStalled, c.opts.Timeout, context.DeadlineExceeded)
	}
	return c.transportError("list", chunk.ID{}, err)
}

// progressReader restarts a stall timer on every read that returns data.
type progressReader struct {
	r       io.Reader
	t       *time.Timer
	timeout time.Duration
}

func (p progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	if n > 0 {
		p.t.Reset(p.timeout)
	}
	return n, err
}

var _ Lister = (*Client)(nil)
