// Package meta defines the namespace contract of Wormhole: inode numbers,
// attributes, directory entries, the Store interface the metadata layer
// implements, and the sentinel errors it returns.
//
// The etcd implementation lives in the parent package etcdmeta; the NFS front
// and the chunker depend only on this package. It imports nothing from
// Wormhole but chunker/chunk.
package meta

import (
	"context"
	"errors"

	"github.com/wormhole-fs/wormhole/chunker/chunk"
)

// Sentinel errors. Implementations wrap them with %w; callers test them with
// errors.Is. nfsfront maps each to one NFS status in one place.
var (
	ErrNotFound    = errors.New("no such file or directory")
	ErrExists      = errors.New("file exists")
	ErrNotDir      = errors.New("not a directory")
	ErrIsDir       = errors.New("is a directory")
	ErrNotEmpty    = errors.New("directory not empty")
	ErrInvalid     = errors.New("invalid argument")
	ErrNameTooLong = errors.New("name too long")
	ErrStale       = errors.New("stale file handle")
	ErrNoSpace     = errors.New("metadata space exhausted")
	ErrTooManyLink = errors.New("too many links")
	// ErrUnavailable means the metadata store could not take the change
	// now (no leader, no quorum, a timed-out proposal); it may succeed
	// if tried again. A change that failed so may still be applied.
	ErrUnavailable = errors.New("metadata store unavailable, try again")
	// ErrConflict means a chunk map entry a change was computed from has
	// changed since (another node wrote the same chunk): nothing was
	// applied, and the caller recomputes the change and tries again.
	ErrConflict = errors.New("chunk map changed concurrently")
)

// Ino is an inode number. Inode numbers are allocated from a counter, never
// reused, and never zero.
type Ino uint64

// RootIno is the inode of the root directory of the namespace.
const RootIno Ino = 1

// Type is the kind of a filesystem object.
type Type uint8

// Object types.
const (
	TypeRegular Type = iota + 1
	TypeDir
	TypeSymlink
)

func (t Type) String() string {
	switch t {
	case TypeRegular:
		return "file"
	case TypeDir:
		return "dir"
	case TypeSymlink:
		return "symlink"
	}
	return "unknown"
}

// MaxNameLen is the longest directory entry name accepted, in bytes.
const MaxNameLen = 255

// MaxSymlinkLen is the longest symlink target accepted, in bytes.
const MaxSymlinkLen = 4095

// MaxCopies is the highest per-inode redundancy (Attr.Copies) accepted.
const MaxCopies = 16

// Attr is an inode's attributes as stored. Times are Unix nanoseconds.
type Attr struct {
	Ino    Ino
	Type   Type
	Mode   uint32 // permission bits and setuid/setgid/sticky (07777); no type bits
	UID    uint32
	GID    uint32
	Nlink  uint32
	Size   uint64
	Atime  int64
	Mtime  int64
	Ctime  int64
	Gen    uint64 // generation: changes when an inode number is retired
	Parent Ino    // primary parent directory (the root is its own parent)
	Target string // symlink target; empty for other types
	// Copies is how many nodes should hold each chunk of the inode's data;
	// 0 means the cluster's default. A new inode takes its directory's
	// value when it is created, so a directory's Copies is the default of
	// the subtree created below it. Link and rename keep an inode's
	// Copies; only an explicit change (etcdmeta.Store.SetCopies) alters
	// it. It does not move existing chunks: writes use it from then on.
	Copies uint8
}

// Entry is one name in a directory.
type Entry struct {
	Name string
	Ino  Ino
	Type Type
	// Cookie is the entry's position in its directory's listing: ReadDir
	// from Cookie continues after it. It depends on the name only, so it
	// is the same on every node, across restarts, and for as long as the
	// entry exists. It is at least MinCookie and below 1<<63.
	Cookie uint64
}

// MinCookie is the smallest entry cookie; smaller cookies (0, 1, 2) are
// left to the caller (NFS uses them for the start, "." and "..") and list
// from the start.
const MinCookie = 3

// CreateArgs describes a new object for Store.Create.
type CreateArgs struct {
	Type   Type
	Mode   uint32 // 07777 bits
	UID    uint32
	GID    uint32
	Target string // for symlinks
	// Exclusive makes Create fail with ErrExists when the name exists.
	// Without it, creating a regular file over an existing regular file
	// returns the existing file's attributes unchanged (O_CREAT without
	// O_EXCL).
	Exclusive bool
}

// SetAttrArgs lists attribute changes; nil fields are left alone. Size
// changes go through Store.Truncate, which must also drop chunks.
type SetAttrArgs struct {
	Mode  *uint32
	UID   *uint32
	GID   *uint32
	Atime *int64
	Mtime *int64
}

// Expect pins a chunk map entry that a change was computed from: the
// change applies only if chunk Index of the file still holds chunk ID (the
// zero ID: no chunk), and fails with ErrConflict otherwise. A write that
// merges new bytes into an existing chunk, or a truncate that trims one,
// expects what it read, so two nodes cannot silently undo each other.
type Expect struct {
	Index uint64
	ID    chunk.ID
}

// Freed lists chunks that an operation removed from the namespace; the caller
// deletes them from the chunk store once the metadata change is committed.
type Freed []chunk.Ref

// Store is the namespace. Every method is one etcd transaction (or a
// linearizable read): no partially applied create, rename or unlink is ever
// visible. All methods are safe for concurrent use and honour ctx.
type Store interface {
	// GetAttr returns the attributes of ino, or ErrNotFound (ErrStale if
	// the inode was removed).
	GetAttr(ctx context.Context, ino Ino) (Attr, error)
	// GetAttrs returns the attributes of each inode of inos, in order, in
	// one round trip at one revision. A missing inode gives a zero Attr
	// (Ino 0) in its place, not an error.
	GetAttrs(ctx context.Context, inos []Ino) ([]Attr, error)
	// Lookup resolves name in directory dir.
	Lookup(ctx context.Context, dir Ino, name string) (Attr, error)
	// Create makes a regular file, directory or symlink named name in dir.
	Create(ctx context.Context, dir Ino, name string, args CreateArgs) (Attr, error)
	// Link adds a new name for the non-directory ino.
	Link(ctx context.Context, ino Ino, dir Ino, name string) (Attr, error)
	// Unlink removes a non-directory name. When the last link goes, the
	// inode and its chunk map are deleted and their chunks returned.
	Unlink(ctx context.Context, dir Ino, name string) (Freed, error)
	// Rmdir removes an empty directory (ErrNotEmpty otherwise).
	Rmdir(ctx context.Context, dir Ino, name string) error
	// Rename moves a name, replacing an existing target of a compatible
	// type (a file over a file, a directory over an empty directory). It
	// refuses to move a directory under itself (ErrInvalid). Chunks of a
	// replaced file whose last link went are returned.
	Rename(ctx context.Context, fromDir Ino, fromName string, toDir Ino, toName string) (Freed, error)
	// SetAttr changes mode, owner and times; ctime is set to now.
	SetAttr(ctx context.Context, ino Ino, args SetAttrArgs) (Attr, error)
	// ReadDir returns up to limit entries of dir whose cookies are greater
	// than cookie, in cookie order; a cookie below MinCookie starts at the
	// beginning. Fewer than limit entries means the end was reached.
	// Entries can share a cookie (a hash collision, rare): a caller that
	// pages must not end a page between two of them.
	ReadDir(ctx context.Context, dir Ino, cookie uint64, limit int) ([]Entry, error)

	// Chunks returns the chunk references of ino with first <= Index <= last,
	// in index order. Holes have no reference. The map read is at least
	// as new as everything the store has answered before the call; it
	// may miss a change made through another node since (a store
	// serving it from a replica), unless ctx asks for current reads
	// (WithCurrentReads).
	Chunks(ctx context.Context, ino Ino, first, last uint64) ([]chunk.Ref, error)
	// CommitWrite atomically records refs in ino's chunk map (replacing
	// references with the same Index), raises the size to at least size,
	// and sets mtime and ctime to now, provided every entry in expect is
	// unchanged (ErrConflict otherwise). The references it replaced are
	// returned. It fails with ErrStale if ino is gone.
	CommitWrite(ctx context.Context, ino Ino, refs []chunk.Ref, expect []Expect, size uint64) (Attr, Freed, error)
	// Truncate sets ino's size. chunkSize tells which chunk references lie
	// wholly past the new end: they are removed and returned. tail, when
	// non-nil, replaces the reference of the chunk that holds the new end
	// (rewritten by the caller with its bytes past the end dropped).
	// Entries in expect must be unchanged, as for CommitWrite.
	Truncate(ctx context.Context, ino Ino, size uint64, chunkSize uint64, tail *chunk.Ref, expect []Expect) (Attr, Freed, error)

	// StatFS reports the number of inodes in use.
	StatFS(ctx context.Context) (inodes uint64, err error)
}

type currentReadsKey struct{}

// WithCurrentReads returns ctx marked to ask the store for current
// (linearizable) reads where it could otherwise answer from a replica
// (Store.Chunks): a caller that found a chunk gone, replaced by a write
// the replica may not have applied yet, reads the map again this way.
func WithCurrentReads(ctx context.Context) context.Context {
	return context.WithValue(ctx, currentReadsKey{}, true)
}

// CurrentReads reports whether ctx asks for current reads
// (WithCurrentReads).
func CurrentReads(ctx context.Context) bool {
	v, _ := ctx.Value(currentReadsKey{}).(bool)
	return v
}
