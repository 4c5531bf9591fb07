package nfsfront

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

var (
	ownerA  = LockOwner{Host: "10.0.0.1", Caller: "a", Svid: 1, OH: "1@a"}
	ownerA2 = LockOwner{Host: "10.0.0.1", Caller: "a", Svid: 2, OH: "2@a"}
	ownerB  = LockOwner{Host: "10.0.0.2", Caller: "b", Svid: 1, OH: "1@b"}
	// ownerB2 has ownerA's caller name, svid and handle from another host.
	ownerB2 = LockOwner{Host: "10.0.0.2", Caller: "a", Svid: 1, OH: "1@a"}
)

func rd(o LockOwner, start, end uint64) Lock { return Lock{Owner: o, Start: start, End: end} }
func wr(o LockOwner, start, end uint64) Lock {
	return Lock{Owner: o, Exclusive: true, Start: start, End: end}
}

func TestRangeOf(t *testing.T) {
	cases := []struct {
		off, len, start, end uint64
	}{
		{0, 0, 0, ToEOF},
		{10, 0, 10, ToEOF},
		{0, 1, 0, 0},
		{10, 5, 10, 14},
		{ToEOF, 1, ToEOF, ToEOF},
		{ToEOF - 1, 2, ToEOF - 1, ToEOF},
		{ToEOF - 1, 3, ToEOF - 1, ToEOF}, // past 2^64: to EOF
		{1 << 63, 1 << 63, 1 << 63, ToEOF},
		{1<<63 + 1, 1 << 63, 1<<63 + 1, ToEOF},
		{1, ToEOF, 1, ToEOF},
		{0, ToEOF, 0, ToEOF - 1},
	}
	for _, c := range cases {
		start, end := RangeOf(c.off, c.len)
		if start != c.start || end != c.end {
			t.Errorf("RangeOf(%d, %d) = %d-%d, want %d-%d", c.off, c.len, start, end, c.start, c.end)
		}
	}
	if n := (Lock{Start: 5, End: ToEOF}).Length(); n != 0 {
		t.Errorf("length to EOF = %d", n)
	}
	if n := (Lock{Start: 5, End: 9}).Length(); n != 5 {
		t.Errorf("length 5-9 = %d", n)
	}
}

func TestApplyLock(t *testing.T) {
	cases := []struct {
		name     string
		held     []Lock
		l        Lock
		want     []Lock // when granted
		conflict *Lock
	}{
		{name: "empty", l: wr(ownerA, 0, 9), want: []Lock{wr(ownerA, 0, 9)}},
		{name: "shared with shared", held: []Lock{rd(ownerA, 0, 9)}, l: rd(ownerB, 5, 15),
			want: []Lock{rd(ownerA, 0, 9), rd(ownerB, 5, 15)}},
		{name: "exclusive over shared of another", held: []Lock{rd(ownerA, 0, 9)}, l: wr(ownerB, 9, 9), conflict: ptr(rd(ownerA, 0, 9))},
		{name: "shared over exclusive of another", held: []Lock{wr(ownerA, 0, 9)}, l: rd(ownerB, 0, 0), conflict: ptr(wr(ownerA, 0, 9))},
		{name: "adjacent ranges of two owners", held: []Lock{wr(ownerA, 0, 9)}, l: wr(ownerB, 10, 19),
			want: []Lock{wr(ownerA, 0, 9), wr(ownerB, 10, 19)}},
		{name: "two processes of one client conflict", held: []Lock{wr(ownerA, 0, 9)}, l: wr(ownerA2, 5, 5), conflict: ptr(wr(ownerA, 0, 9))},
		{name: "same name and pid from another host conflict", held: []Lock{wr(ownerA, 0, 9)}, l: wr(ownerB2, 5, 5), conflict: ptr(wr(ownerA, 0, 9))},
		{name: "to EOF conflicts far away", held: []Lock{wr(ownerA, 100, ToEOF)}, l: rd(ownerB, 1<<62, 1<<62), conflict: ptr(wr(ownerA, 100, ToEOF))},
		{name: "near 2^64 disjoint", held: []Lock{wr(ownerA, ToEOF, ToEOF)}, l: wr(ownerB, ToEOF-10, ToEOF-1),
			want: []Lock{wr(ownerA, ToEOF, ToEOF), wr(ownerB, ToEOF-10, ToEOF-1)}},
		{name: "near 2^64 overlapping", held: []Lock{wr(ownerA, ToEOF, ToEOF)}, l: rd(ownerB, ToEOF-10, ToEOF), conflict: ptr(wr(ownerA, ToEOF, ToEOF))},
		{name: "own locks never conflict: upgrade", held: []Lock{rd(ownerA, 0, 9), rd(ownerB, 20, 29)}, l: wr(ownerA, 0, 9),
			want: []Lock{wr(ownerA, 0, 9), rd(ownerB, 20, 29)}},
		{name: "upgrade blocked by another reader", held: []Lock{rd(ownerA, 0, 9), rd(ownerB, 5, 5)}, l: wr(ownerA, 0, 9), conflict: ptr(rd(ownerB, 5, 5))},
		{name: "upgrade middle splits", held: []Lock{rd(ownerA, 0, 9)}, l: wr(ownerA, 3, 5),
			want: []Lock{rd(ownerA, 0, 2), wr(ownerA, 3, 5), rd(ownerA, 6, 9)}},
		{name: "downgrade middle splits", held: []Lock{wr(ownerA, 0, ToEOF)}, l: rd(ownerA, 3, 5),
			want: []Lock{wr(ownerA, 0, 2), rd(ownerA, 3, 5), wr(ownerA, 6, ToEOF)}},
		{name: "merge overlapping", held: []Lock{wr(ownerA, 0, 9)}, l: wr(ownerA, 5, 14), want: []Lock{wr(ownerA, 0, 14)}},
		{name: "merge adjacent", held: []Lock{wr(ownerA, 0, 9)}, l: wr(ownerA, 10, 14), want: []Lock{wr(ownerA, 0, 14)}},
		{name: "merge adjacent before", held: []Lock{wr(ownerA, 10, 14)}, l: wr(ownerA, 0, 9), want: []Lock{wr(ownerA, 0, 14)}},
		{name: "bridge two ranges", held: []Lock{rd(ownerA, 0, 4), rd(ownerA, 10, 14)}, l: rd(ownerA, 5, 9), want: []Lock{rd(ownerA, 0, 14)}},
		{name: "no merge across kinds", held: []Lock{rd(ownerA, 0, 9)}, l: wr(ownerA, 10, 19),
			want: []Lock{rd(ownerA, 0, 9), wr(ownerA, 10, 19)}},
		{name: "no merge across owners", held: []Lock{rd(ownerA, 0, 9)}, l: rd(ownerA2, 10, 19),
			want: []Lock{rd(ownerA, 0, 9), rd(ownerA2, 10, 19)}},
		{name: "cover several", held: []Lock{rd(ownerA, 0, 1), wr(ownerA, 5, 6), rd(ownerA, 20, ToEOF)}, l: wr(ownerA, 0, ToEOF),
			want: []Lock{wr(ownerA, 0, ToEOF)}},
		{name: "merge up to EOF", held: []Lock{wr(ownerA, 5, ToEOF)}, l: wr(ownerA, 0, 4), want: []Lock{wr(ownerA, 0, ToEOF)}},
		{name: "relock to EOF then at 2^64-1", held: []Lock{wr(ownerA, 0, ToEOF)}, l: wr(ownerA, ToEOF, ToEOF), want: []Lock{wr(ownerA, 0, ToEOF)}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := slices.Clone(c.held)
			got, conflict := ApplyLock(c.held, c.l)
			if !slices.Equal(c.held, before) {
				t.Errorf("held modified: %v", c.held)
			}
			if c.conflict != nil {
				if conflict == nil || *conflict != *c.conflict {
					t.Fatalf("conflict %v, want %v", conflict, *c.conflict)
				}
				return
			}
			if conflict != nil {
				t.Fatalf("conflict %v, want grant", *conflict)
			}
			if !slices.Equal(got, c.want) {
				t.Errorf("got  %v\nwant %v", got, c.want)
			}
		})
	}
}

func ptr(l Lock) *Lock { return &l }

func TestApplyUnlock(t *testing.T) {
	cases := []struct {
		name string
		held []Lock
		l    Lock
		want []Lock
	}{
		{name: "nothing held", l: rd(ownerA, 0, ToEOF), want: []Lock{}},
		{name: "exact", held: []Lock{wr(ownerA, 0, 9)}, l: rd(ownerA, 0, 9), want: []Lock{}},
		{name: "middle splits", held: []Lock{wr(ownerA, 0, 9)}, l: rd(ownerA, 3, 5), want: []Lock{wr(ownerA, 0, 2), wr(ownerA, 6, 9)}},
		{name: "head", held: []Lock{wr(ownerA, 0, 9)}, l: rd(ownerA, 0, 3), want: []Lock{wr(ownerA, 4, 9)}},
		{name: "tail to EOF", held: []Lock{wr(ownerA, 0, 9)}, l: rd(ownerA, 5, ToEOF), want: []Lock{wr(ownerA, 0, 4)}},
		{name: "split a lock to EOF", held: []Lock{rd(ownerA, 0, ToEOF)}, l: rd(ownerA, 100, 199), want: []Lock{rd(ownerA, 0, 99), rd(ownerA, 200, ToEOF)}},
		{name: "last byte of 2^64", held: []Lock{rd(ownerA, 0, ToEOF)}, l: rd(ownerA, ToEOF, ToEOF), want: []Lock{rd(ownerA, 0, ToEOF-1)}},
		{name: "other owners untouched", held: []Lock{rd(ownerA, 0, 9), rd(ownerB, 0, 9), rd(ownerA2, 0, 9)}, l: rd(ownerA, 0, ToEOF),
			want: []Lock{rd(ownerB, 0, 9), rd(ownerA2, 0, 9)}},
		{name: "several ranges", held: []Lock{rd(ownerA, 0, 4), wr(ownerA, 10, 14), rd(ownerA, 20, 24)}, l: rd(ownerA, 2, 22),
			want: []Lock{rd(ownerA, 0, 1), rd(ownerA, 23, 24)}},
		{name: "miss", held: []Lock{rd(ownerA, 10, 14)}, l: rd(ownerA, 0, 9), want: []Lock{rd(ownerA, 10, 14)}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := ApplyUnlock(c.held, c.l); !slices.Equal(got, c.want) {
				t.Errorf("got  %v\nwant %v", got, c.want)
			}
		})
	}
}

// A model check: after random locks and unlocks of a few owners on a
// small file, ApplyLock/ApplyUnlock agree with a byte-by-byte model, and
// each owner's ranges stay disjoint, sorted and merged.
func TestLockRangesModel(t *testing.T) {
	// Bytes 0 to size-1 are modelled one by one; cell size stands for
	// every byte from size on, which only locks to EOF reach.
	const size = 24
	owners := []LockOwner{ownerA, ownerA2, ownerB}
	type cell struct{ shared, excl map[LockOwner]bool }
	r := rand.New(rand.NewPCG(1, 2))
	for round := range 200 {
		var held []Lock
		model := make([]cell, size+1)
		for i := range model {
			model[i] = cell{map[LockOwner]bool{}, map[LockOwner]bool{}}
		}
		for step := range 40 {
			o := owners[r.IntN(len(owners))]
			start := uint64(r.IntN(size))
			end := start + uint64(r.IntN(size-int(start)))
			if r.IntN(5) == 0 {
				end = ToEOF
			}
			last := min(end, size)
			what := fmt.Sprintf("round %d step %d", round, step)
			switch r.IntN(3) {
			case 0, 1:
				excl := r.IntN(2) == 0
				l := Lock{Owner: o, Exclusive: excl, Start: start, End: end}
				conflicts := false
				for i := start; i <= last; i++ {
					for other := range model[i].excl {
						conflicts = conflicts || other != o
					}
					for other := range model[i].shared {
						conflicts = conflicts || (other != o && excl)
					}
				}
				next, c := ApplyLock(held, l)
				if (c != nil) != conflicts {
					t.Fatalf("%s: lock %v: conflict %v, model says %v (held %v)", what, l, c, conflicts, held)
				}
				if c != nil {
					continue
				}
				held = next
				for i := start; i <= last; i++ {
					delete(model[i].shared, o)
					delete(model[i].excl, o)
					if excl {
						model[i].excl[o] = true
					} else {
						model[i].shared[o] = true
					}
				}
			case 2:
				held = ApplyUnlock(held, Lock{Owner: o, Start: start, End: end})
				for i := start; i <= last; i++ {
					delete(model[i].shared, o)
					delete(model[i].excl, o)
				}
			}
			checkAgainstModel(t, what, held, func(i int, o LockOwner) (bool, bool) {
				return model[i].shared[o], model[i].excl[o]
			}, size+1, owners)
		}
	}
}

// checkAgainstModel compares held with the model's cells 0 to cells-1.
func checkAgainstModel(t *testing.T, what string, held []Lock, at func(int, LockOwner) (shared, excl bool), cells int, owners []LockOwner) {
	t.Helper()
	for _, o := range owners {
		var prev *Lock
		for i := range held {
			l := held[i]
			if l.Owner != o {
				continue
			}
			if prev != nil && (prev.End == ToEOF || prev.End >= l.Start || (prev.End+1 == l.Start && prev.Exclusive == l.Exclusive)) {
				t.Fatalf("%s: ranges not disjoint, sorted and merged: %v then %v", what, *prev, l)
			}
			prev = &held[i]
		}
		for i := range cells {
			var shared, excl bool
			for _, l := range held {
				if l.Owner == o && l.Start <= uint64(i) && uint64(i) <= l.End {
					shared, excl = shared || !l.Exclusive, excl || l.Exclusive
				}
			}
			ms, me := at(i, o)
			if shared != ms || excl != me {
				t.Fatalf("%s: byte %d of %v: held shared %v exclusive %v, model %v %v (%v)", what, i, o, shared, excl, ms, me, held)
			}
		}
	}
}

func TestMemLocks(t *testing.T) {
	ctx := context.Background()
	m := NewMemLocks(4)
	if c, err := m.Lock(ctx, 7, wr(ownerA, 0, 9)); c != nil || err != nil {
		t.Fatalf("lock: %v %v", c, err)
	}
	if c, err := m.Lock(ctx, 7, rd(ownerB, 5, 5)); err != nil || c == nil || *c != wr(ownerA, 0, 9) {
		t.Fatalf("conflicting lock: %v %v", c, err)
	}
	if c, err := m.Lock(ctx, 8, rd(ownerB, 5, 5)); c != nil || err != nil {
		t.Fatalf("other file: %v %v", c, err)
	}
	if c, _ := m.Test(ctx, 7, rd(ownerB, 10, 10)); c != nil {
		t.Errorf("test past the lock: %v", c)
	}
	if c, _ := m.Test(ctx, 7, rd(ownerB, 9, 10)); c == nil {
		t.Error("test overlapping: no conflict")
	}
	// Four ranges in all: a split that makes a fifth is refused.
	m.Lock(ctx, 7, wr(ownerA, 20, 29))
	m.Lock(ctx, 8, rd(ownerB, 7, 7))
	if _, err := m.Lock(ctx, 7, rd(ownerA, 3, 3)); !errors.Is(err, ErrTooManyLocks) {
		t.Errorf("fifth lock: %v", err)
	}
	if got := m.locks(7); !slices.Equal(got, []Lock{wr(ownerA, 0, 9), wr(ownerA, 20, 29)}) {
		t.Errorf("after refused lock: %v", got)
	}
	if err := m.Unlock(ctx, 7, rd(ownerA, 0, ToEOF)); err != nil {
		t.Fatal(err)
	}
	if got := m.locks(7); len(got) != 0 {
		t.Errorf("after unlock: %v", got)
	}
	if _, ok := m.files[7]; ok || m.n != 2 {
		t.Errorf("file entry kept or count %d", m.n)
	}

	// ReleaseClient by caller (any host), by host, by both.
	m = NewMemLocks(0)
	m.Lock(ctx, 1, rd(ownerA, 0, 0))
	m.Lock(ctx, 1, rd(ownerA2, 1, 1))
	m.Lock(ctx, 1, rd(ownerB, 2, 2))
	m.Lock(ctx, 1, rd(ownerB2, 3, 3))
	if err := m.ReleaseClient(ctx, ClientID{}); err == nil {
		t.Error("release of no client accepted")
	}
	m.ReleaseClient(ctx, ClientID{Host: "10.0.0.2", Caller: "a"})
	if got := m.locks(1); !slices.Equal(got, []Lock{rd(ownerA, 0, 0), rd(ownerA2, 1, 1), rd(ownerB, 2, 2)}) {
		t.Errorf("after release of a at 10.0.0.2: %v", got)
	}
	m.ReleaseClient(ctx, ClientID{Caller: "a"})
	if got := m.locks(1); !slices.Equal(got, []Lock{rd(ownerB, 2, 2)}) {
		t.Errorf("after release of a: %v", got)
	}
	m.ReleaseClient(ctx, ClientID{Host: "10.0.0.2"})
	if got := m.locks(1); len(got) != 0 || m.n != 0 {
		t.Errorf("after release of 10.0.0.2: %v (count %d)", got, m.n)
	}
}
