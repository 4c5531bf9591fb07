package chunker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/zeebo/blake3"

	"github.com/wormhole-fs/wormhole/chunker/chunk"
)

// streamBuf is how many bytes PutFrom reads, hashes and writes at a time:
// a whole number of blocks.
const streamBuf = 4 * BlockSize

// PutFrom stores the n bytes read from r as chunk id, as Put does, and
// checks them against want on the way: they are written to the chunk file
// as they arrive and hashed as they are written, so that receiving,
// hashing and writing overlap (a peer's PUT of a copy). Nothing is stored
// when the bytes do not have the sum want (the error wraps
// chunk.ErrSumMismatch) or r fails or ends before n bytes (the error wraps
// r's, io.ErrUnexpectedEOF for a short one).
func (s *LocalStore) PutFrom(ctx context.Context, id chunk.ID, r io.Reader, n int64, want chunk.Sum) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("chunk store %s: put chunk %s: %w", s.dir, id, err)
	}
	if n < 0 || n > MaxChunkLen {
		return fmt.Errorf("chunk store %s: put chunk %s: %d bytes: outside [0, %d]", s.dir, id, n, uint64(MaxChunkLen))
	}
	_, err := s.store(id, func(f *os.File) ([]byte, chunk.Sum, error) {
		hdr, err := writeStream(f, id, r, n, want)
		return hdr, want, err
	})
	return err
}

// writeStream writes the chunk file of the n bytes read from r as chunk
// id to the empty file f, checks their sum against want before writing
// the header, syncs and closes f. It returns the header written.
func writeStream(f *os.File, id chunk.ID, r io.Reader, n int64, want chunk.Sum) (hdr []byte, err error) {
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}()
	dataOff := headerLen(n)
	hdr = make([]byte, dataOff)
	whole := blake3.New()
	buf := make([]byte, min(streamBuf, n))
	for off := int64(0); off < n; {
		k := min(int64(len(buf)), n-off)
		if _, err := io.ReadFull(r, buf[:k]); err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return nil, fmt.Errorf("read data at %d of %d: %w", off, n, err)
		}
		_, _ = whole.Write(buf[:k]) // never fails
		for b := int64(0); b < k; b += BlockSize {
			s := blockSumV3(buf[b:min(b+BlockSize, k)])
			copy(hdr[headerSizeV2+(off+b)/BlockSize*blockSumSizeV3:], s[:])
		}
		if _, err := f.WriteAt(buf[:k], dataOff+off); err != nil {
			return nil, err
		}
		off += k
	}
	var sum chunk.Sum
	whole.Sum(sum[:0])
	if sum != want {
		return nil, fmt.Errorf("%d bytes have sum %x, sender said %x: %w", n, sum, want, chunk.ErrSumMismatch)
	}
	startWriteback(f, dataOff, n)
	sealHeader(hdr, formatV3, id, uint32(n), sum)
	if _, err := f.WriteAt(hdr, 0); err != nil {
		return nil, err
	}
	return hdr, f.Sync()
}
