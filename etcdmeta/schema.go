package etcdmeta

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strconv"

	"github.com/wormhole-fs/wormhole/chunker/chunk"
	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
)

// Record format versions (the first byte of every value).
const (
	inodeV1  = 1
	inodeV2  = 2 // v1 and a copies byte
	dentryV1 = 1
	chunkV1  = 1
)

// errMalformed is wrapped by every decoding error.
var errMalformed = errors.New("malformed record")

// keys builds the etcd keys of one cluster's namespace. All keys live under
// "/wh/<clusterID>/"; inode numbers and chunk indexes are 16 lowercase hex
// digits so that byte order is numeric order.
type keys struct {
	prefix string // "/wh/<clusterID>/"
}

func newKeys(clusterID string) keys { return keys{prefix: nsRoot + clusterID + "/"} }

// nsRoot is the prefix of every namespace's keys.
const nsRoot = "/wh/"

func hex16(v uint64) string {
	const digits = "0000000000000000"
	s := strconv.FormatUint(v, 16)
	return digits[:16-len(s)] + s
}

func (k keys) nextIno() string         { return k.prefix + "next-ino" }
func (k keys) chunkSize() string       { return k.prefix + "chunk-size" }
func (k keys) inoPrefix() string       { return k.prefix + "ino/" }
func (k keys) ino(ino meta.Ino) string { return k.inoPrefix() + hex16(uint64(ino)) }

// Directory entries live under ent/<dir>/<cookie><name>, the cookie being
// 16 hex digits of a hash of the name (nameCookie): a listing in key order
// is in cookie order, so any node can resume it from a cookie alone, and a
// lookup still finds the key from the name. (Namespaces made before kept
// entries under dir/<dir>/<name>; New moves them, see migrateEntries.)
func (k keys) dirPrefix(d meta.Ino) string { return k.prefix + "ent/" + hex16(uint64(d)) + "/" }
func (k keys) dentry(d meta.Ino, name string) string {
	return k.dirPrefix(d) + hex16(nameCookie(name)) + name
}

// entryName splits a key under dirPrefix p into the entry's cookie and
// name.
func entryName(p, key string) (cookie uint64, name string, err error) {
	if len(key) <= len(p)+16 || key[:len(p)] != p {
		return 0, "", fmt.Errorf("entry key %q: %w", key, errMalformed)
	}
	cookie, err = strconv.ParseUint(key[len(p):len(p)+16], 16, 64)
	if err != nil || cookie != nameCookie(key[len(p)+16:]) {
		return 0, "", fmt.Errorf("entry key %q: %w", key, errMalformed)
	}
	return cookie, key[len(p)+16:], nil
}

// nameCookie is an entry's listing cookie: the first 63 bits of the
// SHA-256 of its name (63, so clients that take it as a signed offset see
// it positive), never below meta.MinCookie. It is part of the key layout:
// it must never change.
func nameCookie(name string) uint64 {
	h := sha256.Sum256([]byte(name))
	return max(binary.BigEndian.Uint64(h[:8])&(1<<63-1), meta.MinCookie)
}

// Keys of the layout before entry cookies, and of the layout marker.
func (k keys) oldDirRoot() string              { return k.prefix + "dir/" }
func (k keys) layout() string                  { return k.prefix + "layout" }
func (k keys) chunkPrefix(ino meta.Ino) string { return k.prefix + "chunk/" + hex16(uint64(ino)) + "/" }
func (k keys) chunk(ino meta.Ino, index uint64) string {
	return k.chunkPrefix(ino) + hex16(index)
}

// chunkIndex parses the index out of a chunk key of ino.
func (k keys) chunkIndex(ino meta.Ino, key string) (uint64, error) {
	p := k.chunkPrefix(ino)
	if len(key) != len(p)+16 || key[:len(p)] != p {
		return 0, fmt.Errorf("chunk key %q: %w", key, errMalformed)
	}
	v, err := strconv.ParseUint(key[len(p):], 16, 64)
	if err != nil {
		return 0, fmt.Errorf("chunk key %q: %w", key, errMalformed)
	}
	return v, nil
}

// prefixEnd returns the smallest key greater than every key with prefix p
// (p is never empty and never all 0xff here).
func prefixEnd(p string) string {
	b := []byte(p)
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] < 0xff {
			b[i]++
			return string(b[:i+1])
		}
	}
	return "\x00"
}

// Inode record, version 1:
//
//	byte    version (1)
//	byte    type (meta.Type)
//	uvarint mode, uid, gid, nlink       (each fits in 32 bits)
//	uvarint size
//	varint  atime, mtime, ctime         (Unix ns)
//	uvarint gen, parent
//	uvarint len(target), target bytes   (symlinks only; at most MaxSymlinkLen)
//
// Version 2 is version 1 followed by one byte, Copies (1 to
// meta.MaxCopies). An inode with Copies 0 (the cluster default) is written
// as version 1, so records stay readable by binaries that predate version 2
// until a subtree is given its own redundancy; version 1 decodes with
// Copies 0.
//
// The inode number is the key, not part of the value. Trailing bytes are an
// error.

// encodeInode encodes a (a.Ino is not stored).
func encodeInode(a meta.Attr) []byte {
	b := make([]byte, 0, 49+len(a.Target))
	v := byte(inodeV1)
	if a.Copies != 0 {
		v = inodeV2
	}
	b = append(b, v, byte(a.Type))
	b = binary.AppendUvarint(b, uint64(a.Mode))
	b = binary.AppendUvarint(b, uint64(a.UID))
	b = binary.AppendUvarint(b, uint64(a.GID))
	b = binary.AppendUvarint(b, uint64(a.Nlink))
	b = binary.AppendUvarint(b, a.Size)
	b = binary.AppendVarint(b, a.Atime)
	b = binary.AppendVarint(b, a.Mtime)
	b = binary.AppendVarint(b, a.Ctime)
	b = binary.AppendUvarint(b, a.Gen)
	b = binary.AppendUvarint(b, uint64(a.Parent))
	b = binary.AppendUvarint(b, uint64(len(a.Target)))
	b = append(b, a.Target...)
	if v == inodeV2 {
		b = append(b, a.Copies)
	}
	return b
}

// decoder reads fields from a record and remembers the first error.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("%s: %w", what, errMalformed)
	}
}

func (d *decoder) byte1(what string) byte {
	if d.err != nil {
		return 0
	}
	if len(d.b) < 1 {
		d.fail(what)
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

func (d *decoder) uvarint(what string) uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail(what)
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) uint32(what string) uint32 {
	v := d.uvarint(what)
	if v > math.MaxUint32 {
		d.fail(what)
		return 0
	}
	return uint32(v)
}

func (d *decoder) varint(what string) int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail(what)
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) bytes(n int, what string) []byte {
	if d.err != nil {
		return nil
	}
	if n < 0 || len(d.b) < n {
		d.fail(what)
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) end(what string) error {
	if d.err == nil && len(d.b) != 0 {
		d.fail(what + ": trailing bytes")
	}
	return d.err
}

func validType(t meta.Type) bool {
	return t == meta.TypeRegular || t == meta.TypeDir || t == meta.TypeSymlink
}

// decodeInode decodes an inode record of inode ino.
func decodeInode(ino meta.Ino, b []byte) (meta.Attr, error) {
	d := decoder{b: b}
	v := d.byte1("inode version")
	if d.err == nil && v != inodeV1 && v != inodeV2 {
		return meta.Attr{}, fmt.Errorf("inode %d: unknown record version %d: %w", ino, v, errMalformed)
	}
	a := meta.Attr{Ino: ino}
	a.Type = meta.Type(d.byte1("inode type"))
	a.Mode = d.uint32("inode mode")
	a.UID = d.uint32("inode uid")
	a.GID = d.uint32("inode gid")
	a.Nlink = d.uint32("inode nlink")
	a.Size = d.uvarint("inode size")
	a.Atime = d.varint("inode atime")
	a.Mtime = d.varint("inode mtime")
	a.Ctime = d.varint("inode ctime")
	a.Gen = d.uvarint("inode gen")
	a.Parent = meta.Ino(d.uvarint("inode parent"))
	n := d.uvarint("inode target length")
	if d.err == nil && n > meta.MaxSymlinkLen {
		d.fail("inode target length")
	}
	a.Target = string(d.bytes(int(n), "inode target"))
	if v == inodeV2 {
		a.Copies = d.byte1("inode copies")
		if d.err == nil && (a.Copies == 0 || a.Copies > meta.MaxCopies) {
			d.fail("inode copies")
		}
	}
	if err := d.end("inode"); err != nil {
		return meta.Attr{}, fmt.Errorf("inode %d: %w", ino, err)
	}
	switch {
	case !validType(a.Type):
		return meta.Attr{}, fmt.Errorf("inode %d: type %d: %w", ino, a.Type, errMalformed)
	case a.Mode&^0o7777 != 0:
		return meta.Attr{}, fmt.Errorf("inode %d: mode %o: %w", ino, a.Mode, errMalformed)
	case a.Type != meta.TypeSymlink && a.Target != "":
		return meta.Attr{}, fmt.Errorf("inode %d: target on a %v: %w", ino, a.Type, errMalformed)
	}
	return a, nil
}

// dentry is the value of a directory entry key.
type dentry struct {
	Ino  meta.Ino
	Type meta.Type
}

// Directory entry record, version 1:
//
//	byte    version (1)
//	byte    type of the child
//	uvarint child inode (nonzero)
func encodeDentry(e dentry) []byte {
	b := make([]byte, 0, 12)
	b = append(b, dentryV1, byte(e.Type))
	return binary.AppendUvarint(b, uint64(e.Ino))
}

func decodeDentry(b []byte) (dentry, error) {
	d := decoder{b: b}
	if v := d.byte1("dentry version"); d.err == nil && v != dentryV1 {
		return dentry{}, fmt.Errorf("dentry: unknown record version %d: %w", v, errMalformed)
	}
	e := dentry{Type: meta.Type(d.byte1("dentry type"))}
	e.Ino = meta.Ino(d.uvarint("dentry inode"))
	if err := d.end("dentry"); err != nil {
		return dentry{}, err
	}
	if !validType(e.Type) || e.Ino == 0 {
		return dentry{}, fmt.Errorf("dentry: type %d inode %d: %w", e.Type, e.Ino, errMalformed)
	}
	return e, nil
}

// Chunk reference record, version 1 (the index is the key):
//
//	byte     version (1)
//	uvarint  length (fits in 32 bits)
//	16 bytes chunk ID
//	32 bytes BLAKE3-256 sum
func encodeChunkRef(r chunk.Ref) []byte {
	b := make([]byte, 0, 1+5+chunk.IDSize+chunk.SumSize)
	b = append(b, chunkV1)
	b = binary.AppendUvarint(b, uint64(r.Len))
	b = append(b, r.ID[:]...)
	return append(b, r.Sum[:]...)
}

func decodeChunkRef(index uint64, b []byte) (chunk.Ref, error) {
	d := decoder{b: b}
	if v := d.byte1("chunk version"); d.err == nil && v != chunkV1 {
		return chunk.Ref{}, fmt.Errorf("chunk %d: unknown record version %d: %w", index, v, errMalformed)
	}
	r := chunk.Ref{Index: index}
	r.Len = d.uint32("chunk length")
	copy(r.ID[:], d.bytes(chunk.IDSize, "chunk id"))
	copy(r.Sum[:], d.bytes(chunk.SumSize, "chunk sum"))
	if err := d.end("chunk"); err != nil {
		return chunk.Ref{}, fmt.Errorf("chunk %d: %w", index, err)
	}
	return r, nil
}

// encodeCounter and decodeCounter handle the next-ino counter: 8 bytes,
// big-endian.
func encodeCounter(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

func decodeCounter(b []byte) (uint64, error) {
	if len(b) != 8 {
		return 0, fmt.Errorf("next-ino counter of %d bytes: %w", len(b), errMalformed)
	}
	return binary.BigEndian.Uint64(b), nil
}

// validName checks a directory entry name.
func validName(name string) error {
	switch {
	case name == "" || name == "." || name == "..":
		return meta.ErrInvalid
	case len(name) > meta.MaxNameLen:
		return meta.ErrNameTooLong
	}
	for i := 0; i < len(name); i++ {
		if name[i] == '/' || name[i] == 0 {
			return meta.ErrInvalid
		}
	}
	return nil
}
