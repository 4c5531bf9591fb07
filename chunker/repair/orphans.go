package repair

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/wormhole-fs/wormhole/chunker/census"
	"github.com/wormhole-fs/wormhole/chunker/chunk"
)

// maxOrphans bounds the unreferenced chunks a worker remembers between
// passes (about 60 bytes each). Past it, newly found ones wait for a
// later pass, once the collection has deleted the ones remembered.
const maxOrphans = 1 << 20

// orphan is a chunk due for deletion: no file has referred to it for
// OrphanGrace, and holders hold it.
type orphan struct {
	id      chunk.ID
	holders []uint16
}

// findOrphans looks at the chunks of inv no reference marked (plan marks
// every reference it reads) and returns those found unreferenced by a
// pass whose listing ended at least Config.OrphanGrace before this one's
// (listed). It remembers the others for the next passes and forgets the
// chunks that are referenced or gone. It must be called only after a
// complete read of the references (plan returned no error): a partial one
// leaves referenced chunks unmarked.
//
// Why this never deletes a chunk a file refers to or is about to: chunk
// IDs are never reused, and a chunk is written before the reference to it
// is committed. A chunk listed by the first pass was written before that
// listing ended (first). If it was referenced by the time this pass's
// references were read (after listed, by linearizable reads: see
// Chunks.ForEachChunk), the read saw it. So it is deleted only if no
// reference to it was committed within OrphanGrace of its writing: a
// write that slow has failed (its context ends long before).
func (w *Worker) findOrphans(v *view, inv *census.Inventory, listed time.Time) []orphan {
	if w.cfg.OrphanGrace < 0 {
		return nil
	}
	next := make(map[chunk.ID]time.Time, len(w.orphans))
	var due []orphan
	found := 0
	inv.Unreferenced(func(id chunk.ID, holders []string) bool {
		found++
		first, seen := w.orphans[id]
		if !seen {
			first = listed
		}
		if seen && listed.Sub(first) >= w.cfg.OrphanGrace {
			o := orphan{id: id}
			for _, h := range holders {
				if i, ok := v.index[h]; ok {
					o.holders = append(o.holders, i)
				}
			}
			due = append(due, o)
		}
		if len(next) < maxOrphans {
			next[id] = first // kept in case a deletion fails
		}
		return true
	})
	w.orphans = next
	w.update(func(p *Progress) { p.Orphans = found })
	return due
}

// collectOrphans deletes the copies of the orphans, each after checking
// the term f, until done or ctx ends. A copy deleted is forgotten; one
// that fails is retried by the next pass.
func (w *Worker) collectOrphans(ctx context.Context, lost func(error), f *fence, v *view, orphans []orphan) {
	deleted, failed := 0, 0
	var lastErr error
	for _, o := range orphans {
		all := true
		for _, h := range o.holders {
			if ctx.Err() != nil {
				return
			}
			if err := f.check(ctx); err != nil {
				lost(err)
				return
			}
			s, err := w.store(v, h)
			if err == nil {
				octx, cancel := context.WithTimeout(ctx, w.cfg.Timeout)
				err = s.Delete(octx, o.id)
				cancel()
			}
			if err != nil && !errors.Is(err, chunk.ErrNotFound) {
				if ctx.Err() != nil {
					return
				}
				all = false
				failed++
				lastErr = fmt.Errorf("repair: delete orphan chunk %s from %s: %w", o.id, v.names[h], err)
				continue
			}
			deleted++
			w.update(func(p *Progress) {
				w.total.OrphansDeleted++
				p.OrphansDeleted++
			})
		}
		if all {
			delete(w.orphans, o.id)
		}
	}
	if deleted > 0 || failed > 0 {
		w.log.Info().Int("deleted", deleted).Int("failed", failed).Int("orphans", len(orphans)).AnErr("last_error", lastErr).
			Msg("deleted chunks no file refers to")
	}
	if lastErr != nil {
		w.update(func(p *Progress) {
			p.Failed += failed
			p.LastError = errorText(lastErr)
		})
	}
}
