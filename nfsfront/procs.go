package nfsfront

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	nfs "github.com/willscott/go-nfs"

	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
)

// Our own handlers for the NFSv3 procedures go-nfs v0.0.4 cannot serve
// correctly: it does not pass the caller's credentials (new files must be
// owned by the caller), reports ctime and atime as mtime, drops
// setuid/setgid/sticky bits, grants every ACCESS, refuses EXCLUSIVE
// create, decodes LINK arguments wrongly and never sends
// NFS3ERR_NOTEMPTY.

// procFunc serves one procedure: it decodes the arguments from d and
// encodes the status and results into e. A decode error makes the reply
// GARBAGE_ARGS.
type procFunc func(s *Server, ctx context.Context, c creds, d *xdrDecoder, e *xdrEncoder)

// NFSv3 procedure numbers (RFC 1813).
const (
	procGetattr     = 1
	procSetattr     = 2
	procLookup      = 3
	procAccess      = 4
	procReadlink    = 5
	procRead        = 6
	procWrite       = 7
	procCreate      = 8
	procMkdir       = 9
	procSymlink     = 10
	procMknod       = 11
	procRemove      = 12
	procRmdir       = 13
	procRename      = 14
	procLink        = 15
	procReadDir     = 16
	procReadDirPlus = 17
	procFSStat      = 18
	procFSInfo      = 19
	procPathconf    = 20
	procCommit      = 21
)

var ownProcs = map[uint32]procFunc{
	procGetattr:     (*Server).getattr,
	procSetattr:     (*Server).setattr,
	procLookup:      (*Server).lookup,
	procAccess:      (*Server).access,
	procCreate:      (*Server).create,
	procMkdir:       (*Server).mkdir,
	procSymlink:     (*Server).symlink,
	procRemove:      (*Server).remove,
	procRmdir:       (*Server).rmdir,
	procRename:      (*Server).rename,
	procLink:        (*Server).link,
	procRead:        (*Server).read,
	procWrite:       (*Server).write,
	procFSInfo:      (*Server).fsinfo,
	procCommit:      (*Server).commit,
	procReadDir:     (*Server).readdir,
	procReadDirPlus: (*Server).readdirplus,
}

const (
	maxFHSize   = 64
	maxNameWire = 1024 // longer than any valid name, so too-long names get NAMETOOLONG
	maxPathWire = 4096
)

// handleOwn runs proc for call and returns the whole reply record. A
// call the Gate refuses is answered before its arguments are decoded:
// the refusal needs none of them, and a frozen server does no work. A
// client no export admits is not told the posture: proc refuses it with
// NFS3ERR_ACCES before touching anything.
func (s *Server) handleOwn(ctx context.Context, cl call, proc procFunc) []byte {
	c := s.callerCreds(cl)
	if !c.denied {
		if refusal := s.gateCall(cl.rpcCallHeader); refusal != nil {
			return refusal
		}
	}
	return s.runProc(ctx, cl.rpcCallHeader, func(ctx context.Context, d *xdrDecoder, e *xdrEncoder) {
		proc(s, ctx, c, d, e)
	})
}

// attrFor decodes a handle for caller c and returns the inode's
// attributes: the handle must belong to the export c was admitted under.
func (s *Server) attrFor(ctx context.Context, c creds, fh []byte) (meta.Attr, error) {
	if c.denied {
		return meta.Attr{}, fmt.Errorf("client not admitted by export %d: %w", c.export, errAccess)
	}
	a, hd, err := s.handler.attrOf(ctx, fh)
	if err == nil && hd.Export != c.export {
		return meta.Attr{}, fmt.Errorf("handle of export %d used under export %d: %w", hd.Export, c.export, errXDev)
	}
	return a, err
}

// handleFor returns the handle of a under c's export.
func (s *Server) handleFor(c creds, a meta.Attr) []byte {
	return s.handler.codec.Encode(Handle{Export: c.export, Ino: a.Ino, Gen: a.Gen})
}

// encodeAttr writes a fattr3.
func encodeAttr(e *xdrEncoder, a meta.Attr) {
	var t nfs.FileType
	switch a.Type {
	case meta.TypeDir:
		t = nfs.FileTypeDirectory
	case meta.TypeSymlink:
		t = nfs.FileTypeLink
	default:
		t = nfs.FileTypeRegular
	}
	e.u32(uint32(t))
	e.u32(a.Mode & 0o7777)
	e.u32(a.Nlink)
	e.u32(a.UID)
	e.u32(a.GID)
	size := a.Size
	if a.Type == meta.TypeSymlink {
		size = uint64(len(a.Target))
	}
	e.u64(size)
	e.u64(size) // used
	e.u32(0)    // rdev
	e.u32(0)
	e.u64(0) // fsid: the one filesystem (go-nfs reports 0 too)
	e.u64(uint64(a.Ino))
	encodeTime(e, a.Atime)
	encodeTime(e, a.Mtime)
	encodeTime(e, a.Ctime)
}

func encodeTime(e *xdrEncoder, ns int64) {
	e.u32(uint32(ns / 1e9))
	e.u32(uint32(ns % 1e9))
}

// encodePostOp writes a post_op_attr: the attributes when ok.
func encodePostOp(e *xdrEncoder, a meta.Attr, ok bool) {
	e.bool(ok)
	if ok {
		encodeAttr(e, a)
	}
}

// wcc is the weak cache consistency data of a directory: its attributes
// before (when known) and after an operation.
type wcc struct {
	pre, post       meta.Attr
	hasPre, hasPost bool
}

func (w wcc) encode(e *xdrEncoder) {
	e.bool(w.hasPre)
	if w.hasPre {
		e.u64(w.pre.Size)
		encodeTime(e, w.pre.Mtime)
		encodeTime(e, w.pre.Ctime)
	}
	encodePostOp(e, w.post, w.hasPost)
}

// after records the post-operation attributes of the object whose
// pre-operation attributes w holds (nothing if it has none).
func (s *Server) after(ctx context.Context, w *wcc) {
	if !w.hasPre {
		return
	}
	a, err := s.handler.fs.ns.GetAttr(ctx, w.pre.Ino)
	w.post, w.hasPost = withPending(s.handler.fs.data, a), err == nil
}

// sattr is a decoded sattr3.
type sattr struct {
	mode, uid, gid *uint32
	size           *uint64
	atime, mtime   *int64
	// clientTime: a time was given by the client rather than "now".
	clientTime bool
}

const (
	timeDontChange = 0
	timeServer     = 1
	timeClient     = 2
)

func decodeSattr(d *xdrDecoder) sattr {
	var sa sattr
	u32p := func() *uint32 {
		if !d.bool() {
			return nil
		}
		v := d.u32()
		return &v
	}
	sa.mode, sa.uid, sa.gid = u32p(), u32p(), u32p()
	if d.bool() {
		v := d.u64()
		sa.size = &v
	}
	tm := func() *int64 {
		switch d.u32() {
		case timeDontChange:
			return nil
		case timeServer:
			v := time.Now().UnixNano()
			return &v
		case timeClient:
			sec, nsec := d.u32(), d.u32()
			v := int64(sec)*1e9 + int64(nsec)
			sa.clientTime = true
			return &v
		default:
			if d.err == nil {
				d.err = errors.New("bad time_how")
			}
			return nil
		}
	}
	sa.atime, sa.mtime = tm(), tm()
	return sa
}

// diropargs is a directory handle and a name.
type diropargs struct {
	fh   []byte
	name string
}

func decodeDirop(d *xdrDecoder) diropargs {
	fh := d.opaque(maxFHSize)
	name := d.opaque(maxNameWire)
	return diropargs{fh: fh, name: string(name)}
}

// checkName validates a name from the wire before it reaches metadata.
func checkName(name string) error {
	switch {
	case len(name) > meta.MaxNameLen:
		return fmt.Errorf("name of %d bytes: %w", len(name), meta.ErrNameTooLong)
	case name == "", name == ".", name == "..":
		return fmt.Errorf("name %q: %w", name, meta.ErrInvalid)
	}
	for i := 0; i < len(name); i++ {
		if name[i] == '/' || name[i] == 0 {
			return fmt.Errorf("name %q: %w", name, meta.ErrInvalid)
		}
	}
	return nil
}

// Permission bits asked of an inode.
const (
	permRead  = 4
	permWrite = 2
	permExec  = 1
)

// allowed reports whether c may access a with the wanted permission bits.
// Root may do anything but execute a file without any x bit.
func allowed(a meta.Attr, c creds, want uint32) bool {
	if c.uid == 0 {
		return want&permExec == 0 || a.Type == meta.TypeDir || a.Mode&0o111 != 0
	}
	var have uint32
	switch {
	case c.uid == a.UID:
		have = a.Mode >> 6
	case c.inGroup(a.GID):
		have = a.Mode >> 3
	default:
		have = a.Mode
	}
	return have&7&want == want
}

func (c creds) inGroup(gid uint32) bool {
	if c.gid == gid {
		return true
	}
	for _, g := range c.gids {
		if g == gid {
			return true
		}
	}
	return false
}

// dirForChange returns a directory's attributes, recording them in w as
// its pre-operation attributes, and checks that c may add or remove names
// in it.
func (s *Server) dirForChange(ctx context.Context, c creds, fh []byte, w *wcc) (meta.Attr, error) {
	dir, err := s.attrFor(ctx, c, fh)
	if err != nil {
		return dir, err
	}
	w.pre, w.hasPre = dir, true
	if dir.Type != meta.TypeDir {
		return dir, fmt.Errorf("inode %d: %w", dir.Ino, meta.ErrNotDir)
	}
	if c.readOnly {
		return dir, fmt.Errorf("change directory %d: %w", dir.Ino, errReadOnly)
	}
	if !allowed(dir, c, permWrite|permExec) {
		return dir, fmt.Errorf("change directory %d: %w", dir.Ino, errAccess)
	}
	return dir, nil
}

// mayUnlink applies the sticky-directory rule to removing or renaming
// victim from dir.
func mayUnlink(dir, victim meta.Attr, c creds) bool {
	return dir.Mode&0o1000 == 0 || c.uid == 0 || c.uid == dir.UID || c.uid == victim.UID
}

func (s *Server) getattr(ctx context.Context, c creds, d *xdrDecoder, e *xdrEncoder) {
	fh := d.opaque(maxFHSize)
	if d.err != nil {
		return
	}
	a, err := s.attrFor(ctx, c, fh)
	e.u32(uint32(statusOf(err)))
	if err == nil {
		encodeAttr(e, a)
	}
}

func (s *Server) setattr(ctx context.Context, c creds, d *xdrDecoder, e *xdrEncoder) {
	fh := d.opaque(maxFHSize)
	sa := decodeSattr(d)
	var guard *int64
	if d.bool() {
		sec, nsec := d.u32(), d.u32()
		g := int64(sec)*1e9 + int64(nsec)
		guard = &g
	}
	if d.err != nil {
		return
	}
	var w wcc
	a, err := s.attrFor(ctx, c, fh)
	if err == nil {
		w.pre, w.hasPre = a, true
		err = s.applySattr(ctx, c, a, sa, guard)
		s.after(ctx, &w)
	}
	e.u32(uint32(statusOf(err)))
	w.encode(e)
}

// errNotSync is a failed SETATTR guard.
var errNotSync = errors.New("setattr guard: ctime changed")

// applySattr applies a SETATTR with POSIX permission rules.
func (s *Server) applySattr(ctx context.Context, c creds, a meta.Attr, sa sattr, guard *int64) error {
	if c.readOnly {
		return fmt.Errorf("setattr inode %d: %w", a.Ino, errReadOnly)
	}
	if guard != nil && *guard != a.Ctime {
		return errNotSync
	}
	owner := c.uid == 0 || c.uid == a.UID
	var args meta.SetAttrArgs
	if sa.mode != nil {
		if !owner {
			return fmt.Errorf("chmod inode %d: %w", a.Ino, errPerm)
		}
		m := *sa.mode & 0o7777
		if c.uid != 0 && a.Type != meta.TypeDir && !c.inGroup(a.GID) {
			m &^= 0o2000 // chmod(2): setgid drops for non-members
		}
		args.Mode = &m
	}
	if sa.uid != nil && *sa.uid != a.UID {
		if c.uid != 0 {
			return fmt.Errorf("chown inode %d: %w", a.Ino, errPerm)
		}
		args.UID = sa.uid
	}
	if sa.gid != nil && *sa.gid != a.GID {
		if c.uid != 0 && (c.uid != a.UID || !c.inGroup(*sa.gid)) {
			return fmt.Errorf("chgrp inode %d: %w", a.Ino, errPerm)
		}
		args.GID = sa.gid
	}
	if (args.UID != nil || args.GID != nil) && a.Type == meta.TypeRegular && a.Mode&0o6000 != 0 && args.Mode == nil {
		m := a.Mode &^ 0o6000 // chown clears setuid/setgid on files
		args.Mode = &m
	}
	if sa.atime != nil || sa.mtime != nil {
		// utimes(2): anyone who may write can set the times to now; only
		// the owner (or root) can set them to a given time.
		if !owner && (sa.clientTime || !allowed(a, c, permWrite)) {
			return fmt.Errorf("utimes inode %d: %w", a.Ino, errPerm)
		}
		args.Atime, args.Mtime = sa.atime, sa.mtime
	}
	if sa.size != nil {
		switch {
		case a.Type == meta.TypeDir:
			return fmt.Errorf("truncate directory %d: %w", a.Ino, meta.ErrIsDir)
		case a.Type != meta.TypeRegular:
			return fmt.Errorf("truncate inode %d: %w", a.Ino, meta.ErrInvalid)
		case !allowed(a, c, permWrite) && c.uid != a.UID:
			// The owner may truncate a file it opened for writing even
			// if the mode says otherwise (open(O_CREAT|O_RDWR, 0444)).
			return fmt.Errorf("truncate inode %d: %w", a.Ino, errAccess)
		}
		if *sa.size != a.Size {
			if _, err := s.handler.fs.data.Truncate(withCopies(ctx, a), a.Ino, a.Size, *sa.size); err != nil {
				return err
			}
		}
	}
	if (args.Atime != nil || args.Mtime != nil) && a.Type == meta.TypeRegular {
		// Times the client sets win over writes still in memory: commit
		// those first, or their commit would stamp its own mtime over
		// these (cp -p, rsync -t, tar).
		if wb := s.writeBack(); wb != nil {
			if _, _, err := wb.Commit(withCopies(ctx, a), a.Ino); err != nil {
				return err
			}
		}
	}
	if args != (meta.SetAttrArgs{}) {
		if _, err := s.handler.fs.ns.SetAttr(ctx, a.Ino, args); err != nil {
			return err
		}
	}
	return nil
}

func (s *Server) lookup(ctx context.Context, c creds, d *xdrDecoder, e *xdrEncoder) {
	op := decodeDirop(d)
	if d.err != nil {
		return
	}
	dir, err := s.attrFor(ctx, c, op.fh)
	var obj meta.Attr
	if err == nil {
		obj, err = s.lookupIn(ctx, c, dir, op.name)
	}
	e.u32(uint32(statusOf(err)))
	if err == nil {
		e.opaque(s.handleFor(c, obj))
		encodePostOp(e, obj, true)
	}
	encodePostOp(e, dir, dir.Ino != 0)
}

func (s *Server) lookupIn(ctx context.Context, c creds, dir meta.Attr, name string) (meta.Attr, error) {
	if dir.Type != meta.TypeDir {
		return meta.Attr{}, fmt.Errorf("lookup in inode %d: %w", dir.Ino, meta.ErrNotDir)
	}
	if !allowed(dir, c, permExec) {
		return meta.Attr{}, fmt.Errorf("lookup in %d: %w", dir.Ino, errAccess)
	}
	switch name {
	case ".":
		return dir, nil
	case "..":
		return s.handler.fs.ns.GetAttr(ctx, dir.Parent)
	}
	if len(name) > meta.MaxNameLen {
		return meta.Attr{}, fmt.Errorf("lookup: %w", meta.ErrNameTooLong)
	}
	return s.handler.fs.ns.Lookup(ctx, dir.Ino, name)
}

// newObject creates a name in a directory for CREATE, MKDIR and SYMLINK,
// owned by the caller (group from a setgid directory), and encodes the
// reply.
func (s *Server) newObject(ctx context.Context, c creds, op diropargs, args meta.CreateArgs, sa sattr, verf []byte, e *xdrEncoder) {
	var w wcc
	obj, err := s.createIn(ctx, c, op, args, sa, verf, &w)
	e.u32(uint32(statusOf(err)))
	if err == nil {
		e.bool(true)
		e.opaque(s.handleFor(c, obj))
		encodePostOp(e, obj, true)
	}
	w.encode(e)
}

func (s *Server) createIn(ctx context.Context, c creds, op diropargs, args meta.CreateArgs, sa sattr, verf []byte, w *wcc) (meta.Attr, error) {
	ns := s.handler.fs.ns
	dir, err := s.dirForChange(ctx, c, op.fh, w)
	defer s.after(ctx, w)
	if err != nil {
		return meta.Attr{}, err
	}
	if err := checkName(op.name); err != nil {
		return meta.Attr{}, err
	}
	args.UID, args.GID = c.uid, c.gid
	if dir.Mode&0o2000 != 0 {
		args.GID = dir.GID
		if args.Type == meta.TypeDir {
			args.Mode |= 0o2000
		}
	}
	if c.uid == 0 {
		if sa.uid != nil {
			args.UID = *sa.uid
		}
		if sa.gid != nil {
			args.GID = *sa.gid
		}
	}
	if args.Type != meta.TypeDir && c.uid != 0 && !c.inGroup(args.GID) {
		args.Mode &^= 0o2000 // no set-group-ID file for a group the caller is not in
	}
	obj, err := ns.Create(ctx, dir.Ino, op.name, args)
	if verf != nil {
		// EXCLUSIVE: the verifier lives in atime and mtime until the
		// client's follow-up SETATTR, so a retransmitted CREATE whose
		// first reply was lost succeeds instead of failing with EEXIST.
		v := int64(binary.BigEndian.Uint64(verf) & (1<<63 - 1))
		if errors.Is(err, meta.ErrExists) {
			if old, lerr := ns.Lookup(ctx, dir.Ino, op.name); lerr == nil && old.Type == meta.TypeRegular && old.Mtime == v && old.Atime == v {
				return old, nil
			}
			return meta.Attr{}, err
		}
		if err != nil {
			return meta.Attr{}, err
		}
		return ns.SetAttr(ctx, obj.Ino, meta.SetAttrArgs{Atime: &v, Mtime: &v})
	}
	if err != nil {
		return meta.Attr{}, err
	}
	// UNCHECKED create of an existing file applies only the size.
	if args.Type == meta.TypeRegular && sa.size != nil && *sa.size != obj.Size {
		if !allowed(obj, c, permWrite) {
			return meta.Attr{}, fmt.Errorf("truncate on create: %w", errAccess)
		}
		return s.handler.fs.data.Truncate(withCopies(ctx, obj), obj.Ino, obj.Size, *sa.size)
	}
	return obj, nil
}

// create modes (createhow3).
const (
	createUnchecked = 0
	createGuarded   = 1
	createExclusive = 2
)

func (s *Server) create(ctx context.Context, c creds, d *xdrDecoder, e *xdrEncoder) {
	op := decodeDirop(d)
	how := d.u32()
	var sa sattr
	var verf []byte
	switch how {
	case createUnchecked, createGuarded:
		sa = decodeSattr(d)
	case createExclusive:
		verf = d.fixed(8)
	default:
		if d.err == nil {
			d.err = fmt.Errorf("create mode %d", how)
		}
	}
	if d.err != nil {
		return
	}
	args := meta.CreateArgs{Type: meta.TypeRegular, Mode: 0o644, Exclusive: how != createUnchecked}
	if sa.mode != nil {
		args.Mode = *sa.mode & 0o7777
	}
	if verf != nil {
		args.Mode = 0o600
	}
	s.newObject(ctx, c, op, args, sa, verf, e)
}

func (s *Server) mkdir(ctx context.Context, c creds, d *xdrDecoder, e *xdrEncoder) {
	op := decodeDirop(d)
	sa := decodeSattr(d)
	if d.err != nil {
		return
	}
	args := meta.CreateArgs{Type: meta.TypeDir, Mode: 0o755, Exclusive: true}
	if sa.mode != nil {
		args.Mode = *sa.mode & 0o7777
	}
	s.newObject(ctx, c, op, args, sa, nil, e)
}

func (s *Server) symlink(ctx context.Context, c creds, d *xdrDecoder, e *xdrEncoder) {
	op := decodeDirop(d)
	sa := decodeSattr(d)
	target := d.opaque(maxPathWire)
	if d.err != nil {
		return
	}
	if len(target) == 0 || len(target) > meta.MaxSymlinkLen {
		status := nfs.NFSStatusNameTooLong
		if len(target) == 0 {
			status = nfs.NFSStatusNoEnt // symlink(2) with an empty target
		}
		e.u32(uint32(status))
		wcc{}.encode(e)
		return
	}
	args := meta.CreateArgs{Type: meta.TypeSymlink, Mode: 0o777, Target: string(target), Exclusive: true}
	s.newObject(ctx, c, op, args, sattr{uid: sa.uid, gid: sa.gid}, nil, e)
}

// removeName serves REMOVE and RMDIR.
func (s *Server) removeName(ctx context.Context, c creds, d *xdrDecoder, e *xdrEncoder, isDir bool) {
	op := decodeDirop(d)
	if d.err != nil {
		return
	}
	var w wcc
	err := func() error {
		dir, err := s.dirForChange(ctx, c, op.fh, &w)
		defer s.after(ctx, &w)
		if err != nil {
			return err
		}
		if op.name == "." || op.name == ".." {
			return fmt.Errorf("remove %q: %w", op.name, meta.ErrInvalid)
		}
		ns := s.handler.fs.ns
		victim, err := ns.Lookup(ctx, dir.Ino, op.name)
		if err != nil {
			return err
		}
		if !mayUnlink(dir, victim, c) {
			return fmt.Errorf("remove %q from sticky directory: %w", op.name, errPerm)
		}
		if isDir {
			return ns.Rmdir(ctx, dir.Ino, op.name)
		}
		freed, err := ns.Unlink(ctx, dir.Ino, op.name)
		if err != nil {
			return err
		}
		s.handler.fs.data.Release(ctx, freed)
		return nil
	}()
	e.u32(uint32(statusOf(err)))
	w.encode(e)
}

func (s *Server) remove(ctx context.Context, c creds, d *xdrDecoder, e *xdrEncoder) {
	s.removeName(ctx, c, d, e, false)
}

func (s *Server) rmdir(ctx context.Context, c creds, d *xdrDecoder, e *xdrEncoder) {
	s.removeName(ctx, c, d, e, true)
}

func (s *Server) rename(ctx context.Context, c creds, d *xdrDecoder, e *xdrEncoder) {
	from, to := decodeDirop(d), decodeDirop(d)
	if d.err != nil {
		return
	}
	var fw, tw wcc
	err := func() error {
		ns := s.handler.fs.ns
		fdir, err := s.dirForChange(ctx, c, from.fh, &fw)
		defer s.after(ctx, &fw)
		if err != nil {
			return err
		}
		tdir, err := s.dirForChange(ctx, c, to.fh, &tw)
		defer s.after(ctx, &tw)
		if err != nil {
			return err
		}
		if err := checkName(from.name); err != nil {
			return err
		}
		if err := checkName(to.name); err != nil {
			return err
		}
		victim, err := ns.Lookup(ctx, fdir.Ino, from.name)
		if err != nil {
			return err
		}
		if !mayUnlink(fdir, victim, c) {
			return fmt.Errorf("rename %q out of sticky directory: %w", from.name, errPerm)
		}
		if victim.Type == meta.TypeDir && fdir.Ino != tdir.Ino && !allowed(victim, c, permWrite) {
			// Moving a directory rewrites its "..": it must be writable.
			return fmt.Errorf("move directory %q to another parent: %w", from.name, errAccess)
		}
		if old, err := ns.Lookup(ctx, tdir.Ino, to.name); err == nil && !mayUnlink(tdir, old, c) {
			return fmt.Errorf("rename over %q in sticky directory: %w", to.name, errPerm)
		}
		freed, err := ns.Rename(ctx, fdir.Ino, from.name, tdir.Ino, to.name)
		if err != nil {
			return err
		}
		s.handler.fs.data.Release(ctx, freed)
		return nil
	}()
	e.u32(uint32(statusOf(err)))
	fw.encode(e)
	tw.encode(e)
}

func (s *Server) link(ctx context.Context, c creds, d *xdrDecoder, e *xdrEncoder) {
	fh := d.opaque(maxFHSize)
	op := decodeDirop(d)
	if d.err != nil {
		return
	}
	var w wcc
	var obj meta.Attr
	err := func() error {
		var err error
		obj, err = s.attrFor(ctx, c, fh)
		if err != nil {
			return err
		}
		if obj.Type == meta.TypeDir {
			return fmt.Errorf("link directory %d: %w", obj.Ino, meta.ErrIsDir)
		}
		dir, err := s.dirForChange(ctx, c, op.fh, &w)
		defer s.after(ctx, &w)
		if err != nil {
			return err
		}
		if err := checkName(op.name); err != nil {
			return err
		}
		obj, err = s.handler.fs.ns.Link(ctx, obj.Ino, dir.Ino, op.name)
		return err
	}()
	e.u32(uint32(statusOf(err)))
	encodePostOp(e, obj, obj.Ino != 0)
	w.encode(e)
}

// ACCESS3 permission bits (RFC 1813 3.3.4).
const (
	accessRead    = 0x01
	accessLookup  = 0x02
	accessModify  = 0x04
	accessExtend  = 0x08
	accessDelete  = 0x10
	accessExecute = 0x20
)

// access answers which of the asked permissions the caller has, from the
// mode bits and its AUTH_SYS credentials.
func (s *Server) access(ctx context.Context, c creds, d *xdrDecoder, e *xdrEncoder) {
	fh := d.opaque(maxFHSize)
	want := d.u32()
	if d.err != nil {
		return
	}
	a, err := s.attrFor(ctx, c, fh)
	e.u32(uint32(statusOf(err)))
	encodePostOp(e, a, err == nil)
	if err != nil {
		return
	}
	var granted uint32
	if allowed(a, c, permRead) {
		granted |= accessRead
	}
	// Rights the export or the cluster's posture would refuse are not
	// granted (as knfsd does for a read-only export), so a client fails
	// an open for writing at once rather than at close.
	if allowed(a, c, permWrite) && !c.readOnly {
		if s.permits(OpWrite) {
			granted |= accessModify | accessExtend
		}
		if a.Type == meta.TypeDir && s.permits(OpRemove) {
			granted |= accessDelete
		}
	}
	if allowed(a, c, permExec) {
		if a.Type == meta.TypeDir {
			granted |= accessLookup
		} else {
			granted |= accessExecute
		}
	}
	e.u32(granted & want)
}
