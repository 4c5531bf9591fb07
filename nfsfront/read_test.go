package nfsfront

import (
	"bytes"
	"context"
	"encoding/binary"
	"testing"
	"time"

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
	sizes := map[meta.Ino]uint64{7: maxIO, 8: 100_001}
	s, c := serveAndDial(t, twoFilesNS{sizes: sizes}, patternData{})

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
