package nfsfront

import (
	"context"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"time"

	billy "github.com/go-git/go-billy/v5"
	"github.com/willscott/go-nfs/file"

	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
)

// fsys is the billy.Filesystem that go-nfs sees for the procedures it still
// serves (READLINK, FSSTAT, PATHCONF, COMMIT). Every other procedure is
// served by our own handlers, so the billy methods for them here refuse.
//
// go-nfs is path based. Instead of real paths, FromHandle returns inode
// tokens: path components that start with a NUL byte and carry a per-process
// nonce and an inode number. A NUL can never appear in a real name, and the
// nonce keeps a client from forging a token inside a name it sends. A path
// resolves from its last token, so resolving costs one metadata read per
// real name after it (usually none or one), whatever the directory depth.
//
// billy methods take no context, so fsys keeps the server-lifetime context
// and bounds each metadata call with opTimeout. It is the one stored context
// in this package.
type fsys struct {
	ctx       context.Context //nolint:containedctx // billy gives no per-call context; see type doc.
	opTimeout time.Duration
	ns        Namespace
	data      Data
	nonce     string
}

var _ billy.Filesystem = (*fsys)(nil)

// token returns the path component standing for ino.
func (f *fsys) token(ino meta.Ino) string {
	return "\x00" + f.nonce + ":" + strconv.FormatUint(uint64(ino), 16)
}

// parseToken returns the inode a token names, or false if c is no token of
// this process.
func (f *fsys) parseToken(c string) (meta.Ino, bool) {
	rest, ok := strings.CutPrefix(c, "\x00"+f.nonce+":")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseUint(rest, 16, 64)
	if err != nil || n == 0 {
		return 0, false
	}
	return meta.Ino(n), true
}

// pathFor is the go-nfs path for an inode: its token alone.
func (f *fsys) pathFor(a meta.Attr) []string { return []string{f.token(a.Ino)} }

func (f *fsys) opCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(f.ctx, f.opTimeout)
}

// resolve returns the attributes of the object a go-nfs path names. It
// starts from the last inode token and looks up each real name after it
// (the namespace resolves "." and ".." and refuses invalid names).
func (f *fsys) resolve(ctx context.Context, p string) (meta.Attr, error) {
	parts := strings.Split(p, "/")
	cur, start := meta.RootIno, 0
	for i := len(parts) - 1; i >= 0; i-- {
		if ino, ok := f.parseToken(parts[i]); ok {
			cur, start = ino, i+1
			break
		}
	}
	var attr meta.Attr
	known := false
	for _, name := range parts[start:] {
		if name == "" {
			continue
		}
		a, err := f.ns.Lookup(ctx, cur, name)
		if err != nil {
			return meta.Attr{}, err
		}
		attr, cur, known = a, a.Ino, true
	}
	if known {
		return attr, nil
	}
	return f.ns.GetAttr(ctx, cur)
}

func baseName(p string) string {
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[i+1:]
	}
	return p
}

// Join joins path components without cleaning them (tokens must survive).
func (f *fsys) Join(elem ...string) string { return strings.Join(elem, "/") }

// Stat returns the attributes of p. Symlinks are not followed: NFS clients
// resolve them themselves.
func (f *fsys) Stat(p string) (os.FileInfo, error) { return f.Lstat(p) }

// Lstat returns the attributes of p.
func (f *fsys) Lstat(p string) (os.FileInfo, error) {
	ctx, cancel := f.opCtx()
	defer cancel()
	a, err := f.resolve(ctx, p)
	if err != nil {
		return nil, toPathError("lstat", p, err)
	}
	return newFileInfo(baseName(p), a), nil
}

// Open refuses: READ and WRITE are served by our own handlers (data.go).
func (f *fsys) Open(p string) (billy.File, error) { return f.OpenFile(p, os.O_RDONLY, 0) }

// OpenFile refuses; see Open.
func (f *fsys) OpenFile(p string, _ int, _ os.FileMode) (billy.File, error) {
	return nil, toPathError("open", p, errNotSupported)
}

// ReadDir refuses: READDIR and READDIRPLUS are ours (readdir.go).
func (f *fsys) ReadDir(p string) ([]os.FileInfo, error) {
	return nil, toPathError("readdir", p, errNotSupported)
}

// Readlink returns a symlink's target.
func (f *fsys) Readlink(p string) (string, error) {
	ctx, cancel := f.opCtx()
	defer cancel()
	a, err := f.resolve(ctx, p)
	if err != nil {
		return "", toPathError("readlink", p, err)
	}
	if a.Type != meta.TypeSymlink {
		return "", toPathError("readlink", p, meta.ErrInvalid)
	}
	return a.Target, nil
}

// Capabilities tells go-nfs what this filesystem supports.
func (f *fsys) Capabilities() billy.Capability {
	return billy.WriteCapability | billy.ReadCapability | billy.ReadAndWriteCapability | billy.SeekCapability | billy.TruncateCapability
}

// The namespace-changing billy methods are never reached: our own
// procedure handlers serve CREATE, MKDIR, SYMLINK, REMOVE, RMDIR, RENAME,
// LINK and SETATTR.

// Create refuses; see the type doc.
func (f *fsys) Create(p string) (billy.File, error) {
	return nil, toPathError("create", p, errNotSupported)
}

// Rename refuses; see the type doc.
func (f *fsys) Rename(from, _ string) error { return toPathError("rename", from, errNotSupported) }

// Remove refuses; see the type doc.
func (f *fsys) Remove(p string) error { return toPathError("remove", p, errNotSupported) }

// TempFile refuses; see the type doc.
func (f *fsys) TempFile(dir, _ string) (billy.File, error) {
	return nil, toPathError("tempfile", dir, errNotSupported)
}

// MkdirAll refuses; see the type doc.
func (f *fsys) MkdirAll(p string, _ os.FileMode) error {
	return toPathError("mkdir", p, errNotSupported)
}

// Symlink refuses; see the type doc.
func (f *fsys) Symlink(_, link string) error { return toPathError("symlink", link, errNotSupported) }

// Chroot refuses: exports are chosen by handle, not by chroot.
func (f *fsys) Chroot(p string) (billy.Filesystem, error) {
	return nil, toPathError("chroot", p, errNotSupported)
}

// Root is the namespace root.
func (f *fsys) Root() string { return "/" }

// fileInfo presents meta.Attr as an os.FileInfo whose Sys is the
// *file.FileInfo go-nfs reads the inode number, link count and owner from.
type fileInfo struct {
	name string
	attr meta.Attr
}

func newFileInfo(name string, a meta.Attr) *fileInfo { return &fileInfo{name: name, attr: a} }

func (i *fileInfo) Name() string       { return i.name }
func (i *fileInfo) Size() int64        { return int64(i.attr.Size) }
func (i *fileInfo) Mode() fs.FileMode  { return goMode(i.attr) }
func (i *fileInfo) ModTime() time.Time { return time.Unix(0, i.attr.Mtime) }
func (i *fileInfo) IsDir() bool        { return i.attr.Type == meta.TypeDir }
func (i *fileInfo) Sys() any {
	return &file.FileInfo{Nlink: i.attr.Nlink, UID: i.attr.UID, GID: i.attr.GID, Fileid: uint64(i.attr.Ino)}
}

// goMode converts stored mode bits and type to an fs.FileMode.
func goMode(a meta.Attr) fs.FileMode {
	m := fs.FileMode(a.Mode & 0o777)
	if a.Mode&0o4000 != 0 {
		m |= fs.ModeSetuid
	}
	if a.Mode&0o2000 != 0 {
		m |= fs.ModeSetgid
	}
	if a.Mode&0o1000 != 0 {
		m |= fs.ModeSticky
	}
	switch a.Type {
	case meta.TypeDir:
		m |= fs.ModeDir
	case meta.TypeSymlink:
		m |= fs.ModeSymlink
	}
	return m
}
