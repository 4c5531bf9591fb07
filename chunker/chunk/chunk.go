// Package chunk holds the types and sentinel errors shared by everything that
// moves file bytes: chunk identifiers, the reference a chunk map keeps for each
// chunk, and the errors a chunk store returns.
//
// It imports nothing from Wormhole, so both the metadata layer (which records
// chunk references) and the NFS front (which maps errors to NFS status) can
// depend on it without cycles.
package chunk

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
)

// Sentinel errors. Wrap them with %w; test them with errors.Is.
var (
	// ErrNotFound means no chunk with that ID is stored here.
	ErrNotFound = errors.New("chunk not found")
	// ErrCorrupt means a stored chunk failed its checksum or is malformed.
	// The bytes are never returned.
	ErrCorrupt = errors.New("chunk corrupt")
	// ErrNoSpace means the chunk store's disk is full.
	ErrNoSpace = errors.New("no space left for chunk")
	// ErrUnavailable means too few chunk holders could be reached to
	// store or find a chunk; it may succeed once nodes return.
	ErrUnavailable = errors.New("not enough chunk holders available")
	// ErrNoView means a chunk's bytes cannot be lent in place (an old
	// format, a system without mappings, a copy on another node); they
	// can still be read into a buffer.
	ErrNoView = errors.New("chunk cannot be read in place")
	// ErrSumMismatch means bytes given to be stored do not have the
	// checksum given with them; nothing was stored.
	ErrSumMismatch = errors.New("chunk data does not match its checksum")
)

// IDSize is the length of a chunk ID in bytes.
const IDSize = 16

// ID names one immutable chunk. IDs are random: a chunk is written once and
// never modified; an overwrite of file bytes writes a new chunk and frees the
// old one.
type ID [IDSize]byte

// NewID returns a fresh random ID.
func NewID() ID {
	var id ID
	if _, err := rand.Read(id[:]); err != nil {
		// crypto/rand.Read never returns an error on supported platforms.
		panic(fmt.Sprintf("chunk: crypto/rand failed: %v", err))
	}
	return id
}

// String returns the ID in lowercase hex.
func (id ID) String() string { return hex.EncodeToString(id[:]) }

// IsZero reports whether id is the zero value (no chunk).
func (id ID) IsZero() bool { return id == ID{} }

// ParseID parses the hex form produced by String.
func ParseID(s string) (ID, error) {
	var id ID
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != IDSize {
		return id, fmt.Errorf("parse chunk id %q: want %d hex bytes", s, IDSize)
	}
	copy(id[:], b)
	return id, nil
}

// SumSize is the length of a chunk checksum (BLAKE3-256).
const SumSize = 32

// Sum is a chunk's BLAKE3-256 checksum.
type Sum [SumSize]byte

// Ref is what a file's chunk map records for one chunk: which chunk holds
// the bytes of chunk Index of the file, how many bytes it has (the rest of
// the chunk, up to the chunk size, reads as zeros) and their checksum.
type Ref struct {
	Index uint64 // position in the file: bytes [Index*ChunkSize, (Index+1)*ChunkSize)
	ID    ID
	Len   uint32
	Sum   Sum
}

// copiesKey is the context key of WithCopies.
type copiesKey struct{}

// WithCopies returns a context that asks the chunk store for n copies of
// each chunk stored with it, overriding the store's configured count; n <= 0
// asks for the configured count. The file layer sets it from the inode's
// redundancy (meta.Attr.Copies, 0 for the cluster default) so that a
// replicating store, which knows nothing of inodes, writes each file with
// its subtree's policy.
func WithCopies(ctx context.Context, n int) context.Context {
	return context.WithValue(ctx, copiesKey{}, max(n, 0))
}

// CopiesFrom returns the copy count WithCopies put in ctx: ok is false if
// it holds none, and n is 0 when it asks for the configured count.
func CopiesFrom(ctx context.Context) (n int, ok bool) {
	n, ok = ctx.Value(copiesKey{}).(int)
	return n, ok
}

// sizeHintKey is the context key of WithSizeHint.
type sizeHintKey struct{}

// WithSizeHint returns a context that tells the file layer the size the
// caller last saw of the file it writes (meta.Attr.Size, with this node's
// uncommitted writes). A write then takes the chunks that start at or past
// that size to be holes without reading the chunk map, which spares a
// metadata read for a write to a new or growing file. The hint may be
// stale: the write's commit expects those chunks absent (meta.Expect), and
// a write that finds one is redone from the chunk map.
func WithSizeHint(ctx context.Context, size uint64) context.Context {
	return context.WithValue(ctx, sizeHintKey{}, size)
}

// SizeHintFrom returns the size WithSizeHint put in ctx; ok is false if it
// holds none.
func SizeHintFrom(ctx context.Context) (size uint64, ok bool) {
	size, ok = ctx.Value(sizeHintKey{}).(uint64)
	return size, ok
}
