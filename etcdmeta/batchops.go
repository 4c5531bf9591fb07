package etcdmeta

import (
	"context"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
)

// The transactions of batched creates and unlinks (dirbatch.go).

// createReq is one Create: its arguments, the inode allocated for it, and,
// once committed, its outcome.
type createReq struct {
	name string
	args meta.CreateArgs
	ino  meta.Ino
	gen  uint64

	out meta.Attr
	err error // this create's own failure (ErrExists, ...); nil if out is set
}

// createBatch creates the names of batch in dir in one transaction. A
// name that exists already is refused (ErrExists) or, for a non-exclusive
// create of a regular file, answered with the existing file, as are
// names created twice in the batch.
func (s *Store) createBatch(ctx context.Context, dir meta.Ino, batch []*createReq) error {
	return s.runWrite(ctx, batchOp("create", batch[0].name, len(batch), dir), func(t *tx) error {
		keys := []string{s.keys.ino(dir)}
		for _, r := range batch {
			r.out, r.err = meta.Attr{}, nil
			k := s.keys.dentry(dir, r.name)
			t.assumeAbsent(k)
			keys = append(keys, k)
		}
		if err := t.load(ctx, keys...); err != nil {
			return err
		}
		d, err := t.dirAttr(ctx, dir)
		if err != nil {
			return err
		}
		made := make(map[string]*createReq, len(batch))
		now := s.nowNs()
		for _, r := range batch {
			if first, ok := made[r.name]; ok {
				r.out, r.err = existing(r.args, first.args.Type, first.out)
				continue
			}
			e, exists, err := t.dentry(ctx, dir, r.name)
			if err != nil {
				return err
			}
			if exists {
				a, err := t.entryInode(ctx, e)
				if err != nil {
					return err
				}
				r.out, r.err = existing(r.args, e.Type, *a)
				continue
			}
			if r.args.Type == meta.TypeDir && d.Nlink >= maxNlink {
				r.err = meta.ErrTooManyLink
				continue
			}
			a := meta.Attr{
				Ino: r.ino, Type: r.args.Type, Mode: r.args.Mode, UID: r.args.UID, GID: r.args.GID,
				Nlink: 1, Atime: now, Mtime: now, Ctime: now, Gen: r.gen, Parent: dir,
				Target: r.args.Target, Copies: d.Copies,
			}
			switch r.args.Type {
			case meta.TypeDir:
				a.Nlink = 2
				d.Nlink++
			case meta.TypeSymlink:
				a.Size = uint64(len(r.args.Target))
			}
			t.create(a)
			t.then(clientv3.OpPut(s.keys.dentry(dir, r.name), string(encodeDentry(dentry{Ino: r.ino, Type: r.args.Type}))))
			r.out = a
			made[r.name] = r
		}
		if len(made) > 0 {
			d.Mtime, d.Ctime = now, now
			t.put(d)
		}
		return nil
	})
}

// existing is the outcome of creating a name that exists as a file of
// type typ with attributes a: a non-exclusive create of a regular file
// where a regular file is gets that file; anything else is ErrExists.
func existing(args meta.CreateArgs, typ meta.Type, a meta.Attr) (meta.Attr, error) {
	if args.Exclusive || args.Type != meta.TypeRegular || typ != meta.TypeRegular {
		return meta.Attr{}, meta.ErrExists
	}
	return a, nil
}

// unlinkReq is one Unlink and, once committed, its outcome.
type unlinkReq struct {
	name string

	freed meta.Freed
	err   error // this unlink's own failure (ErrNotFound, ErrIsDir)
}

// unlinkBatch removes the names of batch from dir in one transaction. A
// name given twice is removed once; the other unlink finds it gone
// (ErrNotFound). Names that are hard links of one file each drop a link,
// and the file goes with the last.
func (s *Store) unlinkBatch(ctx context.Context, dir meta.Ino, batch []*unlinkReq) error {
	return s.runWrite(ctx, batchOp("unlink", batch[0].name, len(batch), dir), func(t *tx) error {
		keys := []string{s.keys.ino(dir)}
		for _, r := range batch {
			r.freed, r.err = nil, nil
			keys = append(keys, s.keys.dentry(dir, r.name))
		}
		if err := t.load(ctx, keys...); err != nil {
			return err
		}
		d, err := t.dirAttr(ctx, dir)
		if err != nil {
			return err
		}
		removed := make(map[string]bool, len(batch))
		now := s.nowNs()
		for _, r := range batch {
			if removed[r.name] {
				r.err = meta.ErrNotFound
				continue
			}
			e, ok, err := t.dentry(ctx, dir, r.name)
			switch {
			case err != nil:
				return err
			case !ok:
				r.err = meta.ErrNotFound
				continue
			case e.Type == meta.TypeDir:
				r.err = meta.ErrIsDir
				continue
			}
			a, err := t.entryInode(ctx, e)
			if err != nil {
				return err
			}
			if r.freed, err = t.dropLink(ctx, a, now); err != nil {
				return err
			}
			t.then(clientv3.OpDelete(s.keys.dentry(dir, r.name)))
			removed[r.name] = true
		}
		if len(removed) > 0 {
			d.Mtime, d.Ctime = now, now
			t.put(d)
		}
		return nil
	})
}

// batchOp names a batched operation in errors: the operation of its one
// name, or of how many there are.
func batchOp(verb, first string, n int, dir meta.Ino) string {
	if n == 1 {
		return fmt.Sprintf("%s %q in %d", verb, first, dir)
	}
	return fmt.Sprintf("%s %d names in %d", verb, n, dir)
}
