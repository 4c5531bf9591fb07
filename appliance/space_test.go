package appliance

import (
	"strings"
	"testing"
)

func TestNodeFull(t *testing.T) {
	const mib = 1 << 20
	for _, tt := range []struct {
		capacity, free uint64
		want           bool
	}{
		{100 << 30, 300 * mib, false}, // big disk: full under 256 MiB
		{100 << 30, 200 * mib, true},
		{64 * mib, 4 * mib, false}, // small disk: full under 5%
		{64 * mib, 3 * mib, true},
		{64 * mib, 0, true},
		{0, 0, false}, // unknown capacity: weighs 0 anyway
	} {
		if got := nodeFull(tt.capacity, tt.free); got != tt.want {
			t.Errorf("nodeFull(%d, %d) = %v, want %v", tt.capacity, tt.free, got, tt.want)
		}
	}
}

func TestFullNodesStatus(t *testing.T) {
	st := Status{Summary: "4 of 4 nodes up.", Advice: "", Nodes: []NodeStatus{
		{ID: "n1", State: "alive", CapacityBytes: 1 << 30, FreeBytes: 1 << 29},
		{ID: "n4", State: "alive", CapacityBytes: 64 << 20, FreeBytes: 1 << 20},
		{ID: "n5", State: "dead"},
	}}
	fullNodes(&st)
	if !strings.Contains(st.Summary, "Full: n4 (1 MiB free of 64 MiB)") || st.Advice != "free space on n4 or add a node." {
		t.Fatalf("summary %q, advice %q", st.Summary, st.Advice)
	}
}
