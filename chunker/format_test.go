package chunker

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/zeebo/xxh3"

	"github.com/wormhole-fs/wormhole/chunker/chunk"
)

// fuzzID is the chunk ID every fuzz input is decoded as.
var fuzzID = chunk.ID{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}

// encodeHeaderV1 is the encoder of format version 1, as it was before
// version 2 replaced it: the header of the chunk file holding data as chunk
// id, and the data's checksum.
func encodeHeaderV1(id chunk.ID, data []byte) ([headerSizeV1]byte, chunk.Sum) {
	var h [headerSizeV1]byte
	sum := sumOf(data)
	copy(h[0:4], chunkMagic)
	h[4] = formatV1
	binary.LittleEndian.PutUint32(h[8:12], uint32(len(data)))
	copy(h[12:28], id[:])
	copy(h[28:60], sum[:])
	return h, sum
}

// encodeChunkV1 returns a whole version 1 chunk file.
func encodeChunkV1(id chunk.ID, data []byte) []byte {
	h, _ := encodeHeaderV1(id, data)
	return append(h[:], data...)
}

// encodeHeaderV2 is the encoder of format version 2, as it was before
// version 3 replaced it: BLAKE3-256 block sums.
func encodeHeaderV2(id chunk.ID, data []byte) ([]byte, chunk.Sum) {
	nb := numBlocks(int64(len(data)))
	h := make([]byte, headerSizeV2+nb*blockSumSizeV2)
	for i := range nb {
		s := sumOf(block(data, i))
		copy(h[headerSizeV2+i*blockSumSizeV2:], s[:])
	}
	sum := sumOf(data)
	sealHeader(h, formatV2, id, uint32(len(data)), sum)
	return h, sum
}

// encodeChunkV2 returns a whole version 2 chunk file.
func encodeChunkV2(id chunk.ID, data []byte) []byte {
	h, _ := encodeHeaderV2(id, data)
	return append(h, data...)
}

// encodeChunk returns a whole chunk file in the current format.
func encodeChunk(id chunk.ID, data []byte) []byte {
	h, _ := encodeHeader(id, data, nil)
	return append(h, data...)
}

// dataOffset returns where the data of an n-byte chunk starts in a chunk
// file of the current format.
func dataOffset(n int) int {
	return headerSizeV2 + int(numBlocks(int64(n)))*blockSumSizeV3
}

// pattern returns n bytes that differ from block to block.
func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7+i>>16) ^ seed
	}
	return b
}

func TestEncodeHeaderLayout(t *testing.T) {
	data := pattern(2*BlockSize+5, 3)
	b := encodeChunk(fuzzID, data)
	if len(b) != headerSizeV2+3*16+len(data) || dataOffset(len(data)) != headerSizeV2+3*16 {
		t.Fatalf("file is %d bytes for %d data bytes", len(b), len(data))
	}
	if string(b[:4]) != chunkMagic || b[4] != formatV3 || b[5] != blockShift || b[6] != 0 || b[7] != 0 {
		t.Fatalf("bad fixed header % x", b[:8])
	}
	if binary.LittleEndian.Uint32(b[8:12]) != uint32(len(data)) || chunk.ID(b[12:28]) != fuzzID {
		t.Fatal("bad length or ID")
	}
	if chunk.Sum(b[28:60]) != sumOf(data) {
		t.Fatal("whole-chunk sum is not BLAKE3-256 of the data")
	}
	for i := range 3 {
		got := b[headerSizeV2+i*16 : headerSizeV2+(i+1)*16]
		want := xxh3.Hash128(block(data, int64(i))).Bytes()
		if !bytes.Equal(got, want[:]) {
			t.Fatalf("block %d sum is not XXH3-128 of the block", i)
		}
	}
	if chunk.Sum(b[60:92]) != headerSum(b[:dataOffset(len(data))]) {
		t.Fatal("header sum wrong")
	}
}

func FuzzDecodeChunk(f *testing.F) {
	valid := encodeChunk(fuzzID, []byte("hello, wormhole"))
	f.Add(valid)
	f.Add(encodeChunk(fuzzID, nil))
	f.Add(encodeChunk(fuzzID, pattern(BlockSize+1, 1)))
	f.Add(valid[:headerSizeV2])
	f.Add(valid[:10])
	f.Add([]byte{})
	f.Add(encodeChunk(chunk.ID{}, []byte("other id")))
	f.Add(encodeChunkV1(fuzzID, []byte("hello, wormhole")))
	f.Add(encodeChunkV1(fuzzID, nil))
	f.Add(encodeChunkV2(fuzzID, []byte("hello, wormhole")))
	f.Add(encodeChunkV2(fuzzID, pattern(BlockSize+1, 1)))
	f.Fuzz(func(t *testing.T, b []byte) {
		orig := bytes.Clone(b)
		data, sum, err := decodeChunk(fuzzID, b)
		if err != nil {
			if !errors.Is(err, chunk.ErrCorrupt) {
				t.Fatalf("error %v does not wrap ErrCorrupt", err)
			}
			if data != nil {
				t.Fatalf("%d bytes returned with an error", len(data))
			}
			return
		}
		// Accepted input must be exactly the encoding of what came out,
		// in its version: so every sum in it is the sum of its data.
		re := encodeChunk(fuzzID, data)
		switch orig[4] {
		case formatV1:
			re = encodeChunkV1(fuzzID, data)
		case formatV2:
			re = encodeChunkV2(fuzzID, data)
		}
		if !bytes.Equal(re, orig) {
			t.Fatalf("decode/encode round trip differs:\n in  %x\n out %x", orig, re)
		}
		if sum != sumOf(data) {
			t.Fatal("returned sum does not match data")
		}
		// A file Get accepts reads the same through range reads.
		n := int64(len(data))
		for _, r := range [][2]int64{{0, n}, {0, 1}, {n / 2, n}, {n - 1, 2}, {BlockSize - 1, 2}, {n, 1}} {
			off, k := max(r[0], 0), r[1]
			got, err := readRange(bytes.NewReader(orig), int64(len(orig)), fuzzID, off, k)
			lo, hi := clampRange(off, k, n)
			if err != nil || !bytes.Equal(got, data[lo:hi]) {
				t.Fatalf("readRange(%d, %d) of an accepted file = %d bytes, %v", off, k, len(got), err)
			}
		}
	})
}

// FuzzReadRange checks the range reader on arbitrary files and ranges: it
// never panics, fails only with ErrCorrupt and no bytes, returns exactly
// the file's bytes of the clamped range when it succeeds, and accepts every
// range of a file that decodeChunk accepts.
func FuzzReadRange(f *testing.F) {
	f.Add(encodeChunk(fuzzID, []byte("hello, wormhole")), uint32(3), uint32(5))
	f.Add(encodeChunk(fuzzID, pattern(2*BlockSize+7, 2)), uint32(BlockSize-3), uint32(9))
	f.Add(encodeChunk(fuzzID, pattern(BlockSize, 4)), uint32(BlockSize), uint32(1))
	f.Add(encodeChunk(fuzzID, nil), uint32(0), uint32(0))
	f.Add(encodeChunkV1(fuzzID, []byte("version one")), uint32(2), uint32(100))
	f.Add(encodeChunkV2(fuzzID, pattern(2*BlockSize+7, 3)), uint32(BlockSize-3), uint32(9))
	f.Add([]byte("WHC1\x02\x10"), uint32(0), uint32(1))
	f.Fuzz(func(t *testing.T, b []byte, off, n uint32) {
		orig := bytes.Clone(b)
		got, err := readRange(bytes.NewReader(b), int64(len(b)), fuzzID, int64(off), int64(n))
		data, _, derr := decodeChunk(fuzzID, orig)
		if err != nil {
			if !errors.Is(err, chunk.ErrCorrupt) {
				t.Fatalf("error %v does not wrap ErrCorrupt", err)
			}
			if got != nil {
				t.Fatalf("%d bytes returned with an error", len(got))
			}
			if derr == nil {
				t.Fatalf("readRange rejects a file decodeChunk accepts: %v", err)
			}
			return
		}
		h, perr := parseFixed(fuzzID, orig)
		if perr != nil {
			t.Fatalf("readRange accepted a file with a bad header: %v", perr)
		}
		lo, hi := clampRange(int64(off), int64(n), h.n)
		if want := orig[h.dataOff+lo : h.dataOff+hi]; !bytes.Equal(got, want) {
			t.Fatalf("readRange(%d, %d) = %x, file has %x", off, n, got, want)
		}
		if derr == nil && !bytes.Equal(got, data[lo:hi]) {
			t.Fatal("readRange and decodeChunk disagree")
		}
	})
}

func TestDecodeChunkRejectsEveryBitFlip(t *testing.T) {
	for _, valid := range [][]byte{
		encodeChunk(fuzzID, []byte("0123456789")),
		encodeChunkV1(fuzzID, []byte("0123456789")),
		encodeChunkV2(fuzzID, []byte("0123456789")),
	} {
		for i := range len(valid) * 8 {
			b := bytes.Clone(valid)
			b[i/8] ^= 1 << (i % 8)
			if _, _, err := decodeChunk(fuzzID, b); !errors.Is(err, chunk.ErrCorrupt) {
				t.Fatalf("version %d: flip of bit %d accepted by decodeChunk: %v", valid[4], i, err)
			}
			// The range covers all the data, so every flip must show.
			if got, err := readRange(bytes.NewReader(b), int64(len(b)), fuzzID, 0, 10); !errors.Is(err, chunk.ErrCorrupt) || got != nil {
				t.Fatalf("version %d: flip of bit %d accepted by readRange: %q, %v", valid[4], i, got, err)
			}
		}
	}
}

// TestReadRangeHeaderFlipsAlwaysFail checks that a flip anywhere in the
// header or block-sum table of a multi-block chunk fails a range read of
// any block, so a damaged table can never vouch for wrong bytes.
func TestReadRangeHeaderFlipsAlwaysFail(t *testing.T) {
	data := pattern(3*BlockSize+100, 5)
	valid := encodeChunk(fuzzID, data)
	for i := range dataOffset(len(data)) * 8 {
		b := bytes.Clone(valid)
		b[i/8] ^= 1 << (i % 8)
		got, err := readRange(bytes.NewReader(b), int64(len(b)), fuzzID, 2*BlockSize+10, 20)
		if !errors.Is(err, chunk.ErrCorrupt) || got != nil {
			t.Fatalf("flip of header bit %d accepted: %d bytes, %v", i, len(got), err)
		}
	}
}
