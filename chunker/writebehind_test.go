package chunker

import (
	"bytes"
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/wormhole-fs/wormhole/chunker/chunk"
	"github.com/wormhole-fs/wormhole/chunker/chunkertest"
	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
)

// gatedBlobs is a LocalStore whose Puts can be held: each Put records
// the bytes it was given, waits while the gate is closed, then checks
// that the bytes did not change meanwhile and stores them.
type gatedBlobs struct {
	*LocalStore
	mu      sync.Mutex
	puts    int
	open    chan struct{} // closed: Puts go through
	changed int           // Puts whose data changed while they waited
}

func newGatedBlobs(s *LocalStore) *gatedBlobs {
	g := &gatedBlobs{LocalStore: s, open: make(chan struct{})}
	close(g.open)
	return g
}

// hold makes the next Puts wait until the returned function is called.
func (g *gatedBlobs) hold() (release func()) {
	c := make(chan struct{})
	g.mu.Lock()
	g.open = c
	g.mu.Unlock()
	return sync.OnceFunc(func() { close(c) })
}

func (g *gatedBlobs) Put(ctx context.Context, id chunk.ID, data []byte) (chunk.Sum, error) {
	before := bytes.Clone(data)
	g.mu.Lock()
	g.puts++
	gate := g.open
	g.mu.Unlock()
	<-gate
	if !bytes.Equal(before, data) {
		g.mu.Lock()
		g.changed++
		g.mu.Unlock()
	}
	return g.LocalStore.Put(ctx, id, data)
}

func (g *gatedBlobs) counts() (puts, changed int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.puts, g.changed
}

// writeBehindFiles returns Files with write-back (16 chunks) and
// write-behind on, over a fake namespace and a gated local store.
func writeBehindFiles(t *testing.T, maxAge time.Duration) (*Files, *chunkertest.Namespace, *gatedBlobs) {
	t.Helper()
	s, err := OpenLocal(t.TempDir(), testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	g := newGatedBlobs(s)
	ns := chunkertest.NewNamespace()
	f := NewFiles(ns, g, writeBackChunk, testLogger(t))
	f.SetWriteBack(16 * writeBackChunk)
	f.SetWriteBehind(maxAge)
	return f, ns, g
}

// storedIDs lists the chunks the store holds.
func storedIDs(t *testing.T, s *LocalStore) []chunk.ID {
	t.Helper()
	var ids []chunk.ID
	if err := s.List(t.Context(), func(id chunk.ID) error {
		ids = append(ids, id)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return ids
}

// onlyReferenced fails unless the store holds exactly the chunks the
// namespace refers to for ino (no early copy left behind).
func onlyReferenced(t *testing.T, ns *chunkertest.Namespace, s *LocalStore, ino meta.Ino) {
	t.Helper()
	var want []chunk.ID
	for _, r := range ns.Refs(ino) {
		want = append(want, r.ID)
	}
	got := storedIDs(t, s)
	slices.SortFunc(want, func(a, b chunk.ID) int { return bytes.Compare(a[:], b[:]) })
	slices.SortFunc(got, func(a, b chunk.ID) int { return bytes.Compare(a[:], b[:]) })
	if !slices.Equal(got, want) {
		t.Fatalf("store holds %d chunks, the file refers to %d: %v vs %v", len(got), len(want), got, want)
	}
}

// waitPuts waits until the store has been asked for n Puts.
func waitPuts(t *testing.T, g *gatedBlobs, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if p, _ := g.counts(); p >= n {
			return
		}
		if time.Now().After(deadline) {
			p, _ := g.counts()
			t.Fatalf("%d chunk stores started, want %d", p, n)
		}
		time.Sleep(time.Millisecond) // poll interval
	}
}

// unstable writes p at off UNSTABLE and fails the test if it is not held.
func unstable(t *testing.T, f *Files, ino meta.Ino, p []byte, off int64) {
	t.Helper()
	if _, stable, err := f.WriteUnstable(t.Context(), ino, p, off); err != nil || stable {
		t.Fatalf("WriteUnstable %d at %d: stable %v, %v", len(p), off, stable, err)
	}
}

// readBack reads size bytes of ino through a fresh Files (what another
// node, or this one after a restart, sees) and compares them with want.
func readBack(t *testing.T, ns *chunkertest.Namespace, s *LocalStore, ino meta.Ino, want []byte) {
	t.Helper()
	got := make([]byte, len(want))
	other := NewFiles(ns, s, writeBackChunk, testLogger(t))
	if n, err := other.ReadAt(t.Context(), ino, uint64(len(want)), got, 0); n != len(want) || err != nil && len(want) > 0 {
		t.Fatalf("read back %d of %d bytes: %v", n, len(want), err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("the committed file reads back wrong")
	}
}

// checkCommitted checks, after the commit of ino, that the store was
// asked for puts chunk stores in all (why says which), that the file reads
// back as want from the namespace, and that no copy is left unreferenced.
func checkCommitted(t *testing.T, ns *chunkertest.Namespace, g *gatedBlobs, ino meta.Ino, want []byte, puts int, why string) {
	t.Helper()
	if got, changed := g.counts(); got != puts || changed != 0 {
		t.Fatalf("%d chunk stores (%d saw their bytes change); want %d: %s", got, changed, puts, why)
	}
	readBack(t, ns, g.LocalStore, ino, want)
	onlyReferenced(t, ns, g.LocalStore, ino)
}

// TestWriteBehindStoresWholeChunksBeforeCommit: chunks that writes fill
// whole are stored before the COMMIT (nothing is committed yet, other
// nodes see nothing), and the commit stores only the partial last chunk.
func TestWriteBehindStoresWholeChunksBeforeCommit(t *testing.T) {
	const cs = writeBackChunk
	f, ns, g := writeBehindFiles(t, time.Hour)
	const ino = meta.Ino(3)
	data := pattern(3*cs+100, 1)
	// Written in pieces that do not line up with the chunks.
	for off := 0; off < len(data); off += 5000 {
		unstable(t, f, ino, data[off:min(off+5000, len(data))], int64(off))
	}
	waitPuts(t, g, 3)
	if ns.Commits() != 0 {
		t.Fatal("early stores committed something")
	}
	readBack(t, ns, g.LocalStore, ino, nil)

	if _, ok, err := f.Commit(t.Context(), ino); err != nil || !ok {
		t.Fatalf("Commit: %v, %v", ok, err)
	}
	checkCommitted(t, ns, g, ino, data, 4, "3 early ones and the tail's")
}

// TestWriteBehindRewrittenChunk: a chunk written again after its early
// store started is committed as last written; the bytes the early store
// was reading do not change under it, and its copy is deleted.
func TestWriteBehindRewrittenChunk(t *testing.T) {
	const cs = writeBackChunk
	f, ns, g := writeBehindFiles(t, time.Hour)
	const ino = meta.Ino(4)
	release := g.hold()
	defer release()
	model := pattern(cs, 2)
	unstable(t, f, ino, model, 0)
	waitPuts(t, g, 1) // the early store has the bytes, and waits
	patch := bytes.Repeat([]byte{0xee}, 300)
	unstable(t, f, ino, patch, 1000) // appends nothing: same chunk, same extent
	copy(model[1000:], patch)
	release()

	if _, _, err := f.Commit(t.Context(), ino); err != nil {
		t.Fatal(err)
	}
	checkCommitted(t, ns, g, ino, model, 2, "the early one, unchanged by the write, and the commit's")
}

// TestWriteBehindCommitWaitsForEarlyStore: a COMMIT that comes while the
// early stores run waits for them and uses their copies (storing the
// chunks again would make four stores).
func TestWriteBehindCommitWaitsForEarlyStore(t *testing.T) {
	const cs = writeBackChunk
	f, ns, g := writeBehindFiles(t, time.Hour)
	const ino = meta.Ino(5)
	release := g.hold()
	data := pattern(2*cs, 3)
	unstable(t, f, ino, data, 0)
	waitPuts(t, g, 2)
	done := make(chan error, 1)
	go func() {
		_, _, err := f.Commit(context.Background(), ino)
		done <- err
	}()
	release()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	checkCommitted(t, ns, g, ino, data, 2, "the 2 early ones only")
}

// TestWriteBehindOldCopyNotUsed: an early copy older than the age limit
// (it could have been collected as an orphan) is deleted and the chunk
// stored again by the commit.
func TestWriteBehindOldCopyNotUsed(t *testing.T) {
	const cs = writeBackChunk
	f, ns, g := writeBehindFiles(t, time.Nanosecond)
	const ino = meta.Ino(6)
	data := pattern(cs, 4)
	unstable(t, f, ino, data, 0)
	waitPuts(t, g, 1)
	if _, _, err := f.Commit(t.Context(), ino); err != nil {
		t.Fatal(err)
	}
	checkCommitted(t, ns, g, ino, data, 2, "the early one and the commit's")
}

// TestWriteBehindFileRemoved: the early copies of a file removed before
// its commit are deleted; the commit says the file is gone.
func TestWriteBehindFileRemoved(t *testing.T) {
	const cs = writeBackChunk
	f, ns, g := writeBehindFiles(t, time.Hour)
	const ino = meta.Ino(7)
	unstable(t, f, ino, pattern(2*cs, 5), 0)
	waitPuts(t, g, 2)
	ns.Remove(ino)
	if _, _, err := f.Commit(t.Context(), ino); err == nil {
		t.Fatal("Commit of a removed file succeeded")
	}
	if _, _, ok := f.Pending(ino); ok {
		t.Fatal("the removed file's writes are still held")
	}
	if ids := storedIDs(t, g.LocalStore); len(ids) != 0 {
		t.Fatalf("%d early copies left behind", len(ids))
	}
}

// TestWriteBehindOff: without SetWriteBehind nothing is stored before the
// commit.
func TestWriteBehindOff(t *testing.T) {
	const cs = writeBackChunk
	f, ns, g := writeBehindFiles(t, 0)
	const ino = meta.Ino(8)
	data := pattern(2*cs, 6)
	unstable(t, f, ino, data, 0)
	if puts, _ := g.counts(); puts != 0 {
		t.Fatalf("%d chunks stored before the commit with write-behind off", puts)
	}
	if _, _, err := f.Commit(t.Context(), ino); err != nil {
		t.Fatal(err)
	}
	checkCommitted(t, ns, g, ino, data, 2, "the commit's two")
}
