package bench

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"
)

// Pattern identities: the first part of every patternKey.
const (
	keySeq = iota + 1
	keySmall
)

// parallel runs fn once per stream, each with its own conn, and returns
// the time from start until the last one finished. The first error
// cancels the others.
func (r *runner) parallel(ctx context.Context, fn func(ctx context.Context, i int, c conn) error) (time.Duration, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make([]error, len(r.conns))
	var wg sync.WaitGroup
	start := time.Now()
	for i, c := range r.conns {
		wg.Go(func() {
			if err := fn(ctx, i, c); err != nil {
				errs[i] = fmt.Errorf("stream %d: %w", i, err)
				cancel()
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	for _, err := range errs {
		if err != nil && !errors.Is(err, context.Canceled) {
			return elapsed, err
		}
	}
	return elapsed, errors.Join(errs...)
}

func mbps(bytes int64, d time.Duration) float64 { return float64(bytes) / 1e6 / d.Seconds() }
func rate(n int, d time.Duration) float64       { return float64(n) / d.Seconds() }

func (r *runner) streamsDetail() string {
	if len(r.conns) == 1 {
		return "1 stream"
	}
	return fmt.Sprintf("%d streams", len(r.conns))
}

// seqWrite creates one file per stream (untimed) and writes it whole in
// 1 MiB stable WRITEs.
func (r *runner) seqWrite(ctx context.Context) (Figure, error) {
	r.seqSize = r.o.Size / int64(len(r.conns)) / ioSize * ioSize
	r.seqFiles = make([]handle, len(r.conns))
	for i := range r.conns {
		name := fmt.Sprintf("seq-%d", i)
		h, err := r.conns[0].create(ctx, r.work, name)
		if err != nil {
			return Figure{}, err
		}
		r.track(r.work, false, name)
		r.seqFiles[i] = h
	}
	d, err := r.parallel(ctx, func(ctx context.Context, i int, c conn) error {
		k := patternKey(r.o.Seed, keySeq, uint64(i), 0)
		buf := make([]byte, ioSize)
		for off := int64(0); off < r.seqSize; off += ioSize {
			k.fill(buf, off)
			if err := c.writeBackAt(ctx, r.seqFiles[i], buf, off); err != nil {
				return err
			}
		}
		return c.commit(ctx, r.seqFiles[i])
	})
	if err != nil {
		return Figure{}, err
	}
	total := r.seqSize * int64(len(r.conns))
	return Figure{Value: mbps(total, d), Unit: "MB/s", Ops: int(total / ioSize), Bytes: total, Seconds: d.Seconds(),
		Detail: fmt.Sprintf("%d MiB in 1 MiB %s requests, %s, %.2f s", total>>20, r.writeKind(), r.streamsDetail(), d.Seconds())}, nil
}

// seqRead reads each stream's file in 1 MiB READs and verifies every byte.
func (r *runner) seqRead(ctx context.Context) (Figure, error) {
	d, err := r.parallel(ctx, func(ctx context.Context, i int, c conn) error {
		if a, err := c.getattr(ctx, r.seqFiles[i]); err != nil {
			return err
		} else if a.Size != r.seqSize {
			return fmt.Errorf("seq-%d has size %d, want %d", i, a.Size, r.seqSize)
		}
		k := patternKey(r.o.Seed, keySeq, uint64(i), 0)
		buf := make([]byte, ioSize)
		for off := int64(0); off < r.seqSize; off += ioSize {
			if err := c.readAt(ctx, r.seqFiles[i], buf, off); err != nil {
				return err
			}
			if err := k.verify(buf, off); err != nil {
				return fmt.Errorf("seq-%d: %w", i, err)
			}
		}
		return nil
	})
	if err != nil {
		return Figure{}, err
	}
	total := r.seqSize * int64(len(r.conns))
	return Figure{Value: mbps(total, d), Unit: "MB/s", Ops: int(total / ioSize), Bytes: total, Seconds: d.Seconds(),
		Detail: fmt.Sprintf("%d MiB in 1 MiB requests, verified, %s, %.2f s", total>>20, r.streamsDetail(), d.Seconds())}, nil
}

// opsPerStream splits n operations over the streams (at least one each).
func (r *runner) opsPerStream(n int) int { return max(1, n/len(r.conns)) }

// randOffsets returns a stream's random 4 KiB-aligned offsets, seeded.
func (r *runner) randOffsets(stream, salt uint64, n int) []int64 {
	rng := rand.New(rand.NewPCG(r.o.Seed^salt, stream))
	blocks := r.seqSize / randIOSize
	offs := make([]int64, n)
	for j := range offs {
		offs[j] = rng.Int64N(blocks) * randIOSize
	}
	return offs
}

// randRead reads 4 KiB at random aligned offsets of the large file(s),
// verifying each.
func (r *runner) randRead(ctx context.Context) (Figure, error) {
	per := r.opsPerStream(r.o.RandomOps)
	d, err := r.parallel(ctx, func(ctx context.Context, i int, c conn) error {
		k := patternKey(r.o.Seed, keySeq, uint64(i), 0)
		buf := make([]byte, randIOSize)
		for _, off := range r.randOffsets(uint64(i), 0x5eed, per) {
			if err := c.readAt(ctx, r.seqFiles[i], buf, off); err != nil {
				return err
			}
			if err := k.verify(buf, off); err != nil {
				return fmt.Errorf("seq-%d: %w", i, err)
			}
		}
		return nil
	})
	if err != nil {
		return Figure{}, err
	}
	n := per * len(r.conns)
	return Figure{Value: rate(n, d), Unit: "ops/s", Ops: n, Bytes: int64(n) * randIOSize, Seconds: d.Seconds(),
		Detail: fmt.Sprintf("%d x 4 KiB READ, verified, %s, %.2f s", n, r.streamsDetail(), d.Seconds())}, nil
}

// randWrite writes 4 KiB of new content (generation 1) at random aligned
// offsets, then (untimed) reads every written block back and verifies it.
func (r *runner) randWrite(ctx context.Context) (Figure, error) {
	per := r.opsPerStream(r.o.RandomOps)
	d, err := r.parallel(ctx, func(ctx context.Context, i int, c conn) error {
		k := patternKey(r.o.Seed, keySeq, uint64(i), 1)
		buf := make([]byte, randIOSize)
		for _, off := range r.randOffsets(uint64(i), 0x3717e, per) {
			k.fill(buf, off)
			if err := c.writeBackAt(ctx, r.seqFiles[i], buf, off); err != nil {
				return err
			}
		}
		return c.commit(ctx, r.seqFiles[i])
	})
	if err != nil {
		return Figure{}, err
	}
	_, err = r.parallel(ctx, func(ctx context.Context, i int, c conn) error {
		k := patternKey(r.o.Seed, keySeq, uint64(i), 1)
		buf := make([]byte, randIOSize)
		for _, off := range r.randOffsets(uint64(i), 0x3717e, per) {
			if err := c.readAt(ctx, r.seqFiles[i], buf, off); err != nil {
				return err
			}
			if err := k.verify(buf, off); err != nil {
				return fmt.Errorf("seq-%d after random writes: %w", i, err)
			}
		}
		return nil
	})
	if err != nil {
		return Figure{}, err
	}
	n := per * len(r.conns)
	return Figure{Value: rate(n, d), Unit: "ops/s", Ops: n, Bytes: int64(n) * randIOSize, Seconds: d.Seconds(),
		Detail: fmt.Sprintf("%d x 4 KiB %s WRITE, read back and verified, %s, %.2f s", n, r.writeKind(), r.streamsDetail(), d.Seconds())}, nil
}

// writeKind says how seq-write and rand-write send their WRITEs.
func (r *runner) writeKind() string {
	if r.o.Unstable && r.o.LocalDir == "" {
		return "UNSTABLE (+ COMMIT)"
	}
	return "stable"
}

func createName(j int) string { return fmt.Sprintf("f%06d", j) }

// create makes empty files in one new directory, the streams all in the
// same one (as many clients filling one directory do).
func (r *runner) create(ctx context.Context) (Figure, error) {
	var err error
	if r.createDir, err = r.conns[0].mkdir(ctx, r.work, "create"); err != nil {
		return Figure{}, err
	}
	r.track(r.work, true, "create")
	per := r.opsPerStream(r.o.Creates)
	r.creates = per * len(r.conns)
	d, err := r.parallel(ctx, func(ctx context.Context, i int, c conn) error {
		for j := i * per; j < (i+1)*per; j++ {
			if _, err := c.create(ctx, r.createDir, createName(j)); err != nil {
				return err
			}
			r.track(r.createDir, false, createName(j))
		}
		return nil
	})
	if err != nil {
		return Figure{}, err
	}
	return Figure{Value: rate(r.creates, d), Unit: "files/s", Ops: r.creates, Seconds: d.Seconds(),
		Detail: fmt.Sprintf("%d empty files in one directory, %s, %.2f s", r.creates, r.streamsDetail(), d.Seconds())}, nil
}

// stat looks up every created file by name, then gets its attributes by
// handle (what stat(2) costs with a cold and a warm dentry cache), and
// checks they describe an empty regular file. Each RPC counts as one op.
func (r *runner) stat(ctx context.Context) (Figure, error) {
	per := r.creates / len(r.conns)
	d, err := r.parallel(ctx, func(ctx context.Context, i int, c conn) error {
		for j := i * per; j < (i+1)*per; j++ {
			h, a, err := c.lookup(ctx, r.createDir, createName(j))
			if err != nil {
				return err
			}
			if err := checkEmptyFile(createName(j), a); err != nil {
				return err
			}
			if a, err = c.getattr(ctx, h); err != nil {
				return err
			}
			if err := checkEmptyFile(createName(j), a); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return Figure{}, err
	}
	n := 2 * r.creates
	return Figure{Value: rate(n, d), Unit: "ops/s", Ops: n, Seconds: d.Seconds(),
		Detail: fmt.Sprintf("%d LOOKUP + %d GETATTR, checked, %s, %.2f s", r.creates, r.creates, r.streamsDetail(), d.Seconds())}, nil
}

func checkEmptyFile(name string, a attr) error {
	if a.Dir || a.Size != 0 {
		return fmt.Errorf("%s: attributes say dir=%v size=%d, want an empty file", name, a.Dir, a.Size)
	}
	return nil
}

// list fills a directory (untimed, over several connections) and then
// times one READDIRPLUS listing of it, checking every name and that each
// entry carries attributes.
func (r *runner) list(ctx context.Context) (Figure, error) {
	n := r.o.ListEntries
	dir, err := r.conns[0].mkdir(ctx, r.work, "list")
	if err != nil {
		return Figure{}, err
	}
	r.track(r.work, true, "list")
	r.progress("list: creating %d entries (untimed)", n)
	if err := r.fill(ctx, dir, n); err != nil {
		return Figure{}, err
	}
	start := time.Now()
	entries, err := r.conns[0].listDir(ctx, dir)
	d := time.Since(start)
	if err != nil {
		return Figure{}, err
	}
	if err := checkListing(entries, n); err != nil {
		return Figure{}, err
	}
	return Figure{Value: d.Seconds(), Unit: "s", LowerIsBetter: true, Ops: n, Seconds: d.Seconds(),
		Detail: fmt.Sprintf("READDIRPLUS of %d entries with attributes, checked, %.0f entries/s", n, rate(n, d))}, nil
}

// fill creates n empty files e000000... in dir over setupConns new
// connections.
func (r *runner) fill(ctx context.Context, dir handle, n int) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make([]error, setupConns)
	var wg sync.WaitGroup
	for w := range setupConns {
		wg.Go(func() {
			c, err := r.dial(ctx)
			if err != nil {
				errs[w] = err
				cancel()
				return
			}
			defer c.close()
			for j := w; j < n; j += setupConns {
				if _, err := c.create(ctx, dir, listName(j)); err != nil {
					errs[w] = err
					cancel()
					return
				}
				r.track(dir, false, listName(j))
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

func listName(j int) string { return fmt.Sprintf("e%06d", j) }

// checkListing verifies a listing holds exactly e000000..e(n-1), each
// once, each with attributes of an empty regular file.
func checkListing(entries []dirEntry, n int) error {
	seen := make([]bool, n)
	for _, e := range entries {
		var j int
		if _, err := fmt.Sscanf(e.Name, "e%06d", &j); err != nil || j < 0 || j >= n || listName(j) != e.Name {
			return fmt.Errorf("listing has unexpected entry %q", e.Name)
		}
		if seen[j] {
			return fmt.Errorf("listing has %q twice", e.Name)
		}
		seen[j] = true
		if !e.HasAttr {
			return fmt.Errorf("listing entry %q has no attributes", e.Name)
		}
		if err := checkEmptyFile(e.Name, e.Attr); err != nil {
			return fmt.Errorf("listing: %w", err)
		}
	}
	if len(entries) != n {
		return fmt.Errorf("listing has %d entries, want %d", len(entries), n)
	}
	return nil
}

func smallName(j int) string { return fmt.Sprintf("s%06d", j) }

// smallWrite creates 4 KiB files, each with one stable WRITE, in one
// directory per stream (made untimed).
func (r *runner) smallWrite(ctx context.Context) (Figure, error) {
	r.smallDirs = make([]handle, len(r.conns))
	for i := range r.conns {
		name := fmt.Sprintf("small-%d", i)
		h, err := r.conns[0].mkdir(ctx, r.work, name)
		if err != nil {
			return Figure{}, err
		}
		r.track(r.work, true, name)
		r.smallDirs[i] = h
	}
	per := r.opsPerStream(r.o.SmallFiles)
	d, err := r.parallel(ctx, func(ctx context.Context, i int, c conn) error {
		buf := make([]byte, smallFileSize)
		for j := range per {
			h, err := c.create(ctx, r.smallDirs[i], smallName(j))
			if err != nil {
				return err
			}
			r.track(r.smallDirs[i], false, smallName(j))
			patternKey(r.o.Seed, keySmall, uint64(i), uint64(j)).fill(buf, 0)
			if err := c.writeAt(ctx, h, buf, 0); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return Figure{}, err
	}
	n := per * len(r.conns)
	return Figure{Value: rate(n, d), Unit: "files/s", Ops: n, Bytes: int64(n) * smallFileSize, Seconds: d.Seconds(),
		Detail: fmt.Sprintf("%d x (CREATE + 4 KiB stable WRITE), %s, %.2f s", n, r.streamsDetail(), d.Seconds())}, nil
}

// smallRead looks each small file up by name and reads it whole,
// verifying its size and content.
func (r *runner) smallRead(ctx context.Context) (Figure, error) {
	per := r.opsPerStream(r.o.SmallFiles)
	d, err := r.parallel(ctx, func(ctx context.Context, i int, c conn) error {
		buf := make([]byte, smallFileSize)
		for j := range per {
			h, a, err := c.lookup(ctx, r.smallDirs[i], smallName(j))
			if err != nil {
				return err
			}
			if a.Size != smallFileSize {
				return fmt.Errorf("%s: size %d, want %d", smallName(j), a.Size, smallFileSize)
			}
			if err := c.readAt(ctx, h, buf, 0); err != nil {
				return err
			}
			if err := patternKey(r.o.Seed, keySmall, uint64(i), uint64(j)).verify(buf, 0); err != nil {
				return fmt.Errorf("small-%d/%s: %w", i, smallName(j), err)
			}
		}
		return nil
	})
	if err != nil {
		return Figure{}, err
	}
	n := per * len(r.conns)
	return Figure{Value: rate(n, d), Unit: "files/s", Ops: n, Bytes: int64(n) * smallFileSize, Seconds: d.Seconds(),
		Detail: fmt.Sprintf("%d x (LOOKUP + 4 KiB READ), verified, %s, %.2f s", n, r.streamsDetail(), d.Seconds())}, nil
}
