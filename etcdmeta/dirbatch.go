package etcdmeta

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
)

// Changes to one directory share etcd transactions.
//
// Every create and unlink rewrites its directory's inode (mtime, ctime,
// and nlink for a subdirectory) and is conditional on it, so two of them
// in the same directory that commit at once conflict: one is refused,
// reads again and waits a backoff. Many clients filling or emptying one
// directory would then go no faster than one, or slower. Instead, while a
// create (or an unlink) in a directory is being committed, the creates
// (unlinks) that arrive for the same directory queue; when it ends, up to
// maxBatch of them are committed together in one transaction, which also
// shares one etcd log write among them, each with the outcome it would
// have had alone. One that finds its directory idle commits at once,
// alone, as before.
//
// This orders the changes of one process only: changes on other nodes
// still conflict, and are still resolved by retrying.

// maxBatch is the most changes one transaction commits. Each adds a
// compare and a few operations, well within etcd's default limit of 128
// operations per list.
const maxBatch = 32

// dirQueues queues requests of type R per directory: those waiting while
// a batch of the directory is being committed.
type dirQueues[R any] struct {
	mu   sync.Mutex
	dirs map[meta.Ino][]*waiter[R]
}

// waiter is one request in a dirQueues.
type waiter[R any] struct {
	req *R
	ctx context.Context
	err error // the failure of the batch it was committed in

	done chan struct{}     // closed once committed
	turn chan []*waiter[R] // a batch this request is to commit, handed over by the previous one
}

// do commits req in directory dir with commit, alone or with the requests
// that queued for dir while another batch was being committed, and
// returns commit's error for the batch it was in, or ctx's error if it
// was given up while it waited (then it was not committed). commit sets
// each request's own outcome.
func (q *dirQueues[R]) do(ctx context.Context, dir meta.Ino, req *R, commit func(context.Context, []*R) error) error {
	w := &waiter[R]{req: req, ctx: ctx}
	q.mu.Lock()
	waiting, busy := q.dirs[dir]
	if !busy {
		if q.dirs == nil {
			q.dirs = make(map[meta.Ino][]*waiter[R])
		}
		q.dirs[dir] = nil
		q.mu.Unlock()
		q.commit(dir, []*waiter[R]{w}, commit)
		return w.err
	}
	w.done, w.turn = make(chan struct{}), make(chan []*waiter[R], 1)
	q.dirs[dir] = append(waiting, w)
	q.mu.Unlock()

	select {
	case <-w.done:
		return w.err
	case batch := <-w.turn:
		q.commit(dir, batch, commit)
		return w.err
	case <-ctx.Done():
	}
	// Given up while waiting: leave the queue if still in it. Once taken
	// into a batch, the request is committed (or refused) with it.
	q.mu.Lock()
	if i := slices.Index(q.dirs[dir], w); i >= 0 {
		q.dirs[dir] = slices.Delete(q.dirs[dir], i, i+1)
		q.mu.Unlock()
		return ctx.Err()
	}
	q.mu.Unlock()
	select {
	case <-w.done:
	case batch := <-w.turn:
		q.commit(dir, batch, commit)
	}
	return w.err
}

// commit commits batch and finishes it.
func (q *dirQueues[R]) commit(dir meta.Ino, batch []*waiter[R], commit func(context.Context, []*R) error) {
	ctx, cancel := batchContext(batch)
	reqs := make([]*R, len(batch))
	for i, w := range batch {
		reqs[i] = w.req
	}
	err := commit(ctx, reqs)
	cancel()
	for _, w := range batch {
		w.err = err
	}
	q.finish(dir, batch)
}

// finish tells the requests of batch, whose outcomes are set, that they
// are done, and hands the requests queued for dir to the first of them,
// or marks dir idle.
func (q *dirQueues[R]) finish(dir meta.Ino, batch []*waiter[R]) {
	q.mu.Lock()
	waiting := q.dirs[dir]
	next := waiting[:min(len(waiting), maxBatch)]
	if len(waiting) == 0 {
		delete(q.dirs, dir)
	} else {
		q.dirs[dir] = slices.Clone(waiting[len(next):])
	}
	q.mu.Unlock()

	for _, w := range batch {
		if w.done != nil {
			close(w.done)
		}
	}
	if len(next) > 0 {
		next[0].turn <- next
	}
}

// queued returns how many requests wait for dir (for tests).
func (q *dirQueues[R]) queued(dir meta.Ino) int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.dirs[dir])
}

// busy reports whether a batch of dir is being committed (for tests).
func (q *dirQueues[R]) busy(dir meta.Ino) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	_, ok := q.dirs[dir]
	return ok
}

// batchContext returns the context a batch is committed under: not
// cancelled with any one request (the others still want theirs), and
// ending at the latest of their deadlines.
func batchContext[R any](batch []*waiter[R]) (context.Context, context.CancelFunc) {
	var latest time.Time
	for _, w := range batch {
		d, ok := w.ctx.Deadline()
		if !ok {
			return context.WithCancel(context.WithoutCancel(batch[0].ctx))
		}
		if d.After(latest) {
			latest = d
		}
	}
	return context.WithDeadline(context.WithoutCancel(batch[0].ctx), latest)
}
