//go:build linux

package chunker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"

	"golang.org/x/sys/unix"

	"github.com/wormhole-fs/wormhole/chunker/chunk"
)

// ViewRange lends bytes [off, off+n) of chunk id from a read-only mapping
// of its file (see RangeViewer): the blocks they overlap are paged in,
// verified against their block sums where they lie, and the bytes
// returned in place, with no copy; release unmaps them. A version 1 chunk
// (one checksum over all its data) gives chunk.ErrNoView.
//
// The bytes are verified in memory just before the caller uses them. In
// the microseconds between, the kernel could drop a page under memory
// pressure and read it from disk again as the caller copies it out; chunk
// files are never changed in place, so that gives the same bytes unless
// the disk fails in that instant.
func (s *LocalStore) ViewRange(ctx context.Context, id chunk.ID, off int64, n int) ([]byte, func(), error) {
	if off < 0 || n < 0 {
		return nil, nil, fmt.Errorf("chunk store %s: view chunk %s: invalid range of %d bytes at %d", s.dir, id, n, off)
	}
	var data, mapping []byte
	err := s.readCached(ctx, id, off, int64(n), func(h *header, r io.ReaderAt) error {
		f, ok := r.(*os.File)
		if !ok {
			return chunk.ErrNoView
		}
		lo, hi := clampRange(off, int64(n), h.n)
		if lo == hi {
			data = []byte{}
			return nil
		}
		// Whole blocks are verified; the mapping starts at a page.
		bLo, bHi := lo&^(BlockSize-1), min((hi+BlockSize-1)&^(BlockSize-1), h.n)
		fileLo := h.dataOff + bLo
		pageLo := fileLo &^ int64(os.Getpagesize()-1)
		m, err := mapRange(f, pageLo, int(h.dataOff+bHi-pageLo))
		if err != nil {
			return err
		}
		blocks := m[fileLo-pageLo:][:bHi-bLo]
		if err := checkMapped(h, bLo/BlockSize, blocks); err != nil {
			_ = unix.Munmap(m)
			return err
		}
		data, mapping = blocks[lo-bLo:hi-bLo], m
		return nil
	}, func(io.ReaderAt, int64) error { return chunk.ErrNoView })
	if err != nil {
		return nil, nil, err
	}
	if mapping == nil {
		return data, func() {}, nil
	}
	return data, func() { _ = unix.Munmap(mapping) }, nil
}

// mapRange maps length bytes of f at off (a multiple of the page size)
// read-only and pages them in now: a disk error is then an error here,
// where touching an unreadable mapped page later would be a fault.
func mapRange(f *os.File, off int64, length int) ([]byte, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	var m []byte
	var merr error
	if err := rc.Control(func(fd uintptr) {
		m, merr = unix.Mmap(int(fd), off, length, unix.PROT_READ, unix.MAP_SHARED)
	}); err != nil {
		return nil, err
	}
	if merr != nil {
		return nil, fmt.Errorf("map %d bytes at %d: %w", length, off, merr)
	}
	// EINVAL: a kernel before 5.14, without MADV_POPULATE_READ; the
	// pages then come in as they are read (checkMapped still catches a
	// fault).
	if err := unix.Madvise(m, unix.MADV_POPULATE_READ); err != nil && !errors.Is(err, unix.EINVAL) {
		_ = unix.Munmap(m)
		if errors.Is(err, unix.EFAULT) || errors.Is(err, unix.EIO) || errors.Is(err, unix.EHWPOISON) {
			return nil, fmt.Errorf("%w: reading %d bytes at %d: %w", chunk.ErrCorrupt, length, off, err)
		}
		return nil, fmt.Errorf("page in %d bytes at %d: %w", length, off, err)
	}
	return m, nil
}

// checkMapped verifies the mapped blocks b, the first being block first,
// turning a fault while reading them (a page that could not be read back
// from disk) into chunk.ErrCorrupt instead of a crash.
func checkMapped(h *header, first int64, b []byte) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		r := recover()
		if r == nil {
			return
		}
		if f, ok := r.(interface{ Addr() uintptr }); ok {
			err = fmt.Errorf("%w: fault reading mapped chunk data at %#x", chunk.ErrCorrupt, f.Addr())
			return
		}
		panic(r)
	}()
	return h.checkBlocks(first, b)
}
