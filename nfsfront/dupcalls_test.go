package nfsfront

import (
	"bytes"
	"context"
	"encoding/binary"
	"sync/atomic"
	"testing"
	"time"

	"github.com/willscott/go-nfs"

	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
)

// unlinkOnceNS is an empty root, writable by anyone, holding the file f
// until it is unlinked; it counts the unlinks asked.
type unlinkOnceNS struct {
	rootOnlyNS
	unlinks atomic.Int32
}

func (n *unlinkOnceNS) GetAttr(ctx context.Context, ino meta.Ino) (meta.Attr, error) {
	a, err := n.rootOnlyNS.GetAttr(ctx, ino)
	a.Mode = 0o777
	return a, err
}

func (n *unlinkOnceNS) Lookup(_ context.Context, dir meta.Ino, name string) (meta.Attr, error) {
	if dir == meta.RootIno && name == "f" && n.unlinks.Load() == 0 {
		return meta.Attr{Ino: 5, Type: meta.TypeRegular, Mode: 0o644, Nlink: 1, Gen: 1, Parent: meta.RootIno}, nil
	}
	return meta.Attr{}, meta.ErrNotFound
}

func (n *unlinkOnceNS) Unlink(_ context.Context, dir meta.Ino, name string) (meta.Freed, error) {
	if dir == meta.RootIno && name == "f" && n.unlinks.Add(1) == 1 {
		return nil, nil
	}
	return nil, meta.ErrNotFound
}

// TestRetransmittedRemoveGetsItsReply: a REMOVE sent again after it was
// done (its reply lost, as when a connection breaks) is answered with the
// reply it had, NFS3_OK, not run again into NOENT. The same xid with
// other arguments, or another xid, is a new call.
func TestRetransmittedRemoveGetsItsReply(t *testing.T) {
	ns := &unlinkOnceNS{}
	s, c := serveAndDial(t, ns, nopData{})
	remove := func(xid uint32, name string) []byte {
		args := append(opaqueArg(s.handleFor(creds{}, rootAttr)), opaqueArg([]byte(name))...)
		return c.call(t, callRecord(xid, progNFS, 3, procRemove, args))
	}

	first := remove(21, "f")
	if st := nfsStatus(t, first); st != 0 {
		t.Fatalf("REMOVE f: status %d", st)
	}
	again := remove(21, "f")
	if !bytes.Equal(again, first) {
		t.Fatalf("REMOVE f sent again: reply %x, want the first one %x", again, first)
	}
	if n := ns.unlinks.Load(); n != 1 {
		t.Fatalf("REMOVE sent twice ran %d times", n)
	}
	if st := nfsStatus(t, remove(21, "g")); st != uint32(nfs.NFSStatusNoEnt) {
		t.Errorf("same xid, other name: status %d, want NOENT", st)
	}
	if st := nfsStatus(t, remove(22, "f")); st != uint32(nfs.NFSStatusNoEnt) {
		t.Errorf("a new REMOVE of f: status %d, want NOENT", st)
	}
	if n := s.completed.replays.Load(); n != 1 {
		t.Errorf("%d calls answered with a kept reply, want 1", n)
	}
}

// nfsReply is an accepted reply record of xid with NFS status st.
func nfsReply(xid uint32, st nfs.NFSStatus) []byte {
	e := &xdrEncoder{}
	acceptedHeader(e, xid, acceptSuccess)
	e.u32(uint32(st))
	return e.b
}

// TestCompletedBounds: the kept replies are the completedMax most recent,
// each for completedTTL; replies that ask the client to try again, or are
// no NFS answer, are not kept.
func TestCompletedBounds(t *testing.T) {
	var c completed
	now := time.Now()
	key := func(i int) callKey { return callKey{client: "10.0.0.1:800", xid: uint32(i + 1), n: 100} }
	for i := range completedMax {
		c.add(key(i), nfsReply(uint32(i+1), nfs.NFSStatusOk), now)
	}
	if c.lookup(key(0), now) == nil || c.lookup(key(completedMax-1), now) == nil {
		t.Fatal("a full set of replies lost one")
	}
	c.add(key(completedMax), nfsReply(1, nfs.NFSStatusOk), now)
	if c.lookup(key(0), now) != nil {
		t.Error("the oldest reply was kept past completedMax")
	}
	if c.lookup(key(1), now) == nil || c.lookup(key(completedMax), now) == nil {
		t.Error("a recent reply was dropped")
	}
	if c.lookup(key(1), now.Add(completedTTL+time.Second)) != nil {
		t.Error("a reply was kept past completedTTL")
	}

	var d completed
	for i, reply := range [][]byte{
		nfsReply(1, nfs.NFSStatusJukebox),
		nfsReply(2, nfs.NFSStatusServerFault),
		acceptedReply(3, acceptGarbage),
		{0, 0, 0, 4},
	} {
		d.add(key(i), reply, now)
		if d.lookup(key(i), now) != nil {
			t.Errorf("reply %x was kept", reply)
		}
	}
	d.add(key(9), nfsReply(9, nfs.NFSStatusNoEnt), now)
	if d.lookup(key(9), now) == nil {
		t.Error("a NOENT reply (final) was not kept")
	}
}

// countingData counts the writes it is asked for, and does them.
type countingData struct {
	nopData
	writes atomic.Int32
}

func (d *countingData) WriteAt(_ context.Context, ino meta.Ino, p []byte, off int64) (meta.Attr, error) {
	d.writes.Add(1)
	return meta.Attr{Ino: ino, Type: meta.TypeRegular, Mode: 0o644, Nlink: 1, Gen: 1, Size: uint64(off) + uint64(len(p))}, nil
}

// TestRetransmittedWriteGetsItsReply: a WRITE sent again after it was done
// is answered with its reply, not run again (a second run would put its
// bytes back over what other clients wrote in between).
func TestRetransmittedWriteGetsItsReply(t *testing.T) {
	d := &countingData{}
	s, c := serveAndDial(t, twoFilesNS{sizes: map[meta.Ino]uint64{7: 0}}, d)
	write := func(xid uint32) []byte {
		args := binary.BigEndian.AppendUint64(opaqueArg(s.handleFor(creds{}, meta.Attr{Ino: 7, Gen: 1})), 0)
		args = binary.BigEndian.AppendUint32(args, 5)
		args = binary.BigEndian.AppendUint32(args, fileSync)
		args = append(args, opaqueArg([]byte("hello"))...)
		return c.call(t, sysCall(xid, progNFS, 3, procWrite, 0, 0, args))
	}
	first := write(31)
	if st := nfsStatus(t, first); st != 0 {
		t.Fatalf("WRITE: status %d", st)
	}
	if again := write(31); !bytes.Equal(again, first) {
		t.Fatalf("WRITE sent again: reply %x, want the first one %x", again, first)
	}
	if n := d.writes.Load(); n != 1 {
		t.Fatalf("WRITE sent twice ran %d times", n)
	}
	write(32)
	if n := d.writes.Load(); n != 2 {
		t.Errorf("a new WRITE (another xid) ran %d writes in all, want 2", n)
	}
}
