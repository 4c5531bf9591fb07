package chunker

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/wormhole-fs/wormhole/chunker/chunk"
)

// listAll returns the IDs s.List reports, failing the test on an error
// or on an ID reported twice.
func listAll(t *testing.T, s *LocalStore) []chunk.ID {
	t.Helper()
	var ids []chunk.ID
	seen := map[chunk.ID]bool{}
	err := s.List(t.Context(), func(id chunk.ID) error {
		if seen[id] {
			t.Errorf("List reported %s twice", id)
		}
		seen[id] = true
		ids = append(ids, id)
		return nil
	})
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	slices.SortFunc(ids, func(a, b chunk.ID) int { return strings.Compare(a.String(), b.String()) })
	return ids
}

func TestLocalListEmpty(t *testing.T) {
	s := openTestStore(t)
	if ids := listAll(t, s); len(ids) != 0 {
		t.Fatalf("List of an empty store = %v", ids)
	}
}

func TestLocalList(t *testing.T) {
	s := openTestStore(t)
	ctx := t.Context()
	var want []chunk.ID
	// More than listBatch chunks in one subdirectory, to cross a batch.
	for i := range listBatch + 10 {
		id := chunk.NewID()
		id[0] = 0x3f
		if i%3 == 0 {
			id = chunk.NewID()
		}
		if _, err := s.Put(ctx, id, []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
		want = append(want, id)
	}
	gone := want[5]
	if err := s.Delete(ctx, gone); err != nil {
		t.Fatal(err)
	}
	want = slices.Delete(want, 5, 6)

	// Things that are not chunks.
	other := chunk.NewID()
	other[0] = 0x01
	stray := map[string]func(string) error{
		// A Put in progress.
		filepath.Join("3f", tmpPrefix+want[1].String()+"-0123456789abcdef"): touch,
		// A temporary file whose name has the length of an ID.
		filepath.Join("3f", (tmpPrefix + strings.Repeat("a", 40))[:32]): touch,
		// A chunk filed under the wrong subdirectory.
		filepath.Join("3f", other.String()): touch,
		// Uppercase hex: not the name Put gives.
		filepath.Join("3f", "3f"+strings.Repeat("A", 30)): touch,
		// Not hex.
		filepath.Join("3f", "3f"+strings.Repeat("z", 30)): touch,
		// A directory with a chunk's name.
		filepath.Join("3f", "3f"+other.String()[2:]): func(p string) error { return os.Mkdir(p, 0o755) },
		// A symlink with a chunk's name.
		filepath.Join("3f", "3f"+strings.Repeat("0", 30)): func(p string) error { return os.Symlink(s.Path(want[1]), p) },
		// A file at the top.
		other.String(): touch,
	}
	for rel, mk := range stray {
		if err := mk(filepath.Join(s.Dir(), rel)); err != nil {
			t.Fatal(err)
		}
	}

	got := listAll(t, s)
	slices.SortFunc(want, func(a, b chunk.ID) int { return strings.Compare(a.String(), b.String()) })
	if !slices.Equal(got, want) {
		t.Fatalf("List reported %d chunks, want the %d stored (first got %v)", len(got), len(want), got[:min(3, len(got))])
	}
}

func touch(p string) error { return os.WriteFile(p, []byte("x"), 0o644) }

func TestLocalListStopsOnError(t *testing.T) {
	s := openTestStore(t)
	ctx := t.Context()
	for range 10 {
		if _, err := s.Put(ctx, chunk.NewID(), []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	stop := errors.New("stop")
	calls := 0
	err := s.List(ctx, func(chunk.ID) error {
		calls++
		if calls == 3 {
			return stop
		}
		return nil
	})
	if err != stop || calls != 3 { //nolint:errorlint // List returns fn's error unchanged
		t.Fatalf("List = %v after %d calls, want fn's error after 3", err, calls)
	}
}

func TestLocalListCancelled(t *testing.T) {
	s := openTestStore(t)
	for range 10 {
		if _, err := s.Put(t.Context(), chunk.NewID(), []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	err := s.List(ctx, func(chunk.ID) error { t.Fatal("fn called with a cancelled context"); return nil })
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), s.Dir()) {
		t.Fatalf("List with a cancelled context: %v, want a wrapped context.Canceled naming the store", err)
	}

	// Cancelled midway: List stops soon after.
	ctx, cancel = context.WithCancel(t.Context())
	defer cancel()
	calls := 0
	err = s.List(ctx, func(chunk.ID) error {
		calls++
		cancel()
		return nil
	})
	if !errors.Is(err, context.Canceled) || calls > listBatch {
		t.Fatalf("List cancelled midway = %v after %d calls", err, calls)
	}
}

func TestLocalListConcurrentPuts(t *testing.T) {
	s := openTestStore(t)
	ctx := t.Context()
	var before []chunk.ID
	for range 200 {
		id := chunk.NewID()
		if _, err := s.Put(ctx, id, []byte("old")); err != nil {
			t.Fatal(err)
		}
		before = append(before, id)
	}
	done := make(chan error, 1)
	go func() {
		for range 200 {
			if _, err := s.Put(ctx, chunk.NewID(), []byte("new")); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	got := listAll(t, s)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for _, id := range before {
		if _, ok := slices.BinarySearchFunc(got, id, func(a, b chunk.ID) int { return strings.Compare(a.String(), b.String()) }); !ok {
			t.Errorf("chunk %s stored before List began is missing", id)
		}
	}
}
