package nfsfront

import (
	"context"
	"encoding/binary"
	"testing"
	"time"

	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
)

func TestTraitsOf(t *testing.T) {
	fh := opaqueArg(make([]byte, 32))
	read := func(count uint32) []byte {
		return binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint64(fh, 0), count)
	}
	quick, keep := callTraits{quick: true}, callTraits{keep: true}
	for _, tt := range []struct {
		name string
		rec  []byte
		want callTraits
	}{
		{"NULL", callRecord(1, progNFS, 3, 0, nil), callTraits{}},
		{"GETATTR", callRecord(1, progNFS, 3, procGetattr, fh), quick},
		{"LOOKUP", callRecord(1, progNFS, 3, procLookup, fh), quick},
		{"ACCESS", callRecord(1, progNFS, 3, procAccess, fh), quick},
		{"4 KiB READ", callRecord(1, progNFS, 3, procRead, read(4096)), quick},
		{"64 KiB READ", callRecord(1, progNFS, 3, procRead, read(quickReadMax)), quick},
		{"1 MiB READ", callRecord(1, progNFS, 3, procRead, read(1<<20)), callTraits{}},
		{"READ without arguments", callRecord(1, progNFS, 3, procRead, nil), callTraits{}},
		{"WRITE", callRecord(1, progNFS, 3, procWrite, fh), keep},
		{"COMMIT", callRecord(1, progNFS, 3, procCommit, fh), callTraits{}},
		{"CREATE", callRecord(1, progNFS, 3, procCreate, fh), keep},
		{"REMOVE", callRecord(1, progNFS, 3, procRemove, fh), keep},
		{"RENAME", callRecord(1, progNFS, 3, procRename, fh), keep},
		{"SETATTR", callRecord(1, progNFS, 3, procSetattr, fh), keep},
		{"NFSv2 GETATTR", callRecord(1, progNFS, 2, procGetattr, fh), callTraits{}},
		{"NFSv2 REMOVE", callRecord(1, progNFS, 2, procRemove, fh), callTraits{}},
		{"MOUNT", callRecord(1, progMount, 3, mountProcMnt, opaqueArg([]byte("/"))), callTraits{}},
		{"garbage", []byte{1, 2, 3}, callTraits{}},
	} {
		if got := traitsOf(tt.rec); got != tt.want {
			t.Errorf("%s: traits %+v, want %+v", tt.name, got, tt.want)
		}
	}
}

func TestQuickTimes(t *testing.T) {
	var q quickTimes
	if q.inline() {
		t.Fatal("a new connection serves quick calls on its reader before any was timed")
	}
	for range 40 {
		q.note(20 * time.Microsecond)
	}
	if !q.inline() {
		t.Fatalf("average %v after 40 calls of 20µs: not inline", time.Duration(q.avg.Load()))
	}
	q.note(5 * time.Millisecond) // one stall
	if q.inline() {
		t.Fatalf("average %v after a 5 ms call: still inline", time.Duration(q.avg.Load()))
	}
	for range 40 {
		q.note(20 * time.Microsecond)
	}
	if !q.inline() {
		t.Fatal("fast calls after a stall did not bring inline serving back")
	}
}

// sleepyNS answers GETATTR of inode 7 after a delay, or, once hold is
// set, only when release is closed.
type sleepyNS struct {
	slowNS
	delay time.Duration
	hold  chan struct{} // closed: hold the next calls
}

func (n *sleepyNS) GetAttr(ctx context.Context, ino meta.Ino) (meta.Attr, error) {
	if ino != slowAttr.Ino {
		return n.rootOnlyNS.GetAttr(ctx, ino)
	}
	select {
	case <-n.hold:
		return n.slowNS.GetAttr(ctx, ino)
	default:
	}
	time.Sleep(n.delay) // the backend is slow: this is what is measured
	return slowAttr, nil
}

// TestSlowQuickCallsRunConcurrently checks that a connection whose quick
// calls are slow serves them on goroutines of their own: a GETATTR that
// blocks does not hold up the calls sent after it.
func TestSlowQuickCallsRunConcurrently(t *testing.T) {
	ns := &sleepyNS{slowNS: slowNS{release: make(chan struct{})}, delay: 2 * time.Millisecond, hold: make(chan struct{})}
	s, c := serveAndDial(t, ns, nopData{})
	slow := opaqueArg(s.handleFor(creds{}, slowAttr))
	root := opaqueArg(s.handleFor(creds{}, rootAttr))
	for i := range uint32(5) { // slow ones, one at a time
		if reply := c.call(t, callRecord(i+1, progNFS, 3, procGetattr, slow)); nfsStatus(t, reply) != 0 {
			t.Fatalf("GETATTR %d failed", i)
		}
	}
	close(ns.hold)
	c.send(t, callRecord(100, progNFS, 3, procGetattr, slow)) // blocks until released
	// The next call arrives only once the blocked one is being served,
	// so it cannot have been read with it.
	eventually(t, "the blocked GETATTR to start", func() bool { return ns.waiting.Load() == 1 })
	c.send(t, callRecord(101, progNFS, 3, procGetattr, root))
	reply, err := c.recv()
	if err != nil {
		t.Fatal(err)
	}
	if xid := binary.BigEndian.Uint32(reply); xid != 101 {
		t.Fatalf("first reply has xid %d: the blocked GETATTR held up the one after it", xid)
	}
	close(ns.release)
	if reply, err = c.recv(); err != nil || binary.BigEndian.Uint32(reply) != 100 {
		t.Fatalf("blocked GETATTR: %x, %v", reply, err)
	}
}

// TestRetransmissionInProgressDropped sends a call, and the same call again
// (same xid, as a client does when the reply is late) while the first is
// still served: the copy is dropped, not served a second time, and the
// first one's reply answers it; a later call with the same xid but other
// arguments is served.
func TestRetransmissionInProgressDropped(t *testing.T) {
	ns := &slowNS{release: make(chan struct{})}
	s, c := serveAndDial(t, ns, nopData{})
	slow := callRecord(7, progNFS, 3, procGetattr, opaqueArg(s.handleFor(creds{}, slowAttr)))
	c.send(t, slow)
	eventually(t, "the first GETATTR to start", func() bool { return ns.waiting.Load() == 1 })
	c.send(t, slow)
	eventually(t, "the retransmission to be dropped", func() bool { return s.inProgress.dropped.Load() == 1 })
	close(ns.release)
	reply, err := c.recv()
	if err != nil || binary.BigEndian.Uint32(reply) != 7 || nfsStatus(t, reply) != 0 {
		t.Fatalf("reply %x, %v; want xid 7, NFS3_OK", reply, err)
	}
	if n := ns.waiting.Load(); n != 1 {
		t.Fatalf("GETATTR served %d times", n)
	}
	// The xid again, for another call (the root's attributes): served.
	reply = c.call(t, callRecord(7, progNFS, 3, procGetattr, opaqueArg(s.handleFor(creds{}, rootAttr))))
	if binary.BigEndian.Uint32(reply) != 7 || nfsStatus(t, reply) != 0 {
		t.Fatalf("reused xid: reply %x", reply)
	}
}
