package nfsfront

import (
	"context"
	"encoding/binary"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
)

// slowNS holds GETATTR of inode 7 until release is closed.
type slowNS struct {
	rootOnlyNS
	release chan struct{}
	waiting atomic.Int32
}

var slowAttr = meta.Attr{Ino: 7, Type: meta.TypeRegular, Mode: 0o644, Nlink: 1, Gen: 1, Parent: meta.RootIno}

func (n *slowNS) GetAttr(ctx context.Context, ino meta.Ino) (meta.Attr, error) {
	if ino != slowAttr.Ino {
		return n.rootOnlyNS.GetAttr(ctx, ino)
	}
	n.waiting.Add(1)
	select {
	case <-n.release:
		return slowAttr, nil
	case <-ctx.Done():
		return meta.Attr{}, ctx.Err()
	}
}

// TestConnectionServesCallsConcurrently pipelines calls on one connection
// behind one that blocks: they are answered first, each reply a whole
// record with its own xid, and the blocked call is answered once it can
// go on.
func TestConnectionServesCallsConcurrently(t *testing.T) {
	ns := &slowNS{release: make(chan struct{})}
	s, c := serveAndDial(t, ns, nopData{})

	slow := opaqueArg(s.handleFor(creds{}, slowAttr))
	root := opaqueArg(s.handleFor(creds{}, rootAttr))
	c.send(t, callRecord(100, progNFS, 3, procGetattr, slow))
	const others = 2 * maxInFlight // more than the connection serves at once
	for i := range uint32(others) {
		c.send(t, callRecord(i+1, progNFS, 3, procGetattr, root))
	}
	for i := range others {
		reply, err := c.recv()
		if err != nil {
			t.Fatalf("reply %d: %v", i, err)
		}
		if xid := binary.BigEndian.Uint32(reply); xid == 100 || xid > others {
			t.Fatalf("reply %d has xid %d before the slow call was let go", i, xid)
		}
		if got := nfsStatus(t, reply); got != 0 {
			t.Fatalf("reply %d: status %d", i, got)
		}
	}
	if ns.waiting.Load() != 1 {
		t.Fatalf("slow GETATTR started %d times", ns.waiting.Load())
	}
	close(ns.release)
	reply, err := c.recv()
	if err != nil {
		t.Fatal(err)
	}
	if xid := binary.BigEndian.Uint32(reply); xid != 100 || nfsStatus(t, reply) != 0 {
		t.Fatalf("last reply: xid %d, status %d", xid, nfsStatus(t, reply))
	}
}

// serveAndDial serves ns and data on a loopback TCP listener and returns
// the server and a connection to it, closed at the end of the test.
func serveAndDial(t *testing.T, ns Namespace, data Data) (*Server, *rpcConnTest) {
	t.Helper()
	s, err := New(DefaultConfig(), ns, data, []byte(strings.Repeat("k", 32)), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	ls, _ := startServing(t, s)
	c := dialRPC(t, ls.Addr().String())
	t.Cleanup(func() { _ = c.Close() })
	return s, c
}

// stopWithCallHeld serves slowNS, sends a GETATTR that it holds, and stops
// the server once the call is in flight. It returns the connection, the
// namespace, and a channel closed once Serve has returned.
func stopWithCallHeld(t *testing.T) (*rpcConnTest, *slowNS, <-chan struct{}) {
	t.Helper()
	ns := &slowNS{release: make(chan struct{})}
	s, err := New(DefaultConfig(), ns, nopData{}, []byte(strings.Repeat("k", 32)), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	ls, stop := startServing(t, s)
	c := dialRPC(t, ls.Addr().String())
	t.Cleanup(func() { _ = c.Close() })
	c.send(t, callRecord(100, progNFS, 3, procGetattr, opaqueArg(s.handleFor(creds{}, slowAttr))))
	waitFor(t, "the GETATTR to be in flight", func() bool { return ns.waiting.Load() == 1 })
	stopped := make(chan struct{})
	go func() { stop(); close(stopped) }()
	waitFor(t, "the server to refuse new connections", func() bool {
		d, err := net.DialTimeout("tcp", ls.Addr().String(), time.Second)
		if err == nil {
			d.Close()
		}
		return err != nil
	})
	return c, ns, stopped
}

// waitFor polls cond until it holds, for at most 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited 10 s for %s", what)
		}
		time.Sleep(5 * time.Millisecond) // poll interval
	}
}

// A server that stops answers the calls in flight before closing their
// connections: a WRITE that took effect must not lose its reply, or the
// client sends it again to the restarted server, which runs it twice.
func TestStopAnswersCallsInFlight(t *testing.T) {
	c, ns, stopped := stopWithCallHeld(t)
	close(ns.release)
	reply, err := c.recv()
	if err != nil {
		t.Fatalf("the call in flight when the server stopped got no reply: %v", err)
	}
	if xid := binary.BigEndian.Uint32(reply); xid != 100 || nfsStatus(t, reply) != 0 {
		t.Fatalf("reply: xid %d, status %d; want 100, OK", xid, nfsStatus(t, reply))
	}
	<-stopped
	if _, err := c.recv(); err == nil {
		t.Fatal("the connection still answers after the server stopped")
	}
}

// A call that does not end within drainGrace of the stop is cancelled,
// and the server stops all the same.
func TestStopCancelsCallsThatDoNotEnd(t *testing.T) {
	c, _, stopped := stopWithCallHeld(t)
	<-stopped // startServing fails the test if Serve takes over 10 s
	if _, err := c.recv(); err == nil {
		// A reply carrying the cancellation may come first; the
		// connection closes after it.
		if _, err := c.recv(); err == nil {
			t.Fatal("the connection still answers after the server stopped")
		}
	}
}
