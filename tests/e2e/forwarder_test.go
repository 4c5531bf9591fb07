package e2e

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// forwarder relays TCP connections from a port on 127.0.0.1 to one backend at a
// time. Switch moves it to another backend and closes every relayed connection, so
// a client that reconnects (the kernel NFS client over TCP does, transparently)
// lands on the new backend. Each backend period is an epoch, with its own counts,
// so a test can check who served what.
type forwarder struct {
	l  net.Listener
	wg sync.WaitGroup // the accept loop and every relay

	mu     sync.Mutex
	epochs []*fwdEpoch // the last one is current
	conns  map[*fwdConn]struct{}
	closed bool
}

// fwdEpoch is one period of a forwarder with one backend.
type fwdEpoch struct {
	Backend    string
	conns      atomic.Int64 // connections relayed
	dialErrors atomic.Int64 // accepted connections the backend refused
	toBackend  atomic.Int64 // bytes from the client
	toClient   atomic.Int64 // bytes from the backend
}

// fwdStats is a snapshot of one epoch.
type fwdStats struct {
	Backend                     string
	Conns, DialErrors           int64
	BytesToBackend, BytesToClnt int64
}

func (s fwdStats) String() string {
	return fmt.Sprintf("%s: %d connections (%d refused), %d bytes to it, %d from it",
		s.Backend, s.Conns, s.DialErrors, s.BytesToBackend, s.BytesToClnt)
}

// fwdConn is one relayed connection.
type fwdConn struct {
	client, backend net.Conn
	done            chan struct{} // closed when both directions have stopped
}

func (c *fwdConn) close() {
	c.client.Close()
	c.backend.Close()
}

// newForwarder listens on a free port of 127.0.0.1 and relays to backend. It stops
// when the test ends.
func newForwarder(t *testing.T, backend string) *forwarder {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &forwarder{l: l, epochs: []*fwdEpoch{{Backend: backend}}, conns: map[*fwdConn]struct{}{}}
	f.wg.Go(f.acceptLoop)
	t.Cleanup(f.Close)
	return f
}

// Port is the port the forwarder listens on.
func (f *forwarder) Port() int { return f.l.Addr().(*net.TCPAddr).Port }

func (f *forwarder) acceptLoop() {
	for {
		client, err := f.l.Accept()
		if err != nil {
			return // closed
		}
		// Dial under the lock, so that no connection reaches the old backend once
		// Switch has returned.
		f.mu.Lock()
		if f.closed {
			f.mu.Unlock()
			client.Close()
			return
		}
		epoch := f.epochs[len(f.epochs)-1]
		backend, err := net.DialTimeout("tcp", epoch.Backend, 5*time.Second)
		if err != nil {
			f.mu.Unlock()
			client.Close()
			epoch.dialErrors.Add(1)
			continue
		}
		c := &fwdConn{client: client, backend: backend, done: make(chan struct{})}
		f.conns[c] = struct{}{}
		epoch.conns.Add(1)
		f.mu.Unlock()
		f.wg.Go(func() { f.relay(c, epoch) })
	}
}

// relay copies both ways until either side ends, then closes both.
func (f *forwarder) relay(c *fwdConn, epoch *fwdEpoch) {
	var both sync.WaitGroup
	both.Go(func() {
		io.Copy(countingWriter{c.backend, &epoch.toBackend}, c.client)
		c.close()
	})
	both.Go(func() {
		io.Copy(countingWriter{c.client, &epoch.toClient}, c.backend)
		c.close()
	})
	both.Wait()
	f.mu.Lock()
	delete(f.conns, c)
	f.mu.Unlock()
	close(c.done)
}

// Switch relays new connections to backend from now on, closes every current
// connection and waits until their relays have stopped. It returns the stats of
// the epoch it ended, which are final.
func (f *forwarder) Switch(backend string) fwdStats {
	f.mu.Lock()
	old := f.epochs[len(f.epochs)-1]
	f.epochs = append(f.epochs, &fwdEpoch{Backend: backend})
	var conns []*fwdConn
	for c := range f.conns {
		conns = append(conns, c)
	}
	f.mu.Unlock()
	for _, c := range conns {
		c.close()
	}
	for _, c := range conns {
		<-c.done
	}
	return old.stats()
}

// Stats returns a snapshot of every epoch, oldest first.
func (f *forwarder) Stats() []fwdStats {
	f.mu.Lock()
	defer f.mu.Unlock()
	var s []fwdStats
	for _, e := range f.epochs {
		s = append(s, e.stats())
	}
	return s
}

func (e *fwdEpoch) stats() fwdStats {
	return fwdStats{
		Backend: e.Backend, Conns: e.conns.Load(), DialErrors: e.dialErrors.Load(),
		BytesToBackend: e.toBackend.Load(), BytesToClnt: e.toClient.Load(),
	}
}

// Close stops listening, closes every connection and waits for the relays.
func (f *forwarder) Close() {
	f.mu.Lock()
	f.closed = true
	f.mu.Unlock()
	f.l.Close()
	f.mu.Lock()
	for c := range f.conns {
		c.close()
	}
	f.mu.Unlock()
	f.wg.Wait()
}

// countingWriter counts the bytes written through it.
type countingWriter struct {
	w io.Writer
	n *atomic.Int64
}

func (c countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n.Add(int64(n))
	return n, err
}

// TestForwarderSwitch checks the forwarder itself with two echo servers: a
// connection open at the switch is closed, the next one reaches the new backend,
// and the old backend's counts stop at the switch.
func TestForwarderSwitch(t *testing.T) {
	echo := func(tag string) string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					buf := make([]byte, 64)
					for {
						n, err := c.Read(buf)
						if err != nil {
							return
						}
						if _, err := c.Write(append([]byte(tag), buf[:n]...)); err != nil {
							return
						}
					}
				}()
			}
		}()
		return l.Addr().String()
	}
	a, b := echo("A:"), echo("B:")
	f := newForwarder(t, a)
	call := func(c net.Conn, msg string) (string, error) {
		if err := c.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
			return "", err
		}
		if _, err := c.Write([]byte(msg)); err != nil {
			return "", err
		}
		buf := make([]byte, 64)
		n, err := c.Read(buf)
		return string(buf[:n]), err
	}
	dial := func() net.Conn {
		c, err := net.Dial("tcp", f.l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}

	c1 := dial()
	if got, err := call(c1, "x"); err != nil || got != "A:x" {
		t.Fatalf("before the switch: got %q, %v; want A:x", got, err)
	}
	old := f.Switch(b)
	if old.Backend != a || old.Conns != 1 || old.BytesToClnt != 3 {
		t.Errorf("the ended epoch: %v; want 1 connection and 3 bytes from %s", old, a)
	}
	if got, err := call(c1, "y"); err == nil {
		t.Errorf("a connection open at the switch still answers: %q", got)
	} else if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
		t.Logf("old connection after the switch: %v", err)
	}
	c2 := dial()
	if got, err := call(c2, "z"); err != nil || got != "B:z" {
		t.Fatalf("after the switch: got %q, %v; want B:z", got, err)
	}
	s := f.Stats()
	if len(s) != 2 || s[0] != old || s[1].Backend != b || s[1].Conns != 1 || s[1].BytesToClnt != 3 {
		t.Errorf("stats after the switch: %v", s)
	}
}
