package repair

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/zeebo/blake3"

	"github.com/wormhole-fs/wormhole/chunker/census"
	"github.com/wormhole-fs/wormhole/chunker/chunk"
	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
)

// view is the membership as one pass sees it; nodes are numbered by their
// position in names.
type view struct {
	names    []string
	index    map[string]uint16
	eligible []bool // alive and not draining: may be a target
	draining []bool
	stores   map[uint16]NodeStore
	// recentDown counts nodes down for less than Grace; graceEnd is when
	// the first of those grace periods ends.
	recentDown int
	graceEnd   time.Time
}

// passResult tells lead when to run the next pass.
type passResult struct {
	again    bool      // work was left over (queue full): run again now
	graceEnd time.Time // a grace period ends then: run again by then
}

// newView snapshots the membership.
func (w *Worker) newView() (*view, error) {
	nodes := w.nodes.Nodes()
	if len(nodes) > math.MaxUint16 {
		return nil, fmt.Errorf("repair: %d nodes exceed %d", len(nodes), math.MaxUint16)
	}
	now := w.now()
	v := &view{index: map[string]uint16{}, stores: map[uint16]NodeStore{}}
	seenDown := map[string]bool{}
	for _, n := range nodes {
		if _, dup := v.index[n.ID]; dup || n.ID == "" {
			continue
		}
		i := uint16(len(v.names))
		v.names = append(v.names, n.ID)
		v.index[n.ID] = i
		v.eligible = append(v.eligible, n.Alive && !n.Draining)
		v.draining = append(v.draining, n.Alive && n.Draining)
		if n.Alive {
			continue
		}
		seenDown[n.ID] = true
		since := n.DownSince
		if since.IsZero() {
			if t, ok := w.firstDown[n.ID]; ok {
				since = t
			} else {
				since = now
				w.firstDown[n.ID] = now
			}
		}
		if end := since.Add(w.cfg.Grace); end.After(now) {
			v.recentDown++
			if v.graceEnd.IsZero() || end.Before(v.graceEnd) {
				v.graceEnd = end
			}
		}
	}
	for id := range w.firstDown {
		if !seenDown[id] {
			delete(w.firstDown, id)
		}
	}
	return v, nil
}

// store returns node n's store, asking the Cluster once per pass.
func (w *Worker) store(v *view, n uint16) (NodeStore, error) {
	if s, ok := v.stores[n]; ok {
		return s, nil
	}
	s, err := w.nodes.Store(v.names[n])
	if err != nil {
		return nil, fmt.Errorf("repair: store of node %s: %w", v.names[n], err)
	}
	v.stores[n] = s
	return s, nil
}

// pass runs pass number n under the term f; endTerm ends the term when
// leadership is found lost.
func (w *Worker) pass(ctx context.Context, endTerm context.CancelCauseFunc, f *fence, n uint64) passResult {
	w.update(func(p *Progress) {
		*p = Progress{Leader: w.cfg.Name, Running: true, Pass: n, Started: w.now()}
	})
	lost := func(err error) {
		if errors.Is(err, errLostLeadership) {
			endTerm(errLostLeadership)
		}
	}
	if err := w.writeState(ctx, f); err != nil {
		lost(err)
		if ctx.Err() != nil {
			return passResult{}
		}
		w.log.Warn().Err(err).Msg("write repair state")
	}

	// Progress reports, which also notice a lost leadership between
	// deletions.
	rctx, stopReports := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(w.cfg.ProgressEvery)
		defer t.Stop()
		for {
			select {
			case <-rctx.Done():
				return
			case <-t.C:
				if err := w.writeState(rctx, f); err != nil && rctx.Err() == nil {
					lost(err)
					w.log.Debug().Err(err).Msg("write repair state")
				}
			}
		}
	})
	res, err := w.runPass(ctx, lost, f)
	stopReports()
	wg.Wait()
	if cause := context.Cause(ctx); errors.Is(cause, errLostLeadership) {
		err = cause
	}

	w.update(func(p *Progress) {
		w.total.Passes++
		p.Running = false
		p.Finished = w.now()
		if err != nil {
			p.LastError = errorText(err)
		}
	})
	if ctx.Err() != nil {
		return passResult{}
	}
	if err := w.writeState(ctx, f); err != nil {
		lost(err)
		w.log.Warn().Err(err).Msg("write repair state")
	}
	p := w.Progress()
	// A pass that found nothing to do is routine: debug, so an idle
	// cluster's log stays quiet.
	ev := w.log.Debug()
	switch {
	case p.Failed > 0 || err != nil:
		ev = w.log.Warn()
	case p.ToCopy > 0 || p.ToDelete > 0 || p.Deferred > 0 || p.Unavailable > 0:
		ev = w.log.Info()
	}
	ev.Err(err).Uint64("pass", n).Int("checked", p.ChunksChecked).
		Int("copied", p.Copied).Int("to_copy", p.ToCopy).
		Int("deleted", p.Deleted).Int("to_delete", p.ToDelete).
		Int("failed", p.Failed).Int("deferred", p.Deferred).
		Int("unavailable", p.Unavailable).Strs("partial", p.Partial).
		Str("last_error", p.LastError).Msg("repair pass done")
	return res
}

// runPass takes the inventory, plans and runs the work. It returns an error
// only for a failure that stopped the pass early.
func (w *Worker) runPass(ctx context.Context, lost func(error), f *fence) (passResult, error) {
	v, err := w.newView()
	if err != nil {
		return passResult{}, err
	}
	res := passResult{graceEnd: v.graceEnd}

	listers := map[string]census.Lister{}
	failed := map[string]error{}
	for i, name := range v.names {
		if !v.eligible[i] && !v.draining[i] {
			continue // down
		}
		s, err := w.store(v, uint16(i))
		if err != nil {
			failed[name] = err
			continue
		}
		listers[name] = s
	}
	inv, errs := census.Gather(ctx, listers)
	if ctx.Err() != nil {
		return res, ctx.Err()
	}
	listed := w.now() // the references are read after this
	for name, err := range errs {
		failed[name] = err
	}
	partial := census.Failed(failed)
	for _, name := range partial {
		// A node that did not list its chunks is no copy target this
		// pass: it may be dying (gossip has not said so yet), or may hold
		// the chunks already.
		if i, ok := v.index[name]; ok {
			v.eligible[i] = false
		}
	}
	if len(partial) > 0 {
		w.update(func(p *Progress) {
			p.Partial = partial
			p.LastError = errorText(failed[partial[0]])
		})
	}

	q, err := w.plan(ctx, v, inv, len(partial) == 0 && v.recentDown == 0)
	if ctx.Err() != nil {
		return res, ctx.Err()
	}
	items := q.sorted()
	res.again = q.truncated
	toCopy, toDelete := 0, 0
	for _, it := range items {
		if err != nil {
			it.del = false // the namespace was read only in part
		}
		if it.copy || it.del {
			toCopy += it.missing()
		}
		if it.del {
			toDelete += len(it.extras())
		}
	}
	w.update(func(p *Progress) {
		p.ToCopy, p.ToDelete, p.Truncated = toCopy, toDelete, q.truncated
		if err != nil {
			p.LastError = errorText(err)
		}
	})
	var orphans []orphan
	if err == nil {
		orphans = w.findOrphans(v, inv, listed)
	}
	inv = nil // the items hold all the pass needs from here on

	w.execute(ctx, lost, f, v, items)
	w.collectOrphans(ctx, lost, f, v, orphans)
	return res, err
}

// plan streams the namespace's chunk references and queues the chunks that
// need work. deletes says whether deletions may be planned at all. On an
// error of the namespace it returns what it queued so far with the error.
func (w *Worker) plan(ctx context.Context, v *view, inv *census.Inventory, deletes bool) (*queue, error) {
	q := newQueue(w.cfg.MaxQueue)
	var (
		lastIno  meta.Ino
		lastWant int // 0: skip the inode's chunks
		haveLast bool
	)
	var checked, deferred, unavailable, failedInodes int
	var lastErr error
	drain := map[string]int{}
	for i, d := range v.draining {
		if d {
			drain[v.names[i]] = 0
		}
	}
	err := w.chunks.ForEachChunk(ctx, func(ino meta.Ino, ref chunk.Ref) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		inv.MarkReferenced(ref.ID) // whatever its inode: not an orphan
		if !haveLast || ino != lastIno {
			lastIno, haveLast = ino, true
			n, err := w.chunks.Copies(ctx, ino)
			switch {
			case err == nil:
				if n <= 0 {
					n = w.cfg.Copies
				}
				lastWant = min(n, meta.MaxCopies)
			case errors.Is(err, meta.ErrNotFound) || errors.Is(err, meta.ErrStale):
				lastWant = 0
			default:
				if ctx.Err() != nil {
					return ctx.Err()
				}
				lastWant = 0
				failedInodes++
				lastErr = fmt.Errorf("repair: copies of inode %d: %w", ino, err)
			}
		}
		checked++
		if lastWant == 0 || ref.ID.IsZero() {
			return nil
		}
		it := w.classify(v, inv, ref, lastWant, deletes)
		switch {
		case it == nil:
		case it.holders == nil:
			unavailable++
		default:
			for _, h := range it.holders {
				if v.draining[h] {
					drain[v.names[h]]++
				}
			}
			if it.copy || it.del {
				q.add(it)
			} else if int(it.kept) < int(it.want) && it.missing() > 0 {
				deferred++
			}
		}
		if checked%4096 == 0 {
			w.update(func(p *Progress) { p.ChunksChecked = checked })
		}
		return nil
	})
	w.update(func(p *Progress) {
		p.ChunksChecked, p.Deferred, p.Unavailable = checked, deferred, unavailable
		p.Failed += failedInodes
		p.Scanned = err == nil
		if len(drain) > 0 {
			p.DrainRemaining = drain
		}
		if lastErr != nil {
			p.LastError = errorText(lastErr)
		}
	})
	if err != nil {
		return q, fmt.Errorf("repair: read chunk references: %w", err)
	}
	return q, nil
}

// classify compares one chunk's holders with its targets. It returns an item
// with nil holders when no listed node holds the chunk, an item with neither
// copy nor del when nothing is to be done now, nil when nothing at all is.
func (w *Worker) classify(v *view, inv *census.Inventory, ref chunk.Ref, want int, deletes bool) *item {
	it := &item{id: ref.ID, sum: ref.Sum, want: uint8(want)}
	for _, name := range inv.Holders(ref.ID) {
		if i, ok := v.index[name]; ok {
			it.holders = append(it.holders, i)
			if v.eligible[i] {
				it.kept++
			}
		}
	}
	if len(it.holders) == 0 {
		it.holders = nil
		return it
	}
	for _, name := range w.place.Targets(ref.ID, want) {
		if i, ok := v.index[name]; ok && v.eligible[i] && !it.targeted(i) {
			it.targets = append(it.targets, i)
		}
	}
	missing := it.missing()
	extras := len(it.holders) - (len(it.targets) - missing)
	it.copy = missing > 0
	if v.recentDown > 0 && int(it.kept)+v.recentDown >= want {
		// The node that is down may hold the missing copies: wait.
		it.copy = false
	}
	it.del = deletes && extras > 0 && len(it.targets) >= want && (missing == 0 || it.copy)
	if !it.copy && !it.del && missing == 0 {
		return nil
	}
	return it
}

// execute runs items, most urgent first, Parallel at a time, until done or
// ctx ends.
func (w *Worker) execute(ctx context.Context, lost func(error), f *fence, v *view, items []*item) {
	var mu sync.Mutex // guards v.stores
	work := make(chan *item)
	var wg sync.WaitGroup
	for range min(w.cfg.Parallel, len(items)) {
		wg.Go(func() {
			for it := range work {
				if ctx.Err() != nil {
					continue
				}
				err := w.work(ctx, &mu, f, v, it)
				switch {
				case err == nil:
				case errors.Is(err, errLostLeadership):
					lost(err)
				case ctx.Err() != nil:
				default:
					w.log.Debug().Err(err).Str("chunk", it.id.String()).Msg("repair item failed")
					w.update(func(p *Progress) {
						w.total.Failed++
						p.Failed++
						p.LastError = errorText(err)
					})
				}
			}
		})
	}
feed:
	for _, it := range items {
		select {
		case work <- it:
		case <-ctx.Done():
			break feed
		}
	}
	close(work)
	wg.Wait()
}

// work does one item: it copies the chunk to the targets that lack a good
// copy, then, if planned and every target holds a verified copy, deletes
// the copies on other nodes, each after checking the term f.
func (w *Worker) work(ctx context.Context, mu *sync.Mutex, f *fence, v *view, it *item) error {
	storeOf := func(n uint16) (NodeStore, error) {
		mu.Lock()
		defer mu.Unlock()
		return w.store(v, n)
	}
	var (
		need     []uint16 // targets to write
		bad      []uint16 // holders whose copy is corrupt or gone
		good     int      // targets with a verified copy
		canDel   = it.del
		firstErr error
	)
	for _, t := range it.targets {
		if !it.holds(t) {
			need = append(need, t)
			continue
		}
		if !it.del {
			continue
		}
		err := w.verify(ctx, storeOf, v, t, it.id)
		switch {
		case err == nil:
			good++
		case errors.Is(err, chunk.ErrCorrupt) || errors.Is(err, chunk.ErrNotFound):
			need = append(need, t)
			bad = append(bad, t)
		default:
			if ctx.Err() != nil {
				return ctx.Err()
			}
			canDel = false
			firstErr = cmp.Or(firstErr, err)
		}
	}
	if len(need) > 0 && (it.copy || it.del) {
		data, corrupt, err := w.fetch(ctx, storeOf, v, it, bad)
		for _, c := range corrupt {
			if it.targeted(c) && !slices.Contains(need, c) {
				need = append(need, c) // write a good copy over it
				if it.del {
					good-- // it was counted as verified
				}
			}
		}
		if err != nil {
			return err
		}
		for _, t := range need {
			if err := w.put(ctx, storeOf, v, t, it, data); err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				canDel = false
				firstErr = cmp.Or(firstErr, err)
				continue
			}
			good++
		}
	} else if len(need) > 0 {
		canDel = false
	}
	if !canDel || good < len(it.targets) || good < int(it.want) || good < 1 {
		return firstErr
	}
	for _, x := range it.extras() {
		if err := f.check(ctx); err != nil {
			return err
		}
		s, err := storeOf(x)
		if err == nil {
			octx, cancel := context.WithTimeout(ctx, w.cfg.Timeout)
			err = s.Delete(octx, it.id)
			cancel()
		}
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			firstErr = cmp.Or(firstErr, fmt.Errorf("repair: delete chunk %s from %s: %w", it.id, v.names[x], err))
			continue
		}
		name := v.names[x]
		w.update(func(p *Progress) {
			w.total.Deleted++
			p.Deleted++
			if _, ok := p.DrainRemaining[name]; ok && p.DrainRemaining[name] > 0 {
				p.DrainRemaining[name]--
			}
		})
	}
	return firstErr
}

// verify checks that node n holds a good copy of id: chunk.ErrNotFound or
// chunk.ErrCorrupt when it does not, another error when it cannot tell.
func (w *Worker) verify(ctx context.Context, storeOf func(uint16) (NodeStore, error), v *view, n uint16, id chunk.ID) error {
	s, err := storeOf(n)
	if err != nil {
		return err
	}
	octx, cancel := context.WithTimeout(ctx, w.cfg.Timeout)
	defer cancel()
	if hs, ok := s.(hasStore); ok {
		found, err := hs.Has(octx, id)
		if err == nil && !found {
			err = chunk.ErrNotFound
		}
		if err != nil {
			return fmt.Errorf("repair: check chunk %s on %s: %w", id, v.names[n], err)
		}
		return nil
	}
	if _, err := s.Get(octx, id); err != nil {
		return fmt.Errorf("repair: check chunk %s on %s: %w", id, v.names[n], err)
	}
	return nil
}

// fetch reads a good copy of it from a holder not in skip: this node first,
// then the targets in placement order, the other kept holders, draining nodes
// last. It also returns the holders found corrupt. A copy whose bytes do not
// match the namespace's checksum counts as corrupt.
func (w *Worker) fetch(ctx context.Context, storeOf func(uint16) (NodeStore, error), v *view, it *item, skip []uint16) ([]byte, []uint16, error) {
	var order []uint16
	if self, ok := v.index[w.cfg.Name]; ok && it.holds(self) {
		order = append(order, self)
	}
	for _, t := range it.targets {
		if it.holds(t) && !slices.Contains(order, t) {
			order = append(order, t)
		}
	}
	for _, draining := range []bool{false, true} {
		for _, h := range it.holders {
			if v.draining[h] == draining && !slices.Contains(order, h) {
				order = append(order, h)
			}
		}
	}
	var corrupt []uint16
	var errs []error
	for _, h := range order {
		if slices.Contains(skip, h) {
			continue
		}
		s, err := storeOf(h)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		octx, cancel := context.WithTimeout(ctx, w.cfg.Timeout)
		data, err := s.Get(octx, it.id)
		cancel()
		if err == nil && it.sum != (chunk.Sum{}) && chunk.Sum(blake3.Sum256(data)) != it.sum {
			err = fmt.Errorf("bytes do not match the file's checksum: %w", chunk.ErrCorrupt)
		}
		if err == nil {
			return data, corrupt, nil
		}
		if ctx.Err() != nil {
			return nil, corrupt, ctx.Err()
		}
		if errors.Is(err, chunk.ErrCorrupt) {
			corrupt = append(corrupt, h)
			w.log.Warn().Err(err).Str("chunk", it.id.String()).Str("node", v.names[h]).Msg("corrupt chunk copy not used")
		}
		errs = append(errs, fmt.Errorf("read from %s: %w", v.names[h], err))
	}
	return nil, corrupt, fmt.Errorf("repair: chunk %s: no good copy: %w", it.id, errors.Join(errs...))
}

// put writes data to target t after waiting for the throttle, and checks
// the checksum the node reports.
func (w *Worker) put(ctx context.Context, storeOf func(uint16) (NodeStore, error), v *view, t uint16, it *item, data []byte) error {
	s, err := storeOf(t)
	if err != nil {
		return err
	}
	if err := w.thr.wait(ctx, len(data)); err != nil {
		return err
	}
	octx, cancel := context.WithTimeout(ctx, w.cfg.Timeout)
	sum, err := s.Put(octx, it.id, data)
	cancel()
	if err != nil {
		return fmt.Errorf("repair: copy chunk %s to %s: %w", it.id, v.names[t], err)
	}
	want := it.sum
	if want == (chunk.Sum{}) {
		want = chunk.Sum(blake3.Sum256(data))
	}
	if sum != want {
		return fmt.Errorf("repair: copy chunk %s to %s: node reported a wrong checksum", it.id, v.names[t])
	}
	w.update(func(p *Progress) {
		w.total.Copied++
		w.total.BytesCopied += uint64(len(data))
		p.Copied++
		p.BytesCopied += int64(len(data))
	})
	return nil
}
