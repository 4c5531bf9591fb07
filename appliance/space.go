package appliance

import (
	"fmt"
	"strings"
)

// fullFraction is the free fraction of a node's disk under which it takes
// no new chunks even when more than minFree is free: a small disk
// counts as full at minFree otherwise while still nearly empty.
const fullFraction = 20 // 1/20: 5%

// nodeFull says whether a node whose chunk store's disk has capacity
// bytes, free of them free, is full: it takes no new chunks (placement
// weighs it 0) but still serves the ones it holds. Full is less free
// than minFree or than 5% of the capacity, whichever is smaller.
func nodeFull(capacity, free uint64) bool {
	return free < min(uint64(minFree), capacity/fullFraction)
}

// fullNodes adds to st's summary and advice the alive nodes that are
// full, as gossip last heard their free space: new chunks go to the other
// nodes, and the operator should free space or add a node.
func fullNodes(st *Status) {
	var full, ids []string
	for _, ns := range st.Nodes {
		if ns.State == "alive" && ns.CapacityBytes > 0 && nodeFull(ns.CapacityBytes, ns.FreeBytes) {
			full = append(full, fmt.Sprintf("%s (%d MiB free of %d MiB)", ns.ID, ns.FreeBytes>>20, ns.CapacityBytes>>20))
			ids = append(ids, ns.ID)
		}
	}
	if len(full) == 0 {
		return
	}
	st.Summary += fmt.Sprintf(" Full: %s; %s no new chunks, which go to the other nodes.",
		strings.Join(full, ", "), plural(len(full), "it takes", "they take"))
	advice := fmt.Sprintf("free space on %s or add a node.", strings.Join(ids, ", "))
	if st.Advice != "" {
		advice = strings.TrimRight(st.Advice, ". ") + "; " + advice
	}
	st.Advice = advice
}
