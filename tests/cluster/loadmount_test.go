package cluster

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wormhole-fs/wormhole/tests/testnode"
)

// replyLoser forwards connections to upstream; once armed, it drops the
// next reply record and breaks that connection, as a node stopping
// between running a call and answering it does.
type replyLoser struct {
	l       net.Listener
	armed   atomic.Bool
	dropped chan struct{}
	conns   atomic.Int32 // connections accepted
}

func newReplyLoser(t *testing.T, upstream string) *replyLoser {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	p := &replyLoser{l: l, dropped: make(chan struct{})}
	go func() {
		for {
			down, err := l.Accept()
			if err != nil {
				return
			}
			p.conns.Add(1)
			up, err := net.Dial("tcp", upstream)
			if err != nil {
				down.Close()
				continue
			}
			go func() {
				_, _ = io.Copy(up, down)
				up.Close()
			}()
			go func() {
				defer down.Close()
				defer up.Close()
				for {
					var mark [4]byte
					if _, err := io.ReadFull(up, mark[:]); err != nil {
						return
					}
					rec := make([]byte, binary.BigEndian.Uint32(mark[:])&^(1<<31))
					if _, err := io.ReadFull(up, rec); err != nil {
						return
					}
					if p.armed.CompareAndSwap(true, false) {
						close(p.dropped)
						return // the reply is lost with the connection
					}
					if _, err := down.Write(append(mark[:], rec...)); err != nil {
						return
					}
				}
			}()
		}
	}()
	return p
}

// The load's mounts must not send a call again on a new connection: a
// WRITE that ran but whose reply was lost would run twice (a stale
// version coming back after later writes), which the load's model does
// not allow. A call whose connection breaks fails instead.
func TestLoadMountDoesNotResend(t *testing.T) {
	n := testnode.InProcess(t, "", nil)
	p := newReplyLoser(t, n.NFSAddr().String())
	m, err := mountOneConnWithin(p.l.Addr().String(), 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { go m.close() }()
	f, err := m.v.OpenFile("/f", 0o644)
	if err != nil {
		t.Fatal(err)
	}
	p.armed.Store(true)
	_, err = within(60*time.Second, "write", func() (int, error) { return f.Write(bytes.Repeat([]byte{1}, 4096)) })
	select {
	case <-p.dropped:
	default:
		t.Fatalf("the WRITE's reply was not dropped (write: %v)", err)
	}
	if err == nil {
		t.Fatalf("the WRITE whose reply was lost succeeded: it was sent again")
	}
	if c := p.conns.Load(); c != 1 {
		t.Errorf("%d connections made to the node, want 1", c)
	}
	t.Logf("write: %v", err)
}
