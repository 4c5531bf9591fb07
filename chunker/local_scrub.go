package chunker

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strconv"
	"time"

	"github.com/wormhole-fs/wormhole/chunker/chunk"
)

// QuarantineDir is the top-level subdirectory of a LocalStore where
// Quarantine moves chunk files that failed verification:
//
//	<dir>/quarantine/3fa9...c2.1767225600   chunk 3fa9...c2, quarantined at that Unix time
//
// List, Get and every other method look only in the 256 fan-out
// subdirectories, so a quarantined file is never listed or served. It is
// kept for inspection; nothing removes it but an operator.
const QuarantineDir = "quarantine"

// Verify reads the whole file of chunk id and checks it as Get does: the
// header, the length and, for a version 2 or 3 file, the header sum, every
// block sum and the whole-chunk sum (for version 1, the one sum). It
// returns the number of bytes of the file it read, which is the file size
// when the read succeeded.
//
// A chunk that fails any check, or that the disk cannot read (EIO), yields
// an error wrapping chunk.ErrCorrupt that names the chunk and its path; a
// missing chunk yields chunk.ErrNotFound. Unlike Get, Verify does not log:
// its caller (the scrubber) reports what it finds. It keeps no data: the
// memory it holds, one chunk file, is released when it returns.
func (s *LocalStore) Verify(ctx context.Context, id chunk.ID) (int64, error) {
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("chunk store %s: verify chunk %s: %w", s.dir, id, err)
	}
	_, rel := relPath(id)
	b, err := s.readFile(rel)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, fmt.Errorf("chunk store %s: verify chunk %s: %w", s.dir, id, chunk.ErrNotFound)
	}
	if err != nil {
		return 0, fmt.Errorf("chunk store %s: verify chunk %s (%s): %w", s.dir, id, s.Path(id), err)
	}
	if _, _, err := decodeChunk(id, b); err != nil {
		return int64(len(b)), fmt.Errorf("chunk store %s: verify chunk %s (%s): %w", s.dir, id, s.Path(id), err)
	}
	return int64(len(b)), nil
}

// Quarantine moves the file of chunk id out of the store into
// QuarantineDir, named by the ID and the current Unix time (with a
// ".1", ".2", ... suffix should that name be taken), creating the
// directory if needed. The move is a rename within the store's
// filesystem, and both directories are synced, so when Quarantine returns
// the chunk is durably gone from the store: Get and ReadRange report
// chunk.ErrNotFound and List no longer reports it, exactly as after
// Delete, but the bytes are kept for inspection.
//
// A missing chunk yields an error wrapping chunk.ErrNotFound. Quarantine
// does not check the chunk: a caller that verified it bad should know that
// a Put of the same ID between its check and Quarantine (a repair writing
// a good copy) is moved aside too, leaving the chunk missing here until
// the next repair.
func (s *LocalStore) Quarantine(ctx context.Context, id chunk.ID) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("chunk store %s: quarantine chunk %s: %w", s.dir, id, err)
	}
	if err := s.root.Mkdir(QuarantineDir, 0o755); err == nil {
		if err := s.syncDir("."); err != nil {
			return fmt.Errorf("chunk store %s: quarantine chunk %s: %w", s.dir, id, err)
		}
	} else if !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("chunk store %s: quarantine chunk %s: create %s: %w", s.dir, id, QuarantineDir, err)
	}
	sub, rel := relPath(id)
	dst, err := s.quarantineName(id, time.Now())
	if err != nil {
		return fmt.Errorf("chunk store %s: quarantine chunk %s: %w", s.dir, id, err)
	}
	err = s.root.Rename(rel, dst)
	s.cache.drop(id)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("chunk store %s: quarantine chunk %s: %w", s.dir, id, chunk.ErrNotFound)
	} else if err != nil {
		return fmt.Errorf("chunk store %s: quarantine chunk %s: %w", s.dir, id, err)
	}
	if err := errors.Join(s.syncDir(sub), s.syncDir(QuarantineDir)); err != nil {
		return fmt.Errorf("chunk store %s: quarantine chunk %s to %s: %w", s.dir, id, filepath.Join(s.dir, filepath.FromSlash(dst)), err)
	}
	s.log.Warn().Str("chunk", id.String()).Str("path", filepath.Join(s.dir, filepath.FromSlash(dst))).Msg("chunk quarantined")
	return nil
}

// quarantineName returns a free name in QuarantineDir, relative to the
// store, for chunk id quarantined at now.
func (s *LocalStore) quarantineName(id chunk.ID, now time.Time) (string, error) {
	base := QuarantineDir + "/" + id.String() + "." + strconv.FormatInt(now.Unix(), 10)
	for i := 0; ; i++ {
		name := base
		if i > 0 {
			name += "." + strconv.Itoa(i)
		}
		_, err := s.root.Lstat(name)
		if errors.Is(err, fs.ErrNotExist) {
			return name, nil
		}
		if err != nil {
			return "", err
		}
	}
}
