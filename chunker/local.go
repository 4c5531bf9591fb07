package chunker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/wormhole-fs/wormhole/chunker/chunk"
)

// tmpPrefix starts the name of every file a LocalStore writes before its
// final rename. Such files left by a crash are removed by OpenLocal.
const tmpPrefix = ".tmp-"

// LocalStore keeps chunks as checksummed files in one directory of a local
// disk; see the package documentation for the layout and file format. All
// file access goes through an os.Root, so no chunk ID or symlink can reach
// outside the directory.
//
// Every method is safe for concurrent use and idempotent. Put is durable
// when it returns; Get verifies every chunk it reads, ReadRange every block
// it reads.
type LocalStore struct {
	dir  string
	root *os.Root
	log  zerolog.Logger
	// cache keeps chunk files open with their verified headers for range
	// reads (local_cache.go).
	cache openCache
	// onCorrupt hears of the chunks reads find damaged (SetOnCorrupt).
	onCorrupt atomic.Pointer[func(chunk.ID)]
}

// SetOnCorrupt sets fn to be told of every chunk that a Get, ReadRange or
// ViewRange finds damaged (after it is logged), so that the copy can be
// checked and set aside at once rather than at the scrubber's next pass;
// the node hands it to its scrubber (scrub.Scrubber.Suspect). fn must not
// block.
func (s *LocalStore) SetOnCorrupt(fn func(id chunk.ID)) {
	s.onCorrupt.Store(&fn)
}

// tellCorrupt tells the SetOnCorrupt function of chunk id, which a read
// found damaged.
func (s *LocalStore) tellCorrupt(id chunk.ID) {
	if fn := s.onCorrupt.Load(); fn != nil && *fn != nil {
		(*fn)(id)
	}
}

// OpenLocal opens the chunk store in dir, creating the directory and its 256
// fan-out subdirectories if needed. It fails with an error naming dir when
// the directory cannot be created or written. Temporary files left by a
// crash during Put are removed.
func OpenLocal(dir string, log zerolog.Logger) (*LocalStore, error) {
	if dir == "" {
		return nil, errors.New("chunk store: empty directory name")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("chunk store %s: create directory: %w", dir, err)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("chunk store %s: open directory: %w", dir, err)
	}
	s := &LocalStore{dir: dir, root: root, log: log.With().Str("chunk_dir", dir).Logger()}
	s.cache.setLimits(DefaultOpenFiles, DefaultOpenBytes)
	if err := s.init(); err != nil {
		_ = root.Close()
		return nil, err
	}
	return s, nil
}

// init creates the fan-out directories, checks the store is writable and
// removes leftover temporary files.
func (s *LocalStore) init() error {
	for i := range 256 {
		sub := fmt.Sprintf("%02x", i)
		err := s.root.Mkdir(sub, 0o755)
		if errors.Is(err, fs.ErrExist) {
			fi, serr := s.root.Stat(sub)
			if serr != nil {
				return fmt.Errorf("chunk store %s: %w", s.dir, serr)
			}
			if !fi.IsDir() {
				return fmt.Errorf("chunk store %s: %s is not a directory", s.dir, filepath.Join(s.dir, sub))
			}
			continue
		}
		if err != nil {
			return fmt.Errorf("chunk store %s: directory not writable: %w", s.dir, err)
		}
	}
	if err := s.probeWritable(); err != nil {
		return fmt.Errorf("chunk store %s: directory not writable: %w", s.dir, err)
	}
	if err := s.syncDir("."); err != nil {
		return fmt.Errorf("chunk store %s: %w", s.dir, err)
	}
	return s.removeTemps()
}

// probeWritable creates, syncs and removes a small file at the top of the
// store.
func (s *LocalStore) probeWritable() error {
	name := tmpPrefix + "probe-" + chunk.NewID().String()
	f, err := s.root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, werr := f.Write([]byte("wormhole"))
	serr := f.Sync()
	cerr := f.Close()
	rerr := s.root.Remove(name)
	return errors.Join(werr, serr, cerr, rerr)
}

// removeTemps deletes the temporary files a crash may have left behind in
// the store's top directory and its fan-out subdirectories.
func (s *LocalStore) removeTemps() error {
	removed := 0
	for i := -1; i < 256; i++ {
		sub := "."
		if i >= 0 {
			sub = fmt.Sprintf("%02x", i)
		}
		entries, err := fs.ReadDir(s.root.FS(), sub)
		if err != nil {
			return fmt.Errorf("chunk store %s: scan for temporary files: %w", s.dir, err)
		}
		for _, e := range entries {
			if !strings.HasPrefix(e.Name(), tmpPrefix) || e.IsDir() {
				continue
			}
			name := filepath.Join(sub, e.Name())
			if err := s.root.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("chunk store %s: remove temporary file: %w", s.dir, err)
			}
			removed++
		}
	}
	if removed > 0 {
		s.log.Info().Int("files", removed).Msg("removed temporary chunk files left by a crash")
	}
	return nil
}

// SetOpenCache bounds the cache of open chunk files that range reads use
// (see ReadRange): at most files files open, holding at most bytes bytes of
// headers and block-sum tables. 0 for either turns the cache off. OpenLocal
// starts with DefaultOpenFiles and DefaultOpenBytes.
func (s *LocalStore) SetOpenCache(files int, bytes int64) {
	s.cache.setLimits(files, bytes)
}

// OpenCacheStats reports the range reads that found their chunk file in the
// open-file cache (hits) and those that opened it (misses), and how many
// files the cache holds open.
func (s *LocalStore) OpenCacheStats() (hits, misses uint64, files int) {
	return s.cache.stats()
}

// Close closes the cached chunk files and releases the store's directory
// handle. The store must not be used afterwards.
func (s *LocalStore) Close() error {
	s.cache.close()
	if err := s.root.Close(); err != nil {
		return fmt.Errorf("chunk store %s: close: %w", s.dir, err)
	}
	return nil
}

// Dir returns the directory the store was opened on.
func (s *LocalStore) Dir() string { return s.dir }

// relPath returns the fan-out subdirectory of id and the chunk file's path,
// both relative to the store directory.
func relPath(id chunk.ID) (sub, file string) {
	h := id.String()
	return h[:2], h[:2] + "/" + h
}

// Path returns the path of the file that holds (or would hold) chunk id.
func (s *LocalStore) Path(id chunk.ID) string {
	_, rel := relPath(id)
	return filepath.Join(s.dir, filepath.FromSlash(rel))
}

// Put stores data as chunk id and returns its BLAKE3-256 checksum. The chunk
// file (format version 3) records that checksum and one per BlockSize block,
// all computed in one pass over data. The chunk is written to a temporary file, synced, renamed into place and the
// directory synced, so it is durable when Put returns and a crash leaves
// either no chunk or the whole chunk. Putting an ID again replaces the
// stored chunk atomically (IDs are never reused for different bytes). A full
// disk or exhausted quota yields an error wrapping chunk.ErrNoSpace. Put does
// not keep data after it returns.
func (s *LocalStore) Put(ctx context.Context, id chunk.ID, data []byte) (chunk.Sum, error) {
	return s.put(ctx, id, data, nil)
}

// PutSummed stores data as chunk id as Put does, with sum, which the
// caller computed over data, as its checksum: only the block sums are
// computed. A wrong sum makes a chunk that every full read (Get, scrub)
// finds corrupt; data that came from elsewhere goes through Put, or is
// checked against its sum first.
func (s *LocalStore) PutSummed(ctx context.Context, id chunk.ID, data []byte, sum chunk.Sum) error {
	_, err := s.put(ctx, id, data, &sum)
	return err
}

// put is Put, with the whole-data sum computed when sum is nil.
func (s *LocalStore) put(ctx context.Context, id chunk.ID, data []byte, sum *chunk.Sum) (chunk.Sum, error) {
	if err := ctx.Err(); err != nil {
		return chunk.Sum{}, fmt.Errorf("chunk store %s: put chunk %s: %w", s.dir, id, err)
	}
	if uint64(len(data)) > MaxChunkLen {
		return chunk.Sum{}, fmt.Errorf("chunk store %s: put chunk %s: %d bytes exceeds the %d-byte limit", s.dir, id, len(data), uint64(MaxChunkLen))
	}
	return s.store(id, func(f *os.File) ([]byte, chunk.Sum, error) {
		return writeSyncClose(f, id, data, sum)
	})
}

// store makes chunk id durable with the contents fill writes into a new
// temporary file (fill syncs and closes it, and returns the header it
// wrote and the data's checksum): the file is renamed into place and the
// directory synced. If fill fails, the file is removed and nothing is
// stored.
func (s *LocalStore) store(id chunk.ID, fill func(f *os.File) ([]byte, chunk.Sum, error)) (chunk.Sum, error) {
	sub, rel := relPath(id)
	tmp := sub + "/" + tmpPrefix + id.String() + "-" + chunk.NewID().String()[:16]

	f, err := s.root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return chunk.Sum{}, s.putErr(id, "create temporary file", err)
	}
	hdr, stored, err := fill(f)
	if err != nil {
		if rerr := s.root.Remove(tmp); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
			s.log.Warn().Err(rerr).Str("chunk", id.String()).Msg("remove temporary chunk file")
		}
		return chunk.Sum{}, s.putErr(id, "write", err)
	}
	if err := s.root.Rename(tmp, rel); err != nil {
		if rerr := s.root.Remove(tmp); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
			s.log.Warn().Err(rerr).Str("chunk", id.String()).Msg("remove temporary chunk file")
		}
		return chunk.Sum{}, s.putErr(id, "rename", err)
	}
	// A file cached open is the one just replaced (same bytes, by the
	// contract of IDs, but maybe a damaged copy that a repair rewrites).
	s.cache.drop(id)
	if err := s.syncDir(sub); err != nil {
		return chunk.Sum{}, s.putErr(id, "sync directory", err)
	}
	s.keepOpen(id, rel, hdr)
	return stored, nil
}

// keepOpen puts the chunk file rel, just stored with header hdr, in the
// open-chunk cache: data is often read soon after it is written, and the
// read then costs no open and no header read. Failing that changes
// nothing: the first read opens the file.
func (s *LocalStore) keepOpen(id chunk.ID, rel string, hdr []byte) {
	slot := s.cache.reserve(id)
	if slot == nil {
		return
	}
	h, err := parseFixed(id, hdr)
	if err == nil {
		err = h.checkTable(hdr)
	}
	var f *os.File
	if err == nil {
		f, err = s.root.Open(rel)
	}
	if err != nil {
		s.cache.abandon(slot)
		return
	}
	if !s.cache.add(slot, f, h) {
		_ = f.Close() // read-only: nothing to lose
		return
	}
	s.cache.release(slot)
}

// writeSyncClose writes the chunk file of data as chunk id to the empty
// file f, syncs it, closes it and returns the header it wrote and the
// data's checksum (sum, when the caller has it, else computed with the
// block sums). The data goes first, to its place after the header, and
// the device is asked to start writing it back; the sums are computed
// while it does, then the header is written and the file synced, which
// then waits for less.
func writeSyncClose(f *os.File, id chunk.ID, data []byte, sum *chunk.Sum) ([]byte, chunk.Sum, error) {
	dataOff := headerLen(int64(len(data)))
	if _, err := f.WriteAt(data, dataOff); err != nil {
		_ = f.Close() // the caller removes the file
		return nil, chunk.Sum{}, err
	}
	startWriteback(f, dataOff, int64(len(data)))
	hdr, whole := encodeHeader(id, data, sum)
	_, err := f.WriteAt(hdr, 0)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return hdr, whole, err
}

// putErr wraps an error of Put, adding chunk.ErrNoSpace when the disk or
// quota is full.
func (s *LocalStore) putErr(id chunk.ID, op string, err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return fmt.Errorf("chunk store %s: put chunk %s: %s: %w: %w", s.dir, id, op, chunk.ErrNoSpace, err)
	}
	return fmt.Errorf("chunk store %s: put chunk %s: %s: %w", s.dir, id, op, err)
}

// syncDir fsyncs the directory rel (relative to the store) so that entries
// created or renamed in it are durable.
func (s *LocalStore) syncDir(rel string) error {
	d, err := s.root.Open(rel)
	if err != nil {
		return fmt.Errorf("open directory for sync: %w", err)
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync directory %s: %w", rel, err)
	}
	return nil
}

// Get returns the data of chunk id. Everything is verified on every call:
// the header, the length, and the checksums (for a version 2 or 3 file the
// header sum, every block sum and the whole-chunk sum). A chunk that fails
// any check (or that the disk cannot read, EIO) yields an error wrapping
// chunk.ErrCorrupt that names the chunk and its path, is logged at error
// level, and none of its bytes are returned. A missing chunk yields an
// error wrapping chunk.ErrNotFound.
func (s *LocalStore) Get(ctx context.Context, id chunk.ID) ([]byte, error) {
	data, _, err := s.GetSummed(ctx, id)
	return data, err
}

// GetSummed is Get, also returning the chunk's checksum, verified with
// its data: a caller that passes the sum on (the peer server) need not
// hash the data again.
func (s *LocalStore) GetSummed(ctx context.Context, id chunk.ID) ([]byte, chunk.Sum, error) {
	if err := ctx.Err(); err != nil {
		return nil, chunk.Sum{}, fmt.Errorf("chunk store %s: get chunk %s: %w", s.dir, id, err)
	}
	_, rel := relPath(id)
	b, err := s.readFile(rel)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, chunk.Sum{}, fmt.Errorf("chunk store %s: get chunk %s: %w", s.dir, id, chunk.ErrNotFound)
	}
	if err == nil {
		var data []byte
		var sum chunk.Sum
		data, sum, err = decodeChunk(id, b)
		if err == nil {
			return data, sum, nil
		}
	} else if !errors.Is(err, chunk.ErrCorrupt) {
		return nil, chunk.Sum{}, fmt.Errorf("chunk store %s: get chunk %s (%s): %w", s.dir, id, s.Path(id), err)
	}
	s.log.Error().Err(err).Str("chunk", id.String()).Str("path", s.Path(id)).Msg("corrupt chunk")
	s.tellCorrupt(id)
	return nil, chunk.Sum{}, fmt.Errorf("chunk store %s: get chunk %s (%s): %w", s.dir, id, s.Path(id), err)
}

// ReadRange reads bytes [off, off+len(p)) of chunk id into p, clamped to
// the chunk's length, and returns how many it read: fewer than len(p)
// (possibly none) when the range passes the end. Of a version 2 or 3
// chunk file it reads (with pread) only the header, the block-sum table
// and the BlockSize blocks that overlap the range, and verifies the header
// sum and each of those blocks; so it costs O(len(p) + BlockSize), not
// O(chunk length). A range aligned on BlockSize (or ending at the end of
// the data) is read straight into p, with no allocation or copy. A
// version 1 file has no block sums and is read and verified whole.
//
// Errors are those of Get: a block or header that fails verification, a
// malformed or truncated file, or EIO yields an error wrapping
// chunk.ErrCorrupt that names the chunk, its path and (for a bad block) the
// block, logged at error level; a missing chunk yields chunk.ErrNotFound.
// After an error the contents of p are unspecified and must not be used.
// Corruption outside the blocks read goes unnoticed until a read covers it
// (Get covers everything). A negative off is an error.
//
// The file stays open in the store's open-file cache (SetOpenCache) with
// its verified header and table, so the next range read of the chunk costs
// only the pread of its blocks and their verification; damage to the
// header or table of a cached file is noticed when the file is opened
// again, damage to data blocks on the read that covers them.
func (s *LocalStore) ReadRange(ctx context.Context, id chunk.ID, p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("chunk store %s: get chunk %s: invalid range of %d bytes at %d", s.dir, id, len(p), off)
	}
	var k int
	err := s.readCached(ctx, id, off, int64(len(p)), func(h *header, f io.ReaderAt) (err error) {
		k, err = h.readBlocksInto(f, p, off)
		return err
	}, func(f io.ReaderAt, size int64) error {
		data, err := readRange(f, size, id, off, int64(len(p)))
		k = copy(p, data)
		return err
	})
	if err != nil {
		return 0, err
	}
	return k, nil
}

// readCached runs the read of bytes [off, off+n) of chunk id: v2 with the
// verified header and file of a version 2 or 3 chunk, v1 with the file and its
// size of a version 1 chunk. The file comes from the open-file cache: a
// cached file costs only what v2 reads; a file not cached is opened, its
// header verified, and (versions 2 and 3) added to the cache. A chunk found
// corrupt is dropped from the cache and logged. Errors name the store, the
// chunk and its path; a missing chunk wraps chunk.ErrNotFound, a damaged
// one chunk.ErrCorrupt.
func (s *LocalStore) readCached(ctx context.Context, id chunk.ID, off, n int64,
	v2 func(h *header, f io.ReaderAt) error, v1 func(f io.ReaderAt, size int64) error) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("chunk store %s: get chunk %s range: %w", s.dir, id, err)
	}
	err := s.readOpen(id, v2, v1)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("chunk store %s: get chunk %s: %w", s.dir, id, chunk.ErrNotFound)
	case errors.Is(err, chunk.ErrCorrupt):
		s.log.Error().Err(err).Str("chunk", id.String()).Str("path", s.Path(id)).Int64("off", off).Int64("len", n).Msg("corrupt chunk")
		s.tellCorrupt(id)
	}
	return fmt.Errorf("chunk store %s: get chunk %s (%s), %d bytes at %d: %w", s.dir, id, s.Path(id), n, off, err)
}

// readOpen runs v2 or v1 (see readCached) on the open file of chunk id. A
// missing chunk is fs.ErrNotExist.
func (s *LocalStore) readOpen(id chunk.ID, v2 func(h *header, f io.ReaderAt) error, v1 func(f io.ReaderAt, size int64) error) error {
	hit, slot := s.cache.acquire(id)
	if hit != nil {
		err := v2(&hit.h, hit.f)
		s.cache.release(hit)
		if err != nil {
			s.cache.drop(id)
		}
		return err
	}
	_, rel := relPath(id)
	f, size, err := s.openChunk(rel)
	if err != nil {
		if slot != nil {
			s.cache.abandon(slot)
		}
		return err
	}
	h, _, err := loadHeader(f, size, id)
	if err == nil && h.version != formatV1 {
		if slot != nil && s.cache.add(slot, f, h) {
			err := v2(&h, f)
			s.cache.release(slot)
			if err != nil {
				s.cache.drop(id)
			}
			return err
		}
		err := v2(&h, f)
		_ = f.Close() // read-only: nothing to lose
		return err
	}
	if slot != nil {
		s.cache.abandon(slot)
	}
	defer func() { _ = f.Close() }() // read-only: nothing to lose
	if err != nil {
		return err
	}
	// Version 1: one checksum over all the data, read whole.
	return v1(f, size)
}

// openChunk opens the chunk file rel for reading and returns it with its
// size. Files that are not regular or too large to be a chunk wrap
// chunk.ErrCorrupt. The caller closes the file.
func (s *LocalStore) openChunk(rel string) (*os.File, int64, error) {
	f, err := s.root.Open(rel)
	if err != nil {
		return nil, 0, err
	}
	fi, err := f.Stat()
	switch {
	case err != nil:
	case !fi.Mode().IsRegular():
		err = fmt.Errorf("%w: not a regular file (%s)", chunk.ErrCorrupt, fi.Mode().Type())
	case fi.Size() > maxFileSize:
		err = fmt.Errorf("%w: file is %d bytes, larger than any chunk", chunk.ErrCorrupt, fi.Size())
	}
	if err != nil {
		_ = f.Close()
		return nil, 0, err
	}
	return f, fi.Size(), nil
}

// readFile reads the chunk file rel whole. Files that are not regular, too
// large to be a chunk, change size while read or hit EIO wrap
// chunk.ErrCorrupt.
func (s *LocalStore) readFile(rel string) ([]byte, error) {
	f, size, err := s.openChunk(rel)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	b := make([]byte, size)
	n, err := io.ReadFull(f, b)
	switch {
	case errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF):
		return nil, fmt.Errorf("%w: file shrank to %d bytes while read", chunk.ErrCorrupt, n)
	case errors.Is(err, syscall.EIO):
		return nil, fmt.Errorf("%w: %w", chunk.ErrCorrupt, err)
	case err != nil:
		return nil, err
	}
	return b, nil
}

// Delete removes chunk id. Deleting a missing chunk succeeds. The removal is
// not synced to disk: after a crash a deleted chunk may reappear as an
// orphan, which wastes space but is never read through a chunk map.
func (s *LocalStore) Delete(ctx context.Context, id chunk.ID) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("chunk store %s: delete chunk %s: %w", s.dir, id, err)
	}
	_, rel := relPath(id)
	err := s.root.Remove(rel)
	s.cache.drop(id)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("chunk store %s: delete chunk %s: %w", s.dir, id, err)
	}
	return nil
}

// Usage reports the total size of the filesystem holding the store and the
// bytes available to it, from statfs.
func (s *LocalStore) Usage() (total, free uint64, err error) {
	d, err := s.root.Open(".")
	if err != nil {
		return 0, 0, fmt.Errorf("chunk store %s: usage: %w", s.dir, err)
	}
	defer func() { _ = d.Close() }()
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(d.Fd()), &st); err != nil {
		return 0, 0, fmt.Errorf("chunk store %s: statfs: %w", s.dir, err)
	}
	bsize := uint64(st.Bsize)
	return st.Blocks * bsize, st.Bavail * bsize, nil
}
