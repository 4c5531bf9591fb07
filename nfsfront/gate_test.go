package nfsfront

import (
	"context"
	"encoding/binary"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/rs/zerolog"

	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
)

// The postures a fakeGate plays, as cluster/posture defines them.
const (
	gateServe = iota
	gateRefuseWrites
	gateReadOnly
	gateFreeze
)

var gateNames = []string{"serve", "refuse-writes", "read-only", "freeze"}

// fakeGate is a Gate in one of the four postures; safe for concurrent use.
type fakeGate struct{ mode atomic.Int32 }

func (g *fakeGate) Allow(op OpClass) error {
	switch g.mode.Load() {
	case gateRefuseWrites:
		if op == OpWrite {
			return fmt.Errorf("posture refuse-writes: %w", ErrWritesRefused)
		}
	case gateReadOnly:
		if op != OpRead {
			return ErrWritesRefused
		}
	case gateFreeze:
		return ErrFrozen
	}
	return nil
}

// countingNS counts the namespace reads every procedure starts with.
type countingNS struct {
	rootOnlyNS
	calls atomic.Int64
}

func (n *countingNS) GetAttr(ctx context.Context, ino meta.Ino) (meta.Attr, error) {
	n.calls.Add(1)
	return n.rootOnlyNS.GetAttr(ctx, ino)
}

func (n *countingNS) Lookup(ctx context.Context, dir meta.Ino, name string) (meta.Attr, error) {
	n.calls.Add(1)
	return n.rootOnlyNS.Lookup(ctx, dir, name)
}

// newGatedServer is newRPCTestServer with a fakeGate and a countingNS.
func newGatedServer(t *testing.T) (*Server, *fakeGate, *countingNS) {
	t.Helper()
	g, ns := &fakeGate{}, &countingNS{}
	cfg := DefaultConfig()
	cfg.Exports[0].Clients = append(cfg.Exports[0].Clients, newRPCTestServer(t).cfg.Exports[0].Clients...)
	cfg.Gate = g
	s, err := New(cfg, ns, nopData{}, []byte(strings.Repeat("k", 32)), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	return s, g, ns
}

// NFS status codes the gate answers with (RFC 1813).
const (
	statusROFS    = 30
	statusJukebox = 10008
)

// rootArgs are arguments starting with the root handle, padded with
// zeros: enough for every procedure to decode something.
func rootArgs(s *Server) []byte {
	return append(opaqueArg(s.handleFor(creds{}, rootAttr)), make([]byte, 64)...)
}

// TestGateEveryProcedure runs all 21 NFSv3 procedures under each posture:
// each is refused exactly when its class is, with the status the posture
// calls for, the failure result its procedure defines, and without a
// namespace read. Allowed calls run (or are forwarded to go-nfs).
func TestGateEveryProcedure(t *testing.T) {
	classOf := map[uint32]OpClass{
		procGetattr: OpRead, procSetattr: OpWrite, procLookup: OpRead, procAccess: OpRead,
		procReadlink: OpRead, procRead: OpRead, procWrite: OpWrite, procCreate: OpWrite,
		procMkdir: OpWrite, procSymlink: OpWrite, procMknod: OpWrite, procRemove: OpRemove,
		procRmdir: OpRemove, procRename: OpWrite, procLink: OpWrite, procReadDir: OpRead,
		procReadDirPlus: OpRead, procFSStat: OpRead, procFSInfo: OpRead, procPathconf: OpRead,
		procCommit: OpWrite,
	}
	// Words of FALSE after the status of each failure result (RFC 1813).
	failWords := map[uint32]int{procGetattr: 0, procRename: 4, procLink: 3}
	for _, p := range []uint32{procSetattr, procWrite, procCreate, procMkdir, procSymlink, procMknod, procRemove, procRmdir, procCommit} {
		failWords[p] = 2
	}
	refused := map[int]map[OpClass]uint32{ // posture → class → status
		gateServe:        {},
		gateRefuseWrites: {OpWrite: statusROFS},
		gateReadOnly:     {OpWrite: statusROFS, OpRemove: statusROFS},
		gateFreeze:       {OpRead: statusJukebox, OpWrite: statusJukebox, OpRemove: statusJukebox},
	}
	s, g, ns := newGatedServer(t)
	ctx := context.Background()
	o := tcpOrigin(allServices, testEndpoints())
	for mode, byClass := range refused {
		g.mode.Store(int32(mode))
		for proc := uint32(1); proc <= maxNFSProc; proc++ {
			class, ok := classOf[proc]
			if !ok {
				t.Fatalf("procedure %d has no class in the test", proc)
			}
			if procGates[proc].class != class {
				t.Errorf("procedure %d: class %v, want %v", proc, procGates[proc].class, class)
			}
			name := fmt.Sprintf("%s: procedure %d (%v)", gateNames[mode], proc, class)
			before := ns.calls.Load()
			reply, forward := s.dispatch(ctx, callRecord(proc, progNFS, 3, proc, rootArgs(s)), o)
			status, refuse := byClass[class]
			if !refuse {
				if !forward && len(reply) >= 28 && binary.BigEndian.Uint32(reply[20:]) == acceptSuccess {
					if got := binary.BigEndian.Uint32(reply[24:]); got == statusROFS || got == statusJukebox {
						t.Errorf("%s: refused with status %d", name, got)
					}
				}
				continue
			}
			if forward {
				t.Errorf("%s: forwarded to go-nfs, want refused", name)
				continue
			}
			fail := failWords[proc]
			if fail == 0 && proc != procGetattr {
				fail = 1 // a post_op_attr
			}
			want := binary.BigEndian.AppendUint32(unhex(t, successHeader(fmt.Sprintf("%08x", proc))), status)
			want = append(want, make([]byte, 4*fail)...)
			wantBytes(t, name, reply, want)
			if n := ns.calls.Load() - before; n != 0 {
				t.Errorf("%s: refused after %d namespace reads", name, n)
			}
		}
	}
}

// A read-only cluster answers reads and refuses a write with ROFS; ACCESS
// grants no modify right.
func TestGateReadOnly(t *testing.T) {
	s, g, _ := newGatedServer(t)
	g.mode.Store(gateReadOnly)
	ctx := context.Background()
	o := tcpOrigin(allServices, testEndpoints())
	fh := opaqueArg(s.handleFor(creds{}, rootAttr))
	call := func(proc uint32, args []byte) []byte {
		reply, forward := s.dispatch(ctx, sysCall(9, progNFS, 3, proc, 0, 0, args), o)
		if forward {
			t.Fatalf("procedure %d forwarded", proc)
		}
		return reply
	}

	if got := nfsStatus(t, call(procGetattr, fh)); got != 0 {
		t.Errorf("GETATTR under read-only: status %d", got)
	}
	lookup := append(append([]byte{}, fh...), opaqueArg([]byte("f"))...)
	if got := nfsStatus(t, call(procLookup, lookup)); got != 2 /* NOENT: it ran */ {
		t.Errorf("LOOKUP under read-only: status %d, want NOENT", got)
	}
	// WRITE: file handle, offset, count, FILE_SYNC, data.
	write := append(append([]byte{}, fh...), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2)
	write = append(write, opaqueArg([]byte("x"))...)
	if got := nfsStatus(t, call(procWrite, write)); got != statusROFS {
		t.Errorf("WRITE under read-only: status %d, want ROFS", got)
	}
	// ACCESS as root asking for everything: read, lookup only.
	access := append(append([]byte{}, fh...), 0, 0, 0, 0x3f)
	reply := call(procAccess, access)
	if got := nfsStatus(t, reply); got != 0 {
		t.Fatalf("ACCESS under read-only: status %d", got)
	}
	if got := binary.BigEndian.Uint32(reply[len(reply)-4:]); got != accessRead|accessLookup {
		t.Errorf("ACCESS under read-only grants %#x, want read and lookup", got)
	}
	g.mode.Store(gateRefuseWrites)
	reply = call(procAccess, access)
	if got := binary.BigEndian.Uint32(reply[len(reply)-4:]); got != accessRead|accessLookup|accessDelete {
		t.Errorf("ACCESS under refuse-writes grants %#x, want read, lookup and delete", got)
	}
	g.mode.Store(gateServe)
	reply = call(procAccess, access)
	if got := binary.BigEndian.Uint32(reply[len(reply)-4:]); got != 0x3f&^accessExecute {
		t.Errorf("ACCESS when serving grants %#x", got)
	}
}

// Frozen, every NFS call but NULL gets JUKEBOX; NULL, MOUNT and the
// portmapper are still answered. A client no export admits still gets
// ACCES, not the posture.
func TestGateFreeze(t *testing.T) {
	s, g, _ := newGatedServer(t)
	g.mode.Store(gateFreeze)
	ctx := context.Background()
	o := tcpOrigin(allServices, testEndpoints())
	fh := opaqueArg(s.handleFor(creds{}, rootAttr))

	for _, proc := range []uint32{procGetattr, procRead, procReadDirPlus, procFSStat, procPathconf, procWrite, procCommit} {
		reply, forward := s.dispatch(ctx, callRecord(1, progNFS, 3, proc, rootArgs(s)), o)
		if forward {
			t.Errorf("procedure %d forwarded under freeze", proc)
			continue
		}
		if got := nfsStatus(t, reply); got != statusJukebox {
			t.Errorf("procedure %d under freeze: status %d, want JUKEBOX", proc, got)
		}
	}
	if reply, forward := s.dispatch(ctx, callRecord(2, progNFS, 3, 0, nil), o); !forward || reply != nil {
		t.Errorf("NFS NULL under freeze: forwarded %v, reply %x", forward, reply)
	}
	reply, _ := s.dispatch(ctx, callRecord(3, progMount, 3, mountProcMnt, opaqueArg([]byte("/"))), o)
	if got := nfsStatus(t, reply); got != mnt3OK {
		t.Errorf("MNT under freeze: status %d", got)
	}
	reply, _ = s.dispatch(ctx, callRecord(4, progMount, 3, mountProcNull, nil), o)
	wantBytes(t, "MOUNT NULL under freeze", reply, unhex(t, successHeader("00000004")))
	reply, _ = s.dispatch(ctx, callRecord(5, progPortmap, 2, pmapProcGetport, pmapArgs(progNFS, 3, ipProtoTCP)), o)
	wantBytes(t, "GETPORT under freeze", reply, unhex(t, successHeader("00000005")+" 00000801"))

	stranger := originFrom("172.16.0.1")
	reply, _ = s.dispatch(ctx, callRecord(6, progNFS, 3, procGetattr, fh), stranger)
	if got := nfsStatus(t, reply); got != 13 {
		t.Errorf("GETATTR from a client in no export under freeze: status %d, want ACCES", got)
	}
}

// Over a real connection: under read-only, go-nfs still serves FSSTAT
// while COMMIT, also go-nfs's, is refused before reaching it; the gate
// lifts by itself with the posture.
func TestGateForwardedOverTCP(t *testing.T) {
	s, g, _ := newGatedServer(t)
	g.mode.Store(gateReadOnly)
	ls, _ := startServing(t, s)
	c := dialRPC(t, ls.Addr().String())
	defer c.Close()
	fh := opaqueArg(s.handleFor(creds{}, rootAttr))

	if got := nfsStatus(t, c.call(t, callRecord(1, progNFS, 3, procFSStat, fh))); got != 0 {
		t.Errorf("FSSTAT under read-only: status %d", got)
	}
	commit := append(append([]byte{}, fh...), make([]byte, 12)...) // offset, count
	wantBytes(t, "COMMIT under read-only", c.call(t, callRecord(2, progNFS, 3, procCommit, commit)),
		unhex(t, successHeader("00000002")+" 0000001e 00000000 00000000"))
	wantBytes(t, "NULL under read-only", c.call(t, callRecord(3, progNFS, 3, 0, nil)), unhex(t, successHeader("00000003")))

	g.mode.Store(gateFreeze)
	if got := nfsStatus(t, c.call(t, callRecord(4, progNFS, 3, procFSStat, fh))); got != statusJukebox {
		t.Errorf("FSSTAT under freeze: status %d, want JUKEBOX", got)
	}
	g.mode.Store(gateServe)
	if got := nfsStatus(t, c.call(t, callRecord(5, progNFS, 3, procCommit, commit))); got != 0 {
		t.Errorf("COMMIT once the posture lifted: status %d", got)
	}
}

func TestGateErrorMapping(t *testing.T) {
	for _, c := range []struct {
		err  error
		want uint32
	}{
		{ErrWritesRefused, statusROFS},
		{fmt.Errorf("posture: %w", ErrWritesRefused), statusROFS},
		{ErrFrozen, statusJukebox},
		{fmt.Errorf("posture: %w", ErrFrozen), statusJukebox},
	} {
		if got := uint32(statusOf(c.err)); got != c.want {
			t.Errorf("statusOf(%v) = %d, want %d", c.err, got, c.want)
		}
	}
}
