package nfsfront

import (
	"context"
	"fmt"
	"sync"

	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
)

// DefaultMaxLocks bounds the locks a MemLocks holds.
const DefaultMaxLocks = 1 << 16

// MemLocks is a LockTable in memory: the locks of one node, lost when it
// stops. It suits a single-node cluster and tests.
type MemLocks struct {
	max int

	mu    sync.Mutex
	files map[meta.Ino][]Lock
	n     int // locks held across files
}

var _ LockTable = (*MemLocks)(nil)

// NewMemLocks returns an empty table holding at most limit locks (ranges
// after merging); limit <= 0 means DefaultMaxLocks.
func NewMemLocks(limit int) *MemLocks {
	if limit <= 0 {
		limit = DefaultMaxLocks
	}
	return &MemLocks{max: limit, files: make(map[meta.Ino][]Lock)}
}

// Lock implements LockTable.
func (t *MemLocks) Lock(_ context.Context, file meta.Ino, l Lock) (*Lock, error) {
	if l.End < l.Start {
		return nil, fmt.Errorf("lock range %d-%d is empty", l.Start, l.End)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	held := t.files[file]
	next, conflict := ApplyLock(held, l)
	if conflict != nil {
		return conflict, nil
	}
	if t.n-len(held)+len(next) > t.max {
		return nil, fmt.Errorf("lock on inode %d: %d locks held: %w", file, t.n, ErrTooManyLocks)
	}
	t.set(file, held, next)
	return nil, nil
}

// Unlock implements LockTable.
func (t *MemLocks) Unlock(_ context.Context, file meta.Ino, l Lock) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	held := t.files[file]
	t.set(file, held, ApplyUnlock(held, l))
	return nil
}

// Test implements LockTable.
func (t *MemLocks) Test(_ context.Context, file meta.Ino, l Lock) (*Lock, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return FindConflict(t.files[file], l), nil
}

// ReleaseClient implements LockTable.
func (t *MemLocks) ReleaseClient(_ context.Context, c ClientID) error {
	if c == (ClientID{}) {
		return fmt.Errorf("release locks: no client given")
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for file, held := range t.files {
		var next []Lock
		for _, l := range held {
			if !c.Matches(l.Owner) {
				next = append(next, l)
			}
		}
		t.set(file, held, next)
	}
	return nil
}

// set replaces the locks of file, keeping the count. t.mu is held.
func (t *MemLocks) set(file meta.Ino, old, next []Lock) {
	t.n += len(next) - len(old)
	if len(next) == 0 {
		delete(t.files, file)
		return
	}
	t.files[file] = next
}

// locks returns a copy of the locks held on file, for tests.
func (t *MemLocks) locks(file meta.Ino) []Lock {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]Lock(nil), t.files[file]...)
}
