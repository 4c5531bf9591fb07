package repair

import (
	"context"
	"math"
	"slices"
	"testing"
	"time"

	"github.com/wormhole-fs/wormhole/chunker/chunk"
	"github.com/wormhole-fs/wormhole/internal/importcheck"
)

func TestThrottleArithmetic(t *testing.T) {
	t0 := time.Unix(1000, 0)
	const b = 1 << 17
	th := newThrottle(b) // b B/s, bucket of b bytes, full at start
	steps := []struct {
		at   time.Duration // from t0
		n    int
		want time.Duration
	}{
		{0, b / 2, 0},                                // from the bucket: b/2 left
		{0, 3 * b / 2, time.Second},                  // b short: 1 s
		{0, 5 * b / 2, 3500 * time.Millisecond},      // in pieces of b; 3.5 b short
		{3500 * time.Millisecond, 0, 0},              // nothing asked, nothing waited
		{4500 * time.Millisecond, b, 0},              // the bucket refilled
		{5 * time.Second, b, 500 * time.Millisecond}, // half refilled
		{time.Hour, 5 * b, 4 * time.Second},          // a full bucket never holds more
	}
	for i, s := range steps {
		_, got := th.reserve(t0.Add(s.at), s.n)
		if got != s.want {
			t.Errorf("step %d: reserve(%v, %d) waits %v, want %v", i, s.at, s.n, got, s.want)
		}
	}

	if _, d := newThrottle(-1).reserve(t0, 1<<30); d != 0 {
		t.Errorf("unlimited throttle waits %v", d)
	}
	big := newThrottle(math.MaxInt64)
	if big.burst != math.MaxInt32 {
		t.Errorf("bucket of a huge rate is %d bytes", big.burst)
	}
	if _, d := big.reserve(t0, 64<<20); d != 0 {
		t.Errorf("huge rate waits %v for a chunk", d)
	}
}

func TestThrottleWaitCancelled(t *testing.T) {
	th := newThrottle(minBurst)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := th.wait(ctx, 10*minBurst); err == nil {
		t.Fatal("wait on a cancelled context succeeded")
	}
	// The reservations that had to wait were given back: only the bucket's
	// content was spent, so a full bucket takes a second again, not ten.
	if _, d := th.reserve(time.Now(), minBurst); d > 1100*time.Millisecond {
		t.Errorf("after a cancelled wait a bucket waits %v", d)
	}
	if _, d := newThrottle(1).reserve(time.Now(), minBurst); d != 0 {
		t.Errorf("a tiny rate still has a bucket of %d bytes; waits %v", minBurst, d)
	}
}

func id(b byte) chunk.ID { return chunk.ID{b} }

func TestQueueKeepsMostUrgent(t *testing.T) {
	q := newQueue(3)
	for i, kept := range []uint8{2, 0, 1, 2, 0, 1} {
		q.add(&item{id: id(byte(i + 1)), kept: kept, want: 3, holders: make([]uint16, kept)})
	}
	// A second reference to chunk 2 wanting more copies replaces it; one
	// wanting fewer changes nothing.
	q.add(&item{id: id(2), kept: 0, want: 4})
	q.add(&item{id: id(5), kept: 0, want: 1})
	if !q.truncated {
		t.Error("queue not marked truncated")
	}
	var got []chunk.ID
	var wants []uint8
	for _, it := range q.sorted() {
		got = append(got, it.id)
		wants = append(wants, it.want)
	}
	if want := []chunk.ID{id(2), id(5), id(3)}; !slices.Equal(got, want) {
		t.Errorf("queue order %v, want %v", got, want)
	}
	if !slices.Equal(wants, []uint8{4, 3, 3}) {
		t.Errorf("wants %v", wants)
	}
}

func TestConfig(t *testing.T) {
	c := Config{Name: "n1"}.withDefaults()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	d := DefaultConfig()
	d.Name = "n1"
	if c != d {
		t.Errorf("defaults %+v, want %+v", c, d)
	}
	for _, bad := range []Config{
		{},
		{Name: "n", Copies: 17},
		{Name: "n", Parallel: -1},
		{Name: "n", Grace: -time.Second},
		{Name: "n", MaxQueue: -1},
	} {
		if err := bad.withDefaults().Validate(); err == nil {
			t.Errorf("%+v is valid", bad)
		}
	}
	if _, err := New(Config{}, nil, "", nil, nil, nil, testLogger(t)); err == nil {
		t.Error("New accepted a config without a name")
	}
	if _, err := New(Config{Name: "n"}, nil, "", nil, nil, nil, testLogger(t)); err == nil {
		t.Error("New accepted nil dependencies")
	}
}

// TestImports keeps the package's place in the dependency graph: from
// Wormhole it imports only the chunk and namespace types and the census.
func TestImports(t *testing.T) {
	importcheck.Check(t, importcheck.Wormhole("chunker/chunk", "chunker/census", "etcdmeta/meta"))
}
