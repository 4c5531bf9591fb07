package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"time"

	nfsc "github.com/willscott/go-nfs-client/nfs"
	"github.com/willscott/go-nfs-client/nfs/rpc"
	"github.com/willscott/go-nfs-client/nfs/xdr"
)

// RPC program numbers and procedures not exported by go-nfs-client.
const (
	mountProg     = 100005
	mountVers     = 3
	mountProcMnt  = 1
	mountProcUmnt = 3

	createUnchecked = 0
	stableUnstable  = 0
	stableFileSync  = 2
	nfsProcCommit   = 21
)

// nfsTarget is where and as whom the NFS conns connect.
type nfsTarget struct {
	nfsAddr   string
	mountAddr string
	export    string
	timeout   time.Duration
	auth      rpc.Auth
	rootFH    []byte
	dirMax    uint32 // READDIRPLUS maxcount
	unstable  bool   // writeBackAt sends UNSTABLE WRITEs
}

// mountNFS asks the MOUNT service at mountAddr for the export's root handle
// and FSINFO, and returns a target that dials NFS conns to nfsAddr.
func mountNFS(ctx context.Context, nfsAddr, mountAddr, export string, timeout time.Duration) (*nfsTarget, error) {
	t := &nfsTarget{
		nfsAddr:   nfsAddr,
		mountAddr: mountAddr,
		export:    export,
		timeout:   timeout,
		auth:      rpc.NewAuthUnix("wormhole-bench", uint32(os.Getuid()), uint32(os.Getgid())).Auth(),
	}
	mc, err := dialRPC(ctx, "MOUNT", mountAddr, timeout)
	if err != nil {
		return nil, err
	}
	defer mc.close()
	type mntArgs struct {
		rpc.Header
		Dirpath string
	}
	hdr := rpc.Header{Rpcvers: 2, Prog: mountProg, Vers: mountVers, Proc: mountProcMnt, Cred: t.auth, Verf: rpc.AuthNull}
	res, err := mc.call(ctx, "MNT", &mntArgs{Header: hdr, Dirpath: export})
	if err != nil {
		return nil, err
	}
	status, err := xdr.ReadUint32(res)
	if err != nil {
		return nil, fmt.Errorf("MNT %s on %s: decode reply: %w", export, mountAddr, err)
	}
	if status != 0 {
		return nil, fmt.Errorf("MNT %s on %s: mount status %d (2 is no such export, 13 is access denied)", export, mountAddr, status)
	}
	if t.rootFH, err = xdr.ReadOpaque(res); err != nil {
		return nil, fmt.Errorf("MNT %s on %s: decode handle: %w", export, mountAddr, err)
	}
	// The mount is stateless for NFSv3 servers; UMNT only tidies their
	// table of mounts (showmount). A failure here changes nothing.
	hdr.Proc = mountProcUmnt
	_, _ = mc.call(ctx, "UMNT", &mntArgs{Header: hdr, Dirpath: export})

	c, err := t.dial(ctx)
	if err != nil {
		return nil, err
	}
	defer c.close()
	info, err := c.(*nfsConn).fsinfo(ctx)
	if err != nil {
		return nil, err
	}
	if info.WTMax < ioSize || info.RTMax < ioSize {
		return nil, fmt.Errorf("%s: server allows READ %d and WRITE %d bytes; the benchmark needs %d", nfsAddr, info.RTMax, info.WTMax, ioSize)
	}
	// Like the Linux client: READDIRPLUS maxcount follows the server's
	// preferred size, within bounds.
	t.dirMax = min(max(info.DTPref, 8<<10), 1<<20)
	return t, nil
}

// dial opens a new NFS connection.
func (t *nfsTarget) dial(ctx context.Context) (conn, error) {
	rc, err := dialRPC(ctx, "NFS", t.nfsAddr, t.timeout)
	if err != nil {
		return nil, err
	}
	return &nfsConn{rpcConn: rc, t: t}, nil
}

// rpcConn is one ONC RPC connection over TCP, used by one goroutine at a
// time: calls and replies are encoded with go-nfs-client's XDR and RPC
// header types, framed with standard record marking. It replaces
// go-nfs-client's rpc.Client, whose calls cannot be given a deadline
// (closing it under a pending call can panic on a double channel close).
type rpcConn struct {
	conn    net.Conn
	r       *bufio.Reader
	addr    string
	timeout time.Duration
	xid     uint32
	buf     bytes.Buffer
	broken  error // set once a call failed mid-way: the stream is unusable
}

// dialRPC connects to addr, failing within the timeout with the address
// named.
func dialRPC(ctx context.Context, service, addr string, timeout time.Duration) (*rpcConn, error) {
	d := net.Dialer{Timeout: min(timeout, 10*time.Second)}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s server %s unreachable: %w", service, addr, err)
	}
	return &rpcConn{conn: c, r: bufio.NewReaderSize(c, 64<<10), addr: addr, timeout: timeout, xid: rand.Uint32()}, nil
}

// rpcMessage is an RPC call as go-nfs-client encodes it.
type rpcMessage struct {
	Xid     uint32
	Msgtype uint32
	Body    any
}

// call sends one RPC and reads its reply, within the deadline and ctx.
// It returns the reply body after a successful accept status. On any
// transport error the connection is closed and the conn unusable.
func (r *rpcConn) call(ctx context.Context, op string, args any) (io.ReadSeeker, error) {
	if r.broken != nil {
		return nil, fmt.Errorf("%s on %s: %w", op, r.addr, r.broken)
	}
	res, err := r.roundTrip(ctx, args)
	if err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		} else if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
			err = fmt.Errorf("no reply within %v: %w", r.timeout, err)
		}
		r.broken = err
		r.conn.Close()
		return nil, fmt.Errorf("%s on %s: %w", op, r.addr, err)
	}
	return acceptedBody(res, op, r.addr)
}

func (r *rpcConn) roundTrip(ctx context.Context, args any) (*bytes.Reader, error) {
	stop := context.AfterFunc(ctx, func() { r.conn.SetDeadline(time.Now()) })
	defer stop()
	if err := r.conn.SetDeadline(time.Now().Add(r.timeout)); err != nil {
		return nil, err
	}
	r.xid++
	r.buf.Reset()
	r.buf.Write([]byte{0, 0, 0, 0}) // record mark, set below
	if err := xdr.Write(&r.buf, &rpcMessage{Xid: r.xid, Body: args}); err != nil {
		return nil, fmt.Errorf("encode call: %w", err)
	}
	b := r.buf.Bytes()
	binary.BigEndian.PutUint32(b, uint32(len(b)-4)|1<<31)
	if _, err := r.conn.Write(b); err != nil {
		return nil, err
	}
	for {
		rec, err := r.readRecord()
		if err != nil {
			return nil, err
		}
		if len(rec) >= 4 && binary.BigEndian.Uint32(rec) == r.xid {
			return bytes.NewReader(rec[4:]), nil
		}
		// A reply to an earlier, abandoned call: skip it.
	}
}

// readRecord reads one record, joining its fragments.
func (r *rpcConn) readRecord() ([]byte, error) {
	var rec []byte
	for {
		var hdr [4]byte
		if _, err := io.ReadFull(r.r, hdr[:]); err != nil {
			return nil, err
		}
		h := binary.BigEndian.Uint32(hdr[:])
		n := int(h &^ (1 << 31))
		if len(rec)+n > 64<<20 {
			return nil, fmt.Errorf("reply record over 64 MiB")
		}
		start := len(rec)
		rec = append(rec, make([]byte, n)...)
		if _, err := io.ReadFull(r.r, rec[start:]); err != nil {
			return nil, err
		}
		if h&(1<<31) != 0 {
			return rec, nil
		}
	}
}

// acceptedBody checks a reply's header (after the xid) and returns the
// procedure's result.
func acceptedBody(res *bytes.Reader, op, addr string) (io.ReadSeeker, error) {
	var h struct {
		Msgtype    uint32
		ReplyStat  uint32
		VerfFlavor uint32
		Verf       []byte
		AcceptStat uint32
	}
	if err := xdr.Read(res, &h.Msgtype); err != nil {
		return nil, fmt.Errorf("%s on %s: decode reply: %w", op, addr, err)
	}
	if err := xdr.Read(res, &h.ReplyStat); err != nil || h.Msgtype != 1 {
		return nil, fmt.Errorf("%s on %s: not an RPC reply (%v)", op, addr, err)
	}
	if h.ReplyStat != 0 {
		return nil, fmt.Errorf("%s on %s: RPC call denied", op, addr)
	}
	if err := xdr.Read(res, &h.VerfFlavor); err != nil {
		return nil, fmt.Errorf("%s on %s: decode reply: %w", op, addr, err)
	}
	var err error
	if h.Verf, err = xdr.ReadOpaque(res); err != nil {
		return nil, fmt.Errorf("%s on %s: decode reply: %w", op, addr, err)
	}
	if err := xdr.Read(res, &h.AcceptStat); err != nil {
		return nil, fmt.Errorf("%s on %s: decode reply: %w", op, addr, err)
	}
	if h.AcceptStat != 0 {
		// 1 PROG_UNAVAIL, 2 PROG_MISMATCH, 3 PROC_UNAVAIL, 4 GARBAGE_ARGS, 5 SYSTEM_ERR
		return nil, fmt.Errorf("%s on %s: RPC accept status %d", op, addr, h.AcceptStat)
	}
	return res, nil
}

func (r *rpcConn) close() error {
	if r.broken == nil {
		r.broken = errors.New("connection closed")
	}
	return r.conn.Close()
}

// nfsConn issues NFSv3 procedures by file handle over one connection.
type nfsConn struct {
	*rpcConn
	t       *nfsTarget
	verf    uint64 // write verifier of the UNSTABLE WRITEs not committed yet
	hasVerf bool
}

func (c *nfsConn) root() handle { return handle(c.t.rootFH) }

func (c *nfsConn) header(proc uint32) rpc.Header {
	return rpc.Header{Rpcvers: 2, Prog: nfsc.Nfs3Prog, Vers: nfsc.Nfs3Vers, Proc: proc, Cred: c.t.auth, Verf: rpc.AuthNull}
}

// nfsCall sends an NFS procedure and consumes the nfsstat3, turning a
// non-OK status into an error (os.ErrNotExist, os.ErrExist, ... or
// *nfs.Error).
func (c *nfsConn) nfsCall(ctx context.Context, op string, args any) (io.ReadSeeker, error) {
	res, err := c.call(ctx, op, args)
	if err != nil {
		return nil, err
	}
	status, err := xdr.ReadUint32(res)
	if err != nil {
		return nil, fmt.Errorf("%s on %s: decode status: %w", op, c.addr, err)
	}
	if err := nfsc.NFS3Error(status); err != nil {
		return nil, fmt.Errorf("%s on %s: %w", op, c.addr, err)
	}
	return res, nil
}

func decode(res io.Reader, op, addr string, v any) error {
	if err := xdr.Read(res, v); err != nil {
		return fmt.Errorf("%s on %s: decode reply: %w", op, addr, err)
	}
	return nil
}

func toAttr(f *nfsc.Fattr) attr { return attr{Dir: f.Type == nfsc.NF3Dir, Size: int64(f.Filesize)} }

func (c *nfsConn) fsinfo(ctx context.Context) (*nfsc.FSInfo, error) {
	type args struct {
		rpc.Header
		FH []byte
	}
	res, err := c.nfsCall(ctx, "FSINFO", &args{c.header(nfsc.NFSProc3FSInfo), c.t.rootFH})
	if err != nil {
		return nil, err
	}
	info := new(nfsc.FSInfo)
	return info, decode(res, "FSINFO", c.addr, info)
}

func (c *nfsConn) mkdir(ctx context.Context, dir handle, name string) (handle, error) {
	type args struct {
		rpc.Header
		Where nfsc.Diropargs3
		Attrs nfsc.Sattr3
	}
	a := &args{Header: c.header(nfsc.NFSProc3Mkdir), Where: nfsc.Diropargs3{FH: []byte(dir), Filename: name}}
	a.Attrs.Mode = nfsc.SetMode{SetIt: true, Mode: 0o755}
	return c.made(ctx, "MKDIR "+name, a, dir, name)
}

func (c *nfsConn) create(ctx context.Context, dir handle, name string) (handle, error) {
	type how struct {
		Mode uint32
		Attr nfsc.Sattr3
	}
	type args struct {
		rpc.Header
		Where nfsc.Diropargs3
		How   how
	}
	a := &args{Header: c.header(nfsc.NFSProc3Create), Where: nfsc.Diropargs3{FH: []byte(dir), Filename: name}}
	a.How.Mode = createUnchecked // what open(O_CREAT) without O_EXCL sends
	a.How.Attr.Mode = nfsc.SetMode{SetIt: true, Mode: 0o644}
	return c.made(ctx, "CREATE "+name, a, dir, name)
}

// made decodes a CREATE or MKDIR reply; when the server returns no handle
// (allowed by RFC 1813) it asks with LOOKUP, as clients do.
func (c *nfsConn) made(ctx context.Context, op string, args any, dir handle, name string) (handle, error) {
	res, err := c.nfsCall(ctx, op, args)
	if err != nil {
		return "", err
	}
	var fh nfsc.PostOpFH3
	if err := decode(res, op, c.addr, &fh); err != nil {
		return "", err
	}
	if fh.IsSet && len(fh.FH) > 0 {
		return handle(fh.FH), nil
	}
	h, _, err := c.lookup(ctx, dir, name)
	return h, err
}

func (c *nfsConn) lookup(ctx context.Context, dir handle, name string) (handle, attr, error) {
	type args struct {
		rpc.Header
		What nfsc.Diropargs3
	}
	type ok struct {
		FH   []byte
		Attr nfsc.PostOpAttr
	}
	op := "LOOKUP " + name
	res, err := c.nfsCall(ctx, op, &args{c.header(nfsc.NFSProc3Lookup), nfsc.Diropargs3{FH: []byte(dir), Filename: name}})
	if err != nil {
		return "", attr{}, err
	}
	var r ok
	if err := decode(res, op, c.addr, &r); err != nil {
		return "", attr{}, err
	}
	if !r.Attr.IsSet {
		return "", attr{}, fmt.Errorf("%s on %s: reply has no attributes", op, c.addr)
	}
	return handle(r.FH), toAttr(&r.Attr.Attr), nil
}

func (c *nfsConn) getattr(ctx context.Context, h handle) (attr, error) {
	type args struct {
		rpc.Header
		FH []byte
	}
	res, err := c.nfsCall(ctx, "GETATTR", &args{c.header(nfsc.NFSProc3GetAttr), []byte(h)})
	if err != nil {
		return attr{}, err
	}
	var f nfsc.Fattr
	if err := decode(res, "GETATTR", c.addr, &f); err != nil {
		return attr{}, err
	}
	return toAttr(&f), nil
}

func (c *nfsConn) writeAt(ctx context.Context, h handle, p []byte, off int64) error {
	return c.write(ctx, h, p, off, stableFileSync)
}

func (c *nfsConn) writeBackAt(ctx context.Context, h handle, p []byte, off int64) error {
	if !c.t.unstable {
		return c.writeAt(ctx, h, p, off)
	}
	return c.write(ctx, h, p, off, stableUnstable)
}

// commit sends COMMIT for the whole file; the verifier must be the one of
// the UNSTABLE WRITEs (else the server restarted and lost them).
func (c *nfsConn) commit(ctx context.Context, h handle) error {
	if !c.t.unstable {
		return nil
	}
	type args struct {
		rpc.Header
		FH     []byte
		Offset uint64
		Count  uint32
	}
	type ok struct {
		Wcc  nfsc.WccData
		Verf uint64
	}
	res, err := c.nfsCall(ctx, "COMMIT", &args{c.header(nfsProcCommit), []byte(h), 0, 0})
	if err != nil {
		return err
	}
	var r ok
	if err := decode(res, "COMMIT", c.addr, &r); err != nil {
		return err
	}
	if c.hasVerf && r.Verf != c.verf {
		return fmt.Errorf("COMMIT on %s: write verifier changed (server restarted): unstable writes lost", c.addr)
	}
	c.hasVerf = false
	return nil
}

// write sends WRITEs of p at off with the stable_how given.
func (c *nfsConn) write(ctx context.Context, h handle, p []byte, off int64, how uint32) error {
	type args struct {
		rpc.Header
		FH       []byte
		Offset   uint64
		Count    uint32
		How      uint32
		Contents []byte
	}
	type ok struct {
		Wcc       nfsc.WccData
		Count     uint32
		Committed uint32
		Verf      uint64
	}
	for len(p) > 0 {
		res, err := c.nfsCall(ctx, "WRITE", &args{c.header(nfsc.NFSProc3Write), []byte(h), uint64(off), uint32(len(p)), how, p})
		if err != nil {
			return err
		}
		var r ok
		if err := decode(res, "WRITE", c.addr, &r); err != nil {
			return err
		}
		if r.Committed < how || r.Committed > stableFileSync {
			return fmt.Errorf("WRITE on %s: asked stable_how %d, server committed at level %d", c.addr, how, r.Committed)
		}
		if r.Committed == stableUnstable {
			if c.hasVerf && r.Verf != c.verf {
				return fmt.Errorf("WRITE on %s: write verifier changed (server restarted): unstable writes lost", c.addr)
			}
			c.verf, c.hasVerf = r.Verf, true
		}
		if r.Count == 0 || int(r.Count) > len(p) {
			return fmt.Errorf("WRITE on %s: server wrote %d of %d bytes", c.addr, r.Count, len(p))
		}
		p = p[r.Count:]
		off += int64(r.Count)
	}
	return nil
}

func (c *nfsConn) readAt(ctx context.Context, h handle, p []byte, off int64) error {
	type args struct {
		rpc.Header
		FH     []byte
		Offset uint64
		Count  uint32
	}
	type ok struct {
		Attr  nfsc.PostOpAttr
		Count uint32
		EOF   uint32
	}
	for len(p) > 0 {
		res, err := c.nfsCall(ctx, "READ", &args{c.header(nfsc.NFSProc3Read), []byte(h), uint64(off), uint32(len(p))})
		if err != nil {
			return err
		}
		var r ok
		if err := decode(res, "READ", c.addr, &r); err != nil {
			return err
		}
		n, err := xdr.ReadUint32(res) // opaque length
		if err != nil {
			return fmt.Errorf("READ on %s: decode reply: %w", c.addr, err)
		}
		if n > uint32(len(p)) || n != r.Count {
			return fmt.Errorf("READ on %s: %d bytes in reply (count %d) for %d asked", c.addr, n, r.Count, len(p))
		}
		if _, err := io.ReadFull(res, p[:n]); err != nil {
			return fmt.Errorf("READ on %s: decode data: %w", c.addr, err)
		}
		if n == 0 {
			return fmt.Errorf("READ on %s at %d: %w (%d bytes missing)", c.addr, off, io.ErrUnexpectedEOF, len(p))
		}
		p = p[n:]
		off += int64(n)
	}
	return nil
}

// listDir pages through dir with READDIRPLUS until EOF. Unlike
// go-nfs-client's ReadDirPlus it lists once, with a maxcount like the
// Linux client's, and does not retry until the directory's mtime settles.
func (c *nfsConn) listDir(ctx context.Context, dir handle) ([]dirEntry, error) {
	type args struct {
		rpc.Header
		FH         []byte
		Cookie     uint64
		CookieVerf uint64
		DirCount   uint32
		MaxCount   uint32
	}
	type head struct {
		DirAttr    nfsc.PostOpAttr
		CookieVerf uint64
	}
	type item struct {
		IsSet bool           `xdr:"union"`
		Entry nfsc.EntryPlus `xdr:"unioncase=1"`
	}
	var out []dirEntry
	var cookie, verf uint64
	for page := 0; ; page++ {
		op := fmt.Sprintf("READDIRPLUS page %d", page)
		res, err := c.nfsCall(ctx, op, &args{c.header(nfsc.NFSProc3ReadDirPlus), []byte(dir), cookie, verf, c.t.dirMax / 8, c.t.dirMax})
		if err != nil {
			return nil, err
		}
		var h head
		if err := decode(res, op, c.addr, &h); err != nil {
			return nil, err
		}
		n := 0
		for {
			var it item
			if err := decode(res, op, c.addr, &it); err != nil {
				return nil, err
			}
			if !it.IsSet {
				break
			}
			n++
			e := &it.Entry
			cookie = e.Cookie
			if e.FileName == "." || e.FileName == ".." {
				continue
			}
			out = append(out, dirEntry{Name: e.FileName, Attr: toAttr(&e.Attr.Attr), HasAttr: e.Attr.IsSet})
		}
		var eof bool
		if err := decode(res, op, c.addr, &eof); err != nil {
			return nil, err
		}
		if eof {
			return out, nil
		}
		if n == 0 {
			return nil, fmt.Errorf("%s on %s: no entries and no EOF", op, c.addr)
		}
		verf = h.CookieVerf
	}
}

func (c *nfsConn) remove(ctx context.Context, dir handle, name string) error {
	return c.unlink(ctx, nfsc.NFSProc3Remove, "REMOVE "+name, dir, name)
}

func (c *nfsConn) rmdir(ctx context.Context, dir handle, name string) error {
	return c.unlink(ctx, nfsc.NFSProc3RmDir, "RMDIR "+name, dir, name)
}

func (c *nfsConn) unlink(ctx context.Context, proc uint32, op string, dir handle, name string) error {
	type args struct {
		rpc.Header
		Object nfsc.Diropargs3
	}
	_, err := c.nfsCall(ctx, op, &args{c.header(proc), nfsc.Diropargs3{FH: []byte(dir), Filename: name}})
	return err
}
