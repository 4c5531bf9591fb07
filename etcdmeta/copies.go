package etcdmeta

import (
	"context"
	"errors"
	"fmt"

	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
)

// setCopiesBatch is how many directory entries SetCopies lists and changes
// per transaction; like getAttrsBatch it stays under an external etcd's
// smallest likely max-txn-ops (128).
const setCopiesBatch = getAttrsBatch

// SetCopies sets the redundancy of ino (meta.Attr.Copies; 0 gives it back
// the cluster default) and, when recursive is true and ino is a directory,
// of every inode below it. It returns how many inodes it changed; inodes
// that already had copies are not written and not counted. copies above
// meta.MaxCopies is meta.ErrInvalid, a missing ino meta.ErrNotFound.
//
// A recursive change is not one transaction. ino is changed first, then
// each directory below it is listed page by page and the entries of a page
// are changed in one optimistic transaction (or, if that one keeps losing
// to other writers, one transaction per inode). So an inode created below
// a directory already changed inherits the new value, an inode removed
// meanwhile is skipped, and a subtree renamed into or out of the tree
// while SetCopies runs may or may not be changed. When ctx ends, SetCopies
// returns its error with the count so far; running it again completes the
// change.
//
// Ctime is left alone: Copies is not a POSIX attribute, and touching every
// file of a large tree would make backup tools copy all of it again.
// Chunks already stored keep the copies they were written with; writes
// use the new value from then on.
func (s *Store) SetCopies(ctx context.Context, ino meta.Ino, copies uint8, recursive bool) (changed int, err error) {
	op := fmt.Sprintf("set copies of %d to %d", ino, copies)
	if copies > meta.MaxCopies {
		return 0, fmt.Errorf("%s: at most %d: %w", op, meta.MaxCopies, meta.ErrInvalid)
	}
	var isDir bool
	err = s.runWrite(ctx, op, func(t *tx) error {
		changed = 0
		a, ok, err := t.inode(ctx, ino)
		if err != nil {
			return err
		}
		if !ok {
			return meta.ErrNotFound
		}
		isDir = a.Type == meta.TypeDir
		if a.Copies != copies {
			a.Copies = copies
			t.put(a)
			changed = 1
		}
		return nil
	})
	if err != nil || !recursive || !isDir {
		return changed, err
	}

	// Depth first, so the stack holds the directories of one path and
	// their unvisited siblings, not a whole level of the tree.
	dirs := []meta.Ino{ino}
	for len(dirs) > 0 {
		dir := dirs[len(dirs)-1]
		dirs = dirs[:len(dirs)-1]
		for after := uint64(0); ; {
			ents, err := s.ReadDir(ctx, dir, after, setCopiesBatch)
			if errors.Is(err, meta.ErrNotFound) || errors.Is(err, meta.ErrNotDir) {
				break // removed meanwhile
			}
			if err != nil {
				return changed, fmt.Errorf("%s: %w", op, err)
			}
			n, err := s.setCopiesOf(ctx, op, ents, copies)
			changed += n
			if err != nil {
				return changed, err
			}
			// A subdirectory is listed only after its own inode was
			// changed (above), so what is created in it from then on
			// inherits the new value.
			for _, e := range ents {
				if e.Type == meta.TypeDir {
					dirs = append(dirs, e.Ino)
				}
			}
			if len(ents) < setCopiesBatch {
				break
			}
			after = ents[len(ents)-1].Cookie
		}
	}
	return changed, nil
}

// setCopiesOf sets Copies on the inodes of ents, skipping those that are
// gone or already have it, and returns how many it changed. The batch is
// one transaction; if it keeps losing to concurrent writers (a file being
// written rewrites its inode at every commit) each inode gets its own.
func (s *Store) setCopiesOf(ctx context.Context, op string, ents []meta.Entry, copies uint8) (int, error) {
	attrs, err := s.GetAttrs(ctx, entryInos(ents))
	if err != nil {
		return 0, fmt.Errorf("%s: %w", op, err)
	}
	var todo []meta.Ino
	for _, a := range attrs {
		if a.Ino != 0 && a.Copies != copies {
			todo = append(todo, a.Ino)
		}
	}
	if len(todo) == 0 {
		return 0, nil
	}
	n, err := s.setCopiesTx(ctx, op, todo, copies)
	if !errors.Is(err, errContention) || len(todo) == 1 {
		return n, err
	}
	n = 0
	for _, ino := range todo {
		m, err := s.setCopiesTx(ctx, op, []meta.Ino{ino}, copies)
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// setCopiesTx sets Copies on inos in one transaction; missing inodes are
// skipped.
func (s *Store) setCopiesTx(ctx context.Context, op string, inos []meta.Ino, copies uint8) (int, error) {
	n := 0
	err := s.runWrite(ctx, op, func(t *tx) error {
		n = 0
		if err := t.loadInodes(ctx, inos...); err != nil {
			return err
		}
		for _, ino := range inos {
			a, ok, err := t.inode(ctx, ino)
			if err != nil {
				return err
			}
			if ok && a.Copies != copies {
				a.Copies = copies
				t.put(a)
				n++
			}
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	return n, nil
}

func entryInos(ents []meta.Entry) []meta.Ino {
	inos := make([]meta.Ino, len(ents))
	for i, e := range ents {
		inos[i] = e.Ino
	}
	return inos
}
