package etcdmeta

import (
	"context"

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
	return s.scanChunks(ctx, fn)
}
