package replica

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/wormhole-fs/wormhole/chunker/chunk"
	"github.com/wormhole-fs/wormhole/chunker/placement"
)

// ErrNotEnoughNodes means fewer nodes than the redundancy policy needs
// could be reached: a Put stored fewer than MinCopies copies (and removed
// the ones it stored), or a Get found no copy while some possible holder
// was down or unreachable. It is a condition of the cluster, not of the
// request: the same request may succeed once nodes return. The NFS front
// maps it to a retry-later or I/O error status. It is chunk.ErrUnavailable,
// so layers that import only chunker/chunk can test for it.
var ErrNotEnoughNodes = chunk.ErrUnavailable

// Node is one chunk holder as the replicator sees it.
type Node struct {
	// ID names the node; it is the key of placement and of Dialer.
	ID string
	// Zone is the node's failure domain; copies spread over zones first.
	Zone string
	// Tier is the node's storage class.
	Tier string
	// Weight is the node's free space in bytes: its share of new
	// chunks. A node with Weight <= 0 receives no new chunks but is still
	// read from and deleted from.
	Weight float64
	// Alive is false for a node the cluster considers down; it is
	// neither written to nor read from.
	Alive bool
}

// Membership is the replicator's view of the cluster. The appliance
// adapts cluster.Membership to it. Methods must be safe for concurrent use
// and must not block: they are called on every chunk operation.
type Membership interface {
	// SelfID returns the ID of this node.
	SelfID() string
	// Nodes returns every known node, this one included. The caller does
	// not modify the slice.
	Nodes() []Node
}

// Remote is a chunk store on another node; peer.Client satisfies it.
// Methods must be safe for concurrent use and idempotent, and their errors
// must wrap chunk.ErrNotFound for a missing chunk and chunk.ErrCorrupt for
// a copy that fails verification.
type Remote interface {
	// Put stores data as chunk id durably and returns its checksum.
	Put(ctx context.Context, id chunk.ID, data []byte) (chunk.Sum, error)
	// Get returns the verified data of chunk id.
	Get(ctx context.Context, id chunk.ID) ([]byte, error)
	// Has reports whether the node holds a good copy of chunk id.
	Has(ctx context.Context, id chunk.ID) (bool, error)
	// Delete removes chunk id; a missing chunk is not an error.
	Delete(ctx context.Context, id chunk.ID) error
}

// Dialer returns the Remote of a node. Remote must not block on the
// network (peer.Client connects on first use) and may return the same
// Remote for every call with one node ID.
type Dialer interface {
	Remote(nodeID string) (Remote, error)
}

// Local is this node's own chunk store; chunker.LocalStore satisfies it.
// See chunker.Blobs for the contracts of its methods.
type Local interface {
	Put(ctx context.Context, id chunk.ID, data []byte) (chunk.Sum, error)
	Get(ctx context.Context, id chunk.ID) ([]byte, error)
	Delete(ctx context.Context, id chunk.ID) error
}

// Config is the redundancy policy of a Store.
type Config struct {
	// Copies is how many nodes should hold each chunk. Default 2.
	Copies int
	// MinCopies is how many copies must be stored durably before Put
	// succeeds; 1 <= MinCopies <= Copies. When fewer than Copies (but at
	// least MinCopies) copies can be stored, Put succeeds and reports the
	// chunk as under-replicated. Default: Copies, so a Put with a node
	// missing fails instead of silently lowering redundancy.
	MinCopies int
	// Timeout bounds each operation on one node. Default 30s.
	Timeout time.Duration
	// ReportBuffer is the capacity of the Reports channel. Default 1024.
	ReportBuffer int
}

// DefaultConfig returns the default policy: two copies, both required.
func DefaultConfig() Config {
	return Config{Copies: 2, MinCopies: 2, Timeout: 30 * time.Second, ReportBuffer: 1024}
}

// withDefaults fills zero fields with their defaults.
func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.Copies == 0 {
		c.Copies = d.Copies
	}
	if c.MinCopies == 0 {
		c.MinCopies = c.Copies
	}
	if c.Timeout == 0 {
		c.Timeout = d.Timeout
	}
	if c.ReportBuffer == 0 {
		c.ReportBuffer = d.ReportBuffer
	}
	return c
}

// Validate checks a Config whose zero fields have been given defaults (as
// New does).
func (c Config) Validate() error {
	switch {
	case c.Copies < 1:
		return fmt.Errorf("replica config: copies %d: must be at least 1", c.Copies)
	case c.MinCopies < 1 || c.MinCopies > c.Copies:
		return fmt.Errorf("replica config: min copies %d: must be between 1 and copies (%d)", c.MinCopies, c.Copies)
	case c.Timeout < 0:
		return fmt.Errorf("replica config: timeout %s: must be positive", c.Timeout)
	case c.ReportBuffer < 0:
		return fmt.Errorf("replica config: report buffer %d: must not be negative", c.ReportBuffer)
	}
	return nil
}

// Reason says why a chunk needs repair.
type Reason string

// Reasons of a RepairReport.
const (
	// ReasonCorrupt: Node's copy failed verification.
	ReasonCorrupt Reason = "corrupt"
	// ReasonMissing: Node is one of the chunk's placement targets but
	// holds no copy.
	ReasonMissing Reason = "missing"
	// ReasonUnderReplicated: Put stored fewer than Copies copies.
	ReasonUnderReplicated Reason = "under-replicated"
)

// RepairReport names a chunk whose redundancy is below the policy. The
// repair worker re-reads it from a good holder and copies it to the
// chunk's current placement targets.
type RepairReport struct {
	ID     chunk.ID
	Reason Reason
	// Node holds the bad or missing copy; empty for
	// ReasonUnderReplicated.
	Node string
	// Good lists nodes known to hold a verified copy when the report was
	// made (possibly none).
	Good []string
}

// Store is a chunker.Blobs that keeps Config.Copies copies of every chunk
// on distinct nodes chosen by placement, writing through the node's own
// Local store and other nodes' Remotes. See the package documentation.
//
// A Store is safe for concurrent use. It starts no goroutines of its own:
// each call runs its per-node operations concurrently and waits for them
// before it returns.
type Store struct {
	cfg     Config
	self    Local
	members Membership
	dialer  Dialer
	log     zerolog.Logger
	reports chan RepairReport
	dropped atomic.Uint64
}

// New returns a Store with the policy cfg (zero fields take their
// defaults) over this node's store self, the cluster view m and d, which
// reaches the other nodes.
func New(cfg Config, self Local, m Membership, d Dialer, log zerolog.Logger) (*Store, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if self == nil || m == nil || d == nil {
		return nil, errors.New("replica: New needs a local store, a membership and a dialer")
	}
	return &Store{
		cfg:     cfg,
		self:    self,
		members: m,
		dialer:  d,
		log:     log.With().Str("component", "replica").Logger(),
		reports: make(chan RepairReport, cfg.ReportBuffer),
	}, nil
}

// Config returns the policy in effect, defaults applied.
func (s *Store) Config() Config { return s.cfg }

// Reports returns the channel of repair reports. It is bounded: when it is
// full, new reports are dropped and counted (DroppedReports) so that chunk
// I/O never waits for the repair worker. It is never closed. A dropped
// report is not lost for good: the next read of the chunk, or a scrub,
// finds the same fault again.
func (s *Store) Reports() <-chan RepairReport { return s.reports }

// DroppedReports returns how many reports were dropped because the Reports
// channel was full.
func (s *Store) DroppedReports() uint64 { return s.dropped.Load() }

// report queues r without blocking.
func (s *Store) report(r RepairReport) {
	select {
	case s.reports <- r:
	default:
		if n := s.dropped.Add(1); n&(n-1) == 0 { // log at powers of two
			s.log.Warn().Uint64("dropped", n).Msg("repair report queue full; reports dropped")
		}
	}
}

// Holders returns the nodes that should hold chunk id under the current
// membership, best first: the first copies alive nodes with free space, by
// placement (Config.Copies when copies <= 0, as for a chunk of an inode
// with the cluster's default redundancy). It may return fewer when fewer
// are eligible.
func (s *Store) Holders(id chunk.ID, copies int) []string {
	if copies <= 0 {
		copies = s.cfg.Copies
	}
	_, cands, _ := s.candidates()
	return placement.Place(id[:], copies, cands)
}

// policy returns how many copies an operation with ctx wants and how many
// a Put must store to succeed. A count from chunk.WithCopies overrides
// Config.Copies. The minimum follows it: all n copies when the
// configuration requires every copy (MinCopies == Copies), else MinCopies
// capped at n.
func (s *Store) policy(ctx context.Context) (copies, minCopies int) {
	copies, minCopies = s.cfg.Copies, s.cfg.MinCopies
	n, _ := chunk.CopiesFrom(ctx)
	switch {
	case n <= 0 || n == copies:
		return copies, minCopies
	case minCopies == copies:
		return n, n
	}
	return n, min(minCopies, n)
}

// candidates returns this node's ID, the alive nodes eligible for new
// chunks as placement candidates, and the alive nodes that are not
// (Weight <= 0).
func (s *Store) candidates() (self string, cands []placement.Candidate, full []placement.Candidate) {
	self = s.members.SelfID()
	for _, n := range s.members.Nodes() {
		if !n.Alive || n.ID == "" {
			continue
		}
		c := placement.Candidate{ID: n.ID, Zone: n.Zone, Tier: n.Tier, Weight: n.Weight}
		if n.Weight > 0 {
			cands = append(cands, c)
		} else {
			full = append(full, c)
		}
	}
	return self, cands, full
}

// readOrder returns every alive node in the order a read searches them:
// this node first, then the placement ranking of the nodes with free
// space, then the full nodes (ranked as if of equal weight). targets are
// the first copies ranked nodes, the chunk's placement targets;
// selfTarget reports whether this node is one. down counts the nodes that
// are not alive and so not searched.
func (s *Store) readOrder(id chunk.ID, copies int) (order []string, targets []string, selfTarget bool, down int) {
	self, cands, full := s.candidates()
	ranked := placement.Place(id[:], len(cands), cands)
	for i := range full {
		full[i].Weight = 1
	}
	ranked = append(ranked, placement.Place(id[:], len(full), full)...)
	targets = ranked[:min(copies, len(ranked))]
	selfTarget = slices.Contains(targets, self)

	order = make([]string, 0, len(ranked)+1)
	order = append(order, self)
	for _, n := range ranked {
		if n != self {
			order = append(order, n)
		}
	}
	for _, n := range s.members.Nodes() {
		if !n.Alive && n.ID != self {
			down++
		}
	}
	return order, targets, selfTarget, down
}

// opContext bounds one per-node operation by the Timeout.
func (s *Store) opContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if s.cfg.Timeout <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, s.cfg.Timeout)
}
