package nfsfront

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"hash"
	"sync"

	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
)

// File handle wire format (34 bytes, big endian):
//
//	version(1) | export(1) | inode(8) | generation(8) | MAC(16)
//
// The MAC is HMAC-SHA256 over the first 18 bytes, keyed by the cluster
// secret and truncated to 16 bytes. Any node holding the secret decodes any
// handle without state, so handles survive restarts and moves between nodes;
// rename keeps them valid (they name the inode, not a path); a removed inode
// fails the generation check (ESTALE); a forged or altered handle fails the
// MAC.
const (
	handleVersion = 1
	handleBody    = 1 + 1 + 8 + 8
	handleMACLen  = 16
	handleLen     = handleBody + handleMACLen
)

// Handle is the decoded form of a file handle.
type Handle struct {
	Export uint8
	Ino    meta.Ino
	Gen    uint64
}

// handleCodec encodes and verifies handles with one secret key.
type handleCodec struct {
	key []byte
	// macs holds HMAC-SHA256 states keyed with key, for reuse: every
	// call and reply carries handles, and a new one costs more than the
	// MAC.
	macs sync.Pool
}

func newHandleCodec(secret []byte) (*handleCodec, error) {
	if len(secret) < 16 {
		return nil, fmt.Errorf("handle secret: %d bytes, need at least 16", len(secret))
	}
	c := &handleCodec{key: append([]byte(nil), secret...)}
	c.macs.New = func() any { return hmac.New(sha256.New, c.key) }
	return c, nil
}

func (c *handleCodec) mac(body []byte) []byte {
	m := c.macs.Get().(hash.Hash)
	m.Reset()
	m.Write(body)
	sum := m.Sum(make([]byte, 0, sha256.Size))
	c.macs.Put(m)
	return sum[:handleMACLen]
}

// Encode returns the wire form of h.
func (c *handleCodec) Encode(h Handle) []byte {
	b := make([]byte, handleBody, handleLen)
	b[0] = handleVersion
	b[1] = h.Export
	binary.BigEndian.PutUint64(b[2:], uint64(h.Ino))
	binary.BigEndian.PutUint64(b[10:], h.Gen)
	return append(b, c.mac(b)...)
}

// Decode parses and authenticates a wire handle. Every failure wraps
// errBadHandle.
func (c *handleCodec) Decode(b []byte) (Handle, error) {
	if len(b) != handleLen {
		return Handle{}, fmt.Errorf("handle of %d bytes, want %d: %w", len(b), handleLen, errBadHandle)
	}
	if b[0] != handleVersion {
		return Handle{}, fmt.Errorf("handle version %d: %w", b[0], errBadHandle)
	}
	if !hmac.Equal(b[handleBody:], c.mac(b[:handleBody])) {
		return Handle{}, fmt.Errorf("handle MAC mismatch: %w", errBadHandle)
	}
	h := Handle{
		Export: b[1],
		Ino:    meta.Ino(binary.BigEndian.Uint64(b[2:])),
		Gen:    binary.BigEndian.Uint64(b[10:]),
	}
	if h.Ino == 0 {
		return Handle{}, fmt.Errorf("handle names inode 0: %w", errBadHandle)
	}
	return h, nil
}
