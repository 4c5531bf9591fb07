package nfsfront

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/wormhole-fs/wormhole/chunker/chunk"
	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
)

// READ, WRITE and FSINFO: the data path. Served here rather than by go-nfs,
// which resolves the file three times per WRITE, reports atime and ctime
// as mtime, and advertises 1 GiB transfer sizes.

// maxIO is the largest READ or WRITE payload, advertised in FSINFO. Linux
// clients cap rsize and wsize at 1 MiB anyway.
const maxIO = 1 << 20

// fileSync is the stable_how that says data and metadata are on stable
// storage (RFC 1813 3.3.7); the lower values are UNSTABLE and DATA_SYNC.
const fileSync = 2

func (s *Server) read(ctx context.Context, c creds, d *xdrDecoder, e *xdrEncoder) {
	fh := d.opaque(maxFHSize)
	off := d.u64()
	count := d.u32()
	if d.err != nil {
		return
	}
	a, err := s.attrFor(ctx, c, fh)
	var buf []byte
	var n int
	eof := false
	if err == nil {
		buf, n, eof, err = s.readData(ctx, c, a, off, count)
	}
	e.u32(uint32(statusOf(err)))
	encodePostOp(e, a, a.Ino != 0)
	if err != nil {
		return
	}
	e.u32(uint32(n))
	e.bool(eof)
	e.opaque(buf[:n])
}

func (s *Server) readData(ctx context.Context, c creds, a meta.Attr, off uint64, count uint32) ([]byte, int, bool, error) {
	switch {
	case a.Type == meta.TypeDir:
		return nil, 0, false, fmt.Errorf("read directory %d: %w", a.Ino, meta.ErrIsDir)
	case a.Type != meta.TypeRegular:
		return nil, 0, false, fmt.Errorf("read inode %d: %w", a.Ino, meta.ErrInvalid)
	case !allowed(a, c, permRead) && !allowed(a, c, permExec) && c.uid != a.UID:
		// The owner may read whatever the mode says (a client opened the
		// file before a chmod), and execute permission implies reading:
		// the client loads the program it was allowed to run.
		return nil, 0, false, fmt.Errorf("read inode %d: %w", a.Ino, errAccess)
	}
	if off >= a.Size {
		return nil, 0, true, nil
	}
	n := uint64(min(count, maxIO))
	n = min(n, a.Size-off)
	buf := make([]byte, n)
	got, err := s.handler.fs.data.ReadAt(withCopies(ctx, a), a.Ino, a.Size, buf, int64(off))
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, 0, false, err
	}
	return buf, got, off+uint64(got) >= a.Size, nil
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
			w.post, err = s.handler.fs.data.WriteAt(withCopies(ctx, a), a.Ino, data[:count], int64(off))
			if err == nil {
				w.post, err = s.dropSetID(ctx, c, w.post)
			}
			w.hasPost = err == nil
		}
	}
	e.u32(uint32(statusOf(err)))
	w.encode(e)
	if err != nil {
		return
	}
	// Every write is durable before this reply: chunks fsynced, chunk map
	// committed in etcd. So the answer is always FILE_SYNC.
	e.u32(count)
	e.u32(fileSync)
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
