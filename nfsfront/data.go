package nfsfront

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/wormhole-fs/wormhole/chunker/chunk"
	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
)

// READ, WRITE and FSINFO: the data path. Served here rather than by go-nfs,
// which resolves the file three times per WRITE, reports atime and ctime
// as mtime, and advertises 1 GiB transfer sizes.

// maxIO is the largest READ or WRITE payload, advertised in FSINFO. Linux
// clients cap rsize and wsize at 1 MiB anyway.
const maxIO = 1 << 20

// stable_how (RFC 1813 3.3.7): UNSTABLE lets the server keep the data in
// memory until COMMIT; DATA_SYNC and FILE_SYNC ask for it (and, for
// FILE_SYNC, the metadata) on stable storage before the reply.
const (
	unstable = 0
	fileSync = 2
)

// WriteBack is implemented by a Data that keeps UNSTABLE writes in memory
// until COMMIT (chunker.Files does). Without it every write is stable.
type WriteBack interface {
	// WriteUnstable writes file bytes, durably (stable true, with the new
	// attributes) or into memory until Commit (stable false).
	WriteUnstable(ctx context.Context, ino meta.Ino, p []byte, off int64) (attr meta.Attr, stable bool, err error)
	// Commit makes a file's uncommitted writes durable and returns the
	// new attributes (ok false: there were none).
	Commit(ctx context.Context, ino meta.Ino) (attr meta.Attr, ok bool, err error)
	// Pending reports a file's uncommitted writes: the end of the
	// furthest and the time of the last.
	Pending(ino meta.Ino) (size uint64, mtime int64, ok bool)
}

// writeBack returns the data layer's write-back, or nil.
func (s *Server) writeBack() WriteBack {
	wb, _ := s.handler.fs.data.(WriteBack)
	return wb
}

// withPending returns a with the uncommitted writes of this node shown:
// the size they reach and the time of the last one.
func withPending(data Data, a meta.Attr) meta.Attr {
	wb, ok := data.(WriteBack)
	if !ok || a.Type != meta.TypeRegular {
		return a
	}
	if size, mtime, ok := wb.Pending(a.Ino); ok {
		a.Size = max(a.Size, size)
		a.Mtime, a.Ctime = max(a.Mtime, mtime), max(a.Ctime, mtime)
	}
	return a
}

func (s *Server) read(ctx context.Context, c creds, d *xdrDecoder, e *xdrEncoder) {
	fh := d.opaque(maxFHSize)
	off := d.u64()
	count := d.u32()
	if d.err != nil {
		return
	}
	a, err := s.attrFor(ctx, c, fh)
	want := int(min(count, maxIO))
	if tail := replyTailOf(ctx); tail != nil && err == nil && want >= bigReadReply && s.readLent(ctx, c, a, off, want, tail, e) {
		return
	}
	// The reply is sized once, and the data read straight into the place
	// it takes in the reply: status, post_op_attr, count, eof and the
	// opaque's length come first (readReplyHead bytes), the data after.
	if need := len(e.b) + readReplyHead + want + 4; want >= bigReadReply && need <= replyBufSize {
		// A pooled buffer, returned once the reply is written
		// (releaseReply); its old bytes are all overwritten.
		e.b = append(s.replyBufs.get(), e.b...)
	} else {
		e.b = slices.Grow(e.b, readReplyHead+want+4)
	}
	dataAt := len(e.b) + readReplyHead
	var buf []byte
	var n int
	eof := false
	if err == nil {
		buf, n, eof, err = s.readData(ctx, c, a, off, count, e.b[dataAt:dataAt+want])
	}
	e.u32(uint32(statusOf(err)))
	encodePostOp(e, a, a.Ino != 0)
	if err != nil {
		return
	}
	e.u32(uint32(n))
	e.bool(eof)
	// When buf already sits where the opaque's bytes go, this copies it
	// onto itself (append moves overlapping memory correctly either way).
	e.opaque(buf[:n])
}

// readReplyHead is the size of a successful READ reply's results before
// the data: status, post_op_attr with attributes (4 + fattr3's 84 bytes),
// count, eof and the data's length.
const readReplyHead = 4 + 4 + 84 + 4 + 4 + 4

// readData reads count bytes at off of the file a for caller c, into
// scratch when it is large enough (else into a new buffer), and returns the
// buffer, the bytes read and whether they reach the end of the file.
func (s *Server) readData(ctx context.Context, c creds, a meta.Attr, off uint64, count uint32, scratch []byte) ([]byte, int, bool, error) {
	if err := readable(a, c); err != nil {
		return nil, 0, false, err
	}
	if off >= a.Size {
		return nil, 0, true, nil
	}
	n := uint64(min(count, maxIO))
	n = min(n, a.Size-off)
	buf := scratch
	if uint64(len(buf)) < n {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	got, err := s.handler.fs.data.ReadAt(withCopies(ctx, a), a.Ino, a.Size, buf, int64(off))
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, 0, false, err
	}
	return buf, got, off+uint64(got) >= a.Size, nil
}

// readable says whether caller c may read the file a.
func readable(a meta.Attr, c creds) error {
	switch {
	case a.Type == meta.TypeDir:
		return fmt.Errorf("read directory %d: %w", a.Ino, meta.ErrIsDir)
	case a.Type != meta.TypeRegular:
		return fmt.Errorf("read inode %d: %w", a.Ino, meta.ErrInvalid)
	case !allowed(a, c, permRead) && !allowed(a, c, permExec) && c.uid != a.UID:
		// The owner may read whatever the mode says (a client opened the
		// file before a chmod), and execute permission implies reading:
		// the client loads the program it was allowed to run.
		return fmt.Errorf("read inode %d: %w", a.Ino, errAccess)
	}
	return nil
}

// readLent answers a READ of want bytes at off of the file a with bytes
// the data path lends (see replyTail): the encoded reply ends with the
// opaque's length, and the bytes follow it on the wire from tail. It
// returns false, having encoded nothing, when the data path does not lend
// this range (or the read fails its checks): the caller then reads it.
func (s *Server) readLent(ctx context.Context, c creds, a meta.Attr, off uint64, want int, tail *replyTail, e *xdrEncoder) bool {
	dv, ok := s.handler.fs.data.(dataViewer)
	if !ok || readable(a, c) != nil || off >= a.Size {
		return false
	}
	data, release, ok, err := dv.ReadView(withCopies(ctx, a), a.Ino, a.Size, int64(off), want)
	if err != nil {
		e.u32(uint32(statusOf(err)))
		encodePostOp(e, a, true)
		return true
	}
	if !ok {
		return false
	}
	e.u32(uint32(statusOf(nil)))
	encodePostOp(e, a, true)
	e.u32(uint32(len(data)))
	e.bool(off+uint64(len(data)) >= a.Size)
	e.u32(uint32(len(data))) // the opaque's length; its bytes are the tail
	tail.data, tail.release = data, release
	return true
}

func (s *Server) write(ctx context.Context, c creds, d *xdrDecoder, e *xdrEncoder) {
	fh := d.opaque(maxFHSize)
	off := d.u64()
	count := d.u32()
	how := d.u32()
	data := d.opaque(maxIO)
	if d.err == nil && (how > fileSync || int(count) > len(data)) {
		d.err = fmt.Errorf("write: stable %d, count %d with %d bytes", how, count, len(data))
	}
	if d.err != nil {
		return
	}
	var w wcc
	a, err := s.attrFor(ctx, c, fh)
	if err == nil {
		w.pre, w.hasPre = a, true
		switch {
		case a.Type == meta.TypeDir:
			err = fmt.Errorf("write directory %d: %w", a.Ino, meta.ErrIsDir)
		case a.Type != meta.TypeRegular:
			err = fmt.Errorf("write inode %d: %w", a.Ino, meta.ErrInvalid)
		case c.readOnly:
			err = fmt.Errorf("write inode %d: %w", a.Ino, errReadOnly)
		case !allowed(a, c, permWrite) && c.uid != a.UID:
			err = fmt.Errorf("write inode %d: %w", a.Ino, errAccess)
		case off > 1<<62:
			err = fmt.Errorf("write at %d: %w", off, errFileTooBig)
		default:
			stable := true
			if wb := s.writeBack(); how == unstable && wb != nil {
				w.post, stable, err = wb.WriteUnstable(withCopies(ctx, a), a.Ino, data[:count], int64(off))
				if err == nil && !stable {
					w.post = withPending(s.handler.fs.data, a)
				}
			} else {
				// The size this node knows (with its uncommitted writes)
				// spares a chunk-map read when the write extends the file.
				hctx := chunk.WithSizeHint(withCopies(ctx, a), withPending(s.handler.fs.data, a).Size)
				w.post, err = s.handler.fs.data.WriteAt(hctx, a.Ino, data[:count], int64(off))
			}
			if err == nil {
				w.post, err = s.dropSetID(ctx, c, w.post)
			}
			w.hasPost = err == nil
			if stable {
				how = fileSync
			}
		}
	}
	e.u32(uint32(statusOf(err)))
	w.encode(e)
	if err != nil {
		return
	}
	// A stable write is durable before this reply: chunks fsynced, chunk
	// map committed in etcd, so it is FILE_SYNC whatever was asked. An
	// UNSTABLE one is in this node's memory until COMMIT; the verifier
	// (new on every start) tells the client when it must send it again.
	e.u32(count)
	e.u32(how)
	e.b = append(e.b, s.verifier[:]...)
}

// commit serves COMMIT: the file's uncommitted writes (all of them,
// whatever range is asked) are made durable before the reply.
func (s *Server) commit(ctx context.Context, c creds, d *xdrDecoder, e *xdrEncoder) {
	fh := d.opaque(maxFHSize)
	_ = d.u64() // offset
	_ = d.u32() // count
	if d.err != nil {
		return
	}
	var w wcc
	a, err := s.attrFor(ctx, c, fh)
	if err == nil {
		w.pre, w.hasPre = a, true
		w.post, w.hasPost = a, true
		if wb := s.writeBack(); wb != nil && a.Type == meta.TypeRegular {
			var done bool
			w.post, done, err = wb.Commit(withCopies(ctx, a), a.Ino)
			switch {
			case err != nil:
				w.hasPost = false
			case !done:
				w.post = a
			}
		}
	}
	e.u32(uint32(statusOf(err)))
	w.encode(e)
	if err != nil {
		return
	}
	e.b = append(e.b, s.verifier[:]...)
}

// FSINFO properties (RFC 1813 3.3.19).
const (
	fsfLink        = 0x01
	fsfSymlink     = 0x02
	fsfHomogeneous = 0x08
	fsfCanSetTime  = 0x10
)

func (s *Server) fsinfo(ctx context.Context, c creds, d *xdrDecoder, e *xdrEncoder) {
	fh := d.opaque(maxFHSize)
	if d.err != nil {
		return
	}
	a, err := s.attrFor(ctx, c, fh)
	e.u32(uint32(statusOf(err)))
	encodePostOp(e, a, err == nil)
	if err != nil {
		return
	}
	e.u32(maxIO)    // rtmax
	e.u32(maxIO)    // rtpref
	e.u32(4096)     // rtmult
	e.u32(maxIO)    // wtmax
	e.u32(maxIO)    // wtpref
	e.u32(4096)     // wtmult
	e.u32(64 << 10) // dtpref
	e.u64(1 << 62)  // maxfilesize
	e.u32(0)        // time_delta: nanosecond timestamps
	e.u32(1)
	e.u32(fsfLink | fsfSymlink | fsfHomogeneous | fsfCanSetTime)
}

// dropSetID clears setuid, and setgid where it means set-group-ID (group
// execute set), after a write by anyone but root, as local filesystems
// do: a modified program must not keep running as its owner.
func (s *Server) dropSetID(ctx context.Context, c creds, a meta.Attr) (meta.Attr, error) {
	clear := uint32(0o4000)
	if a.Mode&0o010 != 0 {
		clear |= 0o2000
	}
	if c.uid == 0 || a.Mode&clear == 0 {
		return a, nil
	}
	m := a.Mode &^ clear
	return s.handler.fs.ns.SetAttr(ctx, a.Ino, meta.SetAttrArgs{Mode: &m})
}

// withCopies tells the data path the inode's redundancy, which the
// attributes at hand carry, so it need not read them again.
func withCopies(ctx context.Context, a meta.Attr) context.Context {
	return chunk.WithCopies(ctx, int(a.Copies))
}
