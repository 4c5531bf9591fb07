package chunker

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"testing/iotest"

	"github.com/wormhole-fs/wormhole/chunker/chunk"
)

// storeFiles lists the regular files under the store's directory,
// temporary ones included.
func storeFiles(t *testing.T, s *LocalStore) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(s.Dir(), func(path string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			files = append(files, path)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// TestPutFromWritesWhatPutWrites: a chunk stored from a reader, in reads
// of every size, is the same file that Put writes for the same bytes, and
// reads back whole and in ranges.
func TestPutFromWritesWhatPutWrites(t *testing.T) {
	ctx := t.Context()
	for _, n := range []int{0, 1, BlockSize - 1, BlockSize, streamBuf + 17, 1 << 20} {
		data := pattern(n, byte(n))
		sum := sumOf(data)
		streamed, put := openTestStore(t), openTestStore(t)
		id := chunk.NewID()
		// Reads of half of what is asked, and the last bytes come
		// with io.EOF.
		r := iotest.DataErrReader(iotest.HalfReader(bytes.NewReader(data)))
		if err := streamed.PutFrom(ctx, id, r, int64(n), sum); err != nil {
			t.Fatalf("%d bytes: PutFrom: %v", n, err)
		}
		if _, err := put.Put(ctx, id, data); err != nil {
			t.Fatal(err)
		}
		a, err := os.ReadFile(streamed.Path(id))
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(put.Path(id))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a, b) {
			t.Fatalf("%d bytes: the streamed chunk file differs from Put's", n)
		}
		got, err := streamed.Get(ctx, id)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%d bytes: Get: %v, equal %v", n, err, bytes.Equal(got, data))
		}
	}
}

// TestPutFromRefusesBadInput: bytes that do not match the sum, a reader
// that ends early and one that fails store nothing, not even a temporary
// file, and say why.
func TestPutFromRefusesBadInput(t *testing.T) {
	ctx := t.Context()
	data := pattern(3*BlockSize+5, 9)
	sum := sumOf(data)
	broken := errors.New("connection reset")
	cases := map[string]struct {
		r    io.Reader
		want error
	}{
		"wrong sum": {bytes.NewReader(append(bytes.Clone(data[:len(data)-1]), 0)), chunk.ErrSumMismatch},
		"short":     {bytes.NewReader(data[:len(data)-1]), io.ErrUnexpectedEOF},
		"failing":   {io.MultiReader(bytes.NewReader(data[:BlockSize]), iotest.ErrReader(broken)), broken},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			s := openTestStore(t)
			id := chunk.NewID()
			err := s.PutFrom(ctx, id, c.r, int64(len(data)), sum)
			if !errors.Is(err, c.want) {
				t.Fatalf("PutFrom: %v; want %v", err, c.want)
			}
			if _, err := s.Get(ctx, id); !errors.Is(err, chunk.ErrNotFound) {
				t.Fatalf("Get after a refused PutFrom: %v", err)
			}
			if files := storeFiles(t, s); len(files) != 0 {
				t.Fatalf("files left: %v", files)
			}
		})
	}
}
