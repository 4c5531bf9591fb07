package cluster

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/rs/zerolog"
)

// Errors returned by Membership methods; test for them with errors.Is.
var (
	// ErrClosed: the Membership was closed.
	ErrClosed = errors.New("cluster membership closed")
	// ErrNotStarted: the call needs Start to have succeeded.
	ErrNotStarted = errors.New("cluster membership not started")
	// ErrJoin: no seed could be joined: every seed was unreachable, or
	// answered in a way this node could not decrypt (another cluster
	// secret: "no installed keys could decrypt the message").
	ErrJoin = errors.New("no seed could be joined")
)

// Membership is this node's view of who is in the cluster. Its methods are
// safe for concurrent use.
type Membership struct {
	cfg Config
	log zerolog.Logger

	// life serializes Start and Close; leave serializes Leave calls.
	life, leave sync.Mutex
	// wg tracks goroutines Start runs; subWG the context.AfterFunc
	// callbacks of subscriptions.
	wg, subWG sync.WaitGroup

	// mu guards everything below. It is a leaf lock: memberlist calls the
	// delegates with its own locks held, so nothing is called on
	// memberlist while mu is held.
	mu      sync.Mutex
	ml      *memberlist.Memberlist // set once Start succeeds
	closed  bool
	facts   Node   // our facts as last gossiped
	meta    []byte // facts encoded for memberlist
	view    map[string]Node
	leaving map[string]time.Time // nodes that announced a graceful leave
	acks    chan string          // leave acks, while Leave waits for them
	subs    map[*subscriber]struct{}
}

type subscriber struct {
	ch      chan Event
	stop    func() bool // stops the context.AfterFunc
	dropped uint64
}

// New checks cfg and returns a Membership that has not started anything.
// Zero fields of cfg that DefaultConfig sets take their default.
func New(cfg Config, log zerolog.Logger) (*Membership, error) {
	def := DefaultConfig()
	if cfg.BindAddr == "" {
		cfg.BindAddr = def.BindAddr
	}
	if cfg.Profile == "" {
		cfg.Profile = def.Profile
	}
	if cfg.UpdateTimeout == 0 {
		cfg.UpdateTimeout = def.UpdateTimeout
	}
	if cfg.EventBuffer == 0 {
		cfg.EventBuffer = def.EventBuffer
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.SecretKey = slices.Clone(cfg.SecretKey)
	cfg.Seeds = slices.Clone(cfg.Seeds)
	return &Membership{
		cfg:     cfg,
		log:     log,
		facts:   Node{ID: cfg.NodeID, State: StateUnknown},
		view:    make(map[string]Node),
		leaving: make(map[string]time.Time),
		subs:    make(map[*subscriber]struct{}),
	}, nil
}

// Start binds the gossip ports, then joins the seeds, waiting at most until
// ctx is done; ctx does not bound the membership's life, Close does. With
// no seeds the node starts a cluster of its own. The error wraps
// syscall.EADDRINUSE when the bind address is taken, and ErrJoin, naming
// the seeds, when none could be joined. On error everything started is
// stopped again and Start may be retried.
func (m *Membership) Start(ctx context.Context) error {
	m.life.Lock()
	defer m.life.Unlock()
	m.mu.Lock()
	closed, started := m.closed, m.ml != nil
	m.mu.Unlock()
	switch {
	case closed:
		return ErrClosed
	case started:
		return errors.New("cluster membership already started")
	}

	if err := m.refreshFacts(); err != nil {
		return err
	}
	mc, err := m.cfg.memberlistConfig()
	if err != nil {
		return err
	}
	mc.Delegate = (*delegate)(m)
	mc.Events = (*eventDelegate)(m)
	mc.Logger = newStdLogger(m.log.With().Str("lib", "memberlist").Logger())

	if err := checkBindable(m.cfg.BindAddr); err != nil {
		return err
	}
	ml, err := memberlist.Create(mc)
	if err != nil {
		return fmt.Errorf("start gossip on %s: %w", m.cfg.BindAddr, err)
	}
	m.mu.Lock()
	m.ml = ml
	m.mu.Unlock()

	if err := m.join(ctx, ml); err != nil {
		if serr := ml.Shutdown(); serr != nil {
			m.log.Warn().Err(serr).Msg("stop gossip after failed join")
		}
		m.mu.Lock()
		m.ml = nil
		clear(m.view)
		m.mu.Unlock()
		return err
	}
	self := m.Self()
	m.log.Info().Str("addr", self.Addr).Int("members", len(m.Members())).Msg("gossip started")
	return nil
}

// join joins the configured seeds, if any, giving up when ctx ends.
func (m *Membership) join(ctx context.Context, ml *memberlist.Memberlist) error {
	if len(m.cfg.Seeds) == 0 {
		return nil
	}
	type result struct {
		n   int
		err error
	}
	done := make(chan result, 1)
	m.wg.Go(func() {
		n, err := ml.Join(m.cfg.Seeds)
		done <- result{n, err}
	})
	seeds := strings.Join(m.cfg.Seeds, ", ")
	select {
	case r := <-done:
		if r.n == 0 {
			return fmt.Errorf("join cluster via %s: %w (are they up, and do they share this cluster's secret?): %w", seeds, ErrJoin, flatten(r.err))
		}
		return nil
	case <-ctx.Done():
		// Shutting down does not interrupt a join in progress; the
		// attempt ends within memberlist's TCP timeout.
		if err := ml.Shutdown(); err != nil {
			m.log.Warn().Err(err).Msg("stop gossip after cancelled join")
		}
		<-done
		return fmt.Errorf("join cluster via %s: %w", seeds, ctx.Err())
	}
}

// Join asks the nodes at seeds (host:port gossip addresses) to let this
// running node in, as Start does with Config.Seeds, and returns how many
// answered. A node that started alone because every seed was down calls
// it again later. When ctx ends first Join returns its error; the attempt
// itself ends within memberlist's TCP timeout and Close waits for it.
func (m *Membership) Join(ctx context.Context, seeds []string) (int, error) {
	ml, err := m.running()
	if err != nil {
		return 0, err
	}
	if len(seeds) == 0 {
		return 0, nil
	}
	type result struct {
		n   int
		err error
	}
	done := make(chan result, 1)
	m.wg.Go(func() {
		n, err := ml.Join(seeds)
		done <- result{n, err}
	})
	list := strings.Join(seeds, ", ")
	select {
	case r := <-done:
		if r.n == 0 {
			return 0, fmt.Errorf("join cluster via %s: %w: %w", list, ErrJoin, flatten(r.err))
		}
		return r.n, nil
	case <-ctx.Done():
		return 0, fmt.Errorf("join cluster via %s: %w", list, ctx.Err())
	}
}

// errorList is an error made of others, printed on one line.
type errorList []error

func (l errorList) Error() string {
	s := make([]string, len(l))
	for i, err := range l {
		s[i] = err.Error()
	}
	return strings.Join(s, "; ")
}

func (l errorList) Unwrap() []error { return l }

// flatten turns memberlist's multi-line multierror into an errorList.
func flatten(err error) error {
	if w, ok := err.(interface{ WrappedErrors() []error }); ok {
		return errorList(w.WrappedErrors())
	}
	return err
}

// checkBindable tries the TCP and UDP address memberlist is about to bind,
// so that a taken port gives an error naming it and wrapping the system
// error (memberlist flattens it to text). Port 0 cannot be taken.
func checkBindable(addr string) error {
	host, port, err := splitIPPort(addr, true)
	if err != nil || port == 0 {
		return err
	}
	hp := net.JoinHostPort(host, fmt.Sprint(port))
	ln, err := net.Listen("tcp", hp)
	if err != nil {
		return fmt.Errorf("gossip address %s (TCP): %w", hp, err)
	}
	ln.Close()
	pc, err := net.ListenPacket("udp", hp)
	if err != nil {
		return fmt.Errorf("gossip address %s (UDP): %w", hp, err)
	}
	pc.Close()
	return nil
}

// refreshFacts calls Meta and stores the facts and their encoding.
func (m *Membership) refreshFacts() error {
	var facts Node
	if m.cfg.Meta != nil {
		facts = m.cfg.Meta()
	}
	meta, err := encodeMeta(facts)
	if err != nil {
		return fmt.Errorf("node %s: %w", m.cfg.NodeID, err)
	}
	facts.ID = m.cfg.NodeID
	m.mu.Lock()
	facts.Addr, facts.State = m.facts.Addr, m.facts.State
	m.facts, m.meta = facts, meta
	m.mu.Unlock()
	return nil
}

// Self returns this node's facts as last gossiped. Before Start it holds
// only the ID, with StateUnknown.
func (m *Membership) Self() Node {
	m.mu.Lock()
	defer m.mu.Unlock()
	if n, ok := m.view[m.cfg.NodeID]; ok {
		return n
	}
	return m.facts
}

// Members returns the nodes memberlist considers alive or suspect,
// including this one, sorted by ID. See the package doc on suspect nodes.
func (m *Membership) Members() []Node {
	m.mu.Lock()
	nodes := make([]Node, 0, len(m.view))
	for _, n := range m.view {
		nodes = append(nodes, n)
	}
	m.mu.Unlock()
	slices.SortFunc(nodes, func(a, b Node) int { return cmp.Compare(a.ID, b.ID) })
	return nodes
}

// Subscribe returns a channel of membership events from now on, including
// this node's own. It is closed when ctx ends or the Membership is closed
// (at once if it already is).
//
// Events are delivered from memberlist's goroutines, which must never
// wait: when the channel's buffer (Config.EventBuffer) is full the event is
// dropped and a warning logged. A subscriber that may have missed events
// should resynchronize with Members.
func (m *Membership) Subscribe(ctx context.Context) <-chan Event {
	s := &subscriber{ch: make(chan Event, m.cfg.EventBuffer)}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		close(s.ch)
		return s.ch
	}
	m.subs[s] = struct{}{}
	m.subWG.Add(1)
	s.stop = context.AfterFunc(ctx, func() {
		defer m.subWG.Done()
		m.mu.Lock()
		defer m.mu.Unlock()
		if _, ok := m.subs[s]; ok {
			delete(m.subs, s)
			close(s.ch)
		}
	})
	return s.ch
}

// publish hands e to every subscriber without blocking. Called with mu held.
func (m *Membership) publish(e Event) {
	for s := range m.subs {
		select {
		case s.ch <- e:
		default:
			s.dropped++
			ev := m.log.Debug()
			if s.dropped == 1 {
				ev = m.log.Warn()
			}
			ev.Stringer("kind", e.Kind).Str("node", e.Node.ID).Uint64("dropped", s.dropped).
				Msg("cluster event subscriber too slow, dropping events")
		}
	}
}

// running returns the memberlist, or why there is none.
func (m *Membership) running() (*memberlist.Memberlist, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case m.closed:
		return nil, ErrClosed
	case m.ml == nil:
		return nil, ErrNotStarted
	}
	return m.ml, nil
}

// UpdateFacts calls Config.Meta again and gossips the result. It waits at
// most Config.UpdateTimeout for the update to be sent to peers; after a
// timeout the new facts still spread with the periodic state exchange.
func (m *Membership) UpdateFacts() error {
	ml, err := m.running()
	if err != nil {
		return err
	}
	if err := m.refreshFacts(); err != nil {
		return err
	}
	if err := ml.UpdateNode(m.cfg.UpdateTimeout); err != nil {
		return fmt.Errorf("gossip facts of node %s: %w", m.cfg.NodeID, err)
	}
	return nil
}

// Leave announces that this node leaves the cluster for good, so that the
// others report EventLeave rather than EventFail, and waits at most timeout
// for the announcement to spread. Close must still be called.
func (m *Membership) Leave(timeout time.Duration) error {
	ml, err := m.running()
	if err != nil {
		return err
	}
	if timeout <= 0 {
		return fmt.Errorf("leave cluster: timeout %v, want > 0", timeout)
	}
	m.leave.Lock()
	defer m.leave.Unlock()
	deadline := time.Now().Add(timeout)
	m.announceLeave(ml, timeout/2)
	if err := ml.Leave(time.Until(deadline)); err != nil {
		return fmt.Errorf("leave cluster: %w", err)
	}
	m.log.Info().Msg("left cluster")
	return nil
}

// Close stops gossip (without leaving: the others will report EventFail
// unless Leave was called), closes every subscription and waits for every
// goroutine the Membership started. memberlist's Shutdown does not wait for
// a failure-detection probe in flight; that goroutine ends by itself within
// one probe interval. Close is idempotent.
func (m *Membership) Close() error {
	m.life.Lock()
	defer m.life.Unlock()
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	ml := m.ml
	m.mu.Unlock()

	var err error
	if ml != nil {
		if serr := ml.Shutdown(); serr != nil {
			err = fmt.Errorf("stop gossip: %w", serr)
		}
	}
	m.wg.Wait()

	m.mu.Lock()
	for s := range m.subs {
		if s.stop() {
			m.subWG.Done()
		}
		delete(m.subs, s)
		close(s.ch)
	}
	m.mu.Unlock()
	m.subWG.Wait()
	return err
}
