package repair

import (
	"context"
	"math"
	"time"

	"golang.org/x/time/rate"
)

// minBurst is the smallest bucket, so that a tiny rate does not reserve a
// chunk in millions of pieces.
const minBurst = 64 << 10

// throttle bounds the bytes copied per second with a token bucket of one
// second's worth of bytes (at least minBurst). A chunk larger than the bucket is reserved in
// bucket-sized pieces, all at once, so it waits as long as its size asks
// and keeps its place against concurrent copies.
type throttle struct {
	lim   *rate.Limiter
	burst int // bucket size in bytes; 0 when unlimited
}

// newThrottle returns a throttle of bps bytes per second; bps < 0 means
// unlimited.
func newThrottle(bps int64) *throttle {
	if bps < 0 {
		return &throttle{lim: rate.NewLimiter(rate.Inf, 0)}
	}
	burst := int(min(max(bps, minBurst), math.MaxInt32))
	return &throttle{lim: rate.NewLimiter(rate.Limit(bps), burst), burst: burst}
}

// reserve reserves n bytes at now and returns the reservations and how long
// the caller must wait from now before sending them.
func (t *throttle) reserve(now time.Time, n int) ([]*rate.Reservation, time.Duration) {
	if t.burst == 0 || n <= 0 {
		return nil, 0
	}
	var (
		rs    []*rate.Reservation
		delay time.Duration
	)
	for n > 0 {
		piece := min(n, t.burst)
		r := t.lim.ReserveN(now, piece)
		rs = append(rs, r)
		delay = max(delay, r.DelayFrom(now))
		n -= piece
	}
	return rs, delay
}

// wait blocks until n more bytes may be sent, or ctx ends (then the
// reservation is given back and ctx's error returned).
func (t *throttle) wait(ctx context.Context, n int) error {
	now := time.Now()
	rs, d := t.reserve(now, n)
	if d <= 0 {
		return ctx.Err()
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return nil
	case <-ctx.Done():
		for i := len(rs) - 1; i >= 0; i-- {
			rs[i].Cancel()
		}
		return ctx.Err()
	}
}
