package appliance

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/wormhole-fs/wormhole/etcdmeta"
	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
	"github.com/wormhole-fs/wormhole/nfsfront"
)

// etcdLocks is the NFS front's lock table kept in etcd, so that every
// node of a cluster grants and refuses the same locks: each file's locks
// are one record, changed by compare-and-swap with the POSIX rules of
// nfsfront.
type etcdLocks struct{ ns *etcdmeta.Store }

var _ nfsfront.LockTable = etcdLocks{}

func decodeLocks(rec []byte) ([]nfsfront.Lock, error) {
	if len(rec) == 0 {
		return nil, nil
	}
	var held []nfsfront.Lock
	if err := json.Unmarshal(rec, &held); err != nil {
		return nil, fmt.Errorf("lock record: %w", err)
	}
	return held, nil
}

func encodeLocks(held []nfsfront.Lock) ([]byte, error) {
	if len(held) == 0 {
		return nil, nil
	}
	return json.Marshal(held)
}

// Lock implements nfsfront.LockTable.
func (t etcdLocks) Lock(ctx context.Context, file meta.Ino, l nfsfront.Lock) (*nfsfront.Lock, error) {
	var conflict *nfsfront.Lock
	err := t.ns.UpdateLockRecord(ctx, file, func(old []byte) ([]byte, error) {
		held, err := decodeLocks(old)
		if err != nil {
			return nil, err
		}
		var next []nfsfront.Lock
		if next, conflict = nfsfront.ApplyLock(held, l); conflict != nil {
			return old, nil // unchanged
		}
		return encodeLocks(next)
	})
	return conflict, err
}

// Unlock implements nfsfront.LockTable.
func (t etcdLocks) Unlock(ctx context.Context, file meta.Ino, l nfsfront.Lock) error {
	return t.ns.UpdateLockRecord(ctx, file, func(old []byte) ([]byte, error) {
		held, err := decodeLocks(old)
		if err != nil {
			return nil, err
		}
		return encodeLocks(nfsfront.ApplyUnlock(held, l))
	})
}

// Test implements nfsfront.LockTable.
func (t etcdLocks) Test(ctx context.Context, file meta.Ino, l nfsfront.Lock) (*nfsfront.Lock, error) {
	rec, err := t.ns.LockRecord(ctx, file)
	if err != nil {
		return nil, err
	}
	held, err := decodeLocks(rec)
	if err != nil {
		return nil, err
	}
	return nfsfront.FindConflict(held, l), nil
}

// ReleaseClient implements nfsfront.LockTable.
func (t etcdLocks) ReleaseClient(ctx context.Context, c nfsfront.ClientID) error {
	files, err := t.ns.LockedFiles(ctx)
	if err != nil {
		return err
	}
	for _, f := range files {
		err := t.ns.UpdateLockRecord(ctx, f, func(old []byte) ([]byte, error) {
			held, err := decodeLocks(old)
			if err != nil {
				return nil, err
			}
			kept := held[:0:0]
			for _, l := range held {
				if !c.Matches(l.Owner) {
					kept = append(kept, l)
				}
			}
			return encodeLocks(kept)
		})
		if err != nil {
			return err
		}
	}
	return nil
}
