package nfsfront

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wormhole-fs/wormhole/chunker/chunk"
	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
)

// twoFilesNS holds, besides the root, regular files 7 and 8 of the given
// sizes.
type twoFilesNS struct {
	rootOnlyNS
	sizes map[meta.Ino]uint64
}

func (n twoFilesNS) GetAttr(ctx context.Context, ino meta.Ino) (meta.Attr, error) {
	size, ok := n.sizes[ino]
	if !ok {
		return n.rootOnlyNS.GetAttr(ctx, ino)
	}
	return meta.Attr{Ino: ino, Type: meta.TypeRegular, Mode: 0o644, Nlink: 1, Gen: 1, Parent: meta.RootIno, Size: size}, nil
}

// patternData serves byte i of file ino as fileByte(ino, i).
type patternData struct{ nopData }

func fileByte(ino meta.Ino, i int64) byte { return byte(int64(ino)*31 + i*7 + i>>11) }

func (patternData) ReadAt(_ context.Context, ino meta.Ino, size uint64, p []byte, off int64) (int, error) {
	n := 0
	for ; n < len(p) && uint64(off)+uint64(n) < size; n++ {
		p[n] = fileByte(ino, off+int64(n))
	}
	return n, nil
}

// TestReadRepliesAreExact sends READs of a 1 MiB file and of a shorter file
// of odd length in turn on one connection: large replies share buffers, and
// each must carry exactly its own bytes, its count and eof, and zero
// padding, never bytes a previous, longer reply left.
func TestReadRepliesAreExact(t *testing.T) {
	checkReadReplies(t, patternData{})
}

// lendingData lends the bytes of patternData's files (see dataViewer) from
// buffers of its own, counting the loans and their returns; it lends only
// file 7's bytes (others are read with ReadAt) and fails with failure when
// that is set.
type lendingData struct {
	patternData
	failure       error
	lent, settled atomic.Int64
}

func (d *lendingData) ReadView(ctx context.Context, ino meta.Ino, size uint64, off int64, n int) ([]byte, func(), bool, error) {
	if d.failure != nil {
		return nil, nil, false, d.failure
	}
	if ino != 7 {
		return nil, nil, false, nil
	}
	b := make([]byte, n)
	k, _ := d.ReadAt(ctx, ino, size, b, off)
	d.lent.Add(1)
	return b[:k], func() { d.settled.Add(1) }, true, nil
}

// READs over TCP send what a data path lends, exactly, and every loan is
// given back once its reply is sent.
func TestReadRepliesLent(t *testing.T) {
	d := &lendingData{}
	checkReadReplies(t, d)
	if d.lent.Load() != 3 {
		t.Errorf("%d READs lent, want the 3 of the 1 MiB file", d.lent.Load())
	}
	deadline := time.Now().Add(10 * time.Second)
	for d.settled.Load() != d.lent.Load() {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d loans given back 10 s after the last reply", d.settled.Load(), d.lent.Load())
		}
		time.Sleep(10 * time.Millisecond) // poll interval
	}
}

// A data path that fails to lend fails the READ with its error.
func TestReadLendingFails(t *testing.T) {
	d := &lendingData{failure: fmt.Errorf("chunk 3: %w", chunk.ErrCorrupt)}
	s, c := serveAndDial(t, twoFilesNS{sizes: map[meta.Ino]uint64{7: maxIO}}, d)
	fh := s.handleFor(creds{}, meta.Attr{Ino: 7, Gen: 1})
	args := binary.BigEndian.AppendUint64(opaqueArg(fh), 0)
	args = binary.BigEndian.AppendUint32(args, maxIO)
	c.send(t, callRecord(1, progNFS, 3, procRead, args))
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	reply, err := readRecord(c.Conn, 2*maxIO)
	if err != nil {
		t.Fatal(err)
	}
	if st, want := nfsStatus(t, reply), uint32(statusOf(d.failure)); st != want || want == 0 {
		t.Fatalf("READ of a chunk that fails to lend: status %d, want %d", st, want)
	}
}

// checkReadReplies sends READs of a 1 MiB file and of a shorter one of
// odd length in turn on one connection to a front serving data, and checks
// each reply's bytes, count, eof and padding.
func checkReadReplies(t *testing.T, data Data) {
	t.Helper()
	sizes := map[meta.Ino]uint64{7: maxIO, 8: 100_001}
	s, c := serveAndDial(t, twoFilesNS{sizes: sizes}, data)

	for i := range uint32(6) {
		ino := meta.Ino(7 + i%2)
		fh := s.handleFor(creds{}, meta.Attr{Ino: ino, Gen: 1})
		args := binary.BigEndian.AppendUint64(opaqueArg(fh), 0)
		args = binary.BigEndian.AppendUint32(args, maxIO)
		c.send(t, callRecord(i+1, progNFS, 3, procRead, args))
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		reply, err := readRecord(c.Conn, 2*maxIO)
		if err != nil {
			t.Fatalf("READ %d: %v", i, err)
		}
		if st := nfsStatus(t, reply); st != 0 {
			t.Fatalf("READ %d of inode %d: status %d", i, ino, st)
		}
		// After the RPC header and status: post_op_attr (present, fattr3
		// of 84 bytes), count, eof, the opaque's length, data, padding.
		res := reply[24+4+4+84:]
		count := binary.BigEndian.Uint32(res)
		eof := binary.BigEndian.Uint32(res[4:])
		dlen := binary.BigEndian.Uint32(res[8:])
		data := res[12:]
		size := sizes[ino]
		if uint64(count) != size || eof != 1 || dlen != count {
			t.Fatalf("READ %d of inode %d: count %d, eof %d, length %d; want %d, 1, %d", i, ino, count, eof, dlen, size, size)
		}
		pad := (4 - int(dlen)%4) % 4
		if len(data) != int(dlen)+pad {
			t.Fatalf("READ %d of inode %d: %d bytes after the length, want %d data and %d padding", i, ino, len(data), dlen, pad)
		}
		for j := range int64(dlen) {
			if data[j] != fileByte(ino, j) {
				t.Fatalf("READ %d of inode %d: byte %d is %#x, want %#x", i, ino, j, data[j], fileByte(ino, j))
			}
		}
		if !bytes.Equal(data[dlen:], make([]byte, pad)) {
			t.Fatalf("READ %d of inode %d: padding %x, want zeros", i, ino, data[dlen:])
		}
	}
}
