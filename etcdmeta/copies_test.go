package etcdmeta

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/wormhole-fs/wormhole/chunker/chunk"
	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
)

// makeTree creates under parent, in each of depth levels, files files and
// (below the last level, none) one subdirectory, and returns every inode
// made.
func makeTree(t *testing.T, s *Store, parent meta.Ino, depth, files int) []meta.Ino {
	t.Helper()
	ctx := t.Context()
	var all []meta.Ino
	for level := range depth {
		for i := range files {
			a, err := s.Create(ctx, parent, fmt.Sprintf("f%04d", i), meta.CreateArgs{Type: meta.TypeRegular, Mode: 0o644})
			if err != nil {
				t.Fatal(err)
			}
			all = append(all, a.Ino)
		}
		if level == depth-1 {
			break
		}
		d, err := s.Create(ctx, parent, fmt.Sprintf("d%d", level), meta.CreateArgs{Type: meta.TypeDir, Mode: 0o755})
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, d.Ino)
		parent = d.Ino
	}
	return all
}

func checkCopies(t *testing.T, s *Store, inos []meta.Ino, want uint8) {
	t.Helper()
	attrs, err := s.GetAttrs(t.Context(), inos)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range attrs {
		if a.Ino != 0 && a.Copies != want {
			t.Fatalf("inode %d has copies %d, want %d", a.Ino, a.Copies, want)
		}
	}
}

// TestSetCopiesPagesThroughTree changes a tree whose directories hold more
// entries than one page.
func TestSetCopiesPagesThroughTree(t *testing.T) {
	ctx := t.Context()
	s := newTestStore(t)
	top, err := s.Create(ctx, meta.RootIno, "top", meta.CreateArgs{Type: meta.TypeDir, Mode: 0o755})
	if err != nil {
		t.Fatal(err)
	}
	inos := makeTree(t, s, top.Ino, 3, 2*setCopiesBatch+7)
	n, err := s.SetCopies(ctx, top.Ino, 4, true)
	if err != nil || n != len(inos)+1 {
		t.Fatalf("SetCopies = %d, %v; want %d", n, err, len(inos)+1)
	}
	checkCopies(t, s, append(inos, top.Ino), 4)
	// Created afterwards, at any depth: inherited.
	a, err := s.Create(ctx, inos[len(inos)-1-(2*setCopiesBatch+7)], "late", meta.CreateArgs{Type: meta.TypeRegular, Mode: 0o644})
	if err != nil || a.Copies != 4 {
		t.Fatalf("late create: %+v, %v", a, err)
	}
}

// TestSetCopiesConcurrentWritesAndRemoves changes a tree while files in it
// are written (each commit rewrites the file's inode, so the batch
// transactions keep conflicting) and removed: every file that remains ends
// with the new copies, and removed ones do not fail the change.
func TestSetCopiesConcurrentWritesAndRemoves(t *testing.T) {
	ctx := t.Context()
	s := newTestStore(t)
	top, err := s.Create(ctx, meta.RootIno, "top", meta.CreateArgs{Type: meta.TypeDir, Mode: 0o755})
	if err != nil {
		t.Fatal(err)
	}
	inos := makeTree(t, s, top.Ino, 2, setCopiesBatch+20)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 4 {
		hot := inos[w*7]
		wg.Go(func() {
			for i := uint64(0); ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				r := chunk.Ref{Index: i % 4, ID: chunk.NewID(), Len: 1}
				if _, _, err := s.CommitWrite(ctx, hot, []chunk.Ref{r}, nil, 4); err != nil {
					t.Errorf("write: %v", err)
					return
				}
			}
		})
	}
	wg.Go(func() {
		for i := range 30 {
			if _, err := s.Unlink(ctx, top.Ino, fmt.Sprintf("f%04d", 50+i)); err != nil {
				t.Errorf("unlink: %v", err)
				return
			}
		}
	})
	_, err = s.SetCopies(ctx, top.Ino, 2, true)
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatalf("SetCopies: %v", err)
	}
	checkCopies(t, s, append(inos, top.Ino), 2)
}

func TestSetCopiesCancelled(t *testing.T) {
	s := newTestStore(t)
	top, err := s.Create(t.Context(), meta.RootIno, "top", meta.CreateArgs{Type: meta.TypeDir, Mode: 0o755})
	if err != nil {
		t.Fatal(err)
	}
	makeTree(t, s, top.Ino, 2, 10)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := s.SetCopies(ctx, top.Ino, 2, true); !errors.Is(err, context.Canceled) {
		t.Fatalf("SetCopies with a cancelled context: %v", err)
	}
}
