package nfsfront

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// rpcConn owns one client connection. It reads whole RPC records (joining
// fragments, refusing oversized ones before allocating) and serves up to
// maxInFlight of them at once, each on a goroutine of its own (but for
// quick calls, which it may serve itself: quick.go): what
// dispatch serves itself (our NFS procedures, MOUNT, the portmapper and
// every RPC-level refusal) is answered as soon as it is done, so replies
// may leave in any order (clients match them by xid); every other record
// goes to a go-nfs server bound to this connection through goNFSConn,
// started on the first such record, which serves them one at a time.
// Replies from both sides are written as whole records under one lock, so
// they never interleave on the wire.
type rpcConn struct {
	srv  *Server
	raw  net.Conn
	o    origin
	wmu  sync.Mutex
	feed chan []byte // records for go-nfs, each with its record mark
	// dmu guards stopped, set once the server stops: the connection then
	// reads nothing more (its read deadline stays in the past).
	dmu     sync.Mutex
	stopped bool
	// quick times the connection's quick calls, which it serves on its
	// reader goroutine while they are fast (quick.go).
	quick quickTimes
}

// maxInFlight bounds the calls of one connection served at once. The
// reader waits for a free slot before reading the next record, so one
// connection holds at most maxInFlight+1 records (each at most
// Config.MaxRecord bytes) in memory.
const maxInFlight = 16

// maxServerCalls bounds the calls served at once over all connections. A
// connection that read a record waits for a server-wide slot before
// reading more, so the memory pinned by calls is at most one record per
// connection (as when each served one call at a time) plus
// maxServerCalls records and their replies.
const maxServerCalls = 128

func (s *Server) newConn(raw net.Conn, o origin) *rpcConn {
	return &rpcConn{srv: s, raw: raw, o: o, feed: make(chan []byte, 8)}
}

func (c *rpcConn) serve(srvCtx context.Context) {
	defer c.raw.Close()
	client := c.raw.RemoteAddr().String()
	log := c.srv.log.With().Str("client", client).Logger()

	// The go-nfs side of this connection, started when first needed. Its
	// context ends with the connection: go-nfs's own per-connection
	// goroutines wait on it when a reply can no longer be written.
	ctx, cancel := context.WithCancel(srvCtx)
	// Our calls run on callCtx, which outlives the server's context by
	// drainGrace: when the server stops, the connection reads no more
	// calls, but those in flight finish and are answered, as a client
	// expects of a server going down in order. Otherwise a WRITE could
	// take effect with its reply lost, and the client, sending it again
	// to the restarted server, would have it run twice.
	callCtx, cancelCalls := context.WithCancel(context.WithoutCancel(srvCtx))
	var drainTimer *time.Timer
	stopDrain := context.AfterFunc(srvCtx, func() {
		c.stopReading()
		c.dmu.Lock()
		drainTimer = time.AfterFunc(drainGrace, func() {
			cancelCalls()
			_ = c.raw.Close() // a reply stuck on a client that does not read
		})
		c.dmu.Unlock()
	})
	var wg sync.WaitGroup    // go-nfs
	var calls sync.WaitGroup // calls being served
	var lmu sync.Mutex       // guards l
	var l *oneConnListener   // go-nfs's listener, once started
	slots := make(chan struct{}, maxInFlight)
	defer func() {
		if srvCtx.Err() == nil {
			// The connection ended, not the server: no reply can be
			// sent any more.
			cancelCalls()
		}
		// Calls in flight end (while the server stops: answered, or
		// cancelled after drainGrace) before the feed closes: they may
		// still be handing records to go-nfs.
		calls.Wait()
		cancelCalls()
		if !stopDrain() {
			c.dmu.Lock()
			if drainTimer != nil {
				drainTimer.Stop()
			}
			c.dmu.Unlock()
		}
		cancel()
		close(c.feed)
		lmu.Lock()
		if l != nil {
			l.Close()
		}
		lmu.Unlock()
		wg.Wait()
	}()
	startGoNFS := func() {
		lmu.Lock()
		defer lmu.Unlock()
		if l == nil {
			l = &oneConnListener{conn: &goNFSConn{Conn: c.raw, c: c}, done: make(chan struct{})}
			wg.Go(func() { _ = c.srv.newGoNFS(ctx).Serve(l) })
		}
	}
	// serveCall answers one record; a reply that cannot be written ends
	// the connection (the reader then stops at its next read).
	serveCall := func(rec []byte, key callKey, keep bool) {
		var tail replyTail
		reply, forward := c.srv.dispatch(withReplyTail(callCtx, &tail), rec, c.o)
		defer tail.done()
		if !forward {
			if reply != nil {
				if keep {
					// Only READ lends a tail, and READ is not kept.
					c.srv.completed.add(key, reply, time.Now())
				}
				if err := c.writeRecord(reply, tail.data); err != nil {
					_ = c.raw.Close()
				}
				c.srv.releaseReply(reply)
			}
			return
		}
		startGoNFS()
		// go-nfs reads a single-fragment record.
		framed := make([]byte, 4+len(rec))
		binary.BigEndian.PutUint32(framed, uint32(len(rec))|lastFragment)
		copy(framed[4:], rec)
		select {
		case c.feed <- framed:
		case <-callCtx.Done():
		}
	}

	br := bufio.NewReaderSize(c.raw, 64<<10)
	for {
		// A free slot first: a client that pipelines more calls than
		// that waits, with its calls in the socket buffers.
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			return
		}
		// An idle client is let go; it reconnects when it has work.
		if !c.readUntil(time.Now().Add(c.srv.cfg.IdleTimeout)) {
			return
		}
		rec, err := readRecord(br, c.srv.cfg.MaxRecord)
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && ctx.Err() == nil {
				log.Debug().Err(err).Msg("closing connection")
			}
			if errors.Is(err, io.EOF) {
				// The client sent all it will: answer what it sent
				// (each call is bounded by OpTimeout).
				calls.Wait()
			}
			return
		}
		select {
		case c.srv.callSlots <- struct{}{}:
		case <-ctx.Done():
			return
		}
		key, traits := callKeyOf(client, rec), traitsOf(rec)
		if traits.keep {
			// Looked up before the calls in progress: a reply is kept
			// before it is sent, so a call sent again once its reply
			// arrived finds it, even while the first is ending.
			if reply := c.srv.completed.lookup(key, time.Now()); reply != nil {
				// Done before: its reply again, not a second run.
				log.Debug().Uint32("xid", key.xid).Msg("answered a retransmitted call with its kept reply")
				if err := c.writeRecord(reply, nil); err != nil {
					_ = c.raw.Close()
				}
				<-c.srv.callSlots
				<-slots
				continue
			}
		}
		if !c.srv.inProgress.begin(key) {
			// A retransmission of a call still being served: its
			// reply answers both.
			log.Debug().Uint32("xid", key.xid).Msg("dropped a retransmitted call still in progress")
			<-c.srv.callSlots
			<-slots
			continue
		}
		if traits.quick && br.Buffered() == 0 && c.quick.inline() {
			start := time.Now()
			serveCall(rec, key, traits.keep)
			c.quick.note(time.Since(start))
			c.srv.inProgress.end(key)
			<-c.srv.callSlots
			<-slots
			continue
		}
		calls.Go(func() {
			defer func() { c.srv.inProgress.end(key); <-c.srv.callSlots; <-slots }()
			if traits.quick {
				start := time.Now()
				defer func() { c.quick.note(time.Since(start)) }()
			}
			serveCall(rec, key, traits.keep)
		})
	}
}

// drainGrace is how long the calls in flight when the server stops have
// to finish and be answered; then they are cancelled and the connection
// closed.
const drainGrace = 3 * time.Second

// stopReading makes the connection read no more calls: a read in
// progress ends at once (its deadline is now), and readUntil refuses from
// now on.
func (c *rpcConn) stopReading() {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	c.stopped = true
	_ = c.raw.SetReadDeadline(time.Now())
}

// readUntil sets the deadline of the next read, and reports false, setting
// none, once the server stops (or the deadline cannot be set).
func (c *rpcConn) readUntil(t time.Time) bool {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	return !c.stopped && c.raw.SetReadDeadline(t) == nil
}

// readRecord reads one RPC record, joining its fragments.
func readRecord(r io.Reader, max int) ([]byte, error) {
	var rec []byte
	var hdr [4]byte
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			if len(rec) > 0 && errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
		mark := binary.BigEndian.Uint32(hdr[:])
		n := int(mark &^ lastFragment)
		if len(rec)+n > max {
			return nil, fmt.Errorf("rpc record over %d bytes", max)
		}
		start := len(rec)
		rec = append(rec, make([]byte, n)...)
		if _, err := io.ReadFull(r, rec[start:]); err != nil {
			return nil, fmt.Errorf("rpc record body: %w", err)
		}
		if mark&lastFragment != 0 {
			return rec, nil
		}
	}
}

// writeRecord sends one reply record (without mark) as a single fragment:
// body, then tail, the bytes of the XDR opaque whose length body ends
// with, and their padding (see replyTail).
func (c *rpcConn) writeRecord(body, tail []byte) error {
	pad := (4 - len(tail)%4) % 4
	var hdr [4]byte
	binary.BigEndian.PutUint32(hdr[:], uint32(len(body)+len(tail)+pad)|lastFragment)
	bufs := net.Buffers{hdr[:], body}
	if len(tail) > 0 {
		bufs = append(bufs, tail)
	}
	if pad > 0 {
		bufs = append(bufs, make([]byte, pad))
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	// A client that stops reading must not hold this connection's
	// goroutine and slot for ever.
	if err := c.raw.SetWriteDeadline(time.Now().Add(writeTimeout)); err != nil {
		return err
	}
	_, err := bufs.WriteTo(c.raw)
	return err
}

// replyTail is bytes a procedure has sent after its encoded reply without
// copying them into it: a READ's data that the data path lends (mapped
// from a chunk file and verified), written to the socket from where they
// lie, and the function that gives them back once written. The encoded
// reply ends with the length of the XDR opaque the tail holds; the
// connection sends the opaque's padding. A TCP connection puts an empty
// tail in each call's context (withReplyTail); a procedure without one
// (UDP, tests) encodes everything into the reply.
type replyTail struct {
	data    []byte
	release func()
}

type replyTailKey struct{}

// withReplyTail returns ctx carrying t for the call's procedure to fill.
func withReplyTail(ctx context.Context, t *replyTail) context.Context {
	return context.WithValue(ctx, replyTailKey{}, t)
}

// replyTailOf returns the tail the call's connection can send, or nil.
func replyTailOf(ctx context.Context) *replyTail {
	t, _ := ctx.Value(replyTailKey{}).(*replyTail)
	return t
}

// done gives the tail's bytes back, once sent (or not to be).
func (t *replyTail) done() {
	if t.release != nil {
		t.release()
	}
	t.data, t.release = nil, nil
}

// writeTimeout bounds sending one reply.
const writeTimeout = 2 * time.Minute

// goNFSConn is the connection go-nfs reads from and writes to: it yields
// the records handed over in feed, one at a time, and forwards go-nfs's
// reply records whole through writeRecord.
type goNFSConn struct {
	net.Conn
	c   *rpcConn
	cur []byte
	out []byte
}

func (g *goNFSConn) Read(p []byte) (int, error) {
	if len(g.cur) == 0 {
		rec, ok := <-g.c.feed
		if !ok {
			return 0, io.EOF
		}
		g.cur = rec
	}
	n := copy(p, g.cur)
	g.cur = g.cur[n:]
	return n, nil
}

func (g *goNFSConn) Write(p []byte) (int, error) {
	g.out = append(g.out, p...)
	for len(g.out) >= 4 {
		mark := binary.BigEndian.Uint32(g.out)
		n := int(mark &^ lastFragment)
		if len(g.out) < 4+n {
			break
		}
		// go-nfs writes every reply as one last fragment.
		rec := g.out[4 : 4+n]
		fixGoNFSReply(rec)
		if err := g.c.writeRecord(rec, nil); err != nil {
			return 0, err
		}
		g.out = g.out[4+n:]
	}
	if len(g.out) == 0 {
		g.out = nil
	}
	return len(p), nil
}

// Close ends the client connection (go-nfs closes on protocol errors).
func (g *goNFSConn) Close() error { return g.c.raw.Close() }

// oneConnListener hands go-nfs a single connection, then blocks until
// closed.
type oneConnListener struct {
	conn   net.Conn
	given  bool
	mu     sync.Mutex
	done   chan struct{}
	closed sync.Once
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	if !l.given {
		l.given = true
		l.mu.Unlock()
		return l.conn, nil
	}
	l.mu.Unlock()
	<-l.done
	return nil, net.ErrClosed
}

func (l *oneConnListener) Close() error {
	l.closed.Do(func() { close(l.done) })
	return nil
}

func (l *oneConnListener) Addr() net.Addr { return l.conn.LocalAddr() }
