package etcdmeta

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
)

// Creates in one directory share etcd transactions.
//
// Every create rewrites its directory's inode (mtime, ctime, and nlink for
// a subdirectory) and is conditional on it, so two creates in the same
// directory that commit at once conflict: one of them is refused, reads
// again and waits a backoff. Many clients filling one directory would
// then go no faster than one, or slower. Instead, while a create in a
// directory is being committed, the creates that arrive for the same
// directory queue; when it ends, up to maxCreateBatch of them are
// committed together in one transaction, which also shares one etcd log
// write among them. A create that finds its directory idle commits at
// once, alone, as before.
//
// This orders the creates of one process only: creates on other nodes
// still conflict, and are still resolved by retrying.

// maxCreateBatch is the most creates one transaction commits. Each adds a
// compare and two puts, well within etcd's default limit of 128
// operations per list.
const maxCreateBatch = 32

// createReq is one Create: its arguments, the inode allocated for it, and,
// once its batch is committed, its outcome.
type createReq struct {
	ctx  context.Context
	name string
	args meta.CreateArgs
	ino  meta.Ino
	gen  uint64

	out meta.Attr
	err error // this create's own failure (ErrExists, ...); nil if out is set
	// runErr is the failure of the whole batch (etcd, the directory).
	runErr error

	done chan struct{}     // closed when the outcome is set
	turn chan []*createReq // a batch this request is to commit, handed over by the previous one
}

// createQueues holds, per directory with a create being committed, the
// creates waiting for it to end.
type createQueues struct {
	mu   sync.Mutex
	dirs map[meta.Ino][]*createReq
}

// create commits r in directory dir, with other creates waiting there, and
// returns when r's outcome is set.
func (s *Store) create(dir meta.Ino, r *createReq) {
	q := &s.creates
	q.mu.Lock()
	waiting, busy := q.dirs[dir]
	if !busy {
		if q.dirs == nil {
			q.dirs = make(map[meta.Ino][]*createReq)
		}
		q.dirs[dir] = nil
		q.mu.Unlock()
		s.commitCreates(dir, []*createReq{r})
		return
	}
	r.done, r.turn = make(chan struct{}), make(chan []*createReq, 1)
	q.dirs[dir] = append(waiting, r)
	q.mu.Unlock()

	select {
	case <-r.done:
		return
	case batch := <-r.turn:
		s.commitCreates(dir, batch)
		return
	case <-r.ctx.Done():
	}
	// Given up while waiting: leave the queue if still in it. Once taken
	// into a batch, the create is committed (or refused) with it.
	q.mu.Lock()
	if i := slices.Index(q.dirs[dir], r); i >= 0 {
		q.dirs[dir] = slices.Delete(q.dirs[dir], i, i+1)
		q.mu.Unlock()
		r.runErr = fmt.Errorf("create %q in %d: %w", r.name, dir, r.ctx.Err())
		return
	}
	q.mu.Unlock()
	select {
	case <-r.done:
	case batch := <-r.turn:
		s.commitCreates(dir, batch)
	}
}

// commitCreates commits batch, sets each request's outcome, and hands the
// creates that queued meanwhile to the first of them, or marks dir idle.
func (s *Store) commitCreates(dir meta.Ino, batch []*createReq) {
	ctx, cancel := batchContext(batch)
	s.createBatch(ctx, dir, batch)
	cancel()
	s.finishCreates(dir, batch)
}

// finishCreates tells the requests of batch, whose outcomes are set, that
// they are done, and hands the creates queued for dir to the first of
// them, or marks dir idle.
func (s *Store) finishCreates(dir meta.Ino, batch []*createReq) {
	q := &s.creates
	q.mu.Lock()
	waiting := q.dirs[dir]
	next := waiting[:min(len(waiting), maxCreateBatch)]
	if len(waiting) == 0 {
		delete(q.dirs, dir)
	} else {
		q.dirs[dir] = slices.Clone(waiting[len(next):])
	}
	q.mu.Unlock()

	for _, r := range batch {
		if r.done != nil {
			close(r.done)
		}
	}
	if len(next) > 0 {
		next[0].turn <- next
	}
}

// batchContext returns the context a batch is committed under: not
// cancelled with any one request (the others still want their creates),
// and ending at the latest of their deadlines.
func batchContext(batch []*createReq) (context.Context, context.CancelFunc) {
	var latest time.Time
	for _, r := range batch {
		d, ok := r.ctx.Deadline()
		if !ok {
			return context.WithCancel(context.WithoutCancel(batch[0].ctx))
		}
		if d.After(latest) {
			latest = d
		}
	}
	return context.WithDeadline(context.WithoutCancel(batch[0].ctx), latest)
}

// createBatch creates the names of batch in dir in one transaction. A
// name that exists already is refused (ErrExists) or, for a non-exclusive
// create of a regular file, answered with the existing file, as are
// names created twice in the batch.
func (s *Store) createBatch(ctx context.Context, dir meta.Ino, batch []*createReq) {
	op := fmt.Sprintf("create %q in %d", batch[0].name, dir)
	if len(batch) > 1 {
		op = fmt.Sprintf("create %d names in %d", len(batch), dir)
	}
	err := s.run(ctx, op, func(t *tx) error {
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
				a, ok, err := t.inode(ctx, e.Ino)
				switch {
				case err != nil:
					return err
				case !ok:
					return fmt.Errorf("entry %q points to missing inode %d: %w", r.name, e.Ino, errMalformed)
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
	for _, r := range batch {
		r.runErr = err
		if err != nil && len(batch) > 1 {
			r.runErr = fmt.Errorf("create %q in %d: %w", r.name, dir, err)
		}
	}
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
