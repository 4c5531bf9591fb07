// Package chunkertest holds an in-memory fake of the namespace calls the
// chunker makes, for unit tests of the byte layer and the replicator that
// need no etcd. It imports no Wormhole implementation package.
package chunkertest

import (
	"cmp"
	"context"
	"slices"
	"sync"

	"github.com/wormhole-fs/wormhole/chunker/chunk"
	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
)

// Namespace is an in-memory chunk map, size and copies per inode,
// implementing chunker.Namespace, including the meta.Expect conflict
// check. It is safe for concurrent use.
type Namespace struct {
	mu        sync.Mutex
	files     map[meta.Ino]*file
	removed   map[meta.Ino]bool
	commits   int
	attrReads int
}

type file struct {
	refs   map[uint64]chunk.Ref
	size   uint64
	copies uint8
}

// attr returns ino's attributes as far as the fake keeps them.
func (f *file) attr(ino meta.Ino) meta.Attr {
	return meta.Attr{Ino: ino, Type: meta.TypeRegular, Size: f.size, Copies: f.copies}
}

// NewNamespace returns an empty namespace; every inode exists, empty.
func NewNamespace() *Namespace { return &Namespace{files: make(map[meta.Ino]*file)} }

func (n *Namespace) file(ino meta.Ino) *file {
	f := n.files[ino]
	if f == nil {
		f = &file{refs: make(map[uint64]chunk.Ref)}
		n.files[ino] = f
	}
	return f
}

// Size is ino's size.
func (n *Namespace) Size(ino meta.Ino) uint64 {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.file(ino).size
}

// Refs returns ino's chunk references in index order.
func (n *Namespace) Refs(ino meta.Ino) []chunk.Ref {
	out, _ := n.Chunks(context.Background(), ino, 0, ^uint64(0))
	return out
}

// Remove removes ino, as an unlink of its last name does, and returns its
// chunk references: from then on every call on ino fails with
// meta.ErrStale.
func (n *Namespace) Remove(ino meta.Ino) meta.Freed {
	n.mu.Lock()
	defer n.mu.Unlock()
	var freed meta.Freed
	for _, r := range n.file(ino).refs {
		freed = append(freed, r)
	}
	delete(n.files, ino)
	if n.removed == nil {
		n.removed = make(map[meta.Ino]bool)
	}
	n.removed[ino] = true
	return freed
}

// gone fails with meta.ErrStale if ino was removed.
func (n *Namespace) gone(ino meta.Ino) error {
	if n.removed[ino] {
		return meta.ErrStale
	}
	return nil
}

// SetRef replaces one chunk reference behind the chunker's back.
func (n *Namespace) SetRef(ino meta.Ino, r chunk.Ref) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.file(ino).refs[r.Index] = r
}

// SetCopies sets ino's redundancy (meta.Attr.Copies).
func (n *Namespace) SetCopies(ino meta.Ino, copies uint8) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.file(ino).copies = copies
}

// AttrReads counts GetAttr calls.
func (n *Namespace) AttrReads() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.attrReads
}

// GetAttr returns a regular file's attributes: the size and copies.
func (n *Namespace) GetAttr(_ context.Context, ino meta.Ino) (meta.Attr, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.attrReads++
	if err := n.gone(ino); err != nil {
		return meta.Attr{}, err
	}
	return n.file(ino).attr(ino), nil
}

// Commits counts CommitWrite calls.
func (n *Namespace) Commits() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.commits
}

// Chunks returns ino's references with first <= Index <= last, in order.
func (n *Namespace) Chunks(_ context.Context, ino meta.Ino, first, last uint64) ([]chunk.Ref, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if err := n.gone(ino); err != nil {
		return nil, err
	}
	var out []chunk.Ref
	for idx, r := range n.file(ino).refs {
		if idx >= first && idx <= last {
			out = append(out, r)
		}
	}
	slices.SortFunc(out, func(a, b chunk.Ref) int { return cmp.Compare(a.Index, b.Index) })
	return out, nil
}

// check fails with meta.ErrStale if ino was removed, and with
// meta.ErrConflict if an expected entry changed.
func (n *Namespace) check(ino meta.Ino, expect []meta.Expect) error {
	if err := n.gone(ino); err != nil {
		return err
	}
	for _, e := range expect {
		if n.file(ino).refs[e.Index].ID != e.ID {
			return meta.ErrConflict
		}
	}
	return nil
}

// CommitWrite records refs and raises the size, as meta.Store does.
func (n *Namespace) CommitWrite(_ context.Context, ino meta.Ino, refs []chunk.Ref, expect []meta.Expect, size uint64) (meta.Attr, meta.Freed, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if err := n.check(ino, expect); err != nil {
		return meta.Attr{}, nil, err
	}
	n.commits++
	f := n.file(ino)
	var freed meta.Freed
	for _, r := range refs {
		if old, ok := f.refs[r.Index]; ok {
			freed = append(freed, old)
		}
		f.refs[r.Index] = r
	}
	f.size = max(f.size, size)
	return f.attr(ino), freed, nil
}

// Truncate drops references past size and installs tail, as meta.Store
// does.
func (n *Namespace) Truncate(_ context.Context, ino meta.Ino, size, chunkSize uint64, tail *chunk.Ref, expect []meta.Expect) (meta.Attr, meta.Freed, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if err := n.check(ino, expect); err != nil {
		return meta.Attr{}, nil, err
	}
	f := n.file(ino)
	var freed meta.Freed
	for idx, r := range f.refs {
		if idx*chunkSize >= size {
			freed = append(freed, r)
			delete(f.refs, idx)
		}
	}
	if tail != nil {
		if old, ok := f.refs[tail.Index]; ok {
			freed = append(freed, old)
		}
		f.refs[tail.Index] = *tail
	}
	f.size = size
	return f.attr(ino), freed, nil
}
