package chunker

import (
	"bytes"
	"errors"
	"testing"

	"github.com/wormhole-fs/wormhole/chunker/chunk"
)

// fuzzID is the chunk ID every fuzz input is decoded as.
var fuzzID = chunk.ID{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}

func encodeChunk(id chunk.ID, data []byte) []byte {
	h, _ := encodeHeader(id, data)
	return append(h[:], data...)
}

func FuzzDecodeChunk(f *testing.F) {
	valid := encodeChunk(fuzzID, []byte("hello, wormhole"))
	f.Add(valid)
	f.Add(encodeChunk(fuzzID, nil))
	f.Add(valid[:headerSize])
	f.Add(valid[:10])
	f.Add([]byte{})
	f.Add(encodeChunk(chunk.ID{}, []byte("other id")))
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
		// Accepted input must be exactly the encoding of what came out.
		if re := encodeChunk(fuzzID, data); !bytes.Equal(re, orig) {
			t.Fatalf("decode/encode round trip differs:\n in  %x\n out %x", orig, re)
		}
		if sum != sumOf(data) {
			t.Fatal("returned sum does not match data")
		}
	})
}

func TestDecodeChunkRejectsEveryBitFlip(t *testing.T) {
	valid := encodeChunk(fuzzID, []byte("0123456789"))
	for i := range len(valid) * 8 {
		b := bytes.Clone(valid)
		b[i/8] ^= 1 << (i % 8)
		if _, _, err := decodeChunk(fuzzID, b); !errors.Is(err, chunk.ErrCorrupt) {
			t.Fatalf("flip of bit %d accepted: %v", i, err)
		}
	}
}
