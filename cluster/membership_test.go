package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/rs/zerolog"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if err := findLeaks(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = 1
		}
	}
	os.Exit(code)
}

// findLeaks waits, up to a deadline, for goroutines other than those
// ignored to end. memberlist's Shutdown does not wait for a probe in
// flight, which ends within one probe interval (1s in the local profile).
func findLeaks(opts ...goleak.Option) error {
	deadline := time.Now().Add(15 * time.Second)
	for {
		err := goleak.Find(opts...) // retries for about a second itself
		if err == nil || time.Now().After(deadline) {
			return err
		}
	}
}

var secret = bytes.Repeat([]byte("wormhole-test-secret!"), 2)

// syncBuffer collects a node's logs; they are printed if the test fails.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

type testNode struct {
	*Membership
	free atomic.Uint64
}

func facts(id string) Node {
	return Node{NFSAddr: id + ".nfs:2049", DataAddr: id + ".data:7070", Zone: "zone-" + id,
		Tier: "ssd", Capacity: 1 << 40, Version: "test"}
}

// newConfig returns a config for a local-profile node on a free loopback port.
func newConfig(id string, seeds ...string) Config {
	c := DefaultConfig()
	c.NodeID = id
	c.BindAddr = "127.0.0.1:0"
	c.Profile = ProfileLocal
	c.SecretKey = secret
	c.Seeds = seeds
	c.UpdateTimeout = 10 * time.Second
	return c
}

// startNode starts a node and closes it when the test ends.
func startNode(t *testing.T, cfg Config) *testNode {
	t.Helper()
	n, err := tryStartNode(t, cfg)
	if err != nil {
		t.Fatalf("start %s: %v", cfg.NodeID, err)
	}
	return n
}

func tryStartNode(t *testing.T, cfg Config) (*testNode, error) {
	t.Helper()
	n := &testNode{}
	n.free.Store(1 << 30)
	id := cfg.NodeID
	cfg.Meta = func() Node {
		f := facts(id)
		f.Free = n.free.Load()
		return f
	}
	var logs syncBuffer
	m, err := New(cfg, zerolog.New(&logs).With().Str("node", id).Logger())
	if err != nil {
		t.Fatal(err)
	}
	n.Membership = m
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("close %s: %v", id, err)
		}
		if t.Failed() {
			t.Logf("logs of %s:\n%s", id, logs.String())
		}
	})
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	return n, m.Start(ctx)
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		<-tick.C
	}
}

// waitEvent reads ch until an event matching want arrives.
func waitEvent(t *testing.T, ch <-chan Event, d time.Duration, want func(Event) bool) Event {
	t.Helper()
	timeout := time.After(d)
	for {
		select {
		case e, ok := <-ch:
			if !ok {
				t.Fatal("event channel closed")
			}
			if want(e) {
				return e
			}
		case <-timeout:
			t.Fatalf("no matching event within %v", d)
		}
	}
}

func ids(nodes []Node) string {
	s := make([]string, len(nodes))
	for i, n := range nodes {
		s[i] = n.ID
	}
	return strings.Join(s, ",")
}

// startThree starts n1, then n2 and n3 joining through n1, and waits until
// every node lists all three.
func startThree(t *testing.T) []*testNode {
	t.Helper()
	n1 := startNode(t, newConfig("n1"))
	seed := n1.Self().Addr
	nodes := []*testNode{n1, startNode(t, newConfig("n2", seed)), startNode(t, newConfig("n3", seed))}
	for _, n := range nodes {
		eventually(t, 20*time.Second, n.Self().ID+" to see 3 members", func() bool {
			return ids(n.Members()) == "n1,n2,n3"
		})
	}
	return nodes
}

func TestThreeNodesSeeEachOther(t *testing.T) {
	nodes := startThree(t)
	for _, n := range nodes {
		self := n.Self()
		if self.State != StateAlive || !strings.HasPrefix(self.Addr, "127.0.0.1:") || strings.HasSuffix(self.Addr, ":0") {
			t.Errorf("%s: Self() = %+v", self.ID, self)
		}
		for _, m := range n.Members() {
			want := facts(m.ID)
			want.ID, want.Free, want.State = m.ID, 1<<30, StateAlive
			want.Addr = nodes[int(m.ID[1]-'1')].Self().Addr
			if m != want {
				t.Errorf("%s sees %+v, want %+v", self.ID, m, want)
			}
		}
	}
}

func TestUpdateFactsPropagates(t *testing.T) {
	nodes := startThree(t)
	sub := nodes[1].Subscribe(t.Context())
	nodes[0].free.Store(12345)
	if err := nodes[0].UpdateFacts(); err != nil {
		t.Fatal(err)
	}
	if got := nodes[0].Self().Free; got != 12345 {
		t.Errorf("Self().Free = %d after update", got)
	}
	waitEvent(t, sub, 20*time.Second, func(e Event) bool {
		return e.Kind == EventUpdate && e.Node.ID == "n1" && e.Node.Free == 12345
	})
	for _, n := range nodes[1:] {
		eventually(t, 20*time.Second, n.Self().ID+" to see n1's new Free", func() bool {
			m := n.Members()
			return len(m) == 3 && m[0].Free == 12345
		})
	}
}

func TestCloseIsReportedAsFail(t *testing.T) {
	nodes := startThree(t)
	sub := nodes[0].Subscribe(t.Context())
	start := time.Now()
	if err := nodes[2].Close(); err != nil {
		t.Fatal(err)
	}
	e := waitEvent(t, sub, 30*time.Second, func(e Event) bool { return e.Node.ID == "n3" && e.Kind != EventUpdate })
	if e.Kind != EventFail || e.Node.State != StateDead || e.Node.Zone != "zone-n3" {
		t.Fatalf("got %v %+v, want fail of n3 with its facts", e.Kind, e.Node)
	}
	t.Logf("failure reported after %v", time.Since(start).Round(time.Millisecond))
	eventually(t, 30*time.Second, "n2 to drop n3", func() bool { return ids(nodes[1].Members()) == "n1,n2" })
}

func TestLeaveIsReportedAsLeave(t *testing.T) {
	nodes := startThree(t)
	subs := []<-chan Event{nodes[0].Subscribe(t.Context()), nodes[1].Subscribe(t.Context())}
	if err := nodes[2].Leave(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	for _, sub := range subs {
		e := waitEvent(t, sub, 20*time.Second, func(e Event) bool { return e.Node.ID == "n3" && e.Kind != EventUpdate })
		if e.Kind != EventLeave || e.Node.State != StateLeft {
			t.Fatalf("got %v %+v, want leave of n3", e.Kind, e.Node)
		}
	}
	if err := nodes[2].Close(); err != nil {
		t.Fatal(err)
	}
	if got := ids(nodes[0].Members()); got != "n1,n2" {
		t.Fatalf("members after leave: %s", got)
	}
}

func TestWrongSecretCannotJoin(t *testing.T) {
	n1 := startNode(t, newConfig("n1"))
	cfg := newConfig("intruder", n1.Self().Addr)
	cfg.SecretKey = bytes.Repeat([]byte{7}, 32)
	_, err := tryStartNode(t, cfg)
	if !errors.Is(err, ErrJoin) || !strings.Contains(err.Error(), n1.Self().Addr) {
		t.Fatalf("err = %v, want ErrJoin naming the seed", err)
	}
	t.Logf("error: %v", err)
	if got := ids(n1.Members()); got != "n1" {
		t.Fatalf("seed lists %s", got)
	}
}

func TestUnreachableSeed(t *testing.T) {
	// A port nobody listens on: bind one and close it.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	_, err = tryStartNode(t, newConfig("lonely", addr))
	if !errors.Is(err, ErrJoin) || !strings.Contains(err.Error(), addr) {
		t.Fatalf("err = %v, want ErrJoin naming %s", err, addr)
	}
}

func TestBindPortInUse(t *testing.T) {
	n1 := startNode(t, newConfig("n1"))
	cfg := newConfig("n2")
	cfg.BindAddr = n1.Self().Addr
	_, err := tryStartNode(t, cfg)
	if !errors.Is(err, syscall.EADDRINUSE) || !strings.Contains(err.Error(), n1.Self().Addr) {
		t.Fatalf("err = %v, want EADDRINUSE naming %s", err, n1.Self().Addr)
	}
	t.Logf("error: %v", err)
}

func TestSubscribeClosesOnCancel(t *testing.T) {
	n := startNode(t, newConfig("n1"))
	ctx, cancel := context.WithCancel(t.Context())
	ch := n.Subscribe(ctx)
	cancel()
	waitClosed(t, ch)

	// Close ends the others, and later subscriptions are closed at once.
	ch = n.Subscribe(t.Context())
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	waitClosed(t, ch)
	waitClosed(t, n.Subscribe(t.Context()))
	if err := n.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := n.UpdateFacts(); !errors.Is(err, ErrClosed) {
		t.Fatalf("UpdateFacts after Close: %v", err)
	}
}

func waitClosed(t *testing.T, ch <-chan Event) {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return
			}
		case <-timeout:
			t.Fatal("channel not closed")
		}
	}
}

// TestSlowSubscriberDoesNotBlock fills a subscriber's buffer and checks
// that gossip goes on.
func TestSlowSubscriberDoesNotBlock(t *testing.T) {
	cfg := newConfig("n1")
	cfg.EventBuffer = 1
	n1 := startNode(t, cfg)
	_ = n1.Subscribe(t.Context()) // never read
	seed := n1.Self().Addr
	startNode(t, newConfig("n2", seed))
	startNode(t, newConfig("n3", seed))
	eventually(t, 20*time.Second, "n1 to see 3 members", func() bool { return len(n1.Members()) == 3 })
}

func TestNoGoroutinesAfterClose(t *testing.T) {
	before := goleak.IgnoreCurrent()
	func() {
		nodes := startThree(t)
		for _, n := range nodes {
			_ = n.Subscribe(context.Background())
			if err := n.Close(); err != nil {
				t.Fatal(err)
			}
		}
	}()
	if err := findLeaks(before); err != nil {
		t.Fatal(err)
	}
}

func TestStartErrors(t *testing.T) {
	n := startNode(t, newConfig("n1"))
	if err := n.Start(t.Context()); err == nil {
		t.Fatal("second Start succeeded")
	}
	m, err := New(newConfig("n2"), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Leave(time.Second); !errors.Is(err, ErrNotStarted) {
		t.Fatalf("Leave before Start: %v", err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if err := m.Start(t.Context()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Start after Close: %v", err)
	}

	cfg := newConfig("big")
	cfg.Meta = func() Node { return Node{Zone: strings.Repeat("z", 600)} }
	m, err = New(cfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Start(t.Context()); !errors.Is(err, ErrMetaTooLarge) {
		t.Fatalf("Start with oversized facts: %v", err)
	}
}

// What memberlist reports after Close (its suspicion timers can fire
// after Shutdown) is neither logged nor published, nor does it change the
// view.
func TestNoEventsAfterClose(t *testing.T) {
	var logs syncBuffer
	cfg := newConfig("a")
	cfg.Meta = func() Node { return facts("a") }
	m, err := New(cfg, zerolog.New(&logs))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	before := logs.String()
	late := &memberlist.Node{Name: "b", Addr: net.ParseIP("127.0.0.9"), Port: 7946, State: memberlist.StateDead}
	d := (*eventDelegate)(m)
	d.NotifyJoin(late)
	d.NotifyUpdate(late)
	d.NotifyLeave(late)
	if after := logs.String(); after != before {
		t.Errorf("logged after Close: %s", strings.TrimPrefix(after, before))
	}
	m.mu.Lock()
	_, listed := m.view["b"]
	m.mu.Unlock()
	if listed {
		t.Error("a node reported after Close is in the view")
	}
}
