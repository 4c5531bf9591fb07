package etcdmeta

import (
	"context"
	"fmt"
	"strconv"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
)

// layoutVersion is the key layout this package writes, recorded under
// /wh/<cluster>/layout when a namespace is created:
//
//   - "2": directory entries under ent/<dir>/<cookie><name>.
//   - none: namespaces made before entry cookies, with entries under
//     dir/<dir>/<name>; migrateEntries moves them.
const layoutVersion = "2"

// migrateBatch is how many entries one migration transaction moves.
const migrateBatch = 64

// migrateEntries moves directory entries of the first layout (keyed by
// name, listed in name order, which left NFS cookies to per-process tables
// that other nodes and restarts did not know) to the current one, then
// records the layout. Each transaction moves a batch only if none of it
// changed meanwhile, so an interrupted migration resumes where it stopped
// and nodes running it at once do not interfere. It runs before the
// namespace serves.
func (s *Store) migrateEntries(ctx context.Context) error {
	resp, err := s.kv.Get(ctx, s.keys.layout())
	if err != nil {
		return etcdErr("read namespace layout", err)
	}
	if len(resp.Kvs) > 0 {
		if v := string(resp.Kvs[0].Value); v != layoutVersion {
			return fmt.Errorf("namespace layout %q: this wormhole knows layout %s only: run a newer wormhole", v, layoutVersion)
		}
		return nil
	}
	old := s.keys.oldDirRoot()
	moved := 0
	for {
		resp, err := s.kv.Get(ctx, old, clientv3.WithRange(prefixEnd(old)), clientv3.WithLimit(migrateBatch))
		if err != nil {
			return etcdErr("migrate directory entries", err)
		}
		if len(resp.Kvs) == 0 {
			break
		}
		var cmps []clientv3.Cmp
		var ops []clientv3.Op
		for _, kv := range resp.Kvs {
			key := string(kv.Key)
			// dir/<16 hex digits of the directory>/<name>
			rest := key[len(old):]
			if len(rest) < 18 || rest[16] != '/' {
				return fmt.Errorf("migrate directory entry %q: %w", key, errMalformed)
			}
			dir, err := parseHex16(rest[:16])
			if err != nil {
				return fmt.Errorf("migrate directory entry %q: %w", key, errMalformed)
			}
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(key), "=", kv.ModRevision))
			ops = append(ops, clientv3.OpDelete(key), clientv3.OpPut(s.keys.dentry(dir, rest[17:]), string(kv.Value)))
		}
		if _, err := s.kv.Txn(ctx).If(cmps...).Then(ops...).Commit(); err != nil {
			return etcdErr("migrate directory entries", err)
		}
		// A failed comparison moved nothing; the next round reads again.
		moved += len(resp.Kvs)
	}
	if _, err := s.kv.Put(ctx, s.keys.layout(), layoutVersion); err != nil {
		return etcdErr("record namespace layout", err)
	}
	if moved > 0 {
		s.log.Info().Int("entries", moved).Msg("moved directory entries to the layout with stable listing cookies")
	}
	return nil
}

// parseHex16 reads the 16 hex digits hex16 writes as an inode number.
func parseHex16(s string) (meta.Ino, error) {
	v, err := strconv.ParseUint(s, 16, 64)
	return meta.Ino(v), err
}
