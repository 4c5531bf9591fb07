package chunker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"

	"github.com/wormhole-fs/wormhole/chunker/chunk"
)

// listBatch is how many directory entries List reads at a time; it bounds
// the memory List holds, whatever the number of chunks.
const listBatch = 1024

// List calls fn with the ID of every chunk the store holds: every file in
// a fan-out subdirectory whose name is the lowercase hex ID it is filed
// under. Temporary files of a Put in progress, directories, symlinks and
// other stray entries are skipped. Chunks come in directory order (grouped by
// fan-out subdirectory, unsorted within one), each once.
//
// List reports presence, not integrity: it does not read the chunks (Get
// and a scrub verify them). It does not hold a snapshot either: a chunk
// put or deleted while List runs may or may not be reported. It reads
// each directory listBatch entries at a time, so its memory does not grow
// with the number of chunks.
//
// List stops at the first error: an error returned by fn is returned
// unchanged; ctx being done or a directory that cannot be read yields a
// wrapped error naming the store. It is safe to call concurrently with
// every other method.
func (s *LocalStore) List(ctx context.Context, fn func(id chunk.ID) error) error {
	for i := range 256 {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("chunk store %s: list chunks: %w", s.dir, err)
		}
		if err := s.listSub(ctx, fmt.Sprintf("%02x", i), fn); err != nil {
			return err
		}
	}
	return nil
}

// listSub calls fn for every chunk in fan-out subdirectory sub.
func (s *LocalStore) listSub(ctx context.Context, sub string, fn func(id chunk.ID) error) error {
	d, err := s.root.Open(sub)
	if errors.Is(err, fs.ErrNotExist) {
		return nil // OpenLocal made it; gone since, so it holds nothing
	}
	if err != nil {
		return fmt.Errorf("chunk store %s: list chunks: %w", s.dir, err)
	}
	defer func() { _ = d.Close() }() // read-only: nothing to lose
	for {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("chunk store %s: list chunks: %w", s.dir, err)
		}
		entries, rerr := d.ReadDir(listBatch)
		for _, e := range entries {
			id, ok := chunkFileID(sub, e)
			if !ok {
				continue
			}
			if err := fn(id); err != nil {
				return err
			}
		}
		if errors.Is(rerr, io.EOF) {
			return nil
		}
		if rerr != nil {
			return fmt.Errorf("chunk store %s: list chunks in %s: %w", s.dir, sub, rerr)
		}
	}
}

// chunkFileID returns the ID of the chunk file e in fan-out subdirectory
// sub, or false if e is not a chunk file: a temporary file, anything but
// a regular file (Put makes no other kind), or a name that is not the canonical form of an ID filed under sub (Get
// would never find it).
func chunkFileID(sub string, e fs.DirEntry) (chunk.ID, bool) {
	name := e.Name()
	if len(name) != 2*chunk.IDSize || strings.HasPrefix(name, tmpPrefix) || !e.Type().IsRegular() || !strings.HasPrefix(name, sub) {
		return chunk.ID{}, false
	}
	id, err := chunk.ParseID(name)
	if err != nil || id.String() != name {
		return chunk.ID{}, false
	}
	return id, true
}
