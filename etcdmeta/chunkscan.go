package etcdmeta

import (
	"context"
	"fmt"
	"strconv"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/wormhole-fs/wormhole/chunker/chunk"
	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
)

// ForEachChunkLinearizable is ForEachChunk with every page read
// linearizable, straight from etcd: a reference committed before the call
// began, and not removed since, is seen, whichever member the client asks.
// (ForEachChunk reads serializably, so a lagging member may answer with an
// older state.) The repair worker's orphan collection relies on it: it
// deletes the chunks such a scan, begun after listing them, did not see.
func (s *Store) ForEachChunkLinearizable(ctx context.Context, fn func(ino meta.Ino, ref chunk.Ref) error) error {
	start, end := s.keys.chunkRoot(), prefixEnd(s.keys.chunkRoot())
	for {
		resp, err := s.cli.Get(ctx, start, clientv3.WithRange(end), clientv3.WithLimit(ChunkRefPage),
			clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
		if err != nil {
			return etcdErr("scan chunk references", err)
		}
		for _, kv := range resp.Kvs {
			key := string(kv.Key)
			v, err := strconv.ParseUint(s.keys.chunkOwner(key), 16, 64)
			if err != nil {
				return fmt.Errorf("chunk key %q: %w", key, errMalformed)
			}
			ino := meta.Ino(v)
			idx, err := s.keys.chunkIndex(ino, key)
			if err != nil {
				return err
			}
			ref, err := decodeChunkRef(idx, kv.Value)
			if err != nil {
				return err
			}
			if err := fn(ino, ref); err != nil {
				return err
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return nil
		}
		start = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}
