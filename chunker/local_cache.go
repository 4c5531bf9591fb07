package chunker

import (
	"container/list"
	"os"
	"sync"

	"github.com/wormhole-fs/wormhole/chunker/chunk"
)

// The open-chunk cache of a LocalStore.
//
// A range read of a chunk that is not cached opens its file, reads and
// verifies the header and block-sum table (loadHeader), and then reads the
// blocks it wants. The cache keeps such files open, with their verified
// headers, so that the next range read of the chunk costs one pread of the
// blocks it overlaps and their block sums: no open, no stat, no header
// read or header sum. Every block read is still verified against the block
// sum, so a bit flipped on disk after the file was cached is still caught
// (chunk.ErrCorrupt, no bytes); damage to the header or the table of a
// cached file goes unnoticed by range reads until the file leaves the
// cache (Get and Verify, which the scrubber uses, always read the file
// anew). A Put adds the file it has just written, with the header it
// wrote: data is often read soon after it is written, and its first range
// read then costs no open or header read either.
//
// Chunks are immutable by ID (a Put of an existing ID writes the same
// bytes), so an entry stays valid until its file is replaced, removed or
// moved aside: Put, Delete and Quarantine drop the entry after changing
// the directory, and a read that finds the file corrupt drops it too. A
// read that opened the file before such a change, and was still loading
// it, does not add it: a placeholder in the map marks the load, and the
// drop removes it.
//
// The cache is bounded by a number of files (file descriptors) and by the
// bytes of the headers and tables it holds; past either, the least
// recently used files are closed. A file in use by a read when it is
// evicted or dropped is closed when that read ends.

// Default limits of the open-chunk cache, used by OpenLocal until
// SetOpenCache changes them.
const (
	DefaultOpenFiles = 1024
	DefaultOpenBytes = 16 << 20
)

// openEntryOverhead is what an entry costs beyond its header and table,
// counted against the byte limit: the structures and the descriptor.
const openEntryOverhead = 256

// openChunk is one entry of the cache: a chunk file open for reading and
// its verified version 2 or 3 header. While loading is true the entry is a
// placeholder (no file yet), in the map but not in the LRU list.
type openChunk struct {
	id      chunk.ID
	f       *os.File
	h       header
	cost    int64
	elem    *list.Element // in openCache.lru, nil while loading or once removed
	refs    int           // reads using f
	loading bool
	removed bool // out of the map: f is closed when refs reaches 0
}

// openCache is the bounded LRU table of open chunk files. Its zero value
// is a disabled cache.
type openCache struct {
	mu       sync.Mutex
	maxFiles int
	maxBytes int64
	bytes    int64
	entries  map[chunk.ID]*openChunk
	lru      list.List // of *openChunk, most recently used first
	closed   bool
	hits     uint64
	misses   uint64
}

// setLimits changes the bounds and closes what no longer fits; 0 files
// or bytes disables the cache.
func (c *openCache) setLimits(files int, bytes int64) {
	c.mu.Lock()
	c.maxFiles, c.maxBytes = max(files, 0), max(bytes, 0)
	if c.entries == nil {
		c.entries = make(map[chunk.ID]*openChunk)
	}
	toClose := c.evictLocked(nil)
	c.mu.Unlock()
	closeAll(toClose)
}

// acquire returns the cached entry of id, referenced (the caller calls
// release), or nil and a placeholder for the caller to fill with add, or
// nil and nil when the file is not to be cached (cache off, or another
// read is loading it).
func (c *openCache) acquire(id chunk.ID) (hit, slot *openChunk) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.maxFiles == 0 || c.maxBytes == 0 {
		return nil, nil
	}
	if e := c.entries[id]; e != nil {
		if e.loading {
			c.misses++
			return nil, nil
		}
		c.hits++
		e.refs++
		c.lru.MoveToFront(e.elem)
		return e, nil
	}
	c.misses++
	e := &openChunk{id: id, loading: true}
	c.entries[id] = e
	return nil, e
}

// reserve returns a placeholder for chunk id, to be filled with add or
// given up with abandon, or nil if the cache is off or already has (or is
// loading) the chunk. Unlike acquire it counts no miss: it serves a chunk
// being written, not a read.
func (c *openCache) reserve(id chunk.ID) *openChunk {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.maxFiles == 0 || c.maxBytes == 0 || c.entries[id] != nil {
		return nil
	}
	e := &openChunk{id: id, loading: true}
	c.entries[id] = e
	return e
}

// add fills the placeholder slot with the open file f of verified header
// h and returns true and the entry, referenced, now owning f; or false if
// the chunk was dropped while it was loading, or does not fit, and the
// caller keeps f.
func (c *openCache) add(slot *openChunk, f *os.File, h header) bool {
	cost := int64(len(h.table)) + openEntryOverhead
	c.mu.Lock()
	if c.entries[slot.id] != slot || c.closed || cost > c.maxBytes {
		if c.entries[slot.id] == slot {
			delete(c.entries, slot.id)
		}
		c.mu.Unlock()
		return false
	}
	slot.f, slot.h, slot.cost, slot.loading, slot.refs = f, h, cost, false, 1
	slot.elem = c.lru.PushFront(slot)
	c.bytes += cost
	toClose := c.evictLocked(slot)
	c.mu.Unlock()
	closeAll(toClose)
	return true
}

// abandon removes the placeholder slot of a load that failed.
func (c *openCache) abandon(slot *openChunk) {
	c.mu.Lock()
	if c.entries[slot.id] == slot {
		delete(c.entries, slot.id)
	}
	c.mu.Unlock()
}

// release ends a read's use of e.
func (c *openCache) release(e *openChunk) {
	c.mu.Lock()
	e.refs--
	closeIt := e.removed && e.refs == 0
	c.mu.Unlock()
	if closeIt {
		_ = e.f.Close() // read-only: nothing to lose
	}
}

// drop removes the entry of id, placeholder or open file, so that the next
// read opens the file anew.
func (c *openCache) drop(id chunk.ID) {
	c.mu.Lock()
	e := c.entries[id]
	var toClose []*os.File
	if e != nil {
		toClose = c.removeLocked(e, toClose)
	}
	c.mu.Unlock()
	closeAll(toClose)
}

// close closes every cached file and disables the cache; files in use are
// closed when their reads end.
func (c *openCache) close() {
	c.mu.Lock()
	c.closed = true
	var toClose []*os.File
	for _, e := range c.entries {
		toClose = c.removeLocked(e, toClose)
	}
	c.mu.Unlock()
	closeAll(toClose)
}

// stats returns the cache's hits and misses so far and the files open.
func (c *openCache) stats() (hits, misses uint64, files int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.hits, c.misses, c.lru.Len()
}

// evictLocked removes least recently used entries, but keep, until the
// cache is within its bounds, and returns the files to close.
func (c *openCache) evictLocked(keep *openChunk) []*os.File {
	var toClose []*os.File
	for e := c.lru.Back(); e != nil && (c.lru.Len() > c.maxFiles || c.bytes > c.maxBytes); {
		prev := e.Prev()
		if oc := e.Value.(*openChunk); oc != keep {
			toClose = c.removeLocked(oc, toClose)
		}
		e = prev
	}
	return toClose
}

// removeLocked takes e out of the map and the LRU list and appends its
// file to toClose when no read uses it (else the last release closes it).
func (c *openCache) removeLocked(e *openChunk, toClose []*os.File) []*os.File {
	if c.entries[e.id] == e {
		delete(c.entries, e.id)
	}
	if e.elem != nil {
		c.lru.Remove(e.elem)
		e.elem = nil
		c.bytes -= e.cost
	}
	if e.removed || e.loading {
		return toClose
	}
	e.removed = true
	if e.refs == 0 {
		toClose = append(toClose, e.f)
	}
	return toClose
}

// closeAll closes read-only files.
func closeAll(fs []*os.File) {
	for _, f := range fs {
		_ = f.Close() // read-only: nothing to lose
	}
}
