package protocol

import (
	"bytes"
	"fmt"
	"testing"

	nfsc "github.com/willscott/go-nfs-client/nfs"
	"github.com/willscott/go-nfs-client/nfs/rpc"
	"github.com/willscott/go-nfs-client/nfs/xdr"
)

// Times a client sets between its UNSTABLE writes and their COMMIT (cp -p,
// rsync -t and tar do, from clients that do not flush first) stay: the
// commit of the pending writes does not stamp its own mtime over them.
func TestSetTimesAfterUnstableWrites(t *testing.T) {
	n := startNode(t, t.TempDir())
	v := mount(t, n.addr, 0, 0)
	fh, err := v.Create("/copied", 0o644)
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("copied with its times "), 100)
	if err := call(v, nfsc.NFSProc3Write, struct {
		FH     []byte
		Offset uint64
		Count  uint32
		How    uint32 // UNSTABLE
		Data   []byte
	}{fh, 0, uint32(len(data)), 0, data}); err != nil {
		t.Fatalf("UNSTABLE WRITE: %v", err)
	}
	want := nfsc.NFS3Time{Seconds: 1_000_000_000, Nseconds: 5}
	if _, err := v.SetAttr(fh, nfsc.Sattr3{Mtime: nfsc.SetTime{SetIt: nfsc.SetToClientTime, Time: want}}); err != nil {
		t.Fatalf("SETATTR mtime: %v", err)
	}
	if err := call(v, nfsc.NFSProc3Commit, struct {
		FH     []byte
		Offset uint64
		Count  uint32
	}{fh, 0, 0}); err != nil {
		t.Fatalf("COMMIT: %v", err)
	}
	a, err := v.GetAttr(fh)
	if err != nil {
		t.Fatal(err)
	}
	if a.Mtime != want || a.Filesize != uint64(len(data)) {
		t.Errorf("after UNSTABLE WRITE, SETATTR mtime and COMMIT: mtime %+v, size %d; want mtime %+v, size %d",
			a.Mtime, a.Filesize, want, len(data))
	}
	if got := readFile(t, v, "/copied"); !bytes.Equal(got, data) {
		t.Errorf("read back %d bytes, want the %d written", len(got), len(data))
	}
}

// call sends an NFSv3 procedure with args after the RPC header and checks
// the status that opens the reply.
func call(v *nfsc.Target, proc uint32, args any) error {
	res, err := v.Call(&struct {
		rpc.Header
		Args any
	}{
		Header: rpc.Header{
			Rpcvers: 2, Prog: nfsc.Nfs3Prog, Vers: nfsc.Nfs3Vers, Proc: proc,
			Cred: rpc.NewAuthUnix("testclient", 0, 0).Auth(), Verf: rpc.AuthNull,
		},
		Args: args,
	})
	if err != nil {
		return err
	}
	st, err := xdr.ReadUint32(res)
	if err != nil {
		return err
	}
	if st != nfsc.NFS3Ok {
		return fmt.Errorf("NFS status %d (%v)", st, nfsc.NFS3Error(st))
	}
	return nil
}
