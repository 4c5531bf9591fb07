package scrub

import "time"

// burst is how far reading may run ahead of the average rate: after a
// pause (between passes, or a slow disk) the scrubber reads up to
// burst×Rate bytes without waiting.
const burst = time.Second

// pacer keeps the scrubber's reads to a rate of bytes per second. It is
// a token bucket kept as a virtual clock (the generic cell rate
// algorithm): next is when the bytes charged so far would have been read
// at exactly the rate, and may run at most burst behind real time. Bytes
// are charged after they are read (a chunk's size is known only then);
// the wait that take returns pays for them before the next read. Not safe
// for concurrent use; the pass goroutine owns it.
type pacer struct {
	rate int64 // bytes per second, > 0
	next time.Time
}

// newPacer returns a pacer for rate bytes per second, started at now with
// a full burst.
func newPacer(rate int64, now time.Time) *pacer {
	return &pacer{rate: rate, next: now.Add(-burst)}
}

// cost returns how long n bytes take at the pacer's rate.
func (p *pacer) cost(n int64) time.Duration {
	// Float: n*1e9 overflows int64 past about 9 GB; a nanosecond of
	// rounding does not matter.
	return time.Duration(float64(n) / float64(p.rate) * float64(time.Second))
}

// take charges n bytes read at now and returns how long to wait before
// reading more: zero while reading is within the rate plus burst.
func (p *pacer) take(now time.Time, n int64) time.Duration {
	if earliest := now.Add(-burst); p.next.Before(earliest) {
		p.next = earliest // idle time earns at most one burst
	}
	p.next = p.next.Add(p.cost(n))
	return max(0, p.next.Sub(now))
}
