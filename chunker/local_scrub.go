package chunker

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"
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
// kept for inspection until PruneQuarantine (which the scrubber runs with
// its quarantine_keep) or an operator deletes it.
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

// PruneQuarantine deletes the files Quarantine set aside before t, by the
// time in their names (a file set aside during second S goes once S+1 is
// not after t), and returns how many it deleted and their bytes. Files in
// QuarantineDir that Quarantine did not name are left alone. A store that
// never quarantined anything has nothing to prune.
func (s *LocalStore) PruneQuarantine(ctx context.Context, t time.Time) (int, int64, error) {
	entries, err := fs.ReadDir(s.root.FS(), QuarantineDir)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, 0, nil
	}
	if err != nil {
		return 0, 0, fmt.Errorf("chunk store %s: prune quarantine: %w", s.dir, err)
	}
	n, bytes := 0, int64(0)
	for _, e := range entries {
		if err := ctx.Err(); err != nil {
			return n, bytes, fmt.Errorf("chunk store %s: prune quarantine: %w", s.dir, err)
		}
		at, ok := quarantinedAt(e.Name())
		if !ok || e.IsDir() || at+1 > t.Unix() {
			continue
		}
		info, err := e.Info()
		if errors.Is(err, fs.ErrNotExist) {
			continue // pruned meanwhile by someone else
		}
		name := QuarantineDir + "/" + e.Name()
		if err == nil {
			err = s.root.Remove(name)
		}
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return n, bytes, fmt.Errorf("chunk store %s: prune quarantine: %w", s.dir, err)
		}
		if err == nil {
			n++
			bytes += info.Size()
			s.log.Info().Str("path", filepath.Join(s.dir, filepath.FromSlash(name))).Msg("quarantined chunk copy deleted")
		}
	}
	return n, bytes, nil
}

// quarantinedAt returns the Unix second in a name Quarantine gave
// ("<chunk id>.<unix>" or "<chunk id>.<unix>.<n>"), and false for any
// other name.
func quarantinedAt(name string) (int64, bool) {
	parts := strings.Split(name, ".")
	if len(parts) < 2 || len(parts) > 3 {
		return 0, false
	}
	if _, err := chunk.ParseID(parts[0]); err != nil {
		return 0, false
	}
	at, err := strconv.ParseInt(parts[1], 10, 64)
	if err != nil || at < 0 {
		return 0, false
	}
	if len(parts) == 3 {
		if k, err := strconv.Atoi(parts[2]); err != nil || k < 1 {
			return 0, false
		}
	}
	return at, true
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
