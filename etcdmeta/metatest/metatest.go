// Package metatest is a conformance suite for implementations of
// meta.Store. An implementation's tests call Run with a constructor that
// returns a fresh, empty namespace (only the root directory) per call.
//
// It imports only the standard library, chunker/chunk and etcdmeta/meta, and
// is meant to be imported from tests only.
package metatest

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wormhole-fs/wormhole/chunker/chunk"
	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
)

// CopiesSetter is implemented by stores that change the redundancy of a
// subtree (etcdmeta.Store); Run skips the Copies test for stores without
// it.
type CopiesSetter interface {
	SetCopies(ctx context.Context, ino meta.Ino, copies uint8, recursive bool) (changed int, err error)
}

// NewStore returns an empty namespace for one subtest.
type NewStore func(t *testing.T) meta.Store

// Run runs every conformance test against stores made by newStore.
func Run(t *testing.T, newStore NewStore) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s meta.Store)
	}{
		{"Root", testRoot},
		{"CreateLookup", testCreateLookup},
		{"GetAttrs", testGetAttrs},
		{"Names", testNames},
		{"MkdirRmdir", testMkdirRmdir},
		{"Symlink", testSymlink},
		{"LinkUnlink", testLinkUnlink},
		{"RenameFile", testRenameFile},
		{"RenameDir", testRenameDir},
		{"SetAttr", testSetAttr},
		{"ConcurrentExclusiveCreate", testConcurrentExclusiveCreate},
		{"ConcurrentCreates", testConcurrentCreates},
		{"ConcurrentRenameCycle", testConcurrentRenameCycle},
		{"ReadDirPaging", testReadDirPaging},
		{"CommitWriteChunks", testCommitWriteChunks},
		{"ExpectConflicts", testExpectConflicts},
		{"Truncate", testTruncate},
		{"ManyChunks", testManyChunks},
		{"StatFS", testStatFS},
		{"Copies", testCopies},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.fn(t, newStore(t))
		})
	}
}

func ctxT(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// must returns v, failing the test given to the returned function if err
// is not nil: must(s.GetAttr(ctx, ino))(t).
func must[T any](v T, err error) func(t *testing.T) T {
	return func(t *testing.T) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

func wantErr(t *testing.T, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("got error %v, want %v", err, want)
	}
}

func file(mode uint32) meta.CreateArgs {
	return meta.CreateArgs{Type: meta.TypeRegular, Mode: mode, UID: 1000, GID: 1000}
}

func dir(mode uint32) meta.CreateArgs { return meta.CreateArgs{Type: meta.TypeDir, Mode: mode} }

func ref(index uint64, id byte) chunk.Ref {
	r := chunk.Ref{Index: index, Len: uint32(1000 + index)}
	r.ID[0], r.ID[15] = id, byte(index)
	r.Sum[0], r.Sum[31] = id, ^byte(index)
	return r
}

func testRoot(t *testing.T, s meta.Store) {
	ctx := ctxT(t)
	r := must(s.GetAttr(ctx, meta.RootIno))(t)
	if r.Type != meta.TypeDir || r.Mode != 0o755 || r.Nlink != 2 || r.Parent != meta.RootIno || r.UID != 0 || r.GID != 0 {
		t.Fatalf("root = %+v", r)
	}
	if r.Gen == 0 {
		t.Fatal("root generation is 0")
	}
	if got := must(s.Lookup(ctx, meta.RootIno, ".."))(t); got.Ino != meta.RootIno {
		t.Fatalf("lookup .. of root = %d", got.Ino)
	}
	if got := must(s.ReadDir(ctx, meta.RootIno, 0, 10))(t); len(got) != 0 {
		t.Fatalf("new root lists %v", got)
	}
	_, err := s.GetAttr(ctx, 1<<40)
	wantErr(t, err, meta.ErrNotFound)
}

func testCreateLookup(t *testing.T, s meta.Store) {
	ctx := ctxT(t)
	before := time.Now().UnixNano()
	a := must(s.Create(ctx, meta.RootIno, "f", meta.CreateArgs{Type: meta.TypeRegular, Mode: 0o644, UID: 7, GID: 8, Exclusive: true}))(t)
	if a.Ino <= meta.RootIno || a.Type != meta.TypeRegular || a.Mode != 0o644 || a.UID != 7 || a.GID != 8 ||
		a.Nlink != 1 || a.Size != 0 || a.Parent != meta.RootIno || a.Gen == 0 || a.Mtime < before || a.Ctime < before || a.Atime < before {
		t.Fatalf("created %+v", a)
	}
	if got := must(s.Lookup(ctx, meta.RootIno, "f"))(t); got != a {
		t.Fatalf("lookup = %+v, want %+v", got, a)
	}
	if got := must(s.GetAttr(ctx, a.Ino))(t); got != a {
		t.Fatalf("getattr = %+v, want %+v", got, a)
	}
	root := must(s.GetAttr(ctx, meta.RootIno))(t)
	if root.Nlink != 2 || root.Mtime < before {
		t.Fatalf("root after file create: %+v", root)
	}

	_, err := s.Create(ctx, meta.RootIno, "f", meta.CreateArgs{Type: meta.TypeRegular, Mode: 0o600, Exclusive: true})
	wantErr(t, err, meta.ErrExists)
	// O_CREAT without O_EXCL returns the existing file unchanged.
	if got := must(s.Create(ctx, meta.RootIno, "f", file(0o600)))(t); got != a {
		t.Fatalf("non-exclusive create = %+v, want %+v", got, a)
	}
	_, err = s.Create(ctx, meta.RootIno, "f", dir(0o755))
	wantErr(t, err, meta.ErrExists)

	_, err = s.Lookup(ctx, meta.RootIno, "missing")
	wantErr(t, err, meta.ErrNotFound)
	_, err = s.Lookup(ctx, a.Ino, "x")
	wantErr(t, err, meta.ErrNotDir)
	_, err = s.Create(ctx, a.Ino, "x", file(0o644))
	wantErr(t, err, meta.ErrNotDir)
	_, err = s.Create(ctx, 1<<40, "x", file(0o644))
	wantErr(t, err, meta.ErrNotFound)
	_, err = s.Create(ctx, meta.RootIno, "bad", meta.CreateArgs{Type: meta.TypeRegular, Mode: 0o100644})
	wantErr(t, err, meta.ErrInvalid)
	_, err = s.Create(ctx, meta.RootIno, "bad", meta.CreateArgs{Type: 9, Mode: 0o644})
	wantErr(t, err, meta.ErrInvalid)

	d := must(s.Create(ctx, meta.RootIno, "d", dir(0o700)))(t)
	if got := must(s.Lookup(ctx, d.Ino, "."))(t); got.Ino != d.Ino {
		t.Fatalf("lookup . = %d", got.Ino)
	}
	if got := must(s.Lookup(ctx, d.Ino, ".."))(t); got.Ino != meta.RootIno {
		t.Fatalf("lookup .. = %d", got.Ino)
	}
}

func testNames(t *testing.T, s meta.Store) {
	ctx := ctxT(t)
	for _, name := range []string{"", ".", "..", "a/b", "/", "a\x00b"} {
		_, err := s.Create(ctx, meta.RootIno, name, file(0o644))
		wantErr(t, err, meta.ErrInvalid)
	}
	_, err := s.Create(ctx, meta.RootIno, strings.Repeat("n", meta.MaxNameLen+1), file(0o644))
	wantErr(t, err, meta.ErrNameTooLong)
	_, err = s.Lookup(ctx, meta.RootIno, strings.Repeat("n", meta.MaxNameLen+1))
	wantErr(t, err, meta.ErrNameTooLong)
	long := strings.Repeat("n", meta.MaxNameLen)
	must(s.Create(ctx, meta.RootIno, long, file(0o644)))(t)
	must(s.Lookup(ctx, meta.RootIno, long))(t)
	for _, name := range []string{"über", "a b", "\xff\xfe", "-", ".hidden", "..."} {
		must(s.Create(ctx, meta.RootIno, name, file(0o644)))(t)
		must(s.Lookup(ctx, meta.RootIno, name))(t)
	}
	_, err = s.Unlink(ctx, meta.RootIno, "..")
	wantErr(t, err, meta.ErrInvalid)
	_, err = s.Rename(ctx, meta.RootIno, long, meta.RootIno, "a/b")
	wantErr(t, err, meta.ErrInvalid)
}

func testMkdirRmdir(t *testing.T, s meta.Store) {
	ctx := ctxT(t)
	d := must(s.Create(ctx, meta.RootIno, "d", dir(0o755)))(t)
	if d.Nlink != 2 || d.Parent != meta.RootIno {
		t.Fatalf("mkdir = %+v", d)
	}
	if root := must(s.GetAttr(ctx, meta.RootIno))(t); root.Nlink != 3 {
		t.Fatalf("root nlink = %d, want 3", root.Nlink)
	}
	sub := must(s.Create(ctx, d.Ino, "sub", dir(0o755)))(t)
	must(s.Create(ctx, d.Ino, "f", file(0o644)))(t)
	if got := must(s.GetAttr(ctx, d.Ino))(t); got.Nlink != 3 {
		t.Fatalf("d nlink = %d, want 3 (2 + one subdir; files do not count)", got.Nlink)
	}
	wantErr(t, s.Rmdir(ctx, meta.RootIno, "d"), meta.ErrNotEmpty)
	wantErr(t, s.Rmdir(ctx, d.Ino, "f"), meta.ErrNotDir)
	wantErr(t, s.Rmdir(ctx, d.Ino, "nope"), meta.ErrNotFound)
	_, err := s.Unlink(ctx, d.Ino, "sub")
	wantErr(t, err, meta.ErrIsDir)

	if err := s.Rmdir(ctx, d.Ino, "sub"); err != nil {
		t.Fatal(err)
	}
	_, err = s.GetAttr(ctx, sub.Ino)
	wantErr(t, err, meta.ErrNotFound)
	if got := must(s.GetAttr(ctx, d.Ino))(t); got.Nlink != 2 {
		t.Fatalf("d nlink after rmdir = %d, want 2", got.Nlink)
	}
	must(s.Unlink(ctx, d.Ino, "f"))(t)
	if err := s.Rmdir(ctx, meta.RootIno, "d"); err != nil {
		t.Fatal(err)
	}
	if root := must(s.GetAttr(ctx, meta.RootIno))(t); root.Nlink != 2 {
		t.Fatalf("root nlink = %d, want 2", root.Nlink)
	}
	_, err = s.Lookup(ctx, meta.RootIno, "d")
	wantErr(t, err, meta.ErrNotFound)
}

func testSymlink(t *testing.T, s meta.Store) {
	ctx := ctxT(t)
	target := "../some/where/" + strings.Repeat("x", 300)
	l := must(s.Create(ctx, meta.RootIno, "l", meta.CreateArgs{Type: meta.TypeSymlink, Mode: 0o777, Target: target}))(t)
	if l.Type != meta.TypeSymlink || l.Target != target || l.Size != uint64(len(target)) {
		t.Fatalf("symlink = %+v", l)
	}
	if got := must(s.Lookup(ctx, meta.RootIno, "l"))(t); got.Target != target {
		t.Fatalf("lookup target = %q", got.Target)
	}
	_, err := s.Create(ctx, meta.RootIno, "empty", meta.CreateArgs{Type: meta.TypeSymlink, Mode: 0o777})
	wantErr(t, err, meta.ErrInvalid)
	_, err = s.Create(ctx, meta.RootIno, "long", meta.CreateArgs{Type: meta.TypeSymlink, Mode: 0o777, Target: strings.Repeat("x", meta.MaxSymlinkLen+1)})
	wantErr(t, err, meta.ErrNameTooLong)
	_, err = s.Create(ctx, meta.RootIno, "f", meta.CreateArgs{Type: meta.TypeRegular, Mode: 0o644, Target: "x"})
	wantErr(t, err, meta.ErrInvalid)
	_, _, err = s.CommitWrite(ctx, l.Ino, []chunk.Ref{ref(0, 1)}, nil, 10)
	wantErr(t, err, meta.ErrInvalid)
	must(s.Unlink(ctx, meta.RootIno, "l"))(t)
	_, err = s.GetAttr(ctx, l.Ino)
	wantErr(t, err, meta.ErrNotFound)
}

func testLinkUnlink(t *testing.T, s meta.Store) {
	ctx := ctxT(t)
	d := must(s.Create(ctx, meta.RootIno, "d", dir(0o755)))(t)
	f := must(s.Create(ctx, meta.RootIno, "f", file(0o644)))(t)
	refs := []chunk.Ref{ref(0, 1), ref(1, 1), ref(5, 1)}
	must3(s.CommitWrite(ctx, f.Ino, refs, nil, 6*100))(t)

	l := must(s.Link(ctx, f.Ino, d.Ino, "g"))(t)
	if l.Nlink != 2 || l.Ino != f.Ino {
		t.Fatalf("after link: %+v", l)
	}
	if got := must(s.Lookup(ctx, d.Ino, "g"))(t); got.Ino != f.Ino || got.Nlink != 2 {
		t.Fatalf("lookup link: %+v", got)
	}
	if got := must(s.GetAttr(ctx, d.Ino))(t); got.Nlink != 2 {
		t.Fatalf("link changed dir nlink: %d", got.Nlink)
	}
	_, err := s.Link(ctx, f.Ino, d.Ino, "g")
	wantErr(t, err, meta.ErrExists)
	_, err = s.Link(ctx, d.Ino, meta.RootIno, "dirlink")
	wantErr(t, err, meta.ErrIsDir)
	_, err = s.Link(ctx, f.Ino, f.Ino, "x")
	wantErr(t, err, meta.ErrNotDir)
	_, err = s.Link(ctx, 1<<40, d.Ino, "x")
	wantErr(t, err, meta.ErrNotFound)

	freed := must(s.Unlink(ctx, meta.RootIno, "f"))(t)
	if len(freed) != 0 {
		t.Fatalf("unlink of one of two links freed %v", freed)
	}
	if got := must(s.GetAttr(ctx, f.Ino))(t); got.Nlink != 1 {
		t.Fatalf("nlink after unlink = %d", got.Nlink)
	}
	if got := must(s.Chunks(ctx, f.Ino, 0, math.MaxUint64))(t); !slices.Equal(got, refs) {
		t.Fatalf("chunks after first unlink = %v", got)
	}
	freed = must(s.Unlink(ctx, d.Ino, "g"))(t)
	if !slices.Equal(freed, meta.Freed(refs)) {
		t.Fatalf("last unlink freed %v, want %v", freed, refs)
	}
	_, err = s.GetAttr(ctx, f.Ino)
	wantErr(t, err, meta.ErrNotFound)
	_, err = s.Chunks(ctx, f.Ino, 0, math.MaxUint64)
	wantErr(t, err, meta.ErrStale)
	_, err = s.Unlink(ctx, d.Ino, "g")
	wantErr(t, err, meta.ErrNotFound)
}

// must3 is must for calls returning two values and an error.
func must3[A, B any](a A, b B, err error) func(t *testing.T) (A, B) {
	return func(t *testing.T) (A, B) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return a, b
	}
}

func testRenameFile(t *testing.T, s meta.Store) {
	ctx := ctxT(t)
	d := must(s.Create(ctx, meta.RootIno, "d", dir(0o755)))(t)
	a := must(s.Create(ctx, meta.RootIno, "a", file(0o644)))(t)
	b := must(s.Create(ctx, d.Ino, "b", file(0o644)))(t)
	bRefs := []chunk.Ref{ref(0, 2), ref(1, 2)}
	must3(s.CommitWrite(ctx, b.Ino, bRefs, nil, 200))(t)

	// Same name: nothing happens.
	if freed, err := s.Rename(ctx, meta.RootIno, "a", meta.RootIno, "a"); err != nil || len(freed) != 0 {
		t.Fatalf("rename onto itself: %v %v", freed, err)
	}
	before := must(s.GetAttr(ctx, a.Ino))(t)

	freed := must(s.Rename(ctx, meta.RootIno, "a", d.Ino, "b"))(t)
	if !slices.Equal(freed, meta.Freed(bRefs)) {
		t.Fatalf("rename over file freed %v, want %v", freed, bRefs)
	}
	_, err := s.Lookup(ctx, meta.RootIno, "a")
	wantErr(t, err, meta.ErrNotFound)
	got := must(s.Lookup(ctx, d.Ino, "b"))(t)
	if got.Ino != a.Ino || got.Parent != d.Ino || got.Ctime < before.Ctime {
		t.Fatalf("renamed = %+v", got)
	}
	_, err = s.GetAttr(ctx, b.Ino)
	wantErr(t, err, meta.ErrNotFound)

	// Over a file with another link: that file survives with one link less.
	c := must(s.Create(ctx, meta.RootIno, "c", file(0o644)))(t)
	must(s.Link(ctx, c.Ino, meta.RootIno, "c2"))(t)
	must3(s.CommitWrite(ctx, c.Ino, []chunk.Ref{ref(0, 3)}, nil, 10))(t)
	x := must(s.Create(ctx, meta.RootIno, "x", file(0o644)))(t)
	if freed := must(s.Rename(ctx, meta.RootIno, "x", meta.RootIno, "c"))(t); len(freed) != 0 {
		t.Fatalf("replacing a linked file freed %v", freed)
	}
	if got := must(s.GetAttr(ctx, c.Ino))(t); got.Nlink != 1 {
		t.Fatalf("replaced linked file nlink = %d", got.Nlink)
	}
	if got := must(s.Lookup(ctx, meta.RootIno, "c"))(t); got.Ino != x.Ino {
		t.Fatalf("c is %d, want %d", got.Ino, x.Ino)
	}
	// Onto another link of the same inode: POSIX says nothing happens.
	must(s.Link(ctx, x.Ino, meta.RootIno, "x2"))(t)
	must(s.Rename(ctx, meta.RootIno, "c", meta.RootIno, "x2"))(t)
	must(s.Lookup(ctx, meta.RootIno, "c"))(t)
	must(s.Lookup(ctx, meta.RootIno, "x2"))(t)

	// File over directory, directory over file, missing source.
	must(s.Create(ctx, meta.RootIno, "e", dir(0o755)))(t)
	_, err = s.Rename(ctx, meta.RootIno, "c", meta.RootIno, "e")
	wantErr(t, err, meta.ErrIsDir)
	_, err = s.Rename(ctx, meta.RootIno, "e", meta.RootIno, "c")
	wantErr(t, err, meta.ErrNotDir)
	_, err = s.Rename(ctx, meta.RootIno, "nope", meta.RootIno, "z")
	wantErr(t, err, meta.ErrNotFound)
	_, err = s.Rename(ctx, meta.RootIno, "c", c.Ino, "z")
	wantErr(t, err, meta.ErrNotDir)
}

func testRenameDir(t *testing.T, s meta.Store) {
	ctx := ctxT(t)
	p1 := must(s.Create(ctx, meta.RootIno, "p1", dir(0o755)))(t)
	p2 := must(s.Create(ctx, meta.RootIno, "p2", dir(0o755)))(t)
	m := must(s.Create(ctx, p1.Ino, "m", dir(0o755)))(t)
	sub := must(s.Create(ctx, m.Ino, "sub", dir(0o755)))(t)
	subsub := must(s.Create(ctx, sub.Ino, "subsub", dir(0o755)))(t)

	// Into its own subtree or onto itself as a child.
	_, err := s.Rename(ctx, p1.Ino, "m", sub.Ino, "m")
	wantErr(t, err, meta.ErrInvalid)
	_, err = s.Rename(ctx, p1.Ino, "m", subsub.Ino, "x")
	wantErr(t, err, meta.ErrInvalid)
	_, err = s.Rename(ctx, p1.Ino, "m", m.Ino, "x")
	wantErr(t, err, meta.ErrInvalid)

	// Over a non-empty directory.
	full := must(s.Create(ctx, p2.Ino, "full", dir(0o755)))(t)
	must(s.Create(ctx, full.Ino, "child", file(0o644)))(t)
	_, err = s.Rename(ctx, p1.Ino, "m", p2.Ino, "full")
	wantErr(t, err, meta.ErrNotEmpty)

	// Between parents: nlink moves, Parent and ".." follow.
	must(s.Rename(ctx, p1.Ino, "m", p2.Ino, "m2"))(t)
	if got := must(s.GetAttr(ctx, p1.Ino))(t); got.Nlink != 2 {
		t.Fatalf("p1 nlink = %d, want 2", got.Nlink)
	}
	if got := must(s.GetAttr(ctx, p2.Ino))(t); got.Nlink != 4 {
		t.Fatalf("p2 nlink = %d, want 4", got.Nlink)
	}
	if got := must(s.Lookup(ctx, p2.Ino, "m2"))(t); got.Ino != m.Ino || got.Parent != p2.Ino {
		t.Fatalf("moved dir = %+v", got)
	}
	if got := must(s.Lookup(ctx, m.Ino, ".."))(t); got.Ino != p2.Ino {
		t.Fatalf(".. of moved dir = %d", got.Ino)
	}

	// Over an empty directory in another parent: it is removed.
	empty := must(s.Create(ctx, p1.Ino, "empty", dir(0o755)))(t)
	must(s.Rename(ctx, p2.Ino, "m2", p1.Ino, "empty"))(t)
	_, err = s.GetAttr(ctx, empty.Ino)
	wantErr(t, err, meta.ErrNotFound)
	if got := must(s.GetAttr(ctx, p1.Ino))(t); got.Nlink != 3 {
		t.Fatalf("p1 nlink = %d, want 3", got.Nlink)
	}
	if got := must(s.GetAttr(ctx, p2.Ino))(t); got.Nlink != 3 {
		t.Fatalf("p2 nlink = %d, want 3", got.Nlink)
	}
	// Within one parent over an empty directory.
	must(s.Create(ctx, p1.Ino, "e2", dir(0o755)))(t)
	must(s.Rename(ctx, p1.Ino, "empty", p1.Ino, "e2"))(t)
	if got := must(s.GetAttr(ctx, p1.Ino))(t); got.Nlink != 3 {
		t.Fatalf("p1 nlink = %d, want 3", got.Nlink)
	}
	if got := must(s.ReadDir(ctx, p1.Ino, 0, 10))(t); len(got) != 1 || got[0].Name != "e2" || got[0].Ino != m.Ino || got[0].Type != meta.TypeDir {
		t.Fatalf("p1 lists %v", got)
	}
	if root := must(s.GetAttr(ctx, meta.RootIno))(t); root.Nlink != 4 {
		t.Fatalf("root nlink = %d, want 4", root.Nlink)
	}
}

func testSetAttr(t *testing.T, s meta.Store) {
	ctx := ctxT(t)
	f := must(s.Create(ctx, meta.RootIno, "f", file(0o644)))(t)
	mode, uid, at, mt := uint32(0o4750), uint32(42), int64(1e9), int64(2e9)
	a := must(s.SetAttr(ctx, f.Ino, meta.SetAttrArgs{Mode: &mode, UID: &uid, Atime: &at, Mtime: &mt}))(t)
	if a.Mode != mode || a.UID != uid || a.GID != f.GID || a.Atime != at || a.Mtime != mt || a.Ctime < f.Ctime {
		t.Fatalf("setattr = %+v", a)
	}
	if got := must(s.GetAttr(ctx, f.Ino))(t); got != a {
		t.Fatalf("getattr = %+v, want %+v", got, a)
	}
	bad := uint32(0o170000)
	_, err := s.SetAttr(ctx, f.Ino, meta.SetAttrArgs{Mode: &bad})
	wantErr(t, err, meta.ErrInvalid)
	_, err = s.SetAttr(ctx, 1<<40, meta.SetAttrArgs{Mode: &mode})
	wantErr(t, err, meta.ErrNotFound)
}

func testConcurrentExclusiveCreate(t *testing.T, s meta.Store) {
	ctx := ctxT(t)
	const n = 16
	var wg sync.WaitGroup
	errs := make([]error, n)
	inos := make([]meta.Ino, n)
	for i := range n {
		wg.Go(func() {
			a, err := s.Create(ctx, meta.RootIno, "one", meta.CreateArgs{Type: meta.TypeRegular, Mode: 0o644, Exclusive: true})
			errs[i], inos[i] = err, a.Ino
		})
	}
	wg.Wait()
	wins := 0
	for i, err := range errs {
		switch {
		case err == nil:
			wins++
			if got := must(s.Lookup(ctx, meta.RootIno, "one"))(t); got.Ino != inos[i] {
				t.Fatalf("winner %d, but name points to %d", inos[i], got.Ino)
			}
		case !errors.Is(err, meta.ErrExists):
			t.Fatalf("loser got %v, want ErrExists", err)
		}
	}
	if wins != 1 {
		t.Fatalf("%d winners, want 1", wins)
	}
	// The same race on mkdir must leave the parent's nlink right.
	for range n {
		wg.Go(func() { _, _ = s.Create(ctx, meta.RootIno, "d", dir(0o755)) })
	}
	wg.Wait()
	if root := must(s.GetAttr(ctx, meta.RootIno))(t); root.Nlink != 3 {
		t.Fatalf("root nlink = %d, want 3", root.Nlink)
	}
}

func testConcurrentCreates(t *testing.T, s meta.Store) {
	ctx := ctxT(t)
	const workers, each = 8, 40
	var wg sync.WaitGroup
	inos := make([][]meta.Ino, workers)
	errs := make([]error, workers)
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				args := file(0o644)
				if i%4 == 0 {
					args = dir(0o755)
				}
				a, err := s.Create(ctx, meta.RootIno, fmt.Sprintf("w%d-%03d", w, i), args)
				if err != nil {
					errs[w] = err
					return
				}
				inos[w] = append(inos[w], a.Ino)
			}
		})
	}
	wg.Wait()
	seen := map[meta.Ino]bool{}
	for w := range workers {
		if errs[w] != nil {
			t.Fatal(errs[w])
		}
		for _, ino := range inos[w] {
			if seen[ino] || ino == meta.RootIno {
				t.Fatalf("inode %d handed out twice", ino)
			}
			seen[ino] = true
		}
	}
	ents := must(s.ReadDir(ctx, meta.RootIno, 0, workers*each+1))(t)
	if len(ents) != workers*each {
		t.Fatalf("listed %d entries, want %d", len(ents), workers*each)
	}
	if root := must(s.GetAttr(ctx, meta.RootIno))(t); root.Nlink != 2+workers*each/4 {
		t.Fatalf("root nlink = %d, want %d", root.Nlink, 2+workers*each/4)
	}
}

// testConcurrentRenameCycle races "move a into b" against "move b into a":
// at most one may win, or the tree would get a cycle.
func testConcurrentRenameCycle(t *testing.T, s meta.Store) {
	ctx := ctxT(t)
	for round := range 10 {
		p := must(s.Create(ctx, meta.RootIno, fmt.Sprintf("r%d", round), dir(0o755)))(t)
		a := must(s.Create(ctx, p.Ino, "a", dir(0o755)))(t)
		b := must(s.Create(ctx, p.Ino, "b", dir(0o755)))(t)
		var wg sync.WaitGroup
		var errA, errB error
		wg.Go(func() { _, errA = s.Rename(ctx, p.Ino, "a", b.Ino, "a") })
		wg.Go(func() { _, errB = s.Rename(ctx, p.Ino, "b", a.Ino, "b") })
		wg.Wait()
		if errA == nil && errB == nil {
			t.Fatal("both crossing renames succeeded: cycle")
		}
		for _, err := range []error{errA, errB} {
			if err != nil && !errors.Is(err, meta.ErrInvalid) && !errors.Is(err, meta.ErrNotFound) {
				t.Fatalf("crossing rename: %v", err)
			}
		}
		// Both directories still reach the root.
		for _, ino := range []meta.Ino{a.Ino, b.Ino} {
			cur := ino
			for depth := 0; cur != meta.RootIno; depth++ {
				if depth > 10 {
					t.Fatalf("inode %d does not reach the root", ino)
				}
				cur = must(s.GetAttr(ctx, cur))(t).Parent
			}
		}
	}
}

func testReadDirPaging(t *testing.T, s meta.Store) {
	ctx := ctxT(t)
	d := must(s.Create(ctx, meta.RootIno, "big", dir(0o755)))(t)
	const n = 3000
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("entry-%x", i*7919) // not created in order
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 8 {
		wg.Go(func() {
			for i := w; i < n; i += 8 {
				if _, err := s.Create(ctx, d.Ino, names[i], file(0o644)); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	slices.Sort(names)
	cookies := map[string]uint64{}
	for _, limit := range []int{7, 100, n} {
		var got []string
		var after, prev uint64
		for pages := 0; ; pages++ {
			if pages > n {
				t.Fatal("paging does not end")
			}
			ents := must(s.ReadDir(ctx, d.Ino, after, limit))(t)
			if len(ents) > limit && ents[limit].Cookie != ents[limit-1].Cookie {
				t.Fatalf("page of %d entries, limit %d", len(ents), limit)
			}
			for _, e := range ents {
				got = append(got, e.Name)
				if e.Cookie < meta.MinCookie || e.Cookie >= 1<<63 || e.Cookie < prev {
					t.Fatalf("entry %q has cookie %d after %d: want increasing cookies in [MinCookie, 1<<63)", e.Name, e.Cookie, prev)
				}
				prev = e.Cookie
				// The same on every listing: a resumed listing finds it.
				if c, ok := cookies[e.Name]; ok && c != e.Cookie {
					t.Fatalf("entry %q has cookie %d, was %d", e.Name, e.Cookie, c)
				}
				cookies[e.Name] = e.Cookie
			}
			if len(ents) < limit {
				break
			}
			after = ents[len(ents)-1].Cookie
		}
		slices.Sort(got)
		if !slices.Equal(got, names) {
			t.Fatalf("limit %d: listed %d names, want %d, each once", limit, len(got), n)
		}
	}
	_, err := s.ReadDir(ctx, d.Ino, 0, 0)
	wantErr(t, err, meta.ErrInvalid)
	f := must(s.Lookup(ctx, d.Ino, names[0]))(t)
	_, err = s.ReadDir(ctx, f.Ino, 0, 10)
	wantErr(t, err, meta.ErrNotDir)
}

func testCommitWriteChunks(t *testing.T, s meta.Store) {
	ctx := ctxT(t)
	f := must(s.Create(ctx, meta.RootIno, "f", file(0o644)))(t)
	a, freed := must3(s.CommitWrite(ctx, f.Ino, []chunk.Ref{ref(2, 1), ref(0, 1), ref(1, 1)}, nil, 3000))(t)
	if len(freed) != 0 || a.Size != 3000 || a.Mtime < f.Mtime || a.Ctime < f.Ctime {
		t.Fatalf("first commit: %+v freed %v", a, freed)
	}
	want := []chunk.Ref{ref(0, 1), ref(1, 1), ref(2, 1)}
	if got := must(s.Chunks(ctx, f.Ino, 0, math.MaxUint64))(t); !slices.Equal(got, want) {
		t.Fatalf("chunks = %v", got)
	}
	if got := must(s.Chunks(ctx, f.Ino, 1, 1))(t); !slices.Equal(got, want[1:2]) {
		t.Fatalf("chunks [1,1] = %v", got)
	}
	if got := must(s.Chunks(ctx, f.Ino, 3, 100))(t); len(got) != 0 {
		t.Fatalf("chunks past end = %v", got)
	}
	// Replace 1, add a hole-leaving 9, size never shrinks.
	a, freed = must3(s.CommitWrite(ctx, f.Ino, []chunk.Ref{ref(1, 2), ref(9, 2)}, nil, 100))(t)
	if a.Size != 3000 || !slices.Equal(freed, meta.Freed{ref(1, 1)}) {
		t.Fatalf("second commit: size %d freed %v", a.Size, freed)
	}
	if got := must(s.Chunks(ctx, f.Ino, 1, 9))(t); !slices.Equal(got, []chunk.Ref{ref(1, 2), ref(2, 1), ref(9, 2)}) {
		t.Fatalf("chunks = %v", got)
	}
	// Rewriting a reference with the same chunk does not free it.
	same := ref(9, 2)
	same.Len = 5
	if _, freed = must3(s.CommitWrite(ctx, f.Ino, []chunk.Ref{same}, nil, 0))(t); len(freed) != 0 {
		t.Fatalf("same-ID commit freed %v", freed)
	}
	if got := must(s.GetAttr(ctx, f.Ino))(t); got.Size != 3000 {
		t.Fatalf("size = %d", got.Size)
	}
	_, _, err := s.CommitWrite(ctx, f.Ino, []chunk.Ref{ref(4, 1), ref(4, 2)}, nil, 0)
	wantErr(t, err, meta.ErrInvalid)
	_, _, err = s.CommitWrite(ctx, meta.RootIno, []chunk.Ref{ref(0, 1)}, nil, 1)
	wantErr(t, err, meta.ErrIsDir)
	_, _, err = s.CommitWrite(ctx, 1<<40, []chunk.Ref{ref(0, 1)}, nil, 1)
	wantErr(t, err, meta.ErrStale)
}

func testTruncate(t *testing.T, s meta.Store) {
	ctx := ctxT(t)
	const cs = 1000
	f := must(s.Create(ctx, meta.RootIno, "f", file(0o644)))(t)
	must3(s.CommitWrite(ctx, f.Ino, []chunk.Ref{ref(0, 1), ref(1, 1), ref(2, 1), ref(3, 1)}, nil, 4*cs))(t)

	// To 1.5 chunks with a rewritten tail: chunks 2 and 3 go, old 1 is freed.
	tail := ref(1, 7)
	a, freed := must3(s.Truncate(ctx, f.Ino, 1500, cs, &tail, nil))(t)
	if a.Size != 1500 || !slices.Equal(freed, meta.Freed{ref(2, 1), ref(3, 1), ref(1, 1)}) {
		t.Fatalf("truncate: size %d freed %v", a.Size, freed)
	}
	if got := must(s.Chunks(ctx, f.Ino, 0, math.MaxUint64))(t); !slices.Equal(got, []chunk.Ref{ref(0, 1), tail}) {
		t.Fatalf("chunks = %v", got)
	}
	// To an exact chunk boundary without tail: chunk 1 goes.
	a, freed = must3(s.Truncate(ctx, f.Ino, cs, cs, nil, nil))(t)
	if a.Size != cs || !slices.Equal(freed, meta.Freed{tail}) {
		t.Fatalf("truncate to boundary: size %d freed %v", a.Size, freed)
	}
	// Growing frees nothing and keeps references.
	a, freed = must3(s.Truncate(ctx, f.Ino, 10*cs, cs, nil, nil))(t)
	if a.Size != 10*cs || len(freed) != 0 {
		t.Fatalf("grow: size %d freed %v", a.Size, freed)
	}
	bad := ref(5, 1)
	_, _, err := s.Truncate(ctx, f.Ino, 1500, cs, &bad, nil)
	wantErr(t, err, meta.ErrInvalid)
	_, _, err = s.Truncate(ctx, f.Ino, 1500, 0, nil, nil)
	wantErr(t, err, meta.ErrInvalid)
	_, _, err = s.Truncate(ctx, meta.RootIno, 0, cs, nil, nil)
	wantErr(t, err, meta.ErrIsDir)
	_, _, err = s.Truncate(ctx, 1<<40, 0, cs, nil, nil)
	wantErr(t, err, meta.ErrStale)

	a, freed = must3(s.Truncate(ctx, f.Ino, 0, cs, nil, nil))(t)
	if a.Size != 0 || !slices.Equal(freed, meta.Freed{ref(0, 1)}) {
		t.Fatalf("truncate to 0: size %d freed %v", a.Size, freed)
	}
	if got := must(s.Chunks(ctx, f.Ino, 0, math.MaxUint64))(t); len(got) != 0 {
		t.Fatalf("chunks after truncate to 0: %v", got)
	}
}

// testManyChunks checks that a file with thousands of chunk references
// commits, lists and unlinks within the store's request limits.
func testManyChunks(t *testing.T, s meta.Store) {
	ctx := ctxT(t)
	f := must(s.Create(ctx, meta.RootIno, "f", file(0o644)))(t)
	const n, batch = 12000, 4000
	var all []chunk.Ref
	for start := 0; start < n; start += batch {
		refs := make([]chunk.Ref, batch)
		for i := range refs {
			refs[i] = ref(uint64(start+i), 9)
		}
		must3(s.CommitWrite(ctx, f.Ino, refs, nil, uint64(start+batch)*100))(t)
		all = append(all, refs...)
	}
	if got := must(s.Chunks(ctx, f.Ino, 0, math.MaxUint64))(t); !slices.Equal(got, all) {
		t.Fatalf("listed %d chunks, want %d", len(got), len(all))
	}
	freed := must(s.Unlink(ctx, meta.RootIno, "f"))(t)
	if !slices.Equal(freed, meta.Freed(all)) {
		t.Fatalf("unlink freed %d chunks, want %d", len(freed), len(all))
	}
}

func testStatFS(t *testing.T, s meta.Store) {
	ctx := ctxT(t)
	n0 := must(s.StatFS(ctx))(t)
	if n0 != 1 {
		t.Fatalf("empty namespace has %d inodes, want 1", n0)
	}
	must(s.Create(ctx, meta.RootIno, "a", file(0o644)))(t)
	must(s.Create(ctx, meta.RootIno, "b", dir(0o755)))(t)
	if got := must(s.StatFS(ctx))(t); got != 3 {
		t.Fatalf("inodes = %d, want 3", got)
	}
	must(s.Unlink(ctx, meta.RootIno, "a"))(t)
	if got := must(s.StatFS(ctx))(t); got != 2 {
		t.Fatalf("inodes = %d, want 2", got)
	}
}

func testGetAttrs(t *testing.T, s meta.Store) {
	ctx := ctxT(t)
	var inos []meta.Ino
	want := map[meta.Ino]string{}
	for i := range 250 { // more than one batch
		name := fmt.Sprintf("f%03d", i)
		a := must(s.Create(ctx, meta.RootIno, name, file(0o600)))(t)
		inos = append(inos, a.Ino)
		want[a.Ino] = name
	}
	gone := must(s.Create(ctx, meta.RootIno, "gone", file(0o600)))(t)
	must(s.Unlink(ctx, meta.RootIno, "gone"))(t)
	inos = append(inos, gone.Ino)

	got := must(s.GetAttrs(ctx, inos))(t)
	if len(got) != len(inos) {
		t.Fatalf("GetAttrs returned %d attrs for %d inodes", len(got), len(inos))
	}
	for i, a := range got[:len(got)-1] {
		if a.Ino != inos[i] || a.Type != meta.TypeRegular || a.Mode != 0o600 {
			t.Fatalf("attr %d = %+v, want inode %d (%s), a 0600 file", i, a, inos[i], want[inos[i]])
		}
		if one := must(s.GetAttr(ctx, inos[i]))(t); one != a {
			t.Fatalf("GetAttrs and GetAttr disagree on %d: %+v vs %+v", inos[i], a, one)
		}
	}
	if last := got[len(got)-1]; last.Ino != 0 {
		t.Fatalf("removed inode %d gave %+v, want a zero Attr", gone.Ino, last)
	}
	if none := must(s.GetAttrs(ctx, nil))(t); len(none) != 0 {
		t.Fatalf("GetAttrs(nil) = %v", none)
	}
}

// testExpectConflicts: a change computed from a chunk map entry that has
// changed since is refused with ErrConflict and applies nothing.
func testExpectConflicts(t *testing.T, s meta.Store) {
	ctx := ctxT(t)
	f := must(s.Create(ctx, meta.RootIno, "f", file(0o644)))(t)
	const cs = 1000
	a := ref(0, 1)
	must3(s.CommitWrite(ctx, f.Ino, []chunk.Ref{a}, []meta.Expect{{Index: 0}}, 500))(t) // a hole expected, and found

	// Writer B merged from a and commits first; writer C also merged
	// from a and must be refused.
	b, c := ref(0, 2), ref(0, 3)
	must3(s.CommitWrite(ctx, f.Ino, []chunk.Ref{b}, []meta.Expect{{Index: 0, ID: a.ID}}, 600))(t)
	_, _, err := s.CommitWrite(ctx, f.Ino, []chunk.Ref{c}, []meta.Expect{{Index: 0, ID: a.ID}}, 900)
	wantErr(t, err, meta.ErrConflict)
	// A writer that took chunk 0 for a hole (it saw the file empty) is
	// refused too.
	_, _, err = s.CommitWrite(ctx, f.Ino, []chunk.Ref{c}, []meta.Expect{{Index: 0}}, 900)
	wantErr(t, err, meta.ErrConflict)
	refs := must(s.Chunks(ctx, f.Ino, 0, 10))(t)
	if attr := must(s.GetAttr(ctx, f.Ino))(t); len(refs) != 1 || refs[0].ID != b.ID || attr.Size != 600 {
		t.Fatalf("after a refused commit: refs %v, size %d; want only b and size 600", refs, attr.Size)
	}
	// A truncate decided from a stale tail is refused too.
	tail := ref(0, 4)
	tail.Len = 100
	_, _, err = s.Truncate(ctx, f.Ino, 100, cs, &tail, []meta.Expect{{Index: 0, ID: a.ID}})
	wantErr(t, err, meta.ErrConflict)
	must3(s.Truncate(ctx, f.Ino, 100, cs, &tail, []meta.Expect{{Index: 0, ID: b.ID}}))(t)
}

// testCopies checks per-subtree redundancy: a new inode takes its
// directory's Copies, link, rename and data changes keep an inode's, and
// SetCopies changes one inode or a subtree, counting what it changed.
func testCopies(t *testing.T, s meta.Store) {
	cs, ok := s.(CopiesSetter)
	if !ok {
		t.Skip("store does not implement SetCopies")
	}
	ctx := ctxT(t)
	copiesOf := func(ino meta.Ino) uint8 {
		t.Helper()
		return must(s.GetAttr(ctx, ino))(t).Copies
	}
	setCopies := func(ino meta.Ino, copies uint8, recursive bool, want int) {
		t.Helper()
		if n := must(cs.SetCopies(ctx, ino, copies, recursive))(t); n != want {
			t.Fatalf("SetCopies(%d, %d, %v) changed %d inodes, want %d", ino, copies, recursive, n, want)
		}
	}

	if c := copiesOf(meta.RootIno); c != 0 {
		t.Fatalf("root of a new namespace has copies %d", c)
	}
	plain := must(s.Create(ctx, meta.RootIno, "plain", file(0o644)))(t)
	if plain.Copies != 0 {
		t.Fatalf("file under the root has copies %d", plain.Copies)
	}

	d := must(s.Create(ctx, meta.RootIno, "d", dir(0o755)))(t)
	before := must(s.GetAttr(ctx, d.Ino))(t)
	setCopies(d.Ino, 3, false, 1)
	after := must(s.GetAttr(ctx, d.Ino))(t)
	if after.Copies != 3 {
		t.Fatalf("copies after SetCopies = %d", after.Copies)
	}
	after.Copies = before.Copies
	if after != before {
		t.Fatalf("SetCopies changed more than copies: %+v, was %+v", after, before)
	}
	setCopies(d.Ino, 3, false, 0) // already so

	// Creation inherits, at every depth and for every type.
	f := must(s.Create(ctx, d.Ino, "f", file(0o644)))(t)
	sub := must(s.Create(ctx, d.Ino, "sub", dir(0o755)))(t)
	sym := must(s.Create(ctx, d.Ino, "sym", meta.CreateArgs{Type: meta.TypeSymlink, Mode: 0o777, Target: "f"}))(t)
	deep := must(s.Create(ctx, sub.Ino, "deep", file(0o600)))(t)
	for _, a := range []meta.Attr{f, sub, sym, deep} {
		if a.Copies != 3 {
			t.Fatalf("inode %d created below d has copies %d, want 3", a.Ino, a.Copies)
		}
		if c := copiesOf(a.Ino); c != 3 {
			t.Fatalf("inode %d stored with copies %d, want 3", a.Ino, c)
		}
	}
	if got := must(s.Create(ctx, d.Ino, "f", file(0o600)))(t); got != f {
		t.Fatalf("non-exclusive create over f = %+v, want %+v", got, f)
	}

	// Link, rename, writes, truncate and setattr keep an inode's copies.
	if l := must(s.Link(ctx, f.Ino, meta.RootIno, "f-link"))(t); l.Copies != 3 {
		t.Fatalf("link has copies %d", l.Copies)
	}
	must(s.Rename(ctx, d.Ino, "sym", meta.RootIno, "sym"))(t)
	if c := copiesOf(sym.Ino); c != 3 {
		t.Fatalf("renamed symlink has copies %d", c)
	}
	must(s.Rename(ctx, meta.RootIno, "sym", d.Ino, "sym"))(t)
	if a, _ := must3(s.CommitWrite(ctx, f.Ino, []chunk.Ref{ref(0, 1)}, nil, 10))(t); a.Copies != 3 {
		t.Fatalf("commit write returned copies %d", a.Copies)
	}
	if a, _ := must3(s.Truncate(ctx, f.Ino, 5, 1000, nil, nil))(t); a.Copies != 3 {
		t.Fatalf("truncate returned copies %d", a.Copies)
	}
	mode := uint32(0o640)
	if a := must(s.SetAttr(ctx, f.Ino, meta.SetAttrArgs{Mode: &mode}))(t); a.Copies != 3 {
		t.Fatalf("setattr returned copies %d", a.Copies)
	}
	if c := copiesOf(plain.Ino); c != 0 {
		t.Fatalf("file outside d has copies %d", c)
	}

	// Recursive: d, f (with its link in the root), sub, sym, deep.
	setCopies(d.Ino, 1, true, 5)
	for _, ino := range []meta.Ino{d.Ino, f.Ino, sub.Ino, sym.Ino, deep.Ino} {
		if c := copiesOf(ino); c != 1 {
			t.Fatalf("inode %d has copies %d after recursive SetCopies 1", ino, c)
		}
	}
	if c := copiesOf(meta.RootIno); c != 0 {
		t.Fatalf("root changed to %d", c)
	}
	if c := copiesOf(plain.Ino); c != 0 {
		t.Fatalf("file outside d changed to %d", c)
	}
	setCopies(d.Ino, 1, true, 0)
	// One inode back to the default; the recursive change counts the rest.
	setCopies(deep.Ino, 0, true, 1) // recursive on a file: just the file
	setCopies(d.Ino, 0, true, 4)
	setCopies(f.Ino, 2, false, 1)
	if c := copiesOf(f.Ino); c != 2 {
		t.Fatalf("copies of f = %d", c)
	}
	// The whole namespace from the root.
	setCopies(meta.RootIno, 2, true, 6) // root, plain, d, sub, sym, deep (f has 2)

	_, err := cs.SetCopies(ctx, d.Ino, meta.MaxCopies+1, false)
	wantErr(t, err, meta.ErrInvalid)
	_, err = cs.SetCopies(ctx, 1<<40, 2, true)
	wantErr(t, err, meta.ErrNotFound)
}
