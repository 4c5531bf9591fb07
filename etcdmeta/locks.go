package etcdmeta

import (
	"context"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
)

// Byte-range locks (NLM) are kept per file under lock/<ino>, as one opaque
// record the NFS front encodes: every node sees the same locks, and a
// change is one compare-and-swap on that record.
func (k keys) lockRoot() string         { return k.prefix + "lock/" }
func (k keys) lock(ino meta.Ino) string { return k.lockRoot() + hex16(uint64(ino)) }

// LockRecord returns the lock record of ino, nil when it has none.
func (s *Store) LockRecord(ctx context.Context, ino meta.Ino) ([]byte, error) {
	resp, err := s.kv.Get(ctx, s.keys.lock(ino))
	if err != nil {
		return nil, etcdErr("read locks", err)
	}
	if len(resp.Kvs) == 0 {
		return nil, nil
	}
	return resp.Kvs[0].Value, nil
}

// UpdateLockRecord replaces ino's lock record with fn's result (nil or
// empty deletes it), atomically: when another node changed it meanwhile,
// fn runs again on the new record. An error of fn is returned as it is,
// and nothing changes.
func (s *Store) UpdateLockRecord(ctx context.Context, ino meta.Ino, fn func(old []byte) ([]byte, error)) error {
	k := s.keys.lock(ino)
	for {
		resp, err := s.kv.Get(ctx, k)
		if err != nil {
			return etcdErr("read locks", err)
		}
		var old []byte
		var rev int64
		if len(resp.Kvs) > 0 {
			old, rev = resp.Kvs[0].Value, resp.Kvs[0].ModRevision
		}
		rec, err := fn(old)
		if err != nil {
			return err
		}
		op := clientv3.OpDelete(k)
		if len(rec) > 0 {
			op = clientv3.OpPut(k, string(rec))
		}
		tr, err := s.kv.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(k), "=", rev)).Then(op).Commit()
		if err != nil {
			return etcdErr("write locks", err)
		}
		if tr.Succeeded {
			return nil
		}
	}
}

// LockedFiles returns the files that have a lock record.
func (s *Store) LockedFiles(ctx context.Context) ([]meta.Ino, error) {
	resp, err := s.kv.Get(ctx, s.keys.lockRoot(), clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, etcdErr("list locks", err)
	}
	out := make([]meta.Ino, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		ino, err := parseHex16(string(kv.Key[len(s.keys.lockRoot()):]))
		if err != nil {
			return nil, fmt.Errorf("lock key %q: %w", kv.Key, errMalformed)
		}
		out = append(out, ino)
	}
	return out, nil
}
