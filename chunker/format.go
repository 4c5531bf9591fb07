package chunker

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"sync"
	"syscall"

	"github.com/zeebo/blake3"
	"github.com/zeebo/xxh3"

	"github.com/wormhole-fs/wormhole/chunker/chunk"
)

// On-disk chunk file formats; the package documentation describes them.
// All integers are little endian. Version 3 is written; version 2 files
// (BLAKE3 block sums) and version 1 files (written before block sums
// existed) are still read.
const (
	chunkMagic = "WHC1"
	formatV1   = 1
	formatV2   = 2
	formatV3   = 3

	// blockSumSizeV2 and blockSumSizeV3 are the sizes of a block-sum
	// table entry: BLAKE3-256 in version 2, XXH3-128 in version 3.
	blockSumSizeV2 = 32
	blockSumSizeV3 = 16

	// headerSizeV1 is the size of a version 1 header; the data follows.
	headerSizeV1 = 60
	// headerSizeV2 is the size of the fixed part of a version 2 or 3
	// header; the block-sum table follows, then the data.
	headerSizeV2 = 92

	// blockShift is log2 of BlockSize; version 2 and 3 headers record it.
	blockShift = 16
	// BlockSize is the unit of verification of a version 2 or 3 chunk
	// file: each BlockSize bytes of data (the last block may be shorter)
	// have their own sum, so a range read verifies only the blocks it
	// overlaps.
	BlockSize = 1 << blockShift

	// MaxChunkLen is the largest chunk a LocalStore accepts: the header
	// stores the data length as a uint32.
	MaxChunkLen = math.MaxUint32

	// maxFileSize is the size of the largest valid chunk file.
	maxFileSize = headerSizeV2 + (MaxChunkLen+BlockSize-1)/BlockSize*blockSumSizeV2 + MaxChunkLen

	// prefixRead is how many bytes a range read fetches first: the fixed
	// header and, for chunks up to 250 blocks (16000000 bytes of data) in
	// version 3, the whole block-sum table.
	prefixRead = 4096
)

// sumOf returns the BLAKE3-256 checksum of data.
func sumOf(data []byte) chunk.Sum {
	return chunk.Sum(blake3.Sum256(data))
}

// numBlocks returns the number of blocks of n bytes of data.
func numBlocks(n int64) int64 { return (n + BlockSize - 1) / BlockSize }

// block returns block i of data.
func block(data []byte, i int64) []byte {
	return data[i*BlockSize : min((i+1)*BlockSize, int64(len(data)))]
}

// headerLen is the size of the version 3 header (fixed part and block-sum
// table) of a chunk of n bytes: where its data starts in the file.
func headerLen(n int64) int64 { return headerSizeV2 + numBlocks(n)*blockSumSizeV3 }

// encodeHeader returns the version 3 header (fixed part and block-sum
// table) of the chunk file holding data as chunk id, and the data's
// checksum: known, when the caller computed it over data, else computed
// here. The data is read once: each block feeds the whole-chunk hash and
// its own block sum while it is in cache. len(data) must not exceed
// MaxChunkLen.
func encodeHeader(id chunk.ID, data []byte, known *chunk.Sum) ([]byte, chunk.Sum) {
	nb := numBlocks(int64(len(data)))
	h := make([]byte, headerLen(int64(len(data))))
	var whole *blake3.Hasher
	if known == nil {
		whole = blake3.New()
	}
	for i := range nb {
		b := block(data, i)
		if whole != nil {
			_, _ = whole.Write(b) // never fails
		}
		s := blockSumV3(b)
		copy(h[headerSizeV2+i*blockSumSizeV3:], s[:])
	}
	var sum chunk.Sum
	if whole != nil {
		whole.Sum(sum[:0])
	} else {
		sum = *known
	}
	sealHeader(h, formatV3, id, uint32(len(data)), sum)
	return h, sum
}

// sealHeader fills in the fixed part of the version 2 or 3 header h, whose
// block-sum table is in place, for n data bytes of chunk id with whole-data
// sum: magic, version, block size, length, ID, sum and, last, the header
// sum over all of it.
func sealHeader(h []byte, version byte, id chunk.ID, n uint32, sum chunk.Sum) {
	copy(h[0:4], chunkMagic)
	h[4] = version
	h[5] = blockShift
	binary.LittleEndian.PutUint32(h[8:12], n)
	copy(h[12:28], id[:])
	copy(h[28:60], sum[:])
	hs := headerSum(h)
	copy(h[60:92], hs[:])
}

// blockSumV3 returns the version 3 sum of a block: XXH3-128, big endian.
// It guards against damage (flipped bits, torn or misplaced writes), as a
// CRC would, at memory speed; the whole-chunk BLAKE3 sum stays the chunk's
// identity in chunk maps and between nodes.
func blockSumV3(b []byte) [blockSumSizeV3]byte { return xxh3.Hash128(b).Bytes() }

// headerSum returns the sum that protects a version 2 or 3 header:
// BLAKE3-256 of its bytes [0, 60) followed by its block-sum table. h is
// the header, fixed part and table.
func headerSum(h []byte) chunk.Sum {
	d := blake3.New()
	_, _ = d.Write(h[:60])
	_, _ = d.Write(h[headerSizeV2:])
	var s chunk.Sum
	d.Sum(s[:0])
	return s
}

// header is a parsed chunk file header.
type header struct {
	version byte
	n       int64     // data length
	sum     chunk.Sum // whole-chunk checksum
	dataOff int64     // file offset of the data
	// table is the version 2 or 3 block-sum table, entrySize() bytes
	// per block, once checkTable has verified it.
	table []byte
}

// entrySize is the size of a block-sum table entry of h's version (0 for
// version 1, which has no table).
func (h *header) entrySize() int64 {
	switch h.version {
	case formatV2:
		return blockSumSizeV2
	case formatV3:
		return blockSumSizeV3
	}
	return 0
}

// parseFixed checks the fixed part of the header at the start of b, which
// may hold more of the file, for chunk id. For versions 2 and 3 it does not read
// or verify the block-sum table (see checkTable). Every failure wraps
// chunk.ErrCorrupt.
func parseFixed(id chunk.ID, b []byte) (header, error) {
	if len(b) < 8 {
		return header{}, fmt.Errorf("%w: file is %d bytes, shorter than any header", chunk.ErrCorrupt, len(b))
	}
	if string(b[0:4]) != chunkMagic {
		return header{}, fmt.Errorf("%w: bad magic %q", chunk.ErrCorrupt, b[0:4])
	}
	h := header{version: b[4]}
	size := 0
	switch h.version {
	case formatV1:
		size = headerSizeV1
		if b[5] != 0 || b[6] != 0 || b[7] != 0 {
			return header{}, fmt.Errorf("%w: reserved header bytes not zero", chunk.ErrCorrupt)
		}
	case formatV2, formatV3:
		size = headerSizeV2
		if b[5] != blockShift {
			return header{}, fmt.Errorf("%w: block size 2^%d, want 2^%d", chunk.ErrCorrupt, b[5], blockShift)
		}
		if b[6] != 0 || b[7] != 0 {
			return header{}, fmt.Errorf("%w: reserved header bytes not zero", chunk.ErrCorrupt)
		}
	default:
		return header{}, fmt.Errorf("%w: unsupported format version %d", chunk.ErrCorrupt, h.version)
	}
	if len(b) < size {
		return header{}, fmt.Errorf("%w: file is %d bytes, shorter than the %d-byte version %d header",
			chunk.ErrCorrupt, len(b), size, h.version)
	}
	if chunk.ID(b[12:28]) != id {
		return header{}, fmt.Errorf("%w: file holds chunk %s", chunk.ErrCorrupt, chunk.ID(b[12:28]))
	}
	h.n = int64(binary.LittleEndian.Uint32(b[8:12]))
	h.sum = chunk.Sum(b[28:60])
	h.dataOff = int64(size)
	h.dataOff += numBlocks(h.n) * h.entrySize()
	return h, nil
}

// checkFileSize checks that a file of size bytes has exactly the header and
// data that h describes.
func (h *header) checkFileSize(size int64) error {
	if size != h.dataOff+h.n {
		return fmt.Errorf("%w: header says %d data bytes, file has %d", chunk.ErrCorrupt, h.n, size-h.dataOff)
	}
	return nil
}

// checkTable verifies a version 2 or 3 header: meta holds the file's first
// h.dataOff bytes (fixed header and block-sum table), whose header sum must
// match. On success h keeps the table.
func (h *header) checkTable(meta []byte) error {
	if int64(len(meta)) != h.dataOff {
		return fmt.Errorf("%w: block-sum table incomplete", chunk.ErrCorrupt)
	}
	if headerSum(meta) != chunk.Sum(meta[60:92]) {
		return fmt.Errorf("%w: header checksum mismatch (fixed header or block-sum table)", chunk.ErrCorrupt)
	}
	h.table = meta[headerSizeV2:]
	return nil
}

// checkBlocks verifies data, which holds whole blocks first, first+1, ...
// of a version 2 or 3 chunk (the last possibly the chunk's short final
// block), against the verified block-sum table. The error names the first
// bad block.
func (h *header) checkBlocks(first int64, data []byte) error {
	es := h.entrySize()
	for i := range numBlocks(int64(len(data))) {
		b := block(data, i)
		idx := first + i
		want := h.table[idx*es : (idx+1)*es]
		var ok bool
		if h.version == formatV2 {
			ok = blake3.Sum256(b) == [blockSumSizeV2]byte(want)
		} else {
			ok = blockSumV3(b) == [blockSumSizeV3]byte(want)
		}
		if !ok {
			return fmt.Errorf("%w: block %d (data bytes [%d, %d)) checksum mismatch",
				chunk.ErrCorrupt, idx, idx*BlockSize, idx*BlockSize+int64(len(b)))
		}
	}
	return nil
}

// decodeChunk checks that b is a complete, well-formed chunk file (either
// version) for chunk id and returns its data (a sub-slice of b) and
// checksum. Everything is verified: for versions 2 and 3 the header sum,
// every block sum and the whole-chunk sum. Every failure wraps chunk.ErrCorrupt;
// no data is returned with an error.
func decodeChunk(id chunk.ID, b []byte) ([]byte, chunk.Sum, error) {
	h, err := parseFixed(id, b)
	if err != nil {
		return nil, chunk.Sum{}, err
	}
	if err := h.checkFileSize(int64(len(b))); err != nil {
		return nil, chunk.Sum{}, err
	}
	data := b[h.dataOff:]
	if h.version == formatV1 {
		if sumOf(data) != h.sum {
			return nil, chunk.Sum{}, fmt.Errorf("%w: checksum mismatch", chunk.ErrCorrupt)
		}
		return data, h.sum, nil
	}
	if err := h.checkTable(b[:h.dataOff]); err != nil {
		return nil, chunk.Sum{}, err
	}
	// One pass: each block is hashed on its own and into the whole-chunk
	// sum while it is in cache.
	whole := blake3.New()
	for i := range numBlocks(h.n) {
		blk := block(data, i)
		if err := h.checkBlocks(i, blk); err != nil {
			return nil, chunk.Sum{}, err
		}
		_, _ = whole.Write(blk)
	}
	var got chunk.Sum
	whole.Sum(got[:0])
	if got != h.sum {
		return nil, chunk.Sum{}, fmt.Errorf("%w: checksum mismatch", chunk.ErrCorrupt)
	}
	return data, h.sum, nil
}

// readRange returns bytes [off, off+n) of the data of chunk id, clamped to
// the data's length, from the chunk file r of size bytes. For a version 2
// or 3 file it reads the header and block-sum table, verifies the header sum,
// reads only the blocks that overlap the range and verifies each. A version
// 1 file has one checksum over all the data, so it is read and verified
// whole. Corruption, a malformed file, a file that ends early and EIO wrap
// chunk.ErrCorrupt; no byte is returned with an error. off and n must not be
// negative.
func readRange(r io.ReaderAt, size int64, id chunk.ID, off, n int64) ([]byte, error) {
	h, pre, err := loadHeader(r, size, id)
	if err != nil {
		return nil, err
	}
	if h.version == formatV1 {
		b := make([]byte, size)
		copy(b, pre)
		if err := preadFull(r, b[len(pre):], int64(len(pre))); err != nil {
			return nil, err
		}
		data, _, err := decodeChunk(id, b)
		if err != nil {
			return nil, err
		}
		lo, hi := clampRange(off, n, h.n)
		return data[lo:hi:hi], nil
	}
	return h.readBlocks(r, off, n)
}

// loadHeader reads and checks the header of chunk id from the chunk file r
// of size bytes: the fixed part and the file size and, for versions 2 and 3, the
// block-sum table under its header sum (h.table is then set). It returns
// the header and the bytes it read from the start of the file (for version
// 1, the caller reads the rest). Failures wrap chunk.ErrCorrupt.
func loadHeader(r io.ReaderAt, size int64, id chunk.ID) (header, []byte, error) {
	if size > maxFileSize {
		return header{}, nil, fmt.Errorf("%w: file is %d bytes, larger than any chunk", chunk.ErrCorrupt, size)
	}
	pre := make([]byte, min(size, prefixRead))
	if err := preadFull(r, pre, 0); err != nil {
		return header{}, nil, err
	}
	h, err := parseFixed(id, pre)
	if err != nil {
		return header{}, nil, err
	}
	if err := h.checkFileSize(size); err != nil {
		return header{}, nil, err
	}
	if h.version == formatV1 {
		return h, pre, nil
	}
	var meta []byte
	if h.dataOff <= int64(len(pre)) {
		// A copy, so that a header kept in a cache does not pin the
		// whole prefix buffer.
		meta = append([]byte(nil), pre[:h.dataOff]...)
	} else {
		meta = make([]byte, h.dataOff)
		copy(meta, pre)
		if err := preadFull(r, meta[len(pre):], int64(len(pre))); err != nil {
			return header{}, nil, err
		}
	}
	if err := h.checkTable(meta); err != nil {
		return header{}, nil, err
	}
	return h, pre, nil
}

// readBlocks returns bytes [off, off+n) of the data of a version 2 or 3 chunk,
// clamped to its length, from its file r: it reads (one pread) the blocks
// that overlap the range and verifies each against h's block-sum table,
// which loadHeader verified. Failures wrap chunk.ErrCorrupt and return no
// byte.
func (h *header) readBlocks(r io.ReaderAt, off, n int64) ([]byte, error) {
	lo, hi := clampRange(off, n, h.n)
	if lo == hi {
		return []byte{}, nil
	}
	first, last := lo/BlockSize, (hi-1)/BlockSize
	bStart, bEnd := first*BlockSize, min((last+1)*BlockSize, h.n)
	if span := bEnd - bStart; span <= scratchSize && hi-lo <= span/2 {
		// A small range (a 4 KiB READ): the blocks go through a reused
		// buffer and only the range is copied out, so a read allocates
		// what it returns, not whole blocks.
		bp := blockScratch.Get().(*[]byte)
		defer blockScratch.Put(bp)
		buf := (*bp)[:span]
		if err := preadFull(r, buf, h.dataOff+bStart); err != nil {
			return nil, err
		}
		if err := h.checkBlocks(first, buf); err != nil {
			return nil, err
		}
		return append([]byte(nil), buf[lo-bStart:hi-bStart]...), nil
	}
	buf := make([]byte, bEnd-bStart)
	if err := preadFull(r, buf, h.dataOff+bStart); err != nil {
		return nil, err
	}
	if err := h.checkBlocks(first, buf); err != nil {
		return nil, err
	}
	return buf[lo-bStart : hi-bStart : hi-bStart], nil
}

// readBlocksInto reads bytes [off, off+len(p)) of the data of a version 2
// or 3 chunk, clamped to its length, into p, verified as readBlocks verifies
// them, and returns how many bytes it read. A range that starts on a block
// boundary and ends on one (or at the end of the data), as a 1 MiB READ
// of a file does, is read straight into p and verified there: no buffer
// is allocated and no byte copied. Any other range goes through
// readBlocks. After an error the contents of p are unspecified (they may
// hold unverified bytes) and must not be used.
func (h *header) readBlocksInto(r io.ReaderAt, p []byte, off int64) (int, error) {
	lo, hi := clampRange(off, int64(len(p)), h.n)
	if lo == hi {
		return 0, nil
	}
	if lo%BlockSize != 0 || (hi%BlockSize != 0 && hi != h.n) {
		data, err := h.readBlocks(r, lo, hi-lo)
		if err != nil {
			return 0, err
		}
		return copy(p, data), nil
	}
	buf := p[:hi-lo]
	if err := preadFull(r, buf, h.dataOff+lo); err != nil {
		return 0, err
	}
	if err := h.checkBlocks(lo/BlockSize, buf); err != nil {
		return 0, err
	}
	return len(buf), nil
}

// scratchSize is the size of the buffers of blockScratch: two blocks, what
// a small range read overlaps at most.
const scratchSize = 2 * BlockSize

// blockScratch holds buffers of scratchSize bytes in which readBlocks
// reads and verifies the blocks of small ranges.
var blockScratch = sync.Pool{New: func() any {
	b := make([]byte, scratchSize)
	return &b
}}

// clampRange returns the part [lo, hi) of [off, off+n) within data of
// length size; off and n are not negative.
func clampRange(off, n, size int64) (lo, hi int64) {
	lo = min(off, size)
	return lo, lo + min(n, size-lo)
}

// preadFull reads len(p) bytes of r at off. A file that ends early and EIO
// wrap chunk.ErrCorrupt.
func preadFull(r io.ReaderAt, p []byte, off int64) error {
	k, err := r.ReadAt(p, off)
	switch {
	case k == len(p):
		return nil
	case errors.Is(err, io.EOF):
		return fmt.Errorf("%w: file ends at %d bytes, before the end of its header or data", chunk.ErrCorrupt, off+int64(k))
	case errors.Is(err, syscall.EIO):
		return fmt.Errorf("%w: %w", chunk.ErrCorrupt, err)
	case err != nil:
		return err
	}
	return fmt.Errorf("%w: short read at %d", chunk.ErrCorrupt, off+int64(k))
}
