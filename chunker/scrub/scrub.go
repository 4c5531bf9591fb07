// Package scrub re-reads the chunks of this node's chunk store in the
// background, verifies their checksums and takes bad copies out of
// service.
//
// A Scrubber walks the store (Store.List) in passes, one every
// Config.Interval or when Kick asks, and verifies each chunk
// (Store.Verify), reading at most Config.Rate bytes per second on average
// so client I/O keeps the disk. A copy that fails verification is
// quarantined (Store.Quarantine: moved aside, kept for inspection, no
// longer listed or served) and reported through the onBad callback. Each
// pass first deletes the copies quarantined longer ago than
// Config.QuarantineKeep, when set. A chunk that a client's read found
// damaged is handed over with Suspect and checked the same way at once,
// between passes or within one, instead of at the next pass. The
// scrubber does not rebuild anything itself: a quarantined copy is a
// missing copy, which the repair worker restores from a good copy on
// another node. A chunk listed but gone when verified was deleted
// meanwhile (a write replaced it) and is not an error.
//
// Counters (Stats) are cumulative since New and are safe to read at any
// time, for status and metrics.
//
// The package imports only chunker/chunk from Wormhole; chunker.LocalStore
// implements Store.
package scrub

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/wormhole-fs/wormhole/chunker/chunk"
)

// Store is the node's own chunk store, as the scrubber needs it;
// chunker.LocalStore implements it. Its methods must be safe for use
// concurrently with the store's other users and must return soon after
// ctx is done.
type Store interface {
	// List calls fn with the ID of every chunk held, each once, and
	// stops at the first error, returning it. A chunk put or deleted
	// while List runs may or may not be reported.
	List(ctx context.Context, fn func(id chunk.ID) error) error
	// Verify reads chunk id whole and checks it. It returns the number
	// of bytes it read and nil, or an error wrapping chunk.ErrCorrupt
	// (the copy is bad) or chunk.ErrNotFound (there is no copy).
	Verify(ctx context.Context, id chunk.ID) (size int64, err error)
	// Quarantine moves the copy of chunk id aside: afterwards the store
	// neither lists nor serves it, as if deleted, but keeps the bytes
	// for inspection. A missing chunk yields chunk.ErrNotFound.
	Quarantine(ctx context.Context, id chunk.ID) error
	// PruneQuarantine deletes the copies quarantined before t and
	// returns how many it deleted and their bytes.
	PruneQuarantine(ctx context.Context, t time.Time) (files int, bytes int64, err error)
}

// Config sets the pace of a Scrubber. Zero fields take their defaults
// (DefaultConfig).
type Config struct {
	// Rate is the most bytes per second the scrubber reads, on average:
	// each chunk is read whole at disk speed, then the scrubber waits
	// long enough to keep the average, running at most one second's
	// worth ahead after a pause. Default 16 MiB/s.
	Rate int64
	// Interval is the pause between the end of one pass and the start of
	// the next. Default 24h.
	Interval time.Duration
	// Delay is the wait between Run starting and the first pass, so
	// that a node starting up first serves and catches up on repairs.
	// Kick starts a pass earlier. Default 10m.
	Delay time.Duration
	// QuarantineKeep is how long quarantined copies are kept for
	// inspection: each pass starts by deleting older ones. 0 (the
	// default) keeps them until an operator deletes them.
	QuarantineKeep time.Duration
}

// DefaultConfig returns the default pace: a pass a day at 16 MiB/s, the
// first 10 minutes after Run starts.
func DefaultConfig() Config {
	return Config{Rate: 16 << 20, Interval: 24 * time.Hour, Delay: 10 * time.Minute}
}

// withDefaults fills zero fields with their defaults.
func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.Rate == 0 {
		c.Rate = d.Rate
	}
	if c.Interval == 0 {
		c.Interval = d.Interval
	}
	if c.Delay == 0 {
		c.Delay = d.Delay
	}
	return c
}

// Validate checks c; zero fields are valid (they take defaults).
func (c Config) Validate() error {
	switch {
	case c.Rate < 0:
		return fmt.Errorf("scrub config: rate %d bytes/s: must not be negative", c.Rate)
	case c.Interval < 0:
		return fmt.Errorf("scrub config: interval %s: must not be negative", c.Interval)
	case c.Delay < 0:
		return fmt.Errorf("scrub config: delay %s: must not be negative", c.Delay)
	case c.QuarantineKeep < 0:
		return fmt.Errorf("scrub config: quarantine keep %s: must not be negative", c.QuarantineKeep)
	}
	return nil
}

// Stats are a Scrubber's counters, cumulative since New.
type Stats struct {
	// Passes is the number of passes completed: every chunk listed was
	// visited. A pass cut short by Run's context ending or by List
	// failing is not counted.
	Passes uint64
	// Checked counts the chunks verified good.
	Checked uint64
	// Corrupt counts the copies that failed verification; each was
	// quarantined (unless that failed, which Errors counts too) and
	// reported to onBad.
	Corrupt uint64
	// Missing counts chunks that List reported but that were gone when
	// verified: deleted meanwhile, which is not an error.
	Missing uint64
	// Errors counts what the scrubber could not do: chunks it could not
	// read for a reason other than damage (permissions, too many open
	// files), quarantines that failed and passes cut short by List
	// failing. Each is logged.
	Errors uint64
	// BytesRead counts the bytes Verify read, headers included.
	BytesRead uint64
	// Pruned counts the quarantined copies deleted for being older than
	// Config.QuarantineKeep.
	Pruned uint64
	// Suspects counts the chunks checked because a read found them
	// damaged (Suspect); those found bad count in Corrupt too.
	Suspects uint64
	// LastPassStarted is when the latest pass started, LastPassFinished
	// when the latest completed pass ended; zero before the first.
	LastPassStarted, LastPassFinished time.Time
	// Running is true while a pass is in progress.
	Running bool
}

// Scrubber verifies a Store's chunks in the background; see the package
// documentation. Its methods are safe for concurrent use.
type Scrubber struct {
	cfg   Config
	store Store
	onBad func(id chunk.ID, reason string)
	log   zerolog.Logger

	kick     chan struct{} // capacity 1: a pass requested by Kick
	suspects chan chunk.ID // chunks to check at once (Suspect)
	busy     atomic.Bool   // Run is running

	mu    sync.Mutex
	stats Stats
	ended chan struct{} // closed, and replaced, when a pass ends; for tests
}

// New returns a Scrubber of st with the pace cfg (zero fields take their
// defaults). onBad, if not nil, is called for each copy found corrupt,
// after it is quarantined, with the chunk and the reason (the
// verification error); it runs on the scrubber's goroutine, so it must
// not block long (the appliance kicks the repair worker). New starts
// nothing: Run does the work.
func New(cfg Config, st Store, onBad func(id chunk.ID, reason string), log zerolog.Logger) *Scrubber {
	if onBad == nil {
		onBad = func(chunk.ID, string) {}
	}
	return &Scrubber{
		cfg:      cfg.withDefaults(),
		store:    st,
		onBad:    onBad,
		log:      log.With().Str("component", "scrub").Logger(),
		kick:     make(chan struct{}, 1),
		suspects: make(chan chunk.ID, maxSuspects),
		ended:    make(chan struct{}),
	}
}

// Run scrubs until ctx ends: the first pass Config.Delay after it starts,
// then one Config.Interval after the end of each, and one whenever Kick
// asks. It returns nil when ctx ends, promptly, even mid-pass (the pass
// is abandoned, not counted), and leaves no goroutine behind. It fails
// at once if the configuration is invalid or Run is already running.
func (s *Scrubber) Run(ctx context.Context) error {
	if err := s.cfg.Validate(); err != nil {
		return err
	}
	if !s.busy.CompareAndSwap(false, true) {
		return errors.New("scrub: Run called while already running")
	}
	defer s.busy.Store(false)
	s.log.Info().Int64("rate_bytes_per_sec", s.cfg.Rate).Dur("interval", s.cfg.Interval).
		Dur("delay", s.cfg.Delay).Msg("scrubber started")

	timer := time.NewTimer(s.cfg.Delay)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case id := <-s.suspects:
			s.checkSuspect(ctx, id)
			continue
		case <-timer.C:
		case <-s.kick:
			s.log.Info().Msg("scrub pass requested")
		}
		s.pass(ctx)
		if ctx.Err() != nil {
			return nil
		}
		timer.Reset(s.cfg.Interval)
	}
}

// Kick asks Run to start a pass now rather than at its next scheduled
// time; the schedule then continues from the end of that pass. It does
// not block. A Kick while a pass is running does nothing (that pass is
// visiting every chunk already); Kicks before Run starts are remembered
// (as one).
func (s *Scrubber) Kick() {
	s.mu.Lock()
	running := s.stats.Running
	s.mu.Unlock()
	if running {
		return
	}
	select {
	case s.kick <- struct{}{}:
	default: // a pass is requested already
	}
}

// maxSuspects bounds the chunks waiting to be checked at once; past it
// Suspect drops them (the next pass finds them).
const maxSuspects = 64

// Suspect asks for chunk id, which a read found damaged, to be checked
// (and quarantined and reported if bad) as soon as Run can, between
// chunks of a pass or between passes. It does not block: with too many
// waiting, id is left to the next pass. Suspects before Run starts wait
// for it.
func (s *Scrubber) Suspect(id chunk.ID) {
	select {
	case s.suspects <- id:
	default:
		s.log.Warn().Str("chunk", id.String()).Msg("too many chunks waiting to be checked; this one waits for the next pass")
	}
}

// checkSuspects checks the chunks waiting, without blocking.
func (s *Scrubber) checkSuspects(ctx context.Context) {
	for {
		select {
		case id := <-s.suspects:
			s.checkSuspect(ctx, id)
		default:
			return
		}
	}
}

// checkSuspect verifies chunk id, which a read found damaged: a bad copy
// is quarantined and reported as in a pass; one gone meanwhile (already
// set aside, or replaced) is nothing; one that verifies was damaged only
// on the way (a transient read error).
func (s *Scrubber) checkSuspect(ctx context.Context, id chunk.ID) {
	s.update(func(st *Stats) { st.Suspects++ })
	n, err := s.store.Verify(ctx, id)
	if n > 0 {
		s.update(func(st *Stats) { st.BytesRead += uint64(n) })
	}
	switch {
	case err == nil:
		s.log.Warn().Str("chunk", id.String()).Msg("chunk a read found damaged verifies now: left in place")
	case ctx.Err() != nil, errors.Is(err, chunk.ErrNotFound):
	case errors.Is(err, chunk.ErrCorrupt):
		s.corrupt(ctx, id, err)
	default:
		s.update(func(st *Stats) { st.Errors++ })
		s.log.Warn().Err(err).Str("chunk", id.String()).Msg("scrub could not read a chunk a read found damaged")
	}
}

// Stats returns a snapshot of the counters.
func (s *Scrubber) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

// passEnded returns a channel closed when the current or next pass ends,
// completed or not.
func (s *Scrubber) passEnded() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ended
}

// update applies f to the counters under the lock.
func (s *Scrubber) update(f func(st *Stats)) {
	s.mu.Lock()
	f(&s.stats)
	s.mu.Unlock()
}

// pass walks the store once, verifying every chunk at the configured
// rate, and returns when it is done or ctx ends.
func (s *Scrubber) pass(ctx context.Context) {
	start := time.Now()
	s.update(func(st *Stats) { st.Running, st.LastPassStarted = true, start })
	select { // a Kick that raced with this pass's start is served by it
	case <-s.kick:
	default:
	}
	s.prune(ctx, start)
	var (
		before = s.Stats()
		p      = newPacer(s.cfg.Rate, start)
	)
	err := s.store.List(ctx, func(id chunk.ID) error {
		s.checkSuspects(ctx)
		n, err := s.check(ctx, id)
		if err != nil {
			return err
		}
		if n > 0 {
			return wait(ctx, p.take(time.Now(), n))
		}
		return nil
	})

	end := time.Now()
	s.mu.Lock()
	s.stats.Running = false
	if err == nil {
		s.stats.Passes++
		s.stats.LastPassFinished = end
	} else if ctx.Err() == nil {
		s.stats.Errors++
	}
	after := s.stats
	close(s.ended)
	s.ended = make(chan struct{})
	s.mu.Unlock()

	var ev *zerolog.Event
	switch {
	case ctx.Err() != nil:
		ev = s.log.Info().Str("outcome", "stopped")
	case err != nil:
		ev = s.log.Error().Err(err).Str("outcome", "failed")
	default:
		ev = s.log.Info().Str("outcome", "completed")
	}
	ev.Dur("took", end.Sub(start)).
		Uint64("checked", after.Checked-before.Checked).
		Uint64("corrupt", after.Corrupt-before.Corrupt).
		Uint64("missing", after.Missing-before.Missing).
		Uint64("errors", after.Errors-before.Errors).
		Uint64("bytes_read", after.BytesRead-before.BytesRead).
		Msg("scrub pass ended")
}

// prune deletes the copies quarantined longer than Config.QuarantineKeep
// before now (nothing when it is 0). A failure is logged and counted;
// the pass goes on.
func (s *Scrubber) prune(ctx context.Context, now time.Time) {
	if s.cfg.QuarantineKeep <= 0 {
		return
	}
	n, bytes, err := s.store.PruneQuarantine(ctx, now.Add(-s.cfg.QuarantineKeep))
	s.update(func(st *Stats) {
		st.Pruned += uint64(n)
		if err != nil && ctx.Err() == nil {
			st.Errors++
		}
	})
	if err != nil && ctx.Err() == nil {
		s.log.Warn().Err(err).Msg("deleting old quarantined copies")
	}
	if n > 0 {
		s.log.Info().Int("files", n).Int64("bytes", bytes).Dur("keep", s.cfg.QuarantineKeep).
			Msg("deleted quarantined copies older than scrub.quarantine_keep")
	}
}

// check verifies chunk id, quarantines and reports it if it is corrupt,
// and returns the bytes read. It returns an error only when ctx is done,
// which ends the pass.
func (s *Scrubber) check(ctx context.Context, id chunk.ID) (int64, error) {
	n, err := s.store.Verify(ctx, id)
	if n > 0 {
		s.update(func(st *Stats) { st.BytesRead += uint64(n) })
	}
	switch {
	case err == nil:
		s.update(func(st *Stats) { st.Checked++ })
	case ctx.Err() != nil:
		return n, ctx.Err()
	case errors.Is(err, chunk.ErrNotFound):
		s.update(func(st *Stats) { st.Missing++ })
		s.log.Debug().Str("chunk", id.String()).Msg("chunk deleted while scrubbing")
	case errors.Is(err, chunk.ErrCorrupt):
		s.corrupt(ctx, id, err)
	default:
		s.update(func(st *Stats) { st.Errors++ })
		s.log.Warn().Err(err).Str("chunk", id.String()).Msg("scrub could not read chunk")
	}
	return n, nil
}

// corrupt quarantines chunk id, which failed verification with verr, and
// reports it.
func (s *Scrubber) corrupt(ctx context.Context, id chunk.ID, verr error) {
	reason := verr.Error()
	qerr := s.store.Quarantine(ctx, id)
	s.update(func(st *Stats) {
		st.Corrupt++
		if qerr != nil && !errors.Is(qerr, chunk.ErrNotFound) && ctx.Err() == nil {
			st.Errors++
		}
	})
	switch {
	case qerr == nil:
		s.log.Error().Err(verr).Str("chunk", id.String()).Msg("corrupt chunk copy quarantined")
	case errors.Is(qerr, chunk.ErrNotFound):
		// Deleted between Verify and Quarantine: gone either way.
		s.log.Error().Err(verr).Str("chunk", id.String()).Msg("corrupt chunk copy, deleted before quarantine")
	default:
		s.log.Error().Err(verr).AnErr("quarantine_error", qerr).Str("chunk", id.String()).
			Msg("corrupt chunk copy, quarantine failed: it stays in place (reads of it fail)")
		reason += "; quarantine failed: " + qerr.Error()
	}
	s.onBad(id, reason)
}

// wait blocks for d or until ctx ends, returning ctx's error then.
func wait(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
