package etcdmeta

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/wormhole-fs/wormhole/chunker/chunk"
	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
)

// waitQueued waits until n requests are queued in q for dir.
func waitQueued[R any](t *testing.T, q *dirQueues[R], dir meta.Ino, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for q.queued(dir) != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d requests queued for %d, want %d", q.queued(dir), dir, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// markBusy marks dir in q as having a batch being committed, as the first
// of concurrent requests does; q.finish(dir, nil) ends it.
func markBusy[R any](q *dirQueues[R], dir meta.Ino) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.dirs == nil {
		q.dirs = map[meta.Ino][]*waiter[R]{}
	}
	q.dirs[dir] = nil
}

// testDir makes the directory /d the queue tests work in.
func testDir(t *testing.T, s *Store) meta.Attr {
	t.Helper()
	d, err := s.Create(t.Context(), meta.RootIno, "d", meta.CreateArgs{Type: meta.TypeDir, Mode: 0o755})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func revision(t *testing.T) int64 {
	t.Helper()
	resp, err := shared.Client().Get(t.Context(), "revision-probe")
	if err != nil {
		t.Fatal(err)
	}
	return resp.Header.Revision
}

// TestQueuedCreatesShareOneTransaction: creates that queue behind one in
// the same directory are committed together, in one etcd transaction,
// each with the outcome it would have had alone, names given twice
// included.
func TestQueuedCreatesShareOneTransaction(t *testing.T) {
	ctx := t.Context()
	s := newTestStore(t)
	d := testDir(t, s)
	file := meta.CreateArgs{Type: meta.TypeRegular, Mode: 0o644}
	excl := meta.CreateArgs{Type: meta.TypeRegular, Mode: 0o644, Exclusive: true}
	reqs := []struct {
		name string
		args meta.CreateArgs
	}{
		{"a", excl},
		{"b", file}, {"b", file}, // both get the one file
		{"c", excl}, {"c", excl}, // one wins
		{"sub", meta.CreateArgs{Type: meta.TypeDir, Mode: 0o755}},
		{"sub", file}, // a directory is there
		{"ln", meta.CreateArgs{Type: meta.TypeSymlink, Mode: 0o777, Target: "a"}},
	}
	markBusy(&s.creates, d.Ino)
	got := make([]meta.Attr, len(reqs))
	errs := make([]error, len(reqs))
	var wg sync.WaitGroup
	for i, r := range reqs {
		wg.Go(func() { got[i], errs[i] = s.Create(ctx, d.Ino, r.name, r.args) })
		waitQueued(t, &s.creates, d.Ino, i+1) // in this order
	}
	before := revision(t)
	s.creates.finish(d.Ino, nil) // the create they queued behind ends
	wg.Wait()
	if commits := revision(t) - before; commits != 1 {
		t.Errorf("%d queued creates took %d transactions, want 1", len(reqs), commits)
	}

	for i, want := range []error{nil, nil, nil, nil, meta.ErrExists, nil, meta.ErrExists, nil} {
		if !errors.Is(errs[i], want) || (want != nil) != (errs[i] != nil) {
			t.Errorf("create %q #%d: %v, want %v", reqs[i].name, i, errs[i], want)
		}
	}
	if got[1].Ino == 0 || got[1].Ino != got[2].Ino {
		t.Errorf("non-exclusive creates of b got inodes %d and %d, want the same", got[1].Ino, got[2].Ino)
	}
	entries, err := s.ReadDir(ctx, d.Ino, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]meta.Ino{}
	for _, e := range entries {
		names[e.Name] = e.Ino
	}
	want := map[string]meta.Ino{"a": got[0].Ino, "b": got[1].Ino, "c": got[3].Ino, "sub": got[5].Ino, "ln": got[7].Ino}
	if len(names) != len(want) {
		t.Errorf("directory holds %v, want %v", names, want)
	}
	for name, ino := range want {
		if names[name] != ino || ino == 0 {
			t.Errorf("entry %q is inode %d, want %d", name, names[name], ino)
		}
	}
	if a, err := s.GetAttr(ctx, d.Ino); err != nil || a.Nlink != 3 {
		t.Errorf("directory nlink %d (%v), want 3 (one subdirectory)", a.Nlink, err)
	}
	if s.creates.busy(d.Ino) {
		t.Errorf("directory still marked busy after its creates ended")
	}
}

// TestCreateGivesUpWhileQueued: a create whose caller gives up while it
// waits behind another leaves the queue and creates nothing.
func TestCreateGivesUpWhileQueued(t *testing.T) {
	s := newTestStore(t)
	d := testDir(t, s)
	markBusy(&s.creates, d.Ino)
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	_, err := s.Create(ctx, d.Ino, "late", meta.CreateArgs{Type: meta.TypeRegular, Mode: 0o644})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("create given up while queued: %v, want DeadlineExceeded", err)
	}
	waitQueued(t, &s.creates, d.Ino, 0)
	s.creates.finish(d.Ino, nil)
	if _, err := s.Lookup(t.Context(), d.Ino, "late"); !errors.Is(err, meta.ErrNotFound) {
		t.Errorf("lookup of the abandoned name: %v, want ErrNotFound", err)
	}
	// The directory is idle again: a create commits at once.
	if _, err := s.Create(t.Context(), d.Ino, "next", meta.CreateArgs{Type: meta.TypeRegular, Mode: 0o644}); err != nil {
		t.Fatal(err)
	}
}

// TestQueuedUnlinksShareOneTransaction: unlinks that queue behind one in
// the same directory are committed together, in one etcd transaction,
// each with the outcome it would have had alone: a name given twice goes
// once, a directory and a missing name are refused, and of two hard
// links of one file the file goes with the second, its chunks freed
// to that unlink.
func TestQueuedUnlinksShareOneTransaction(t *testing.T) {
	ctx := t.Context()
	s := newTestStore(t)
	d := testDir(t, s)
	file := meta.CreateArgs{Type: meta.TypeRegular, Mode: 0o644}
	var inos []meta.Ino
	for _, name := range []string{"a", "b", "l1"} {
		a, err := s.Create(ctx, d.Ino, name, file)
		if err != nil {
			t.Fatal(err)
		}
		inos = append(inos, a.Ino)
	}
	if _, err := s.Link(ctx, inos[2], d.Ino, "l2"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Create(ctx, d.Ino, "sub", meta.CreateArgs{Type: meta.TypeDir, Mode: 0o755}); err != nil {
		t.Fatal(err)
	}
	ref := chunk.Ref{Index: 0, ID: chunk.NewID(), Len: 10}
	if _, _, err := s.CommitWrite(ctx, inos[2], []chunk.Ref{ref}, nil, 10); err != nil {
		t.Fatal(err)
	}

	names := []string{"a", "a", "b", "missing", "sub", "l1", "l2"}
	markBusy(&s.unlinks, d.Ino)
	freed := make([]meta.Freed, len(names))
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	for i, name := range names {
		wg.Go(func() { freed[i], errs[i] = s.Unlink(ctx, d.Ino, name) })
		waitQueued(t, &s.unlinks, d.Ino, i+1) // in this order
	}
	before := revision(t)
	s.unlinks.finish(d.Ino, nil) // the unlink they queued behind ends
	wg.Wait()
	if commits := revision(t) - before; commits != 1 {
		t.Errorf("%d queued unlinks took %d transactions, want 1", len(names), commits)
	}

	for i, want := range []error{nil, meta.ErrNotFound, nil, meta.ErrNotFound, meta.ErrIsDir, nil, nil} {
		if !errors.Is(errs[i], want) || (want != nil) != (errs[i] != nil) {
			t.Errorf("unlink %q #%d: %v, want %v", names[i], i, errs[i], want)
		}
	}
	if len(freed[5]) != 0 || len(freed[6]) != 1 || freed[6][0].ID != ref.ID {
		t.Errorf("freed by l1 %v and l2 %v, want nothing, then the file's chunk", freed[5], freed[6])
	}
	entries, err := s.ReadDir(ctx, d.Ino, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Name != "sub" {
		t.Errorf("directory holds %v, want only sub", entries)
	}
	for _, ino := range inos {
		if _, err := s.GetAttr(ctx, ino); !errors.Is(err, meta.ErrNotFound) && !errors.Is(err, meta.ErrStale) {
			t.Errorf("inode %d after its last name went: %v, want gone", ino, err)
		}
	}
	if s.unlinks.busy(d.Ino) {
		t.Errorf("directory still marked busy after its unlinks ended")
	}
}
