package replica_test

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/wormhole-fs/wormhole/chunker"
	"github.com/wormhole-fs/wormhole/chunker/chunk"
	"github.com/wormhole-fs/wormhole/chunker/chunkertest"
	"github.com/wormhole-fs/wormhole/chunker/replica"
	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
)

// TestFilesWithInodeCopies writes files of different redundancy through
// chunker.Files on four nodes: each file's chunks land on as many
// placement targets as its inode asks, the default for Copies 0.
func TestFilesWithInodeCopies(t *testing.T) {
	const chunkSize = 4096
	ctx := t.Context()
	c := newCluster(t, 4)
	ns := chunkertest.NewNamespace()
	cfg := replica.Config{Copies: 2}
	writer := chunker.NewFiles(ns, c.replicaStore("n1", cfg), chunkSize, testLogger(t))
	reader := chunker.NewFiles(ns, c.replicaStore("n4", cfg), chunkSize, testLogger(t))
	rng := rand.New(rand.NewPCG(3, 3))
	for ino, copies := range map[meta.Ino]uint8{1: 1, 2: 0, 3: 3, 4: 4} {
		ns.SetCopies(ino, copies)
		content := randomData(rng, 3*chunkSize+100)
		if _, err := writer.WriteAt(ctx, ino, content, 0); err != nil {
			t.Fatalf("WriteAt: %v", err)
		}
		if _, err := writer.Truncate(ctx, ino, uint64(len(content)), 2*chunkSize+50); err != nil {
			t.Fatalf("Truncate: %v", err)
		}
		want := int(copies)
		if want == 0 {
			want = cfg.Copies
		}
		for _, r := range ns.Refs(ino) {
			targets := sorted(c.ranking(r.ID)[:want])
			if got := c.holding(r.ID); !slices.Equal(got, targets) {
				t.Fatalf("inode with copies %d: chunk %d on %v, placement says %v", copies, r.Index, got, targets)
			}
		}
		got := make([]byte, 2*chunkSize+50)
		if _, err := reader.ReadAt(chunk.WithCopies(ctx, int(copies)), ino, uint64(len(got)), got, 0); err != nil {
			t.Fatalf("ReadAt: %v", err)
		}
		if string(got) != string(content[:len(got)]) {
			t.Fatal("read back different bytes")
		}
	}
}

// TestPutWithCopies stores chunks with a per-call copy count on four
// nodes: each lands on that many placement targets, Holders with the same
// count names them, and reads with the count report nothing missing.
func TestPutWithCopies(t *testing.T) {
	for _, n := range []int{0, 1, 2, 3, 4} {
		t.Run(fmt.Sprintf("copies=%d", n), func(t *testing.T) {
			c := newCluster(t, 4)
			s := c.replicaStore("n1", replica.Config{Copies: 2})
			ctx := chunk.WithCopies(t.Context(), n)
			want := n
			if n == 0 {
				want = 2 // the configured count
			}
			rng := rand.New(rand.NewPCG(uint64(n), 7))
			for range 20 {
				id := chunk.NewID()
				data := randomData(rng, 1+rng.IntN(3000))
				if _, err := s.Put(ctx, id, data); err != nil {
					t.Fatalf("Put: %v", err)
				}
				targets := sorted(c.ranking(id)[:want])
				if got := c.holding(id); !slices.Equal(got, targets) {
					t.Fatalf("chunk on %v, placement says %v", got, targets)
				}
				if got := sorted(s.Holders(id, n)); !slices.Equal(got, targets) {
					t.Fatalf("Holders(%d) = %v, want %v", n, got, targets)
				}
				got, err := s.Get(ctx, id)
				if err != nil || string(got) != string(data) {
					t.Fatalf("Get = %d bytes, %v", len(got), err)
				}
			}
			if r := drain(s); len(r) != 0 {
				t.Errorf("unexpected reports %+v", r)
			}
		})
	}
}

// TestGetWithoutCopiesReportsPolicyTargets documents why readers pass the
// count: a chunk stored with one copy, whose holder is down, read without
// the count, looks like it also misses its second (default policy) copy.
func TestGetWithoutCopiesReportsPolicyTargets(t *testing.T) {
	c := newCluster(t, 3)
	s := c.replicaStore("n1", replica.Config{Copies: 2})
	ctx := chunk.WithCopies(t.Context(), 1)
	id := chunk.NewID()
	for slices.Index(c.ranking(id), "n1") != 2 {
		id = chunk.NewID() // so that both default targets are asked
	}
	if _, err := s.Put(ctx, id, []byte("single")); err != nil {
		t.Fatal(err)
	}
	holder, second := c.ranking(id)[0], c.ranking(id)[1]
	c.setFault(holder, down)
	if _, err := s.Get(t.Context(), id); !errors.Is(err, replica.ErrNotEnoughNodes) {
		t.Fatalf("Get with the holder down = %v", err)
	}
	r := drain(s)
	if len(r) != 1 || r[0].Reason != replica.ReasonMissing || r[0].Node != second {
		t.Fatalf("reports without the count = %+v, want %s missing", r, second)
	}
	if _, err := s.Get(ctx, id); !errors.Is(err, replica.ErrNotEnoughNodes) {
		t.Fatalf("Get with the holder down = %v", err)
	}
	if r := drain(s); len(r) != 0 {
		t.Fatalf("reports with the count = %+v", r)
	}
}

// TestPutWithCopiesMinimum checks how the required minimum follows the
// per-call count.
func TestPutWithCopiesMinimum(t *testing.T) {
	for _, tt := range []struct {
		name   string
		cfg    replica.Config
		copies int
		alive  int
		ok     bool // Put succeeds
		under  bool // and reports the chunk under-replicated
	}{
		// Every copy required (the default): the count raises the minimum.
		{"all required, raised, short", replica.Config{Copies: 2}, 3, 2, false, false},
		{"all required, raised, enough", replica.Config{Copies: 2}, 3, 3, true, false},
		{"all required, lowered", replica.Config{Copies: 3}, 1, 1, true, false},
		// MinCopies below Copies: kept, capped at the count.
		{"degraded, raised, short", replica.Config{Copies: 2, MinCopies: 1}, 3, 2, true, true},
		{"degraded, lowered", replica.Config{Copies: 3, MinCopies: 2}, 1, 1, true, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := newCluster(t, 4)
			for i := tt.alive + 1; i <= 4; i++ {
				c.setAlive(fmt.Sprintf("n%d", i), false)
			}
			s := c.replicaStore("n1", tt.cfg)
			id := chunk.NewID()
			_, err := s.Put(chunk.WithCopies(t.Context(), tt.copies), id, []byte("data"))
			if tt.ok != (err == nil) {
				t.Fatalf("Put = %v, want success %v", err, tt.ok)
			}
			if !tt.ok {
				if !errors.Is(err, replica.ErrNotEnoughNodes) {
					t.Fatalf("Put = %v, want ErrNotEnoughNodes", err)
				}
				if got := c.holding(id); len(got) != 0 {
					t.Fatalf("failed Put left copies on %v", got)
				}
				return
			}
			if got, want := len(c.holding(id)), min(tt.copies, tt.alive); got != want {
				t.Fatalf("%d copies stored, want %d", got, want)
			}
			r := drain(s)
			if under := len(r) == 1 && r[0].Reason == replica.ReasonUnderReplicated; under != tt.under || len(r) > 1 {
				t.Fatalf("reports %+v, want under-replicated %v", r, tt.under)
			}
		})
	}
}
