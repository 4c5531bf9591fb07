package repair

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/wormhole-fs/wormhole/chunker/chunk"
	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
)

// Chunks is the worker's view of the namespace; the appliance implements it
// over etcdmeta.Store. Methods must be safe for concurrent use.
type Chunks interface {
	// ForEachChunk calls fn with every chunk reference of every file
	// (etcdmeta.Store.ForEachChunk). It may reflect no single moment, but
	// every read it makes must be linearizable (or at a revision read
	// after the call began): a reference that exists when it is called
	// and is not removed meanwhile must be seen. The orphan collector
	// deletes chunks it does not see. An error of fn stops it and is
	// returned.
	ForEachChunk(ctx context.Context, fn func(ino meta.Ino, ref chunk.Ref) error) error
	// Copies returns how many copies the inode's chunks want
	// (meta.Attr.Copies), 0 for the cluster default. An error wrapping
	// meta.ErrNotFound or meta.ErrStale means the file is gone: its chunks
	// are skipped.
	Copies(ctx context.Context, ino meta.Ino) (int, error)
}

// Placement says where chunks belong; the appliance implements it with
// replica.Store.Holders. It must be safe for concurrent use, must not block,
// and should exclude draining nodes (the worker drops draining and dead nodes
// from its answer anyway).
type Placement interface {
	// Targets returns the nodes that should hold id when it wants copies
	// copies, best first; fewer when fewer nodes are eligible.
	Targets(id chunk.ID, copies int) []string
}

// Cluster is the worker's view of the nodes. Methods must be safe for
// concurrent use and must not block on the network.
type Cluster interface {
	// Nodes returns every known node with its state. A node missing from
	// the list is gone for good: its copies are not counted.
	Nodes() []Node
	// Store returns the chunk store of a node: this node's LocalStore, or a
	// peer.Client for the others. It may return the same value every time.
	Store(nodeID string) (NodeStore, error)
}

// Node is one node as the worker sees it.
type Node struct {
	// ID names the node, as in Placement and Cluster.Store.
	ID string
	// Alive is false for a node the cluster considers down.
	Alive bool
	// DownSince is when a node that is not alive went down; zero if
	// unknown (the worker then counts from when it first saw it down).
	DownSince time.Time
	// Draining marks a node being emptied: it is never a target, and its
	// copies are deleted once the chunk's targets hold theirs.
	Draining bool
}

// NodeStore is one node's chunk store; peer.Client and chunker.LocalStore
// satisfy it. Methods must be safe for concurrent use and idempotent; errors
// must wrap chunk.ErrNotFound for a missing chunk and chunk.ErrCorrupt for a
// copy that fails verification. A store that also has
// Has(ctx, id) (bool, error), as peer.Client does, is asked that instead of
// Get to verify a copy before other copies are deleted.
type NodeStore interface {
	// Get returns the verified data of chunk id.
	Get(ctx context.Context, id chunk.ID) ([]byte, error)
	// Put stores data as chunk id durably and returns its checksum.
	Put(ctx context.Context, id chunk.ID, data []byte) (chunk.Sum, error)
	// Delete removes chunk id; a missing chunk is not an error.
	Delete(ctx context.Context, id chunk.ID) error
	// List calls fn with every chunk ID held, each once; nil only for a
	// complete list.
	List(ctx context.Context, fn func(id chunk.ID) error) error
}

// hasStore is the optional verification a NodeStore may offer.
type hasStore interface {
	Has(ctx context.Context, id chunk.ID) (bool, error)
}

// Config tunes a Worker. Zero fields take their defaults (DefaultConfig),
// except Name, which is required.
type Config struct {
	// Name is this node's ID: the value it campaigns with, Progress.Leader
	// while it leads, and the copy source preferred when it holds a chunk.
	Name string
	// Copies is the cluster's default redundancy, for inodes with
	// Copies 0. Default 2 (as replica.Config).
	Copies int
	// Grace is how long a node may be down before its chunks are copied
	// elsewhere. Default 10 minutes.
	Grace time.Duration
	// Bandwidth bounds the bytes copied per second, over all parallel
	// copies. Default 64 MiB/s; negative means unlimited.
	Bandwidth int64
	// Interval is the time between passes when nothing asks for one
	// (Kick). Default 1 minute.
	Interval time.Duration
	// Parallel is how many work items run at once. Default 4.
	Parallel int
	// Timeout bounds each operation on one node. Default 2 minutes.
	Timeout time.Duration
	// SessionTTL is the lease TTL of the leader's election session,
	// rounded up to whole seconds: how long a crashed leader blocks
	// a successor. Default 10 seconds.
	SessionTTL time.Duration
	// ProgressEvery is how often a running pass writes its progress to
	// etcd (each write also checks leadership). Default 5 seconds.
	ProgressEvery time.Duration
	// MaxQueue bounds the work items a pass keeps (about 170 bytes each);
	// the most urgent are kept and a further pass follows at once.
	// Default 1 << 20.
	MaxQueue int
	// OrphanGrace is how long a chunk no file refers to is kept before
	// it is deleted (see "Orphans" in the package documentation): longer
	// than any write takes between storing its chunks and committing
	// them. Default 1 hour; negative turns the collection off.
	OrphanGrace time.Duration
}

// DefaultConfig returns the defaults; Name is left empty.
func DefaultConfig() Config {
	return Config{
		Copies:        2,
		Grace:         10 * time.Minute,
		Bandwidth:     64 << 20,
		Interval:      time.Minute,
		Parallel:      4,
		Timeout:       2 * time.Minute,
		SessionTTL:    10 * time.Second,
		ProgressEvery: 5 * time.Second,
		MaxQueue:      1 << 20,
		OrphanGrace:   time.Hour,
	}
}

// withDefaults returns c with its zero fields set to the defaults.
func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.Copies == 0 {
		c.Copies = d.Copies
	}
	if c.Grace == 0 {
		c.Grace = d.Grace
	}
	if c.Bandwidth == 0 {
		c.Bandwidth = d.Bandwidth
	}
	if c.Interval == 0 {
		c.Interval = d.Interval
	}
	if c.Parallel == 0 {
		c.Parallel = d.Parallel
	}
	if c.Timeout == 0 {
		c.Timeout = d.Timeout
	}
	if c.SessionTTL == 0 {
		c.SessionTTL = d.SessionTTL
	}
	if c.ProgressEvery == 0 {
		c.ProgressEvery = d.ProgressEvery
	}
	if c.MaxQueue == 0 {
		c.MaxQueue = d.MaxQueue
	}
	if c.OrphanGrace == 0 {
		c.OrphanGrace = d.OrphanGrace
	}
	return c
}

// Validate checks a Config whose zero fields have been given defaults (as
// New does).
func (c Config) Validate() error {
	var errs []error
	if c.Name == "" {
		errs = append(errs, errors.New("name is required"))
	}
	if c.Copies < 1 || c.Copies > meta.MaxCopies {
		errs = append(errs, fmt.Errorf("copies %d not in [1, %d]", c.Copies, meta.MaxCopies))
	}
	if c.Grace < 0 {
		errs = append(errs, fmt.Errorf("grace %v is negative", c.Grace))
	}
	if c.Interval <= 0 || c.Timeout <= 0 || c.SessionTTL <= 0 || c.ProgressEvery <= 0 {
		errs = append(errs, errors.New("interval, timeout, session TTL and progress period must be positive"))
	}
	if c.Parallel < 1 {
		errs = append(errs, fmt.Errorf("parallel %d is below 1", c.Parallel))
	}
	if c.MaxQueue < 1 {
		errs = append(errs, fmt.Errorf("max queue %d is below 1", c.MaxQueue))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("repair config: %w", err)
	}
	return nil
}

// Progress describes the current or last pass. The leader writes it to etcd
// (see State); Worker.Progress returns this worker's own.
type Progress struct {
	// Leader is the Name of the worker that ran the pass.
	Leader string `json:"leader"`
	// Running is true while the pass runs.
	Running bool `json:"running"`
	// Pass numbers passes across leaders.
	Pass uint64 `json:"pass"`
	// Started and Finished bound the pass; Finished is zero while it runs.
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished,omitzero"`
	// ChunksChecked counts the chunk references read from the namespace.
	ChunksChecked int `json:"chunks_checked"`
	// ToCopy and ToDelete are the copies and deletions planned; Copied and
	// Deleted those done.
	ToCopy   int `json:"to_copy"`
	Copied   int `json:"copied"`
	ToDelete int `json:"to_delete"`
	Deleted  int `json:"deleted"`
	// Failed counts work items that could not be completed (no good
	// source, a node refusing a write or a check); the next pass retries.
	Failed int `json:"failed"`
	// BytesCopied is the data written to targets.
	BytesCopied int64 `json:"bytes_copied"`
	// Deferred counts chunks below target left alone because a node has
	// been down for less than the grace period.
	Deferred int `json:"deferred"`
	// Unavailable counts referenced chunks no listed node holds: lost,
	// on nodes that are down, or written after the inventory was taken.
	Unavailable int `json:"unavailable"`
	// Partial names the nodes whose chunk list failed; the pass deleted
	// nothing.
	Partial []string `json:"partial,omitempty"`
	// Truncated is true when more chunks needed work than MaxQueue.
	Truncated bool `json:"truncated,omitempty"`
	// Scanned is set once the pass has read every chunk reference: from
	// then on ToCopy, ToDelete and DrainRemaining count the whole pass
	// (before, a draining node absent from DrainRemaining only means it
	// has not been counted yet).
	Scanned bool `json:"scanned"`
	// DrainRemaining is, per draining node, how many referenced chunks
	// it still holds: the count of `wormhole drain`.
	DrainRemaining map[string]int `json:"drain_remaining,omitempty"`
	// Orphans counts the chunks listed that no file refers to (set once
	// the references are read); OrphansDeleted the copies of those unreferenced
	// for longer than Config.OrphanGrace that the pass deleted.
	Orphans        int `json:"orphans"`
	OrphansDeleted int `json:"orphans_deleted"`
	// LastError is the last error the pass met, if any.
	LastError string `json:"last_error,omitempty"`
}

// Totals counts the work this worker did as leader since it was made,
// over all its passes: counters for monitoring, which only grow (a
// pass's Progress starts again from zero, and etcd keeps only the last).
type Totals struct {
	Passes         uint64 // passes finished
	Copied         uint64 // chunk copies made
	BytesCopied    uint64
	Deleted        uint64 // extra copies removed
	OrphansDeleted uint64 // copies of unreferenced chunks removed
	Failed         uint64 // work items that failed (retried by a later pass)
}

// clone returns a copy of p that shares no memory with it.
func (p Progress) clone() Progress {
	p.Partial = append([]string(nil), p.Partial...)
	p.DrainRemaining = maps.Clone(p.DrainRemaining)
	return p
}

// errLostLeadership means a fenced comparison failed or the session ended:
// another worker may be leader.
var errLostLeadership = errors.New("repair: lost leadership")

// Worker is the repair worker of one node; see the package documentation.
// Its methods are safe for concurrent use.
type Worker struct {
	cfg    Config
	cli    *clientv3.Client
	prefix string
	chunks Chunks
	place  Placement
	nodes  Cluster
	log    zerolog.Logger
	thr    *throttle

	kick    chan struct{}
	running atomic.Bool

	mu    sync.Mutex
	prog  Progress
	total Totals // updated with prog, under mu

	// firstDown records when this worker first saw a node down without
	// a DownSince; only Run's goroutine uses it.
	firstDown map[string]time.Time
	// orphans records, for each chunk a pass found unreferenced, the end
	// of the listing of the first pass that found it so (at most
	// maxOrphans of them); only Run's goroutine uses it.
	orphans map[chunk.ID]time.Time
	// now is the clock (time.Now).
	now func() time.Time
}

// New returns a Worker with the configuration cfg (zero fields take their
// defaults) that campaigns on the etcd cli under keyPrefix (a cluster's key
// prefix, such as "/wh/<cluster-id>/"; the worker uses keyPrefix+"repair/")
// and acts on ch, pl and cl. It starts nothing: call Run.
func New(cfg Config, cli *clientv3.Client, keyPrefix string, ch Chunks, pl Placement, cl Cluster, log zerolog.Logger) (*Worker, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cli == nil || ch == nil || pl == nil || cl == nil {
		return nil, errors.New("repair: nil etcd client, chunks, placement or cluster")
	}
	return &Worker{
		cfg:       cfg,
		cli:       cli,
		prefix:    keyPrefix + "repair/",
		chunks:    ch,
		place:     pl,
		nodes:     cl,
		log:       log.With().Str("component", "repair").Logger(),
		thr:       newThrottle(cfg.Bandwidth),
		kick:      make(chan struct{}, 1),
		firstDown: map[string]time.Time{},
		orphans:   map[chunk.ID]time.Time{},
		now:       time.Now,
	}, nil
}

// Config returns the configuration in effect, defaults applied.
func (w *Worker) Config() Config { return w.cfg }

// Kick asks for a pass soon (membership or a policy changed). It never
// blocks; on a worker that is not leader it does nothing useful.
func (w *Worker) Kick() {
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

// Progress returns this worker's view: the pass it runs or ran last as
// leader, or, when it has not led, the record the last leader wrote as read
// when this worker last became leader (zero before). Use State for the
// cluster's current record on any node.
func (w *Worker) Progress() Progress {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.prog.clone()
}

// Totals returns the work this worker did since it was made.
func (w *Worker) Totals() Totals {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.total
}

// update changes the worker's progress (and totals) under its lock.
func (w *Worker) update(fn func(p *Progress)) {
	w.mu.Lock()
	fn(&w.prog)
	w.mu.Unlock()
}

// State returns the progress record the leader last wrote to etcd (at most
// Config.ProgressEvery old while a pass runs), or a zero Progress if none was
// ever written.
func (w *Worker) State(ctx context.Context) (Progress, error) {
	resp, err := w.cli.Get(ctx, w.stateKey())
	if err != nil {
		return Progress{}, fmt.Errorf("repair: read state: %w", err)
	}
	var p Progress
	if len(resp.Kvs) == 0 {
		return p, nil
	}
	if err := json.Unmarshal(resp.Kvs[0].Value, &p); err != nil {
		return Progress{}, fmt.Errorf("repair: decode state: %w", err)
	}
	return p, nil
}

func (w *Worker) stateKey() string    { return w.prefix + "state" }
func (w *Worker) electionKey() string { return w.prefix + "leader" }

// Run campaigns for leadership and, while leader, runs passes: one at once,
// then one after each Kick or Interval. When it loses leadership it stops the
// pass and campaigns again; etcd errors are retried. It returns nil when ctx
// ends, after every goroutine it started has ended and its election key has
// been released (or left to expire when etcd cannot be reached). Run must not
// be called twice at once.
func (w *Worker) Run(ctx context.Context) error {
	if !w.running.CompareAndSwap(false, true) {
		return errors.New("repair: Run is already running")
	}
	defer w.running.Store(false)
	retry := min(time.Second, w.cfg.SessionTTL)
	for ctx.Err() == nil {
		err := w.term(ctx)
		if ctx.Err() != nil {
			break
		}
		if err != nil && !errors.Is(err, errLostLeadership) {
			w.log.Warn().Err(err).Msg("repair leadership")
		}
		t := time.NewTimer(retry)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
	}
	return nil
}

// errorText returns err's message, or "" for nil, trimmed to a size fit for
// a status record.
func errorText(err error) string {
	if err == nil {
		return ""
	}
	s := err.Error()
	if len(s) > 512 {
		s = s[:512]
	}
	return strings.ToValidUTF8(s, "?")
}
