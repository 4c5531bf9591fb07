package chunker

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/zeebo/blake3"

	"github.com/wormhole-fs/wormhole/chunker/chunk"
)

// On-disk chunk file format, version 1. All integers are little endian.
//
//	offset size field
//	     0    4 magic "WHC1"
//	     4    1 format version (1)
//	     5    3 reserved, zero
//	     8    4 data length in bytes (uint32)
//	    12   16 chunk ID the file holds
//	    28   32 BLAKE3-256 sum of the data
//	    60    n data
const (
	chunkMagic    = "WHC1"
	formatVersion = 1
	headerSize    = 60

	// MaxChunkLen is the largest chunk a LocalStore accepts: the header
	// stores the data length as a uint32.
	MaxChunkLen = math.MaxUint32
)

// sumOf returns the BLAKE3-256 checksum of data.
func sumOf(data []byte) chunk.Sum {
	return chunk.Sum(blake3.Sum256(data))
}

// encodeHeader returns the header of the chunk file holding data as chunk
// id, and the data's checksum. len(data) must not exceed MaxChunkLen.
func encodeHeader(id chunk.ID, data []byte) ([headerSize]byte, chunk.Sum) {
	var h [headerSize]byte
	sum := sumOf(data)
	copy(h[0:4], chunkMagic)
	h[4] = formatVersion
	binary.LittleEndian.PutUint32(h[8:12], uint32(len(data)))
	copy(h[12:28], id[:])
	copy(h[28:60], sum[:])
	return h, sum
}

// decodeChunk checks that b is a complete, well-formed chunk file for chunk
// id and returns its data (a sub-slice of b) and checksum. Every failure
// wraps chunk.ErrCorrupt; no data is returned with an error.
func decodeChunk(id chunk.ID, b []byte) ([]byte, chunk.Sum, error) {
	if len(b) < headerSize {
		return nil, chunk.Sum{}, fmt.Errorf("%w: file is %d bytes, shorter than the %d-byte header", chunk.ErrCorrupt, len(b), headerSize)
	}
	if string(b[0:4]) != chunkMagic {
		return nil, chunk.Sum{}, fmt.Errorf("%w: bad magic %q", chunk.ErrCorrupt, b[0:4])
	}
	if b[4] != formatVersion {
		return nil, chunk.Sum{}, fmt.Errorf("%w: unsupported format version %d", chunk.ErrCorrupt, b[4])
	}
	if b[5] != 0 || b[6] != 0 || b[7] != 0 {
		return nil, chunk.Sum{}, fmt.Errorf("%w: reserved header bytes not zero", chunk.ErrCorrupt)
	}
	n := uint64(binary.LittleEndian.Uint32(b[8:12]))
	if got := uint64(len(b) - headerSize); got != n {
		return nil, chunk.Sum{}, fmt.Errorf("%w: header says %d data bytes, file has %d", chunk.ErrCorrupt, n, got)
	}
	if chunk.ID(b[12:28]) != id {
		return nil, chunk.Sum{}, fmt.Errorf("%w: file holds chunk %s", chunk.ErrCorrupt, chunk.ID(b[12:28]))
	}
	want := chunk.Sum(b[28:60])
	data := b[headerSize:]
	if sumOf(data) != want {
		return nil, chunk.Sum{}, fmt.Errorf("%w: checksum mismatch", chunk.ErrCorrupt)
	}
	return data, want, nil
}
