package appliance

import (
	"testing"
	"time"
)

// One failed quorum probe is not a lost quorum: the loss counts once
// probes have failed for quorumLossAfter, over quorumLossProbes probes at
// least, and one answer ends it.
func TestQuorumWatchNeedsLastingLoss(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	steps := []struct {
		ok   bool
		at   time.Duration
		want bool
		why  string
	}{
		{true, 0, true, "an answer"},
		{false, 3 * time.Second, true, "one failed probe"},
		{true, 5 * time.Second, true, "an answer ends the run"},
		{false, 8 * time.Second, true, "a new run's first failure"},
		{false, 9 * time.Second, true, "two failures within quorumLossAfter (status polled)"},
		{false, 8*time.Second + quorumLossAfter, false, "failures lasting quorumLossAfter"},
		{false, 20 * time.Second, false, "still failing"},
		{true, 21 * time.Second, true, "the quorum answers again"},
		{false, 22 * time.Second, true, "a single failure after it"},
	}
	var q quorumWatch
	for _, s := range steps {
		if got := q.observe(s.ok, t0.Add(s.at)); got != s.want {
			t.Errorf("at %v, %s: quorum held %v, want %v", s.at, s.why, got, s.want)
		}
	}
	// A long gap between two probes does not make one failure enough.
	var q2 quorumWatch
	if !q2.observe(false, t0) {
		t.Errorf("first failed probe: quorum counted lost")
	}
	if q2.observe(false, t0.Add(time.Minute)) {
		t.Errorf("second failed probe a minute later: quorum still counted held")
	}
}
