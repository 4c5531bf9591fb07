package etcdmeta

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
)

// queued waits until n creates are queued for dir.
func queued(t *testing.T, s *Store, dir meta.Ino, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s.creates.mu.Lock()
		got := len(s.creates.dirs[dir])
		s.creates.mu.Unlock()
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d creates queued for %d, want %d", got, dir, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// busy marks dir as having a create being committed, as the first of
// concurrent creates does.
func busy(s *Store, dir meta.Ino) {
	s.creates.mu.Lock()
	defer s.creates.mu.Unlock()
	if s.creates.dirs == nil {
		s.creates.dirs = map[meta.Ino][]*createReq{}
	}
	s.creates.dirs[dir] = nil
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
	d, err := s.Create(ctx, meta.RootIno, "d", meta.CreateArgs{Type: meta.TypeDir, Mode: 0o755})
	if err != nil {
		t.Fatal(err)
	}
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
	busy(s, d.Ino)
	got := make([]meta.Attr, len(reqs))
	errs := make([]error, len(reqs))
	var wg sync.WaitGroup
	for i, r := range reqs {
		wg.Go(func() { got[i], errs[i] = s.Create(ctx, d.Ino, r.name, r.args) })
		queued(t, s, d.Ino, i+1) // in this order
	}
	before := revision(t)
	s.finishCreates(d.Ino, nil) // the create they queued behind ends
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
	s.creates.mu.Lock()
	defer s.creates.mu.Unlock()
	if _, ok := s.creates.dirs[d.Ino]; ok {
		t.Errorf("directory still marked busy after its creates ended")
	}
}

// TestCreateGivesUpWhileQueued: a create whose caller gives up while it
// waits behind another leaves the queue and creates nothing.
func TestCreateGivesUpWhileQueued(t *testing.T) {
	s := newTestStore(t)
	d, err := s.Create(t.Context(), meta.RootIno, "d", meta.CreateArgs{Type: meta.TypeDir, Mode: 0o755})
	if err != nil {
		t.Fatal(err)
	}
	busy(s, d.Ino)
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	_, err = s.Create(ctx, d.Ino, "late", meta.CreateArgs{Type: meta.TypeRegular, Mode: 0o644})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("create given up while queued: %v, want DeadlineExceeded", err)
	}
	queued(t, s, d.Ino, 0)
	s.finishCreates(d.Ino, nil)
	if _, err := s.Lookup(t.Context(), d.Ino, "late"); !errors.Is(err, meta.ErrNotFound) {
		t.Errorf("lookup of the abandoned name: %v, want ErrNotFound", err)
	}
	// The directory is idle again: a create commits at once.
	if _, err := s.Create(t.Context(), d.Ino, "next", meta.CreateArgs{Type: meta.TypeRegular, Mode: 0o644}); err != nil {
		t.Fatal(err)
	}
}
