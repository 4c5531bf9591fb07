package bench

import (
	"bytes"
	"errors"
	"fmt"
)

// ErrMismatch is returned (wrapped) when bytes read back differ from the
// content written.
var ErrMismatch = errors.New("content mismatch")

// patternBlock is the unit of generated content: each aligned block of a
// file has its own seed, so any block can be generated without the others.
const patternBlock = 4 << 10

// pattern is the deterministic content of one file: the byte at offset
// off depends only on the key and off.
type pattern uint64

// patternKey derives a file's pattern from the run seed and the file's
// identity (workload, stream, index) and generation (rewrites change it).
func patternKey(seed uint64, parts ...uint64) pattern {
	h := seed ^ 0x6a09e667f3bcc909
	for _, p := range parts {
		h = splitmix(h ^ splitmix(p+0x9e3779b97f4a7c15))
	}
	return pattern(h)
}

// splitmix is the SplitMix64 finaliser: a fast, well-mixed 64-bit hash.
func splitmix(z uint64) uint64 {
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

// fill writes the pattern's content for [off, off+len(p)) into p.
func (k pattern) fill(p []byte, off int64) {
	var scratch [patternBlock]byte
	for len(p) > 0 {
		blk := off / patternBlock
		in := int(off % patternBlock)
		n := min(patternBlock-in, len(p))
		if in == 0 && n == patternBlock {
			k.block(p[:patternBlock], uint64(blk))
		} else {
			k.block(scratch[:], uint64(blk))
			copy(p[:n], scratch[in:in+n])
		}
		p = p[n:]
		off += int64(n)
	}
}

// block generates one whole block (len(b) == patternBlock).
func (k pattern) block(b []byte, idx uint64) {
	s := splitmix(uint64(k) ^ (idx * 0xd1b54a32d192ed03))
	_ = b[patternBlock-1]
	for i := 0; i < patternBlock; i += 8 {
		s += 0x9e3779b97f4a7c15
		v := splitmix(s)
		b[i] = byte(v)
		b[i+1] = byte(v >> 8)
		b[i+2] = byte(v >> 16)
		b[i+3] = byte(v >> 24)
		b[i+4] = byte(v >> 32)
		b[i+5] = byte(v >> 40)
		b[i+6] = byte(v >> 48)
		b[i+7] = byte(v >> 56)
	}
}

// verify checks that got is the pattern's content at off. It returns an
// error wrapping ErrMismatch that names the first differing offset.
func (k pattern) verify(got []byte, off int64) error {
	var want [64 << 10]byte
	for done := 0; done < len(got); {
		n := min(len(want), len(got)-done)
		k.fill(want[:n], off+int64(done))
		if !bytes.Equal(got[done:done+n], want[:n]) {
			for i := range n {
				if got[done+i] != want[i] {
					at := off + int64(done+i)
					return fmt.Errorf("%w at offset %d: got %#02x, want %#02x", ErrMismatch, at, got[done+i], want[i])
				}
			}
		}
		done += n
	}
	return nil
}
