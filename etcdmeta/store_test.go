package etcdmeta

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/wormhole-fs/wormhole/chunker/chunk"
	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
	"github.com/wormhole-fs/wormhole/etcdmeta/metatest"
)

// shared is the embedded etcd all tests of the package share; each test
// gets its own cluster id, hence its own namespace.
var shared *Embedded

// clusterSeq numbers the namespaces tests create in the shared server.
var clusterSeq atomic.Int64

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	if os.Getenv(isolatedEnv) != "" {
		return m.Run() // a child running one test alone: no shared etcd
	}
	dir, err := os.MkdirTemp("", "etcdmeta-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	log := zerolog.New(os.Stderr).Level(zerolog.WarnLevel)
	shared, err = StartEmbedded(ctx, EmbedConfig{Dir: dir, UnsafeNoFsync: true}, log)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer shared.Close()
	return m.Run()
}

func testLog(t *testing.T) zerolog.Logger {
	return zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
}

func newTestStore(t *testing.T) *Store {
	t.Helper()
	id := fmt.Sprintf("test-%d", clusterSeq.Add(1))
	s, err := New(t.Context(), shared.Client(), id, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestConformance(t *testing.T) {
	metatest.Run(t, func(t *testing.T) meta.Store { return newTestStore(t) })
}

func TestNewBadClusterID(t *testing.T) {
	for _, id := range []string{"", "a/b"} {
		if _, err := New(t.Context(), shared.Client(), id, testLog(t)); !errors.Is(err, meta.ErrInvalid) {
			t.Errorf("New(%q) = %v, want ErrInvalid", id, err)
		}
	}
}

func TestKeyLayout(t *testing.T) {
	ctx := t.Context()
	s := newTestStore(t)
	f, err := s.Create(ctx, meta.RootIno, "name", meta.CreateArgs{Type: meta.TypeRegular, Mode: 0o644})
	if err != nil {
		t.Fatal(err)
	}
	cli := shared.Client()
	p := s.keys.prefix
	for _, k := range []string{
		p + "ino/0000000000000001",
		p + "ino/" + fmt.Sprintf("%016x", uint64(f.Ino)),
		p + "ent/0000000000000001/02a3537ff0dbce7ename",
		p + "layout",
		p + "next-ino",
	} {
		resp, err := cli.Get(ctx, k, clientv3.WithCountOnly())
		if err != nil {
			t.Fatal(err)
		}
		if resp.Count != 1 {
			t.Errorf("key %q missing", k)
		}
	}
}

func TestAllocatorBatchesAndNeverReuses(t *testing.T) {
	ctx := t.Context()
	id := fmt.Sprintf("test-%d", clusterSeq.Add(1))
	// Two Stores on one namespace, like two nodes: numbers never overlap.
	s1, err := New(ctx, shared.Client(), id, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	s2, err := New(ctx, shared.Client(), id, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	seen := map[meta.Ino]bool{}
	for i := range 3 * allocBatch {
		s := s1
		if i%3 == 0 {
			s = s2
		}
		ino, gen, err := s.alloc.alloc(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if seen[ino] || ino <= meta.RootIno || gen == 0 {
			t.Fatalf("alloc gave ino %d gen %d (seen %v)", ino, gen, seen[ino])
		}
		seen[ino] = true
	}
}

func TestPersistence(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	dir := t.TempDir()
	e, err := StartEmbedded(ctx, EmbedConfig{Dir: dir}, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(ctx, e.Client(), "persist", testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	d, err := s.Create(ctx, meta.RootIno, "d", meta.CreateArgs{Type: meta.TypeDir, Mode: 0o755})
	if err != nil {
		t.Fatal(err)
	}
	f, err := s.Create(ctx, d.Ino, "f", meta.CreateArgs{Type: meta.TypeRegular, Mode: 0o600})
	if err != nil {
		t.Fatal(err)
	}
	r := metatestRef(3)
	f, _, err = s.CommitWrite(ctx, f.Ino, []meta.Freed{{r}}[0], nil, 4000)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}

	e, err = StartEmbedded(ctx, EmbedConfig{Dir: dir}, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	s, err = New(ctx, e.Client(), "persist", testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.Lookup(ctx, d.Ino, "f")
	if err != nil {
		t.Fatal(err)
	}
	if got != f {
		t.Fatalf("after restart %+v, want %+v", got, f)
	}
	refs, err := s.Chunks(ctx, f.Ino, 0, 10)
	if err != nil || len(refs) != 1 || refs[0] != r {
		t.Fatalf("chunks after restart: %v %v", refs, err)
	}
	root, err := s.GetAttr(ctx, meta.RootIno)
	if err != nil || root.Nlink != 3 {
		t.Fatalf("root after restart: %+v %v", root, err)
	}
	// The allocator continues past every number handed out before.
	g, err := s.Create(ctx, d.Ino, "g", meta.CreateArgs{Type: meta.TypeRegular, Mode: 0o600})
	if err != nil {
		t.Fatal(err)
	}
	if g.Ino <= f.Ino {
		t.Fatalf("new inode %d not above old %d", g.Ino, f.Ino)
	}
}

// TestQuotaNoSpace fills a small quota and checks that writes then fail
// with meta.ErrNoSpace while reads keep working.
func TestQuotaNoSpace(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	e, err := StartEmbedded(ctx, EmbedConfig{Dir: t.TempDir(), QuotaBytes: 4 << 20, UnsafeNoFsync: true}, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	s, err := New(ctx, e.Client(), "quota", testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	f, err := s.Create(ctx, meta.RootIno, "f", meta.CreateArgs{Type: meta.TypeRegular, Mode: 0o644})
	if err != nil {
		t.Fatal(err)
	}
	refs := make([]chunk.Ref, 2000)
	for i := 0; ; i++ {
		if i > 1000 {
			t.Fatal("quota never reached")
		}
		for j := range refs {
			refs[j] = chunk.Ref{Index: uint64(i*len(refs) + j), ID: chunk.NewID(), Len: 1}
		}
		_, _, err := s.CommitWrite(ctx, f.Ino, refs, nil, 1)
		if errors.Is(err, meta.ErrNoSpace) {
			t.Log(err)
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Create(ctx, meta.RootIno, "g", meta.CreateArgs{Type: meta.TypeRegular, Mode: 0o644}); !errors.Is(err, meta.ErrNoSpace) {
		t.Fatalf("create over quota: %v", err)
	}
	if _, err := s.GetAttr(ctx, f.Ino); err != nil {
		t.Fatalf("read over quota: %v", err)
	}
}

// TestReadDirHundredThousand lists a directory of 100,000 entries page by
// page: every name comes back exactly once, and each page is one range
// read that starts after the previous page's last cookie, so the whole
// listing reads each entry once.
func TestReadDirHundredThousand(t *testing.T) {
	if testing.Short() {
		t.Skip("creates 100,000 entries")
	}
	s := newTestStore(t)
	ctx := t.Context()
	d, err := s.Create(ctx, meta.RootIno, "big", meta.CreateArgs{Type: meta.TypeDir, Mode: 0o755, Exclusive: true})
	if err != nil {
		t.Fatal(err)
	}
	const total, workers = 100_000, 8
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			for i := w; i < total; i += workers {
				if _, err := s.Create(ctx, d.Ino, fmt.Sprintf("entry-%06d", i), meta.CreateArgs{Type: meta.TypeRegular, Mode: 0o644, Exclusive: true}); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	const page = 1000
	seen, pages := make([]bool, total), 0
	listed, after := 0, uint64(0)
	for {
		ents, err := s.ReadDir(ctx, d.Ino, after, page)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		for _, e := range ents {
			var i int
			if _, err := fmt.Sscanf(e.Name, "entry-%06d", &i); err != nil || i < 0 || i >= total || seen[i] {
				t.Fatalf("entry %q listed twice or unknown", e.Name)
			}
			seen[i] = true
			listed++
		}
		if len(ents) < page {
			break
		}
		after = ents[len(ents)-1].Cookie
	}
	if listed != total {
		t.Fatalf("listed %d entries, want %d", listed, total)
	}
	if want := total/page + 1; pages != want {
		t.Fatalf("listing took %d pages, want %d", pages, want)
	}
}

func TestChunkSizeIsFixedAtCreation(t *testing.T) {
	s := newTestStore(t)
	ctx := t.Context()
	if got, err := s.ChunkSize(ctx, 1<<20); err != nil || got != 1<<20 {
		t.Fatalf("first ChunkSize = %d, %v", got, err)
	}
	if got, err := s.ChunkSize(ctx, 1<<20); err != nil || got != 1<<20 {
		t.Fatalf("same size again = %d, %v", got, err)
	}
	got, err := s.ChunkSize(ctx, 64<<10)
	if !errors.Is(err, ErrChunkSizeMismatch) || got != 1<<20 || !strings.Contains(err.Error(), "1048576") {
		t.Fatalf("other size = %d, %v; want ErrChunkSizeMismatch naming 1048576", got, err)
	}
}
