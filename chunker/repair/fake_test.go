package repair

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"maps"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/zeebo/blake3"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/wormhole-fs/wormhole/chunker/chunk"
	"github.com/wormhole-fs/wormhole/chunker/placement"
	"github.com/wormhole-fs/wormhole/etcdmeta"
	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
)

// shared is the embedded etcd all tests use; each test campaigns under its
// own prefix.
var (
	shared    *etcdmeta.Embedded
	prefixSeq atomic.Int64
)

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "repair-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	log := zerolog.New(os.Stderr).Level(zerolog.WarnLevel)
	shared, err = etcdmeta.StartEmbedded(ctx, etcdmeta.EmbedConfig{Dir: dir, UnsafeNoFsync: true}, log)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer shared.Close()
	return m.Run()
}

// op is one operation a worker made on a fake node.
type op struct {
	worker string
	kind   string // "get", "put", "delete", "list", "has"
	node   string
	id     chunk.ID
}

// fakeNet is a cluster of in-memory chunk stores, shared by the workers of
// a test; each worker sees it through its own fakeCluster, so operations
// are attributed.
type fakeNet struct {
	mu     sync.Mutex
	nodes  []Node
	stores map[string]*fakeStore
	ops    []op
	// before, if set, runs before each operation is applied, without mu,
	// with the operation's context.
	before func(ctx context.Context, o op)
	// after, if set, runs with mu held after each put and delete.
	after func()
}

// fakeStore is one node's chunks, with failure injection.
type fakeStore struct {
	chunks   map[chunk.ID][]byte
	corrupt  map[chunk.ID]bool // Get fails with chunk.ErrCorrupt
	garbled  map[chunk.ID]bool // Get returns wrong bytes without error
	failList bool
	failPut  bool
}

func newNet(ids ...string) *fakeNet {
	n := &fakeNet{stores: map[string]*fakeStore{}}
	for _, id := range ids {
		n.addNode(Node{ID: id, Alive: true})
	}
	return n
}

func (n *fakeNet) addNode(node Node) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.nodes = append(n.nodes, node)
	n.stores[node.ID] = &fakeStore{
		chunks:  map[chunk.ID][]byte{},
		corrupt: map[chunk.ID]bool{},
		garbled: map[chunk.ID]bool{},
	}
}

// setNode changes node id's state with fn.
func (n *fakeNet) setNode(id string, fn func(*Node)) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for i := range n.nodes {
		if n.nodes[i].ID == id {
			fn(&n.nodes[i])
		}
	}
}

func (n *fakeNet) setHooks(before func(context.Context, op), after func()) {
	n.mu.Lock()
	n.before, n.after = before, after
	n.mu.Unlock()
}

// alive reports whether node id is alive; mu must be held.
func (n *fakeNet) alive(id string) bool {
	for _, node := range n.nodes {
		if node.ID == id {
			return node.Alive
		}
	}
	return false
}

// holders returns the alive nodes holding a good copy of id, sorted.
func (n *fakeNet) holders(id chunk.ID) []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.holdersLocked(id)
}

func (n *fakeNet) holdersLocked(id chunk.ID) []string {
	var hs []string
	for _, node := range n.nodes {
		s := n.stores[node.ID]
		if _, ok := s.chunks[id]; ok && node.Alive && !s.corrupt[id] && !s.garbled[id] {
			hs = append(hs, node.ID)
		}
	}
	slices.Sort(hs)
	return hs
}

// opsOf returns the operations of kind made by worker ("" for any worker).
func (n *fakeNet) opsOf(worker, kind string) []op {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []op
	for _, o := range n.ops {
		if (worker == "" || o.worker == worker) && (kind == "" || o.kind == kind) {
			out = append(out, o)
		}
	}
	return out
}

// targets is the test's placement: rendezvous hashing over the alive,
// non-draining nodes, all of weight 1.
func (n *fakeNet) Targets(id chunk.ID, copies int) []string {
	n.mu.Lock()
	var cands []placement.Candidate
	for _, node := range n.nodes {
		if node.Alive && !node.Draining {
			cands = append(cands, placement.Candidate{ID: node.ID, Weight: 1})
		}
	}
	n.mu.Unlock()
	return placement.Place(id[:], copies, cands)
}

// fakeCluster is one worker's view of a fakeNet.
type fakeCluster struct {
	net    *fakeNet
	worker string
}

func (c fakeCluster) Nodes() []Node {
	c.net.mu.Lock()
	defer c.net.mu.Unlock()
	return slices.Clone(c.net.nodes)
}

func (c fakeCluster) Store(id string) (NodeStore, error) {
	c.net.mu.Lock()
	defer c.net.mu.Unlock()
	if _, ok := c.net.stores[id]; !ok {
		return nil, fmt.Errorf("no node %s", id)
	}
	return nodeStore{net: c.net, node: id, worker: c.worker}, nil
}

var errDown = errors.New("node down")

// nodeStore is a NodeStore of one fake node as one worker reaches it.
type nodeStore struct {
	net    *fakeNet
	node   string
	worker string
}

// begin records the operation, runs the before hook and locks the net; it
// fails for a node that is down.
func (s nodeStore) begin(ctx context.Context, kind string, id chunk.ID) (*fakeStore, error) {
	o := op{worker: s.worker, kind: kind, node: s.node, id: id}
	s.net.mu.Lock()
	s.net.ops = append(s.net.ops, o)
	before := s.net.before
	s.net.mu.Unlock()
	if before != nil {
		before(ctx, o)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.net.mu.Lock()
	if !s.net.alive(s.node) {
		s.net.mu.Unlock()
		return nil, fmt.Errorf("%s %s: %w", kind, s.node, errDown)
	}
	return s.net.stores[s.node], nil
}

func (s nodeStore) Get(ctx context.Context, id chunk.ID) ([]byte, error) {
	st, err := s.begin(ctx, "get", id)
	if err != nil {
		return nil, err
	}
	defer s.net.mu.Unlock()
	data, ok := st.chunks[id]
	switch {
	case !ok:
		return nil, fmt.Errorf("get %s from %s: %w", id, s.node, chunk.ErrNotFound)
	case st.corrupt[id]:
		return nil, fmt.Errorf("get %s from %s: %w", id, s.node, chunk.ErrCorrupt)
	case st.garbled[id]:
		bad := bytes.Clone(data)
		bad[0] ^= 0xff
		return bad, nil
	}
	return bytes.Clone(data), nil
}

func (s nodeStore) Put(ctx context.Context, id chunk.ID, data []byte) (chunk.Sum, error) {
	st, err := s.begin(ctx, "put", id)
	if err != nil {
		return chunk.Sum{}, err
	}
	defer s.net.mu.Unlock()
	if st.failPut {
		return chunk.Sum{}, fmt.Errorf("put %s to %s: %w", id, s.node, chunk.ErrNoSpace)
	}
	st.chunks[id] = bytes.Clone(data)
	delete(st.corrupt, id)
	delete(st.garbled, id)
	if s.net.after != nil {
		s.net.after()
	}
	return chunk.Sum(blake3.Sum256(data)), nil
}

func (s nodeStore) Delete(ctx context.Context, id chunk.ID) error {
	st, err := s.begin(ctx, "delete", id)
	if err != nil {
		return err
	}
	defer s.net.mu.Unlock()
	delete(st.chunks, id)
	delete(st.corrupt, id)
	delete(st.garbled, id)
	if s.net.after != nil {
		s.net.after()
	}
	return nil
}

func (s nodeStore) List(ctx context.Context, fn func(chunk.ID) error) error {
	st, err := s.begin(ctx, "list", chunk.ID{})
	if err != nil {
		return err
	}
	fail := st.failList
	ids := slices.Collect(maps.Keys(st.chunks))
	s.net.mu.Unlock()
	if fail {
		return fmt.Errorf("list %s: %w", s.node, errDown)
	}
	for _, id := range ids {
		if err := fn(id); err != nil {
			return err
		}
	}
	return nil
}

// fakeChunks is an in-memory namespace: files of chunk references, each
// with a copy count.
type fakeChunks struct {
	mu     sync.Mutex
	files  map[meta.Ino][]chunk.Ref
	copies map[meta.Ino]int
	data   map[chunk.ID][]byte
}

func newChunks() *fakeChunks {
	return &fakeChunks{files: map[meta.Ino][]chunk.Ref{}, copies: map[meta.Ino]int{}, data: map[chunk.ID][]byte{}}
}

func (c *fakeChunks) ForEachChunk(ctx context.Context, fn func(meta.Ino, chunk.Ref) error) error {
	c.mu.Lock()
	inos := slices.Sorted(maps.Keys(c.files))
	files := maps.Clone(c.files)
	c.mu.Unlock()
	for _, ino := range inos {
		for _, ref := range files[ino] {
			if err := fn(ino, ref); err != nil {
				return err
			}
		}
	}
	return nil
}

func (c *fakeChunks) Copies(_ context.Context, ino meta.Ino) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n, ok := c.copies[ino]
	if !ok {
		return 0, meta.ErrNotFound
	}
	return n, nil
}

func (c *fakeChunks) setCopies(ino meta.Ino, n int) {
	c.mu.Lock()
	c.copies[ino] = n
	c.mu.Unlock()
}

// want returns the copies chunk id of ino wants, with def the default.
func (c *fakeChunks) want(ino meta.Ino, def int) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if n := c.copies[ino]; n > 0 {
		return n
	}
	return def
}

// refs returns every reference with its inode.
func (c *fakeChunks) refs() map[chunk.ID]meta.Ino {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[chunk.ID]meta.Ino{}
	for ino, refs := range c.files {
		for _, r := range refs {
			out[r.ID] = ino
		}
	}
	return out
}

// write creates file ino of n chunks wanting copies copies and stores each
// chunk on its placement targets under the current membership, as a write
// would.
func write(t *testing.T, net *fakeNet, ch *fakeChunks, ino meta.Ino, n, copies int) []chunk.ID {
	t.Helper()
	var ids []chunk.ID
	for i := range n {
		data := make([]byte, 100+i)
		rand.Read(data)
		id := chunk.NewID()
		targets := net.Targets(id, copies)
		net.mu.Lock()
		for _, node := range targets {
			net.stores[node].chunks[id] = bytes.Clone(data)
		}
		net.mu.Unlock()
		ch.mu.Lock()
		ch.files[ino] = append(ch.files[ino], chunk.Ref{Index: uint64(i), ID: id, Len: uint32(len(data)), Sum: chunk.Sum(blake3.Sum256(data))})
		ch.copies[ino] = copies
		ch.data[id] = data
		ch.mu.Unlock()
		ids = append(ids, id)
	}
	return ids
}

// testConfig is a worker configuration for tests: prompt, unthrottled,
// passes only on start and Kick.
func testConfig(name string) Config {
	return Config{
		Name:          name,
		Copies:        2,
		Bandwidth:     -1,
		Interval:      time.Hour,
		Parallel:      3,
		Timeout:       10 * time.Second,
		SessionTTL:    2 * time.Second,
		ProgressEvery: 20 * time.Millisecond,
	}
}

// testEnv is a test's etcd prefix.
type testEnv struct {
	t      *testing.T
	prefix string
	cli    *clientv3.Client
}

// newEnv returns a test's environment; when the test ends and its workers
// are stopped, it checks that none of their goroutines is left.
func newEnv(t *testing.T) *testEnv {
	t.Cleanup(func() { checkNoWorkerGoroutines(t) })
	return &testEnv{t: t, prefix: fmt.Sprintf("/test-%d/", prefixSeq.Add(1)), cli: shared.Client()}
}

// checkNoWorkerGoroutines fails the test if a goroutine of a Worker is left.
func checkNoWorkerGoroutines(t *testing.T) {
	t.Helper()
	waitFor(t, "worker goroutines to end", func() bool {
		return !strings.Contains(allStacks(), "chunker/repair.(*Worker)")
	})
}

// start runs a worker named cfg.Name over net and ch until the test ends.
func (e *testEnv) start(cfg Config, net *fakeNet, ch *fakeChunks) *Worker {
	t := e.t
	t.Helper()
	w, err := New(cfg, e.cli, e.prefix, ch, net, fakeCluster{net: net, worker: cfg.Name}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("Run did not return after its context ended")
		}
	})
	return w
}

// allStacks returns the stacks of all goroutines.
func allStacks() string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return string(buf[:n])
		}
		buf = make([]byte, 2*len(buf))
	}
}

// waitFor polls cond until it holds, failing the test after a deadline.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

// waitPass waits until w has finished pass n or a later one.
func waitPass(t *testing.T, w *Worker, n uint64) Progress {
	t.Helper()
	var p Progress
	waitFor(t, fmt.Sprintf("pass %d of %s", n, w.cfg.Name), func() bool {
		p = w.Progress()
		return p.Pass >= n && !p.Running && !p.Finished.IsZero()
	})
	return p
}

// waitLeaderPass waits until w, as leader, has finished a pass.
func waitLeaderPass(t *testing.T, w *Worker) Progress {
	t.Helper()
	var p Progress
	waitFor(t, "a pass led by "+w.cfg.Name, func() bool {
		p = w.Progress()
		return p.Leader == w.cfg.Name && !p.Running && !p.Finished.IsZero()
	})
	return p
}

func testLogger(t *testing.T) zerolog.Logger {
	return zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
}

// checkConverged fails unless every chunk is exactly on its targets, with
// its original data.
func checkConverged(t *testing.T, net *fakeNet, ch *fakeChunks, def int) {
	t.Helper()
	for id, ino := range ch.refs() {
		want := slices.Sorted(slices.Values(net.Targets(id, ch.want(ino, def))))
		if got := net.holders(id); !slices.Equal(got, want) {
			t.Errorf("chunk %s of inode %d on %v, want %v", id, ino, got, want)
		}
		net.mu.Lock()
		for _, node := range want {
			if d := net.stores[node].chunks[id]; !bytes.Equal(d, ch.data[id]) {
				t.Errorf("chunk %s on %s has wrong data", id, node)
			}
		}
		net.mu.Unlock()
	}
}

// floorCheck returns an after-hook that records a violation whenever a
// chunk has fewer good copies on alive nodes than its want (or than it had
// when floorCheck was called, if fewer), and the violations.
func floorCheck(net *fakeNet, ch *fakeChunks, def int) (func(), func() []string) {
	var (
		mu         sync.Mutex
		violations []string
	)
	refs := ch.refs()
	floor := map[chunk.ID]int{} // min(want, copies at the start)
	for id, ino := range refs {
		floor[id] = min(ch.want(ino, def), len(net.holders(id)))
	}
	hook := func() { // net.mu is held
		for id, want := range floor {
			if got := len(net.holdersLocked(id)); got < want {
				mu.Lock()
				violations = append(violations, fmt.Sprintf("chunk %s has %d copies, had at least %d", id, got, want))
				mu.Unlock()
			}
		}
	}
	return hook, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(violations)
	}
}
