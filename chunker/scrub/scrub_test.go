package scrub

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/wormhole-fs/wormhole/chunker"
	"github.com/wormhole-fs/wormhole/chunker/chunk"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var _ Store = (*chunker.LocalStore)(nil)

func testLogger(t testing.TB) zerolog.Logger {
	return zerolog.New(zerolog.NewTestWriter(t))
}

// badLog records onBad calls.
type badLog struct {
	mu      sync.Mutex
	reasons map[chunk.ID][]string
}

func (b *badLog) onBad(id chunk.ID, reason string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.reasons == nil {
		b.reasons = map[chunk.ID][]string{}
	}
	b.reasons[id] = append(b.reasons[id], reason)
}

func (b *badLog) get() map[chunk.ID][]string {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := map[chunk.ID][]string{}
	for id, r := range b.reasons {
		out[id] = slices.Clone(r)
	}
	return out
}

// start runs s until the test ends (or the returned stop is called) and
// checks that Run then returns nil.
func start(t *testing.T, s *Scrubber) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run returned %v after its context ended, want nil", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// kickAndWait kicks s and waits, up to a deadline, for the pass to end.
func kickAndWait(t *testing.T, s *Scrubber) {
	t.Helper()
	ended := s.passEnded()
	s.Kick()
	select {
	case <-ended:
	case <-time.After(30 * time.Second):
		t.Fatal("no scrub pass ended within 30s of Kick")
	}
}

// deleting deletes one chunk just before the scrubber verifies it, as if
// a write replaced it between List and Verify.
type deleting struct {
	*chunker.LocalStore
	victim chunk.ID
}

func (d deleting) Verify(ctx context.Context, id chunk.ID) (int64, error) {
	if id == d.victim {
		if err := d.Delete(ctx, id); err != nil {
			return 0, err
		}
	}
	return d.LocalStore.Verify(ctx, id)
}

func TestScrubLocalStore(t *testing.T) {
	ctx := t.Context()
	ls, err := chunker.OpenLocal(filepath.Join(t.TempDir(), "chunks"), testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ls.Close() }()

	ids := make([]chunk.ID, 6)
	for i := range ids {
		ids[i] = chunk.NewID()
		data := make([]byte, 3*chunker.BlockSize+1000*i) // several blocks each
		for j := range data {
			data[j] = byte(j*31 + i)
		}
		if _, err := ls.Put(ctx, ids[i], data); err != nil {
			t.Fatal(err)
		}
	}
	flipped, truncated, deleted := ids[0], ids[1], ids[2]
	good := ids[3:]

	// Flip one bit in the middle of the data of one chunk, cut the last
	// byte off another.
	b, err := os.ReadFile(ls.Path(flipped))
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)-chunker.BlockSize-5] ^= 0x10
	if err := os.WriteFile(ls.Path(flipped), b, 0o644); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(ls.Path(truncated))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(ls.Path(truncated), fi.Size()-1); err != nil {
		t.Fatal(err)
	}
	var wantBytes uint64
	for _, id := range append([]chunk.ID{flipped, truncated}, good...) {
		fi, err := os.Stat(ls.Path(id))
		if err != nil {
			t.Fatal(err)
		}
		wantBytes += uint64(fi.Size())
	}

	var bad badLog
	s := New(Config{Rate: 1 << 40, Delay: time.Hour, Interval: time.Hour}, deleting{ls, deleted}, bad.onBad, testLogger(t))
	start(t, s)
	before := time.Now()
	kickAndWait(t, s)

	st := s.Stats()
	want := Stats{Passes: 1, Checked: uint64(len(good)), Corrupt: 2, Missing: 1, BytesRead: wantBytes,
		LastPassStarted: st.LastPassStarted, LastPassFinished: st.LastPassFinished}
	if st != want {
		t.Errorf("Stats after one pass = %+v\nwant %+v", st, want)
	}
	if st.LastPassStarted.Before(before) || st.LastPassFinished.Before(st.LastPassStarted) {
		t.Errorf("pass times: started %v, finished %v, kicked at %v", st.LastPassStarted, st.LastPassFinished, before)
	}

	reasons := bad.get()
	if len(reasons) != 2 || len(reasons[flipped]) != 1 || len(reasons[truncated]) != 1 {
		t.Fatalf("onBad calls = %v, want one each for %s (flipped) and %s (truncated)", reasons, flipped, truncated)
	}
	for id, r := range reasons {
		if !strings.Contains(r[0], id.String()) || !strings.Contains(r[0], chunk.ErrCorrupt.Error()) {
			t.Errorf("onBad reason for %s = %q, want the verification error", id, r[0])
		}
	}
	for _, id := range []chunk.ID{flipped, truncated, deleted} {
		if _, err := ls.Get(ctx, id); !errors.Is(err, chunk.ErrNotFound) {
			t.Errorf("Get(%s) after the pass = %v, want ErrNotFound", id, err)
		}
	}
	for _, id := range good {
		if _, err := ls.Get(ctx, id); err != nil {
			t.Errorf("Get(%s), a good chunk, after the pass: %v", id, err)
		}
	}
	q, err := os.ReadDir(filepath.Join(ls.Dir(), chunker.QuarantineDir))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range q {
		names = append(names, e.Name())
	}
	if len(names) != 2 || !slices.ContainsFunc(names, func(n string) bool { return strings.HasPrefix(n, flipped.String()+".") }) ||
		!slices.ContainsFunc(names, func(n string) bool { return strings.HasPrefix(n, truncated.String()+".") }) {
		t.Errorf("quarantine holds %v, want the flipped and the truncated chunk", names)
	}

	// A second pass finds only the good chunks: quarantined and deleted
	// ones are no longer listed.
	kickAndWait(t, s)
	st2 := s.Stats()
	if st2.Passes != 2 || st2.Checked != 2*uint64(len(good)) || st2.Corrupt != 2 || st2.Missing != 1 || st2.Errors != 0 {
		t.Errorf("Stats after a second pass = %+v", st2)
	}
	if len(bad.get()) != 2 {
		t.Errorf("the second pass called onBad again: %v", bad.get())
	}
}

// fakeChunk is the behaviour of one chunk of a fakeStore.
type fakeChunk struct {
	id     chunk.ID
	size   int64
	err    error // returned by Verify
	qerr   error // returned by Quarantine
	quarnt bool  // quarantined
}

// fakeStore is an in-memory Store whose chunks verify as told.
type fakeStore struct {
	mu      sync.Mutex
	chunks  []*fakeChunk
	listErr error
	// PruneQuarantine records its times and deletes pruneN copies of 10
	// bytes, or fails with pruneErr.
	pruneAt  []time.Time
	pruneN   int
	pruneErr error
}

func (f *fakeStore) PruneQuarantine(ctx context.Context, t time.Time) (int, int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pruneAt = append(f.pruneAt, t)
	if f.pruneErr != nil {
		return 0, 0, f.pruneErr
	}
	return f.pruneN, int64(f.pruneN) * 10, nil
}

func (f *fakeStore) add(size int64, verr, qerr error) chunk.ID {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := &fakeChunk{id: chunk.NewID(), size: size, err: verr, qerr: qerr}
	f.chunks = append(f.chunks, c)
	return c.id
}

func (f *fakeStore) find(id chunk.ID) *fakeChunk {
	for _, c := range f.chunks {
		if c.id == id {
			return c
		}
	}
	return nil
}

func (f *fakeStore) List(ctx context.Context, fn func(id chunk.ID) error) error {
	f.mu.Lock()
	var ids []chunk.ID
	for _, c := range f.chunks {
		if !c.quarnt {
			ids = append(ids, c.id)
		}
	}
	lerr := f.listErr
	f.mu.Unlock()
	for _, id := range ids {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := fn(id); err != nil {
			return err
		}
	}
	return lerr
}

func (f *fakeStore) Verify(ctx context.Context, id chunk.ID) (int64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	f.mu.Lock()
	c := f.find(id)
	f.mu.Unlock()
	if c.err != nil {
		return c.size / 2, c.err
	}
	return c.size, nil
}

func (f *fakeStore) Quarantine(ctx context.Context, id chunk.ID) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.find(id)
	if c.qerr != nil {
		return c.qerr
	}
	c.quarnt = true
	return nil
}

func (f *fakeStore) quarantined() []chunk.ID {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []chunk.ID
	for _, c := range f.chunks {
		if c.quarnt {
			out = append(out, c.id)
		}
	}
	return out
}

func TestScrubErrors(t *testing.T) {
	f := &fakeStore{}
	good := f.add(100, nil, nil)
	unreadable := f.add(100, fmt.Errorf("open: %w", os.ErrPermission), nil)
	stuck := f.add(100, fmt.Errorf("block 3: %w", chunk.ErrCorrupt), errors.New("rename: read-only file system"))
	racy := f.add(100, fmt.Errorf("header: %w", chunk.ErrCorrupt), fmt.Errorf("quarantine: %w", chunk.ErrNotFound))
	_ = good

	var bad badLog
	s := New(Config{Rate: 1 << 40, Delay: time.Hour}, f, bad.onBad, testLogger(t))
	start(t, s)
	kickAndWait(t, s)
	st := s.Stats()
	// unreadable: an error, no quarantine, no report. stuck: corrupt, its
	// quarantine failed (an error), reported. racy: corrupt, deleted
	// before its quarantine (no error), reported.
	if st.Passes != 1 || st.Checked != 1 || st.Corrupt != 2 || st.Missing != 0 || st.Errors != 2 || st.BytesRead != 100+3*50 {
		t.Errorf("Stats = %+v", st)
	}
	reasons := bad.get()
	if len(reasons) != 2 || len(reasons[stuck]) != 1 || len(reasons[racy]) != 1 {
		t.Fatalf("onBad calls = %v, want one each for %s and %s", reasons, stuck, racy)
	}
	if r := reasons[stuck][0]; !strings.Contains(r, "block 3") || !strings.Contains(r, "quarantine failed") || !strings.Contains(r, "read-only") {
		t.Errorf("reason for a chunk that could not be quarantined = %q", r)
	}
	if q := f.quarantined(); len(q) != 0 {
		t.Errorf("quarantined %v; the fake refused every quarantine", q)
	}
	if _, ok := reasons[unreadable]; ok {
		t.Error("onBad called for a chunk that could not be read but is not known bad")
	}

	// A List failure cuts the pass short: not counted, an error.
	f.mu.Lock()
	f.listErr = errors.New("readdir: input/output error")
	f.mu.Unlock()
	kickAndWait(t, s)
	st2 := s.Stats()
	if st2.Passes != 1 || st2.Errors != st.Errors+3 || st2.Running || !st2.LastPassFinished.Equal(st.LastPassFinished) {
		t.Errorf("Stats after a pass whose List failed = %+v (before %+v)", st2, st)
	}
}

// Each pass first deletes the copies quarantined longer ago than
// QuarantineKeep, counts them, and goes on when that fails; with no
// QuarantineKeep nothing is deleted.
func TestScrubPrunesQuarantine(t *testing.T) {
	f := &fakeStore{pruneN: 2}
	f.add(100, nil, nil)
	const keep = 48 * time.Hour
	s := New(Config{Rate: 1 << 40, Delay: time.Hour, QuarantineKeep: keep}, f, nil, testLogger(t))
	start(t, s)
	kickAndWait(t, s)
	st := s.Stats()
	f.mu.Lock()
	at := slices.Clone(f.pruneAt)
	f.pruneErr = errors.New("readdir quarantine: input/output error")
	f.mu.Unlock()
	if len(at) != 1 || !at[0].Equal(st.LastPassStarted.Add(-keep)) {
		t.Fatalf("PruneQuarantine called at %v; want once, at the pass start %v minus %v", at, st.LastPassStarted, keep)
	}
	if st.Pruned != 2 || st.Checked != 1 || st.Errors != 0 {
		t.Errorf("Stats = %+v; want 2 pruned, 1 checked", st)
	}
	kickAndWait(t, s)
	if st2 := s.Stats(); st2.Passes != 2 || st2.Checked != 2 || st2.Errors != 1 || st2.Pruned != 2 {
		t.Errorf("Stats after a failed prune = %+v; want the pass done and one error", st2)
	}

	f2 := &fakeStore{pruneN: 2}
	s2 := New(Config{Rate: 1 << 40, Delay: time.Hour}, f2, nil, testLogger(t))
	start(t, s2)
	kickAndWait(t, s2)
	if len(f2.pruneAt) != 0 || s2.Stats().Pruned != 0 {
		t.Errorf("without QuarantineKeep: PruneQuarantine called %d times", len(f2.pruneAt))
	}
}

func TestPacer(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	ms := time.Millisecond
	// 1000 bytes/s with a one-second burst.
	steps := []struct {
		now  time.Time
		n    int64
		wait time.Duration
	}{
		{at(0), 600, 0},                   // within the burst
		{at(0), 400, 0},                   // burst used up exactly
		{at(0), 500, 500 * ms},            // 500 bytes of debt
		{at(500 * ms), 1000, 1000 * ms},   // waited as told: 1 s more of debt
		{at(1500 * ms), 0, 0},             // paid off
		{at(1600 * ms), 2000, 1900 * ms},  // bigger than the burst: one read, then a long wait
		{at(10 * time.Second), 1000, 0},   // idle: the burst is back, and no more
		{at(10 * time.Second), 1, 1 * ms}, // ... and no more than one burst
		{at(20 * time.Second), 250, 0},
		{at(20*time.Second + 100*ms), 900, 50 * ms},
	}
	p := newPacer(1000, t0)
	for i, s := range steps {
		if got := p.take(s.now, s.n); got != s.wait {
			t.Errorf("step %d: take(%v, %d) = %v, want %v", i, s.now.Sub(t0), s.n, got, s.wait)
		}
	}
}

func TestPacerAverage(t *testing.T) {
	// Reading 200 MiB in 1 MiB chunks at 16 MiB/s, waiting as told, takes
	// 200/16 s less the one-second burst, however the chunks are sized.
	const rate = 16 << 20
	for _, chunkSize := range []int64{1 << 20, 64 << 10, 3<<20 + 7, 64 << 20} {
		now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
		t0 := now
		p := newPacer(rate, now)
		var total int64
		for total < 200<<20 {
			n := min(chunkSize, 200<<20-total)
			total += n
			now = now.Add(p.take(now, n))
		}
		want := time.Duration(float64(total)/rate*float64(time.Second)) - burst
		if got := now.Sub(t0); got < want-time.Millisecond || got > want+time.Millisecond {
			t.Errorf("chunks of %d bytes: 200 MiB took %v, want %v", chunkSize, got, want)
		}
	}
}

func TestScrubPaceAndSchedule(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeStore{}
		for range 10 {
			f.add(1<<20, nil, nil)
		}
		s := New(Config{Rate: 1 << 20, Interval: 6 * time.Hour, Delay: 10 * time.Minute}, f, nil, testLogger(t))
		t0 := time.Now()
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- s.Run(ctx) }()

		// The first pass starts after Delay and, at 1 MiB/s with a
		// one-second burst, takes 9 s of (fake) time for 10 MiB: the
		// first chunk rides the burst, each later one waits a second,
		// and the wait after the last pays for it.
		<-s.passEnded()
		st := s.Stats()
		if got := st.LastPassStarted.Sub(t0); got != 10*time.Minute {
			t.Errorf("first pass started %v after Run, want the 10m delay", got)
		}
		if got := st.LastPassFinished.Sub(st.LastPassStarted); got != 9*time.Second {
			t.Errorf("pass of 10 MiB at 1 MiB/s took %v, want 9s", got)
		}
		if st.Passes != 1 || st.Checked != 10 || st.BytesRead != 10<<20 {
			t.Errorf("Stats = %+v", st)
		}

		// The next pass starts Interval after the end of the first.
		<-s.passEnded()
		st2 := s.Stats()
		if got := st2.LastPassStarted.Sub(st.LastPassFinished); got != 6*time.Hour {
			t.Errorf("second pass started %v after the first ended, want the 6h interval", got)
		}

		// A Kick during a pass is ignored; one while idle starts a pass
		// at once.
		kickedAt := time.Now()
		s.Kick()
		synctest.Wait() // the pass is running, waiting on the pacer
		if !s.Stats().Running {
			t.Fatal("Kick did not start a pass")
		}
		s.Kick()
		<-s.passEnded()
		st3 := s.Stats()
		if !st3.LastPassStarted.Equal(kickedAt) || st3.Passes != 3 {
			t.Errorf("kicked pass: %+v, kicked at %v", st3, kickedAt)
		}
		synctest.Wait()
		if st := s.Stats(); st.Running || st.Passes != 3 {
			t.Errorf("a Kick during a pass started another: %+v", st)
		}
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v after cancel, want nil", err)
		}
	})
}

func TestRunStopsMidPass(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeStore{}
		for range 5 {
			f.add(1<<20, nil, nil)
		}
		s := New(Config{Rate: 1, Delay: time.Hour}, f, nil, testLogger(t)) // a MiB takes 12 days
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- s.Run(ctx) }()
		s.Kick()
		synctest.Wait() // blocked in the pacer after the first chunk
		if st := s.Stats(); !st.Running || st.Checked != 1 {
			t.Fatalf("Stats mid-pass = %+v", st)
		}
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v after cancel, want nil", err)
		}
		st := s.Stats()
		if st.Running || st.Passes != 0 || st.Checked != 1 || st.Errors != 0 || !st.LastPassFinished.IsZero() {
			t.Errorf("Stats after stopping mid-pass = %+v", st)
		}
		// Run may be started again once it has returned.
		ctx2, cancel2 := context.WithCancel(t.Context())
		go func() { done <- s.Run(ctx2) }()
		synctest.Wait()
		cancel2()
		if err := <-done; err != nil {
			t.Errorf("second Run = %v", err)
		}
	})
}

func TestRunRejects(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := New(Config{Delay: time.Hour}, &fakeStore{}, nil, testLogger(t))
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- s.Run(ctx) }()
		synctest.Wait()
		if err := s.Run(ctx); err == nil {
			t.Error("a second concurrent Run succeeded")
		}
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v", err)
		}
	})
	for _, c := range []Config{{Rate: -1}, {Interval: -time.Second}, {Delay: -time.Second}} {
		if err := c.Validate(); err == nil {
			t.Errorf("Validate(%+v) = nil", c)
		}
		if err := New(c, &fakeStore{}, nil, testLogger(t)).Run(t.Context()); err == nil {
			t.Errorf("Run with %+v = nil, want the validation error", c)
		}
	}
	if err := (Config{}).Validate(); err != nil {
		t.Errorf("Validate of the zero Config: %v", err)
	}
	if got := New(Config{}, &fakeStore{}, nil, testLogger(t)).cfg; got != DefaultConfig() {
		t.Errorf("zero Config became %+v, want the defaults %+v", got, DefaultConfig())
	}
}

// A chunk a client's read finds damaged is checked, quarantined and
// reported at once, with no pass, when the store tells the scrubber
// (SetOnCorrupt, as the node wires them); a suspect that is gone by then
// is nothing.
func TestScrubSuspectFromRead(t *testing.T) {
	ctx := t.Context()
	ls, err := chunker.OpenLocal(filepath.Join(t.TempDir(), "chunks"), testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ls.Close() }()
	damaged, good := chunk.NewID(), chunk.NewID()
	data := make([]byte, 2*chunker.BlockSize)
	for i := range data {
		data[i] = byte(i * 7)
	}
	for _, id := range []chunk.ID{damaged, good} {
		if _, err := ls.Put(ctx, id, data); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(ls.Path(damaged))
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)-10] ^= 1
	if err := os.WriteFile(ls.Path(damaged), b, 0o644); err != nil {
		t.Fatal(err)
	}

	reported := make(chan chunk.ID, 4)
	s := New(Config{Rate: 1 << 40, Delay: time.Hour, Interval: time.Hour}, ls,
		func(id chunk.ID, _ string) { reported <- id }, testLogger(t))
	ls.SetOnCorrupt(s.Suspect)
	start(t, s)

	s.Suspect(chunk.NewID()) // gone already
	p := make([]byte, 100)
	if _, err := ls.ReadRange(ctx, damaged, p, int64(len(data)-100)); !errors.Is(err, chunk.ErrCorrupt) {
		t.Fatalf("read of the damaged block: %v, want ErrCorrupt", err)
	}
	select {
	case id := <-reported:
		if id != damaged {
			t.Fatalf("reported %s, want the damaged chunk %s", id, damaged)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the chunk a read found damaged was not reported within 30s")
	}
	if _, err := ls.Get(ctx, damaged); !errors.Is(err, chunk.ErrNotFound) {
		t.Errorf("Get of the damaged chunk after its check = %v, want ErrNotFound (quarantined)", err)
	}
	if _, err := ls.Get(ctx, good); err != nil {
		t.Errorf("Get of the good chunk: %v", err)
	}
	if st := s.Stats(); st.Passes != 0 || st.Suspects != 2 || st.Corrupt != 1 || st.Errors != 0 {
		t.Errorf("Stats = %+v; want no pass, 2 suspects, 1 corrupt", st)
	}
}
