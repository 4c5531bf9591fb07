package etcdmeta

import (
	"context"
	"fmt"
	"sync"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
)

// allocBatch is how many inode numbers one reservation takes.
const allocBatch = 1024

// firstFreeIno is the first number handed out after the root.
const firstFreeIno = meta.RootIno + 1

// allocator hands out inode numbers from batches reserved in etcd.
//
// The next-ino key holds the first number not yet reserved by any node. A
// reservation advances it by allocBatch with a compare-and-swap on its mod
// revision, so two nodes (or two Stores) never get overlapping batches.
// Numbers of a batch that a process did not use before exiting are lost,
// never reused.
//
// Generation numbers: every inode of a batch gets as generation the etcd
// revision at which the batch was reserved. It is nonzero, and since inode
// numbers are never reused it only needs to differ from the generation of
// any earlier life of the same number, which a fresh revision does even if
// the counter were ever rolled back (say, restored from an old backup).
type allocator struct {
	cli *clientv3.Client
	key string

	mu   sync.Mutex
	next meta.Ino // next number to hand out
	end  meta.Ino // end of the current batch (exclusive)
	gen  uint64   // generation of the current batch
}

// alloc returns a fresh inode number and its generation.
func (a *allocator) alloc(ctx context.Context) (meta.Ino, uint64, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.next == a.end {
		if err := a.reserve(ctx); err != nil {
			return 0, 0, err
		}
	}
	ino := a.next
	a.next++
	return ino, a.gen, nil
}

// reserve takes the next batch; a.mu is held.
func (a *allocator) reserve(ctx context.Context) error {
	for attempt := 0; attempt < maxAttempts; attempt++ {
		resp, err := a.cli.Get(ctx, a.key)
		if err != nil {
			return etcdErr("reserve inode numbers", err)
		}
		start, rev := uint64(firstFreeIno), int64(0)
		if len(resp.Kvs) == 1 {
			if start, err = decodeCounter(resp.Kvs[0].Value); err != nil {
				return fmt.Errorf("reserve inode numbers: %w", err)
			}
			rev = resp.Kvs[0].ModRevision
		}
		end := start + allocBatch
		if end < start {
			return fmt.Errorf("reserve inode numbers: counter exhausted: %w", meta.ErrNoSpace)
		}
		tr, err := a.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(a.key), "=", rev)).
			Then(clientv3.OpPut(a.key, string(encodeCounter(end)))).
			Commit()
		if err != nil {
			return etcdErr("reserve inode numbers", err)
		}
		if tr.Succeeded {
			a.next, a.end, a.gen = meta.Ino(start), meta.Ino(end), uint64(tr.Header.Revision)
			return nil
		}
		if err := backoff(ctx, attempt); err != nil {
			return fmt.Errorf("reserve inode numbers: %w", err)
		}
	}
	return fmt.Errorf("reserve inode numbers: %w", errContention)
}
