package peer

import (
	"bytes"
	"testing"

	"github.com/wormhole-fs/wormhole/chunker/chunk"
)

// encodeList is the body a server sends for ids.
func encodeList(ids []chunk.ID) []byte {
	var b []byte
	for _, id := range ids {
		b = append(b, id[:]...)
	}
	return appendListEnd(b, uint64(len(ids)))
}

// FuzzDecodeList checks that decodeList accepts exactly the bodies a
// server sends: whatever it accepts re-encodes to the same bytes, and
// decoding that again gives the same IDs.
func FuzzDecodeList(f *testing.F) {
	one := chunk.ID{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}
	f.Add(encodeList(nil))
	f.Add(encodeList([]chunk.ID{one}))
	f.Add(encodeList([]chunk.ID{one, {0xff}, {15: 1}}))
	f.Add(encodeList([]chunk.ID{one})[:20])
	f.Add(append(encodeList([]chunk.ID{one}), 0))
	f.Fuzz(func(t *testing.T, body []byte) {
		var ids []chunk.ID
		err := decodeList(bytes.NewReader(body), func(id chunk.ID) error {
			if id.IsZero() {
				t.Fatal("fn called with the zero ID")
			}
			ids = append(ids, id)
			return nil
		})
		if err != nil {
			return
		}
		again := encodeList(ids)
		if !bytes.Equal(again, body) {
			t.Fatalf("accepted %x, which re-encodes to %x", body, again)
		}
		var ids2 []chunk.ID
		if err := decodeList(bytes.NewReader(again), func(id chunk.ID) error { ids2 = append(ids2, id); return nil }); err != nil || len(ids2) != len(ids) {
			t.Fatalf("re-decoding: %d IDs, %v; want %d", len(ids2), err, len(ids))
		}
	})
}
