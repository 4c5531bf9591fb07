package nfsfront

import (
	"cmp"
	"context"
	"errors"
	"math"
	"slices"

	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
)

// LockTable holds the byte-range locks NLM grants (fcntl and flock on a
// client mount). Every method may block on the network and may fail: an
// implementation may keep its state in etcd so that every node sees the
// same locks. Methods are safe for concurrent use.
//
// A lock is granted or refused atomically with respect to every other
// call on the same file, on any node. Granting follows POSIX: locks of one
// owner never conflict with each other; a new lock of an owner replaces
// whatever that owner held in its range (upgrading, downgrading, splitting
// and merging); two owners conflict when their ranges overlap and either
// lock is exclusive.
type LockTable interface {
	// Lock grants l on file and returns nil, or returns the lock of
	// another owner that conflicts (and changes nothing).
	Lock(ctx context.Context, file meta.Ino, l Lock) (conflict *Lock, err error)
	// Unlock releases l's owner's locks within l's range (l.Exclusive is
	// ignored). Releasing what is not held is no error.
	Unlock(ctx context.Context, file meta.Ino, l Lock) error
	// Test returns a lock of another owner that would conflict with l, or
	// nil. It changes nothing.
	Test(ctx context.Context, file meta.Ino, l Lock) (conflict *Lock, err error)
	// ReleaseClient releases every lock of the owners c matches: the
	// client rebooted (SM_NOTIFY) or asked so (FREE_ALL).
	ReleaseClient(ctx context.Context, c ClientID) error
}

// ClientID selects the owners of one client: those with this Host and
// this Caller; an empty field matches any. At least one is set.
type ClientID struct {
	Host, Caller string
}

// Matches reports whether o is one of c's owners.
func (c ClientID) Matches(o LockOwner) bool {
	return (c.Host == "" || c.Host == o.Host) && (c.Caller == "" || c.Caller == o.Caller)
}

// ErrTooManyLocks is returned by a LockTable that holds as many locks as
// it may; the client is told NLM4_DENIED_NOLOCKS.
var ErrTooManyLocks = errors.New("lock table full")

// LockOwner identifies who holds a lock: a process (Svid, OH) on a client
// (Caller, its host name, and Host, the address its calls come from).
// Host is part of the identity because clients with the same host name
// (containers, guests left at "localhost") are common.
type LockOwner struct {
	Host   string // the client's IP address
	Caller string // NLM caller_name
	Svid   int32  // the process (or lock owner) id on the client
	OH     string // NLM owner handle, opaque
}

// Lock is a byte range [Start, End] (both inclusive) held by Owner.
// End == ToEOF reaches the end of the file however far it grows.
type Lock struct {
	Owner     LockOwner
	Exclusive bool
	Start     uint64
	End       uint64
}

// ToEOF is the End of a lock that reaches the end of the file.
const ToEOF = math.MaxUint64

// RangeOf returns the inclusive range of an NLM (offset, length): length 0,
// or a length reaching past 2^64 - 1, runs to the end of the file.
func RangeOf(offset, length uint64) (start, end uint64) {
	if length == 0 || length-1 > ToEOF-offset {
		return offset, ToEOF
	}
	return offset, offset + length - 1
}

// Length is l's NLM length: 0 when l runs to the end of the file.
func (l Lock) Length() uint64 {
	if l.End == ToEOF {
		return 0
	}
	return l.End - l.Start + 1
}

func (l Lock) overlaps(o Lock) bool { return l.Start <= o.End && o.Start <= l.End }

func (l Lock) conflicts(o Lock) bool {
	return l.Owner != o.Owner && (l.Exclusive || o.Exclusive) && l.overlaps(o)
}

// FindConflict returns the first lock of held that conflicts with l, or nil.
func FindConflict(held []Lock, l Lock) *Lock {
	for i := range held {
		if held[i].conflicts(l) {
			c := held[i]
			return &c
		}
	}
	return nil
}

// ApplyLock is the POSIX lock rule on the locks held on one file: it
// returns the new set with l granted, or the first conflicting lock (and
// held unchanged). held is not modified. The result keeps each owner's
// locks disjoint, with adjacent or overlapping ranges of the same kind
// merged, sorted by owner then start; a backend storing a file's locks
// as one record can call it inside a transaction.
func ApplyLock(held []Lock, l Lock) ([]Lock, *Lock) {
	if c := FindConflict(held, l); c != nil {
		return held, c
	}
	next := append(ApplyUnlock(held, l), l)
	return normalize(next), nil
}

// ApplyUnlock returns held with l's owner's locks removed within l's
// range; a lock straddling the range is split. held is not modified.
func ApplyUnlock(held []Lock, l Lock) []Lock {
	next := make([]Lock, 0, len(held)+1)
	for _, h := range held {
		if h.Owner != l.Owner || !h.overlaps(l) {
			next = append(next, h)
			continue
		}
		if h.Start < l.Start {
			left := h
			left.End = l.Start - 1
			next = append(next, left)
		}
		if h.End > l.End {
			right := h
			right.Start = l.End + 1
			next = append(next, right)
		}
	}
	return next
}

// normalize sorts locks by owner and start and merges each owner's
// overlapping or adjacent locks of the same kind.
func normalize(ls []Lock) []Lock {
	slices.SortFunc(ls, func(a, b Lock) int {
		return cmp.Or(compareOwner(a.Owner, b.Owner), cmp.Compare(a.Start, b.Start))
	})
	out := ls[:0]
	for _, l := range ls {
		if n := len(out); n > 0 {
			last := &out[n-1]
			if last.Owner == l.Owner && last.Exclusive == l.Exclusive && (last.End == ToEOF || last.End+1 >= l.Start) {
				last.End = max(last.End, l.End)
				continue
			}
		}
		out = append(out, l)
	}
	return out
}

func compareOwner(a, b LockOwner) int {
	return cmp.Or(cmp.Compare(a.Host, b.Host), cmp.Compare(a.Caller, b.Caller),
		cmp.Compare(a.Svid, b.Svid), cmp.Compare(a.OH, b.OH))
}
