package repair

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wormhole-fs/wormhole/chunker/chunk"
	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
)

// errScanFailed is the error of a failing scan of the references.
var errScanFailed = errors.New("scan failed")

// TestOrphans: chunks no file refers to are deleted from every node that
// holds them once two passes OrphanGrace apart found them unreferenced; a
// chunk written before a pass and referenced after it (a write in flight)
// and referenced chunks are never deleted, and a failed scan of the
// references deletes nothing.
func TestOrphans(t *testing.T) {
	e := newEnv(t)
	net := newNet("n1", "n2", "n3")
	ch := newChunks()
	write(t, net, ch, 40, 6, 2)
	orphan, inflight := chunk.NewID(), chunk.NewID()
	home := net.Targets(inflight, 1)[0]
	net.mu.Lock()
	net.stores["n1"].chunks[orphan] = []byte("left by a failed write")
	net.stores["n3"].chunks[orphan] = []byte("left by a failed write")
	net.stores[home].chunks[inflight] = []byte("written, not yet committed")
	net.mu.Unlock()

	// A clock the test moves: the grace is measured between the
	// listings of passes.
	var clock atomic.Int64
	clock.Store(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	cfg := testConfig("w1")
	cfg.OrphanGrace = time.Hour
	failing := &failingChunks{fakeChunks: ch}
	failing.ok.Store(true)
	w, err := New(cfg, e.cli, e.prefix, failing, net, fakeCluster{net: net, worker: cfg.Name}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	w.now = func() time.Time { return time.Unix(0, clock.Load()) }
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

	p := waitPass(t, w, 1)
	if p.Orphans != 2 || p.OrphansDeleted != 0 || len(net.opsOf("", "delete")) != 0 {
		t.Fatalf("first sighting: progress %+v, deletions %v; want 2 orphans, none deleted", p, net.opsOf("", "delete"))
	}

	// The write commits; later, within the grace, nothing is deleted.
	ch.mu.Lock()
	ch.files[41] = []chunk.Ref{{ID: inflight, Len: 26}}
	ch.copies[41] = 1
	ch.data[inflight] = []byte("written, not yet committed")
	ch.mu.Unlock()
	clock.Add(int64(30 * time.Minute))
	w.Kick()
	p = waitPass(t, w, 2)
	if p.Orphans != 1 || p.OrphansDeleted != 0 || len(net.opsOf("", "delete")) != 0 {
		t.Fatalf("within the grace: progress %+v, deletions %v; want 1 orphan, none deleted", p, net.opsOf("", "delete"))
	}

	// A scan of the references that fails part way deletes nothing, even
	// past the grace.
	clock.Add(int64(time.Hour))
	failing.ok.Store(false)
	w.Kick()
	p = waitPass(t, w, 3)
	if p.OrphansDeleted != 0 || len(net.opsOf("", "delete")) != 0 {
		t.Fatalf("after a failed scan: progress %+v, deletions %v; want none", p, net.opsOf("", "delete"))
	}

	// Past the grace, with a complete scan: the orphan goes from both
	// holders, the committed chunk and the files' chunks stay.
	failing.ok.Store(true)
	clock.Add(int64(time.Minute))
	w.Kick()
	p = waitPass(t, w, 4)
	if p.OrphansDeleted != 2 || p.Failed != 0 {
		t.Fatalf("past the grace: progress %+v, want 2 copies of the orphan deleted", p)
	}
	for _, o := range net.opsOf("", "delete") {
		if o.id != orphan {
			t.Errorf("deleted %s from %s: not the orphan", o.id, o.node)
		}
	}
	if hs := net.holders(orphan); len(hs) != 0 {
		t.Errorf("orphan still held by %v", hs)
	}
	if hs := net.holders(inflight); len(hs) != 1 {
		t.Errorf("committed chunk held by %v, want its one copy", hs)
	}
	checkConverged(t, net, ch, 2)

	clock.Add(int64(time.Minute))
	w.Kick()
	if p = waitPass(t, w, 5); p.Orphans != 0 || p.OrphansDeleted != 0 {
		t.Fatalf("after the collection: progress %+v, want no orphans", p)
	}
}

// failingChunks fails every scan of the references half way until ok.
type failingChunks struct {
	*fakeChunks
	ok atomic.Bool
}

func (f *failingChunks) ForEachChunk(ctx context.Context, fn func(ino meta.Ino, ref chunk.Ref) error) error {
	n := 0
	return f.fakeChunks.ForEachChunk(ctx, func(ino meta.Ino, ref chunk.Ref) error {
		if n++; n > 2 && !f.ok.Load() {
			return errScanFailed
		}
		return fn(ino, ref)
	})
}
