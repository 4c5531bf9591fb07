package nfsfront

import (
	"encoding/binary"
	"errors"
	"fmt"
)

var errShort = errors.New("xdr: truncated")

// xdrDecoder reads XDR items from a byte slice. The first error sticks;
// callers check err once after reading. Lengths are checked against the
// bytes present and a caller-given bound before anything is allocated.
type xdrDecoder struct {
	b   []byte
	off int
	err error
}

func (d *xdrDecoder) u32() uint32 {
	if d.err != nil {
		return 0
	}
	if len(d.b)-d.off < 4 {
		d.err = errShort
		return 0
	}
	v := binary.BigEndian.Uint32(d.b[d.off:])
	d.off += 4
	return v
}

func (d *xdrDecoder) u64() uint64 {
	hi := d.u32()
	lo := d.u32()
	return uint64(hi)<<32 | uint64(lo)
}

func (d *xdrDecoder) bool() bool { return d.u32() != 0 }

// opaque reads variable-length opaque data of at most max bytes. The
// result aliases the input.
func (d *xdrDecoder) opaque(max int) []byte {
	n := d.u32()
	if d.err != nil {
		return nil
	}
	if int64(n) > int64(max) {
		d.err = fmt.Errorf("xdr: opaque of %d bytes, limit %d", n, max)
		return nil
	}
	padded := (int(n) + 3) &^ 3
	if len(d.b)-d.off < padded {
		d.err = errShort
		return nil
	}
	v := d.b[d.off : d.off+int(n)]
	d.off += padded
	return v
}

// fixed reads n bytes of fixed-length opaque data.
func (d *xdrDecoder) fixed(n int) []byte {
	if d.err != nil {
		return nil
	}
	padded := (n + 3) &^ 3
	if len(d.b)-d.off < padded {
		d.err = errShort
		return nil
	}
	v := d.b[d.off : d.off+n]
	d.off += padded
	return v
}

// xdrEncoder appends XDR items to a buffer.
type xdrEncoder struct {
	b []byte
}

func (e *xdrEncoder) u32(v uint32) { e.b = binary.BigEndian.AppendUint32(e.b, v) }
func (e *xdrEncoder) u64(v uint64) { e.b = binary.BigEndian.AppendUint64(e.b, v) }

func (e *xdrEncoder) bool(v bool) {
	if v {
		e.u32(1)
	} else {
		e.u32(0)
	}
}

func (e *xdrEncoder) opaque(v []byte) {
	e.u32(uint32(len(v)))
	e.b = append(e.b, v...)
	for pad := (4 - len(v)%4) % 4; pad > 0; pad-- {
		e.b = append(e.b, 0)
	}
}

// str appends an XDR string.
func (e *xdrEncoder) str(s string) {
	e.u32(uint32(len(s)))
	e.b = append(e.b, s...)
	for pad := (4 - len(s)%4) % 4; pad > 0; pad-- {
		e.b = append(e.b, 0)
	}
}

// putU32 overwrites a big-endian uint32 at the start of b.
func putU32(b []byte, v uint32) { binary.BigEndian.PutUint32(b, v) }
