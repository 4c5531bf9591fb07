package chunker

import (
	"math/rand/v2"
	"testing"

	"github.com/wormhole-fs/wormhole/chunker/chunkertest"
)

// BenchmarkReadAt4KiB measures 4 KiB reads at random 4 KiB-aligned offsets
// of a 64 MiB file of 1 MiB chunks, through Files over a LocalStore: the
// NFS READ pattern of a random-read workload.
func BenchmarkReadAt4KiB(b *testing.B) {
	s, err := OpenLocal(b.TempDir(), testLogger(b))
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	f := NewFiles(chunkertest.NewNamespace(), s, DefaultChunkSize, testLogger(b))
	const (
		chunks = 64
		size   = chunks * DefaultChunkSize
		ino    = 1
	)
	rng := rand.New(rand.NewPCG(1, 2))
	data := make([]byte, DefaultChunkSize)
	for i := range chunks {
		for j := range data {
			data[j] = byte(rng.Uint32())
		}
		if _, err := f.WriteAt(b.Context(), ino, data, int64(i)*DefaultChunkSize); err != nil {
			b.Fatal(err)
		}
	}
	p := make([]byte, 4096)
	b.SetBytes(int64(len(p)))
	for b.Loop() {
		off := int64(rng.IntN(size/len(p))) * int64(len(p))
		if n, err := f.ReadAt(b.Context(), ino, size, p, off); err != nil || n != len(p) {
			b.Fatalf("ReadAt %d: %d, %v", off, n, err)
		}
	}
}
