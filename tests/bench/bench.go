package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Workload names, in the order Run runs them.
const (
	SeqWrite   = "seq-write"
	SeqRead    = "seq-read"
	RandRead   = "rand-read"
	RandWrite  = "rand-write"
	Create     = "create"
	Stat       = "stat"
	List       = "list"
	SmallWrite = "small-write"
	SmallRead  = "small-read"
)

// Workloads lists every workload name in run order.
var Workloads = []string{SeqWrite, SeqRead, RandRead, RandWrite, Create, Stat, List, SmallWrite, SmallRead}

const (
	ioSize        = 1 << 20 // sequential request size
	randIOSize    = 4 << 10 // random request size
	smallFileSize = 4 << 10
	setupConns    = 4 // connections that fill the listing directory (untimed)
)

// Options selects the target and sizes a run. The zero value of a size
// means its default.
type Options struct {
	// NFSAddr is the NFSv3 server, HOST:PORT.
	NFSAddr string
	// MountAddr is its MOUNT service, HOST:PORT; empty means NFSAddr.
	MountAddr string
	// Export is the path to mount: "/" for Wormhole, e.g. "/export" for
	// nfs-ganesha. Empty means "/".
	Export string
	// LocalDir, when set, runs the workloads on this local directory with
	// os calls instead of over NFS (the NFS fields are ignored).
	LocalDir string

	// Size is the large file's size (split over the streams), rounded
	// down to whole 1 MiB requests. Default 256 MiB.
	Size int64
	// Streams is the number of parallel connections every workload but
	// the listing runs over (sequential, random, creates and stats in one
	// shared directory, small files). Default 1.
	Streams int
	// RandomOps is the number of random 4 KiB reads, and of writes.
	// Default 2,000 each.
	RandomOps int
	// Creates is the number of empty files created (and then stat'ed) in
	// one directory. Default 2,000.
	Creates int
	// ListEntries is the size of the listed directory. Default 20,000.
	ListEntries int
	// SmallFiles is the number of 4 KiB files written and read back.
	// Default 1,000.
	SmallFiles int
	// Seed derives all content and random offsets. Default 1.
	Seed uint64
	// OpTimeout bounds every single request. Default 1 minute.
	OpTimeout time.Duration
	// Unstable sends the WRITEs of seq-write and rand-write UNSTABLE and
	// COMMITs the file at the end of the timed part, as a kernel client
	// does for buffered writes and fsync; small-write stays one FILE_SYNC
	// WRITE per file (what a kernel client sends when it flushes a file
	// that fits in one WRITE). The default sends every WRITE FILE_SYNC.
	// A local directory ignores it.
	Unstable bool
	// Keep leaves the run's directory on the target instead of removing
	// it at the end.
	Keep bool
	// Progress receives one line per workload (and setup steps); nil
	// discards them.
	Progress io.Writer
}

func (o Options) withDefaults() (Options, error) {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	if o.Size == 0 {
		o.Size = 256 << 20
	}
	def(&o.Streams, 1)
	def(&o.RandomOps, 2000)
	def(&o.Creates, 2000)
	def(&o.ListEntries, 20000)
	def(&o.SmallFiles, 1000)
	if o.Seed == 0 {
		o.Seed = 1
	}
	if o.OpTimeout == 0 {
		o.OpTimeout = time.Minute
	}
	if o.Export == "" {
		o.Export = "/"
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	if o.MountAddr == "" {
		o.MountAddr = o.NFSAddr
	}
	switch {
	case o.LocalDir == "" && o.NFSAddr == "":
		return o, errors.New("bench: no target: set the NFS address or a local directory")
	case o.Streams < 0 || o.RandomOps < 0 || o.Creates < 0 || o.ListEntries < 0 || o.SmallFiles < 0 || o.Size < 0:
		return o, errors.New("bench: sizes and counts must not be negative")
	case o.Size/int64(o.Streams) < ioSize:
		return o, fmt.Errorf("bench: size %d is less than one %d-byte request per stream", o.Size, ioSize)
	}
	if o.LocalDir == "" {
		for _, a := range []string{o.NFSAddr, o.MountAddr} {
			if _, _, err := net.SplitHostPort(a); err != nil {
				return o, fmt.Errorf("bench: address %q: %w", a, err)
			}
		}
	}
	return o, nil
}

// Figure is one workload's result.
type Figure struct {
	Workload string  `json:"workload"`
	Value    float64 `json:"value"`
	Unit     string  `json:"unit"` // MB/s (10^6 bytes), ops/s, files/s or s
	// LowerIsBetter is set for durations (the listing).
	LowerIsBetter bool    `json:"lower_is_better,omitempty"`
	Ops           int     `json:"ops"`
	Bytes         int64   `json:"bytes,omitempty"`
	Seconds       float64 `json:"seconds"`
	Detail        string  `json:"detail"`
}

// Results are the figures of one run, in workload order.
type Results struct {
	Target  string   `json:"target"`
	Streams int      `json:"streams"`
	Figures []Figure `json:"figures"`
}

// Figure returns the named workload's figure.
func (r Results) Figure(workload string) (Figure, bool) {
	for _, f := range r.Figures {
		if f.Workload == workload {
			return f, true
		}
	}
	return Figure{}, false
}

// Table renders the results for people.
func (r Results) Table() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s, %d stream(s)\n", r.Target, r.Streams)
	fmt.Fprintf(&b, "%-12s %10s %-8s %s\n", "workload", "result", "unit", "detail")
	for _, f := range r.Figures {
		fmt.Fprintf(&b, "%-12s %10s %-8s %s\n", f.Workload, FormatValue(f.Value), f.Unit, f.Detail)
	}
	return b.String()
}

// FormatValue prints a figure with three or more significant digits.
func FormatValue(v float64) string {
	switch {
	case v >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case v >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	case v >= 1:
		return strconv.FormatFloat(v, 'f', 2, 64)
	default:
		return strconv.FormatFloat(v, 'f', 3, 64)
	}
}

// Run runs every workload once against the target in opts, verifying all
// content read back, and returns the figures. On error it returns the
// figures measured so far. Unless opts.Keep, it removes its directory
// from the target at the end (also after a failed workload).
func Run(ctx context.Context, opts Options) (Results, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return Results{}, err
	}
	var dial dialer
	res := Results{Streams: o.Streams}
	if o.LocalDir != "" {
		dial = dialLocal(o.LocalDir)
		res.Target = "local directory " + o.LocalDir
	} else {
		t, err := mountNFS(ctx, o.NFSAddr, o.MountAddr, o.Export, o.OpTimeout)
		if err != nil {
			return res, err
		}
		t.unstable = o.Unstable
		dial = t.dial
		res.Target = fmt.Sprintf("NFSv3 %s (mount %s, export %s)", o.NFSAddr, o.MountAddr, o.Export)
	}
	r := &runner{o: o, dial: dial}
	defer r.closeConns()
	for range o.Streams {
		c, err := dial(ctx)
		if err != nil {
			return res, err
		}
		r.conns = append(r.conns, c)
	}
	c0 := r.conns[0]
	name := fmt.Sprintf("wormhole-bench-%d-%d", os.Getpid(), time.Now().UnixNano())
	if r.work, err = c0.mkdir(ctx, c0.root(), name); err != nil {
		return res, fmt.Errorf("make the run directory: %w", err)
	}
	r.workName = name
	if !o.Keep {
		defer func() {
			if cerr := r.cleanup(ctx); cerr != nil && err == nil {
				err = cerr
			}
		}()
	}
	steps := []struct {
		name string
		fn   func(context.Context) (Figure, error)
	}{
		{SeqWrite, r.seqWrite}, {SeqRead, r.seqRead}, {RandRead, r.randRead}, {RandWrite, r.randWrite},
		{Create, r.create}, {Stat, r.stat}, {List, r.list}, {SmallWrite, r.smallWrite}, {SmallRead, r.smallRead},
	}
	for i, s := range steps {
		f, err := s.fn(ctx)
		if err != nil {
			return res, fmt.Errorf("%s: %w", s.name, err)
		}
		f.Workload = s.name
		res.Figures = append(res.Figures, f)
		fmt.Fprintf(o.Progress, "bench [%d/%d] %-11s %10s %-7s %s\n", i+1, len(steps), s.name, FormatValue(f.Value), f.Unit, f.Detail)
	}
	return res, nil
}

// runner holds one run's connections and what it created.
type runner struct {
	o        Options
	dial     dialer
	conns    []conn
	work     handle // the run's directory
	workName string

	seqFiles  []handle // per stream
	seqSize   int64    // per stream
	createDir handle
	creates   int      // files made by create, a multiple of the streams
	smallDirs []handle // per stream

	mu      sync.Mutex
	created []entry // everything created in the run directory, in order
}

// entry is something the run created, for cleanup.
type entry struct {
	parent handle
	name   string
	isDir  bool
}

// track records created entries for cleanup; streams call it concurrently.
func (r *runner) track(parent handle, isDir bool, names ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, n := range names {
		r.created = append(r.created, entry{parent, n, isDir})
	}
}

func (r *runner) closeConns() {
	for _, c := range r.conns {
		c.close()
	}
}

func (r *runner) progress(format string, args ...any) {
	fmt.Fprintf(r.o.Progress, "bench: "+format+"\n", args...)
}

// cleanup removes everything the run created, newest first, then the run
// directory.
func (r *runner) cleanup(ctx context.Context) error {
	if ctx.Err() != nil {
		return nil // cancelled: leave it rather than fail on every call
	}
	c, err := r.dial(ctx)
	if err != nil {
		return fmt.Errorf("cleanup: %w", err)
	}
	defer c.close()
	r.progress("cleanup: removing %d entries", len(r.created))
	for i := len(r.created) - 1; i >= 0; i-- {
		e := r.created[i]
		rm := c.remove
		if e.isDir {
			rm = c.rmdir
		}
		if err := rm(ctx, e.parent, e.name); err != nil {
			return fmt.Errorf("cleanup %s: %w", path.Join(r.workName, e.name), err)
		}
	}
	if err := c.rmdir(ctx, c.root(), r.workName); err != nil {
		return fmt.Errorf("cleanup %s: %w", r.workName, err)
	}
	return nil
}
