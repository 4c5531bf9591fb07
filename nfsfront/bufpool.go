package nfsfront

import "sync"

// replyBufSize is the capacity of the buffers a bufPool holds: a READ reply
// of maxIO bytes with everything before and after its data (RPC header,
// status, attributes, count, eof, the opaque's length and padding).
const replyBufSize = maxIO + 512

// bigReadReply is the least data a READ must ask for to take a pooled
// buffer: smaller replies are cheap to allocate, and pooling them would
// pin replyBufSize bytes each.
const bigReadReply = 64 << 10

// bufPool keeps the buffers of large READ replies between calls, so a
// stream of 1 MiB READs reuses a few buffers instead of allocating (and
// zeroing) a new megabyte per call and leaving it to the garbage
// collector. The pool holds nothing a collection cycle does not need:
// sync.Pool lets it go.
type bufPool struct {
	p sync.Pool // of *[]byte with capacity replyBufSize
}

// get returns an empty buffer of capacity replyBufSize. Its bytes are
// whatever a previous reply left: the caller overwrites what it uses.
func (b *bufPool) get() []byte {
	if bp, ok := b.p.Get().(*[]byte); ok {
		return (*bp)[:0]
	}
	return make([]byte, 0, replyBufSize)
}

// put returns buf to the pool once nothing refers to it any more (the
// reply was written). Buffers not made by get are dropped.
func (b *bufPool) put(buf []byte) {
	if cap(buf) != replyBufSize {
		return
	}
	buf = buf[:0]
	b.p.Put(&buf)
}
