package etcdmeta

import (
	"bytes"
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/wormhole-fs/wormhole/chunker/chunk"
	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
)

func sampleAttrs() []meta.Attr {
	return []meta.Attr{
		{Ino: 1, Type: meta.TypeDir, Mode: 0o755, Nlink: 2, Gen: 1, Parent: 1},
		{Ino: 99, Type: meta.TypeRegular, Mode: 0o7777, UID: math.MaxUint32, GID: 5, Nlink: math.MaxUint32,
			Size: math.MaxUint64, Atime: math.MinInt64, Mtime: math.MaxInt64, Ctime: -1, Gen: math.MaxUint64, Parent: math.MaxUint64},
		{Ino: 3, Type: meta.TypeSymlink, Mode: 0o777, Nlink: 1, Size: 4, Target: "a/b\x00", Gen: 7, Parent: 1},
		{Ino: 4, Type: meta.TypeSymlink, Mode: 0o777, Nlink: 1, Target: strings.Repeat("t", meta.MaxSymlinkLen)},
		{Ino: 5, Type: meta.TypeDir, Mode: 0o700, Nlink: 3, Gen: 2, Parent: 1, Copies: 3},
		{Ino: 6, Type: meta.TypeRegular, Mode: 0o644, Nlink: 1, Size: 1 << 40, Parent: 5, Copies: meta.MaxCopies},
		{Ino: 7, Type: meta.TypeSymlink, Mode: 0o777, Nlink: 1, Size: 1, Target: "x", Parent: 5, Copies: 1},
	}
}

// TestInodeVersions pins the inode record bytes: the default redundancy
// is written as version 1, which binaries from before version 2 read, and
// version 2 is version 1 with a trailing copies byte.
func TestInodeVersions(t *testing.T) {
	// Written by a binary that knew only version 1.
	v1 := []byte{inodeV1, byte(meta.TypeRegular), 0xa4, 0x03, 0x0a, 0x0b, 0x01, 0x05, 0x02, 0x04, 0x06, 0x07, 0x01, 0x00}
	want := meta.Attr{Ino: 8, Type: meta.TypeRegular, Mode: 0o644, UID: 10, GID: 11, Nlink: 1, Size: 5,
		Atime: 1, Mtime: 2, Ctime: 3, Gen: 7, Parent: 1}
	got, err := decodeInode(8, v1)
	if err != nil || got != want {
		t.Fatalf("version 1 record: %+v, %v; want %+v", got, err, want)
	}
	if b := encodeInode(want); !bytes.Equal(b, v1) {
		t.Errorf("Copies 0 encodes as % x, want version 1 % x", b, v1)
	}
	want.Copies = 3
	v2 := append([]byte{inodeV2}, v1[1:]...)
	v2 = append(v2, 3)
	if b := encodeInode(want); !bytes.Equal(b, v2) {
		t.Errorf("Copies 3 encodes as % x, want % x", b, v2)
	}
	if got, err := decodeInode(8, v2); err != nil || got != want {
		t.Errorf("version 2 record: %+v, %v; want %+v", got, err, want)
	}
}

func TestInodeRoundTrip(t *testing.T) {
	for _, a := range sampleAttrs() {
		got, err := decodeInode(a.Ino, encodeInode(a))
		if err != nil || got != a {
			t.Errorf("round trip of %+v: %+v, %v", a, got, err)
		}
	}
}

func TestDecodeRejectsMalformed(t *testing.T) {
	good := encodeInode(sampleAttrs()[2])
	bad := map[string][]byte{
		"empty":          nil,
		"version":        append([]byte{9}, good[1:]...),
		"type":           append([]byte{inodeV1, 0}, good[2:]...),
		"truncated":      good[:len(good)-1],
		"trailing":       append(append([]byte(nil), good...), 0),
		"mode bits":      encodeInode(meta.Attr{Type: meta.TypeRegular, Mode: 0o170000}),
		"file target":    encodeInode(meta.Attr{Type: meta.TypeRegular, Target: "x"}),
		"long target":    encodeInode(meta.Attr{Type: meta.TypeSymlink, Target: strings.Repeat("t", meta.MaxSymlinkLen+1)}),
		"uid overflow":   {inodeV1, byte(meta.TypeRegular), 0, 0x80, 0x80, 0x80, 0x80, 0x10},
		"huge target":    {inodeV1, byte(meta.TypeSymlink), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f},
		"varint overrun": {inodeV1, byte(meta.TypeRegular), 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01},
		"v2 no copies":   append([]byte{inodeV2}, good[1:]...),
		"v2 copies 0":    append(append([]byte{inodeV2}, good[1:]...), 0),
		"v2 copies big":  append(append([]byte{inodeV2}, good[1:]...), meta.MaxCopies+1),
		"v2 trailing":    append(append([]byte{inodeV2}, good[1:]...), 2, 0),
		"v1 copies":      append(append([]byte(nil), good...), 2),
		"version 3":      append(append([]byte{3}, good[1:]...), 2),
	}
	for name, b := range bad {
		if _, err := decodeInode(5, b); !errors.Is(err, errMalformed) {
			t.Errorf("inode %s: %v", name, err)
		}
	}
	for name, b := range map[string][]byte{
		"empty":    nil,
		"version":  {2, byte(meta.TypeDir), 5},
		"type":     {dentryV1, 7, 5},
		"zero ino": {dentryV1, byte(meta.TypeDir), 0},
		"trailing": {dentryV1, byte(meta.TypeDir), 5, 0},
	} {
		if _, err := decodeDentry(b); !errors.Is(err, errMalformed) {
			t.Errorf("dentry %s: %v", name, err)
		}
	}
	r := encodeChunkRef(chunk.Ref{Len: 5})
	for name, b := range map[string][]byte{
		"empty":     nil,
		"version":   append([]byte{3}, r[1:]...),
		"truncated": r[:len(r)-1],
		"trailing":  append(append([]byte(nil), r...), 1),
	} {
		if _, err := decodeChunkRef(0, b); !errors.Is(err, errMalformed) {
			t.Errorf("chunk %s: %v", name, err)
		}
	}
}

func TestKeys(t *testing.T) {
	k := newKeys("c1")
	if got := k.ino(0xabc); got != "/wh/c1/ino/0000000000000abc" {
		t.Error(got)
	}
	// The cookie in entry keys is the first 63 bits of SHA-256("n"):
	// pinned, as the layout depends on it.
	if got := k.dentry(1, "n"); got != "/wh/c1/ent/0000000000000001/1b16b1df538ba12dn" {
		t.Error(got)
	}
	if c, name, err := entryName(k.dirPrefix(1), k.dentry(1, "n")); err != nil || c != 0x1b16b1df538ba12d || name != "n" {
		t.Error(c, name, err)
	}
	for _, bad := range []string{"/wh/c1/ent/0000000000000001/1b16b1df538ba12d", "/wh/c1/ent/0000000000000001/0000000000000003n", "/wh/c1/ent/0000000000000002/1b16b1df538ba12dn"} {
		if _, _, err := entryName(k.dirPrefix(1), bad); !errors.Is(err, errMalformed) {
			t.Errorf("entry key %q: %v", bad, err)
		}
	}
	if got := k.chunk(2, math.MaxUint64); got != "/wh/c1/chunk/0000000000000002/ffffffffffffffff" {
		t.Error(got)
	}
	if idx, err := k.chunkIndex(2, k.chunk(2, 77)); err != nil || idx != 77 {
		t.Error(idx, err)
	}
	if _, err := k.chunkIndex(2, k.chunk(3, 77)); err == nil {
		t.Error("chunk key of another inode accepted")
	}
	if got := prefixEnd("/a/"); got != "/a0" {
		t.Error(got)
	}
}

func TestValidName(t *testing.T) {
	for name, want := range map[string]error{
		"ok": nil, "": meta.ErrInvalid, ".": meta.ErrInvalid, "..": meta.ErrInvalid, "a/b": meta.ErrInvalid,
		"a\x00": meta.ErrInvalid, strings.Repeat("x", 255): nil, strings.Repeat("x", 256): meta.ErrNameTooLong,
		"...": nil,
	} {
		if err := validName(name); !errors.Is(err, want) && !(err == nil && want == nil) {
			t.Errorf("validName(%q) = %v, want %v", name, err, want)
		}
	}
}

func FuzzDecodeInode(f *testing.F) {
	for _, a := range sampleAttrs() {
		f.Add(encodeInode(a))
	}
	f.Add([]byte{inodeV1})
	f.Add([]byte{inodeV2})
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := decodeInode(7, b)
		if err != nil {
			return
		}
		a2, err := decodeInode(7, encodeInode(a))
		if err != nil {
			t.Fatalf("re-decode of %+v: %v", a, err)
		}
		if a2 != a {
			t.Fatalf("round trip changed %+v to %+v", a, a2)
		}
	})
}

func FuzzDecodeDentry(f *testing.F) {
	f.Add(encodeDentry(dentry{Ino: 1, Type: meta.TypeDir}))
	f.Add(encodeDentry(dentry{Ino: math.MaxUint64, Type: meta.TypeSymlink}))
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := decodeDentry(b)
		if err != nil {
			return
		}
		e2, err := decodeDentry(encodeDentry(e))
		if err != nil || e2 != e {
			t.Fatalf("round trip of %+v: %+v, %v", e, e2, err)
		}
	})
}

func FuzzDecodeChunkRef(f *testing.F) {
	r := chunk.Ref{Index: 3, ID: chunk.NewID(), Len: math.MaxUint32}
	r.Sum[5] = 9
	f.Add(uint64(3), encodeChunkRef(r))
	f.Add(uint64(0), encodeChunkRef(chunk.Ref{}))
	f.Fuzz(func(t *testing.T, index uint64, b []byte) {
		r, err := decodeChunkRef(index, b)
		if err != nil {
			return
		}
		r2, err := decodeChunkRef(index, encodeChunkRef(r))
		if err != nil || r2 != r {
			t.Fatalf("round trip of %+v: %+v, %v", r, r2, err)
		}
	})
}

func FuzzDecodeCounter(f *testing.F) {
	f.Add(encodeCounter(2))
	f.Fuzz(func(t *testing.T, b []byte) {
		v, err := decodeCounter(b)
		if err != nil {
			return
		}
		v2, err := decodeCounter(encodeCounter(v))
		if err != nil || v2 != v {
			t.Fatalf("round trip of %d: %d, %v", v, v2, err)
		}
	})
}
