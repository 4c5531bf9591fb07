package replica

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/zeebo/blake3"

	"github.com/wormhole-fs/wormhole/chunker/chunk"
	"github.com/wormhole-fs/wormhole/chunker/placement"
)

// maxDeleteParallel bounds the concurrent per-node requests of one Delete.
const maxDeleteParallel = 16

// ErrSumMismatch means a node stored a chunk but reported a checksum other
// than that of the data sent; that copy is not counted.
var ErrSumMismatch = errors.New("node reported a wrong checksum")

// summedPutter is implemented by stores that take a chunk's checksum from
// the caller instead of hashing the data again: chunker.LocalStore records
// it as it is, peer.Client has the peer check the data against it.
type summedPutter interface {
	PutSummed(ctx context.Context, id chunk.ID, data []byte, sum chunk.Sum) error
}

// putResult is the outcome of storing one copy.
type putResult struct {
	node string
	err  error
}

// Put stores data as chunk id on Copies nodes (the count chunk.WithCopies
// put in ctx, if any: see policy) and returns its BLAKE3-256 checksum. The targets are the best Copies alive nodes of the placement
// ranking (placement.Place over all alive nodes with free space); the
// copies are written in parallel, this node's through its Local store.
// When a target fails, the next node of the ranking takes its place, until
// Copies copies are stored or the ranking is exhausted. Put returns once
// every write it started has finished:
//
//   - Copies stored: success.
//   - at least MinCopies stored: success, and a ReasonUnderReplicated
//     report.
//   - fewer: the stored copies are deleted (best effort) and the error
//     wraps ErrNotEnoughNodes, and also chunk.ErrNoSpace when every node
//     that failed was full, or the context's error when it ended.
//
// Put does not keep data after it returns.
func (s *Store) Put(ctx context.Context, id chunk.ID, data []byte) (chunk.Sum, error) {
	sum := chunk.Sum(blake3.Sum256(data))
	copies, minCopies := s.policy(ctx)
	self, cands, full := s.candidates()
	ranking := placement.Place(id[:], len(cands), cands)
	if len(ranking) < minCopies {
		err := fmt.Errorf("put chunk %s: %d of %d nodes alive with free space, %d copies needed: %w",
			id, len(ranking), len(s.members.Nodes()), minCopies, ErrNotEnoughNodes)
		if len(ranking)+len(full) >= minCopies {
			err = fmt.Errorf("%w: %w", err, chunk.ErrNoSpace)
		}
		return chunk.Sum{}, err
	}

	results := make(chan putResult, len(ranking))
	var wg sync.WaitGroup
	defer wg.Wait() // every write has finished before Put returns
	next := 0       // next node of ranking to try
	start := func() {
		node := ranking[next]
		next++
		wg.Go(func() {
			results <- putResult{node: node, err: s.putOne(ctx, self, node, id, data, sum)}
		})
	}
	for next < min(copies, len(ranking)) {
		start()
	}
	var (
		stored   []string
		failed   []string
		errs     []error
		inFlight = next
	)
	for inFlight > 0 {
		r := <-results
		inFlight--
		if r.err == nil {
			stored = append(stored, r.node)
			continue
		}
		failed = append(failed, r.node)
		errs = append(errs, r.err)
		s.log.Warn().Err(r.err).Str("chunk", id.String()).Str("node", r.node).Msg("store chunk copy")
		if next < len(ranking) && ctx.Err() == nil {
			start() // fail over to the next node of the ranking
			inFlight++
		}
	}

	switch {
	case len(stored) >= copies:
		return sum, nil
	case len(stored) >= minCopies:
		s.log.Warn().Str("chunk", id.String()).Int("copies", len(stored)).Int("want", copies).
			Strs("failed", failed).Msg("chunk stored under-replicated")
		s.report(RepairReport{ID: id, Reason: ReasonUnderReplicated, Good: stored})
		return sum, nil
	}

	// Too few copies: remove the ones stored, and any a failed node may
	// have stored before its reply was lost.
	s.deleteFrom(ctx, self, id, slices.Concat(stored, failed))
	err := fmt.Errorf("put chunk %s: %d of %d copies stored, %d needed (%d nodes tried): %w: %s",
		id, len(stored), copies, minCopies, next, ErrNotEnoughNodes, joinErrs(failed, errs))
	if cerr := ctx.Err(); cerr != nil {
		return chunk.Sum{}, fmt.Errorf("%w: %w", err, cerr)
	}
	allFull := len(errs) > 0
	for _, e := range errs {
		allFull = allFull && errors.Is(e, chunk.ErrNoSpace)
	}
	if allFull {
		return chunk.Sum{}, fmt.Errorf("%w: %w", err, chunk.ErrNoSpace)
	}
	return chunk.Sum{}, err
}

// putOne stores one copy on node. Its error does not name the node.
func (s *Store) putOne(ctx context.Context, self, node string, id chunk.ID, data []byte, want chunk.Sum) error {
	ctx, cancel := s.opContext(ctx)
	defer cancel()
	var store any = s.self
	if node != self {
		r, err := s.dialer.Remote(node)
		if err != nil {
			return err
		}
		store = r
	}
	if sp, ok := store.(summedPutter); ok {
		// The sum is computed once for all copies: this node's store
		// takes it as it is, a peer checks the data against it.
		return sp.PutSummed(ctx, id, data, want)
	}
	var got chunk.Sum
	var err error
	if node == self {
		got, err = s.self.Put(ctx, id, data)
	} else {
		got, err = store.(Remote).Put(ctx, id, data)
	}
	if err != nil {
		return err
	}
	if got != want {
		return fmt.Errorf("put chunk %s: stored sum %x, data has %x: %w", id, got, want, ErrSumMismatch)
	}
	return nil
}

// deleteFrom deletes chunk id from nodes, best effort, with a context that
// outlives ctx's cancellation: it cleans up after a failed Put.
func (s *Store) deleteFrom(ctx context.Context, self string, id chunk.ID, nodes []string) {
	ctx = context.WithoutCancel(ctx)
	var wg sync.WaitGroup
	for _, node := range nodes {
		wg.Go(func() {
			if err := s.deleteOne(ctx, self, node, id); err != nil {
				s.log.Warn().Err(err).Str("chunk", id.String()).Str("node", node).
					Msg("remove copy of failed put; it stays as an orphan")
			}
		})
	}
	wg.Wait()
}

// deleteOne deletes chunk id from node; a missing chunk is not an error.
func (s *Store) deleteOne(ctx context.Context, self, node string, id chunk.ID) error {
	ctx, cancel := s.opContext(ctx)
	defer cancel()
	var err error
	if node == self {
		err = s.self.Delete(ctx, id)
	} else {
		var r Remote
		if r, err = s.dialer.Remote(node); err == nil {
			err = r.Delete(ctx, id)
		}
	}
	if err != nil && !errors.Is(err, chunk.ErrNotFound) {
		return fmt.Errorf("node %s: %w", node, err)
	}
	return nil
}

// getOne fetches chunk id from node. Its error does not name the node.
func (s *Store) getOne(ctx context.Context, self, node string, id chunk.ID) ([]byte, error) {
	ctx, cancel := s.opContext(ctx)
	defer cancel()
	if node == self {
		return s.self.Get(ctx, id)
	}
	r, err := s.dialer.Remote(node)
	if err != nil {
		return nil, err
	}
	return r.Get(ctx, id)
}

// Get returns the verified data of chunk id. It tries this node's Local
// store first, then every other alive node in placement order (first the
// chunk's placement targets, then the rest of the ranking, since copies
// may sit on failover nodes or on nodes that held the chunk before others
// joined), and returns the first copy that verifies. Nodes are tried one at
// a time, each bounded by Timeout.
//
// A corrupt copy on any node, and a missing copy on a placement target,
// are reported (ReasonCorrupt, ReasonMissing) once the search ends. The
// placement targets are the first Copies of the ranking, Copies being the
// chunk's own count when ctx carries it (chunk.WithCopies), else
// Config.Copies. A reader that does not pass the count of a chunk stored
// with fewer copies may report as missing a copy its policy does not ask
// for (only when an earlier target failed to answer: the search stops at
// the first good copy). When no
// copy is found the error wraps chunk.ErrCorrupt if some copy was corrupt;
// otherwise chunk.ErrNotFound, together with ErrNotEnoughNodes when some
// node that might hold the chunk was down or could not be asked; or the
// context's error when it ended.
func (s *Store) Get(ctx context.Context, id chunk.ID) ([]byte, error) {
	return s.get(ctx, id, nil)
}

// get is Get, counting the nodes in failed as having failed with their
// error without asking them again: a node that did not answer a range
// read just before is not waited for twice.
func (s *Store) get(ctx context.Context, id chunk.ID, failed map[string]error) ([]byte, error) {
	copies, _ := s.policy(ctx)
	order, targets, selfTarget, down := s.readOrder(id, copies)
	self := order[0]
	var (
		reports     []RepairReport
		failedNodes []string
		errs        []error
		corrupt     bool
		unreachable = down
		data        []byte
		from        string
	)
	for _, node := range order {
		if ctx.Err() != nil {
			break
		}
		if err, ok := failed[node]; ok {
			unreachable++
			failedNodes = append(failedNodes, node)
			errs = append(errs, err)
			continue
		}
		d, err := s.getOne(ctx, self, node, id)
		if err == nil {
			data, from = d, node
			break
		}
		switch {
		case errors.Is(err, chunk.ErrCorrupt):
			corrupt = true
			reports = append(reports, RepairReport{ID: id, Reason: ReasonCorrupt, Node: node})
			s.log.Warn().Err(err).Str("chunk", id.String()).Str("node", node).Msg("corrupt chunk copy; trying another")
		case errors.Is(err, chunk.ErrNotFound):
			if slices.Contains(targets, node) {
				reports = append(reports, RepairReport{ID: id, Reason: ReasonMissing, Node: node})
			}
			if node == self && !selfTarget {
				continue // not expected here; not worth naming in errors
			}
		case ctx.Err() == nil:
			unreachable++
			s.log.Warn().Err(err).Str("chunk", id.String()).Str("node", node).Msg("read chunk copy")
		}
		failedNodes = append(failedNodes, node)
		errs = append(errs, err)
	}

	var good []string
	if from != "" {
		good = []string{from}
	}
	for _, r := range reports {
		r.Good = good
		s.report(r)
	}
	if from != "" {
		return data, nil
	}

	detail := joinErrs(failedNodes, errs)
	switch {
	case corrupt:
		return nil, fmt.Errorf("get chunk %s: no verified copy: %w: %s", id, chunk.ErrCorrupt, detail)
	case ctx.Err() != nil:
		return nil, fmt.Errorf("get chunk %s: %w: %s", id, ctx.Err(), detail)
	case unreachable > 0:
		return nil, fmt.Errorf("get chunk %s: %w, and %d possible holders down or unreachable: %w: %s",
			id, chunk.ErrNotFound, unreachable, ErrNotEnoughNodes, detail)
	}
	return nil, fmt.Errorf("get chunk %s: %w on any of %d nodes", id, chunk.ErrNotFound, len(order))
}

// rangeLocal is implemented by Local stores that can read part of a chunk
// into the caller's buffer, verifying only what they read;
// chunker.LocalStore does.
type rangeLocal interface {
	ReadRange(ctx context.Context, id chunk.ID, p []byte, off int64) (int, error)
}

// ReadRange reads bytes [off, off+len(p)) of chunk id into p, clamped to
// the chunk's length, and returns how many it read (it makes Store a
// chunker.RangeReader). When this node's Local store reads ranges, its
// copy is asked first and only the part asked for is read and verified.
// Otherwise, or when that copy is missing, corrupt or unreadable, the
// chunk's other placement targets are asked for the part alone
// (readRangeRemote); when none answers, ReadRange falls back to Get
// (which searches, verifies and reports exactly as a Get does, this
// node's copy included) and copies the part asked for. Errors are Get's; a negative off is an error. After an error
// the contents of p are unspecified.
func (s *Store) ReadRange(ctx context.Context, id chunk.ID, p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("get chunk %s: invalid range of %d bytes at %d", id, len(p), off)
	}
	if rl, ok := s.self.(rangeLocal); ok {
		lctx, cancel := s.opContext(ctx)
		k, err := rl.ReadRange(lctx, id, p, off)
		cancel()
		if err == nil {
			return k, nil
		}
		if cerr := ctx.Err(); cerr != nil {
			return 0, fmt.Errorf("get chunk %s: %w", id, cerr)
		}
	}
	k, unanswered, ok := s.readRangeRemote(ctx, id, p, off)
	if ok {
		return k, nil
	}
	data, err := s.get(ctx, id, unanswered)
	if err != nil {
		return 0, err
	}
	return copy(p, data[min(off, int64(len(data))):]), nil
}

// rangeRemote is a Remote that can read part of a chunk, the holder
// verifying the blocks it reads (peer.Client).
type rangeRemote interface {
	ReadRange(ctx context.Context, id chunk.ID, p []byte, off int64) (int, error)
}

// readRangeRemote reads bytes [off, off+len(p)) of chunk id from the
// first of its other placement targets that answers, fetching only that
// part: a 4 KiB read of a chunk held elsewhere moves 4 KiB, not the
// chunk. A holder whose blocks in the range fail verification is reported
// corrupt once another answers. ok is false when none answered: Get then
// searches every node, and reports the missing and corrupt copies it
// finds; unanswered holds the nodes that could not be asked or did not
// answer at all, for Get not to wait on them again.
func (s *Store) readRangeRemote(ctx context.Context, id chunk.ID, p []byte, off int64) (k int, unanswered map[string]error, ok bool) {
	copies, _ := s.policy(ctx)
	order, targets, _, _ := s.readOrder(id, copies)
	self := order[0]
	var corrupt []string
	for _, node := range targets {
		if node == self {
			continue
		}
		r, err := s.dialer.Remote(node)
		if err != nil {
			continue // Get reports it
		}
		rr, isRange := r.(rangeRemote)
		if !isRange {
			return 0, unanswered, false
		}
		rctx, cancel := s.opContext(ctx)
		k, err := rr.ReadRange(rctx, id, p, off)
		cancel()
		switch {
		case err == nil:
			for _, bad := range corrupt {
				s.report(RepairReport{ID: id, Reason: ReasonCorrupt, Node: bad, Good: []string{node}})
			}
			return k, nil, true
		case ctx.Err() != nil:
			return 0, unanswered, false
		case errors.Is(err, chunk.ErrCorrupt):
			corrupt = append(corrupt, node)
			s.log.Warn().Err(err).Str("chunk", id.String()).Str("node", node).Msg("corrupt chunk copy; trying another")
		case errors.Is(err, chunk.ErrNotFound):
			// Get asks again and reports the copy missing.
		default:
			if unanswered == nil {
				unanswered = make(map[string]error)
			}
			unanswered[node] = err
			s.log.Warn().Err(err).Str("chunk", id.String()).Str("node", node).Msg("read chunk range")
		}
	}
	return 0, unanswered, false
}

// rangeViewer is a Local store that lends verified chunk bytes in place;
// chunker.LocalStore does.
type rangeViewer interface {
	ViewRange(ctx context.Context, id chunk.ID, off int64, n int) ([]byte, func(), error)
}

// ViewRange lends bytes [off, off+n) of chunk id from this node's copy
// (it makes Store a chunker.RangeViewer). When this node holds no good copy
// it lends nothing: the error wraps chunk.ErrNoView, and ReadRange, which
// searches the other nodes, verifies and reports, is the way to read it.
func (s *Store) ViewRange(ctx context.Context, id chunk.ID, off int64, n int) ([]byte, func(), error) {
	rv, ok := s.self.(rangeViewer)
	if !ok {
		return nil, nil, fmt.Errorf("view chunk %s: %w", id, chunk.ErrNoView)
	}
	lctx, cancel := s.opContext(ctx)
	defer cancel()
	data, release, err := rv.ViewRange(lctx, id, off, n)
	if err != nil {
		if cerr := ctx.Err(); cerr != nil {
			return nil, nil, fmt.Errorf("view chunk %s: %w", id, cerr)
		}
		return nil, nil, fmt.Errorf("view chunk %s: %w (this node's copy: %v)", id, chunk.ErrNoView, err)
	}
	return data, release, nil
}

// Delete removes chunk id from this node and from every alive node, in
// parallel; a missing chunk is not an error, so Delete is idempotent. The
// errors of the nodes that failed are joined. Copies on nodes that are down
// stay behind as orphans for the scrubber.
func (s *Store) Delete(ctx context.Context, id chunk.ID) error {
	order, _, _, _ := s.readOrder(id, s.cfg.Copies)
	self := order[0]
	errs := make([]error, len(order))
	sem := make(chan struct{}, maxDeleteParallel)
	var wg sync.WaitGroup
	for i, node := range order {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			errs[i] = fmt.Errorf("node %s: %w", node, ctx.Err())
			continue
		}
		wg.Go(func() {
			defer func() { <-sem }()
			errs[i] = s.deleteOne(ctx, self, node, id)
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("delete chunk %s: %w", id, err)
	}
	return nil
}

// joinErrs formats the errors of nodes (errs[i] of nodes[i]) on one line.
func joinErrs(nodes []string, errs []error) string {
	if len(errs) == 0 {
		return "no node answered"
	}
	var b strings.Builder
	for i, err := range errs {
		if i > 0 {
			b.WriteString("; ")
		}
		fmt.Fprintf(&b, "node %s: ", nodes[i])
		b.WriteString(err.Error())
	}
	return b.String()
}
