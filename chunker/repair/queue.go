package repair

import (
	"bytes"
	"container/heap"
	"slices"

	"github.com/wormhole-fs/wormhole/chunker/chunk"
)

// item is the work one chunk needs: copies to the targets that lack it
// (copy) and deletion of the copies on other nodes (del). Nodes are indexes
// into the pass's view.
type item struct {
	id      chunk.ID
	sum     chunk.Sum
	want    uint8
	kept    uint8 // copies on alive, non-draining nodes
	copy    bool
	del     bool
	targets []uint16 // eligible placement targets, best first
	holders []uint16 // nodes whose list holds the chunk
	pos     int      // index in the queue's heap
}

// holds reports whether node n is among the holders.
func (it *item) holds(n uint16) bool { return slices.Contains(it.holders, n) }

// targeted reports whether node n is among the targets.
func (it *item) targeted(n uint16) bool { return slices.Contains(it.targets, n) }

// missing returns how many targets lack a copy.
func (it *item) missing() int {
	n := 0
	for _, t := range it.targets {
		if !it.holds(t) {
			n++
		}
	}
	return n
}

// extras returns the holders that are no targets.
func (it *item) extras() []uint16 {
	var x []uint16
	for _, h := range it.holders {
		if !it.targeted(h) {
			x = append(x, h)
		}
	}
	return x
}

// urgent reports whether a should run before b: fewer kept copies first,
// then fewer copies at all, then by ID for a stable order.
func urgent(a, b *item) bool {
	if a.kept != b.kept {
		return a.kept < b.kept
	}
	if len(a.holders) != len(b.holders) {
		return len(a.holders) < len(b.holders)
	}
	return bytes.Compare(a.id[:], b.id[:]) < 0
}

// queue keeps the at most max most urgent items of a pass, one per chunk.
// Its heap has the least urgent item on top, the one to give up when full.
type queue struct {
	max       int
	h         itemHeap
	byID      map[chunk.ID]*item
	truncated bool // some item was given up
}

func newQueue(max int) *queue {
	return &queue{max: max, byID: map[chunk.ID]*item{}}
}

// add queues it, unless the queue is full of more urgent items. An item for
// a chunk already queued replaces it if it wants more copies.
func (q *queue) add(it *item) {
	if old, ok := q.byID[it.id]; ok {
		if it.want > old.want {
			it.pos = old.pos
			*old = *it
			heap.Fix(&q.h, old.pos)
		}
		return
	}
	if len(q.h) >= q.max {
		q.truncated = true
		least := q.h[0]
		if !urgent(it, least) {
			return
		}
		heap.Pop(&q.h)
		delete(q.byID, least.id)
	}
	q.byID[it.id] = it
	heap.Push(&q.h, it)
}

// sorted returns the queued items, most urgent first, and empties q.
func (q *queue) sorted() []*item {
	items := []*item(q.h)
	q.h, q.byID = nil, nil
	slices.SortFunc(items, func(a, b *item) int {
		switch {
		case urgent(a, b):
			return -1
		case urgent(b, a):
			return 1
		}
		return 0
	})
	return items
}

// itemHeap is a heap.Interface with the least urgent item first.
type itemHeap []*item

func (h itemHeap) Len() int           { return len(h) }
func (h itemHeap) Less(i, j int) bool { return urgent(h[j], h[i]) }
func (h itemHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].pos, h[j].pos = i, j
}
func (h *itemHeap) Push(x any) {
	it := x.(*item)
	it.pos = len(*h)
	*h = append(*h, it)
}
func (h *itemHeap) Pop() any {
	old := *h
	it := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return it
}
