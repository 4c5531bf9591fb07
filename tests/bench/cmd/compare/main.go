// Command compare benchmarks a Wormhole node against nfs-ganesha on this
// machine, in one run, with the same client (package tests/bench), and
// the local disk as the physical reference.
//
// It needs root and the Debian packages nfs-ganesha, nfs-ganesha-vfs and
// rpcbind (`make bench-deps`); it installs nothing itself. It starts
// rpcbind if none is running, nfs-ganesha in the foreground with a
// generated configuration (VFS export of a temporary directory, NFSv3 over
// TCP only, on loopback and its own ports) and a single Wormhole node
// (the binary given with --wormhole), all data in one temporary directory
// on the same disk. It then runs the workloads alternately (Wormhole,
// ganesha, Wormhole, ganesha, ...), once against a local directory, and
// prints the best figure of each server with the ratio Wormhole/ganesha.
// Everything it started is stopped and everything it wrote removed on
// exit, also on failure or SIGINT/SIGTERM; children are also killed if
// compare itself dies (PR_SET_PDEATHSIG).
//
// Usage (from the repository root; make bench-compare does this):
//
//	go run ./tests/bench/cmd/compare --wormhole bin/wormhole [--size 256MiB] [--rounds 2]
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/wormhole-fs/wormhole/tests/bench"
)

func main() {
	var c config
	flag.StringVar(&c.wormholeBin, "wormhole", "bin/wormhole", "wormhole binary to benchmark")
	size := flag.String("size", "256MiB", "large file size")
	flag.IntVar(&c.opts.Streams, "streams", 1, "parallel connections for every workload but the listing")
	flag.IntVar(&c.opts.RandomOps, "random-ops", 2000, "random 4 KiB reads, and writes")
	flag.IntVar(&c.opts.Creates, "creates", 2000, "empty files created and stat'ed")
	flag.IntVar(&c.opts.ListEntries, "list-entries", 20000, "entries in the listed directory")
	flag.IntVar(&c.opts.SmallFiles, "small-files", 1000, "4 KiB files written and read back")
	flag.IntVar(&c.rounds, "rounds", 2, "runs per server, alternating")
	flag.BoolVar(&c.opts.Unstable, "unstable", false, "seq-write and rand-write send UNSTABLE WRITEs and COMMIT at the end, instead of FILE_SYNC")
	flag.StringVar(&c.workDir, "workdir", os.TempDir(), "parent of the temporary directory holding all data")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	n, err := bench.ParseSize(*size)
	if err == nil {
		c.opts.Size = n
		err = run(ctx, c)
	}
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "compare: %v\n", err)
		os.Exit(1)
	}
}

type config struct {
	wormholeBin string
	opts        bench.Options
	rounds      int
	workDir     string
}

// run does the whole comparison; deferred calls undo every step taken.
func run(ctx context.Context, c config) (err error) {
	if c.rounds < 1 {
		return errors.New("--rounds must be at least 1")
	}
	for _, bin := range []string{"ganesha.nfsd", "rpcbind"} {
		if _, err := exec.LookPath(bin); err != nil {
			return fmt.Errorf("%s not found: run `make bench-deps` (apt-get install nfs-ganesha nfs-ganesha-vfs rpcbind): %w", bin, err)
		}
	}
	whBin, err := filepath.Abs(c.wormholeBin)
	if err != nil {
		return err
	}
	if _, err := os.Stat(whBin); err != nil {
		return fmt.Errorf("wormhole binary: %w (run make build)", err)
	}

	tmp, err := os.MkdirTemp(c.workDir, "wormhole-bench-compare-")
	if err != nil {
		return err
	}
	defer func() {
		if rerr := os.RemoveAll(tmp); rerr != nil && err == nil {
			err = rerr
		}
	}()
	dirs := map[string]string{}
	for _, d := range []string{"ganesha-export", "ganesha-recovery", "wormhole-data", "local"} {
		dirs[d] = filepath.Join(tmp, d)
		if err := os.Mkdir(dirs[d], 0o755); err != nil {
			return err
		}
	}

	procs := &children{}
	defer procs.stopAll()

	if err := startRPCBind(ctx, procs); err != nil {
		return err
	}
	ports, err := freePorts(3)
	if err != nil {
		return err
	}
	gNFS, gMount, whPort := ports[0], ports[1], ports[2]
	if err := startGanesha(ctx, procs, tmp, dirs, gNFS, gMount); err != nil {
		return err
	}
	whAddr := "127.0.0.1:" + strconv.Itoa(whPort)
	if _, err := procs.start(ctx, "wormhole", "wormhole serving", filepath.Join(tmp, "wormhole.log"),
		whBin, "serve", "--data-dir", dirs["wormhole-data"], "--nfs-addr", whAddr); err != nil {
		return err
	}

	printHeader(whBin, tmp, c)

	targets := []struct {
		name string
		opts bench.Options
	}{
		{"wormhole", withNFS(c.opts, whAddr, whAddr, "/")},
		{"ganesha", withNFS(c.opts, "127.0.0.1:"+strconv.Itoa(gNFS), "127.0.0.1:"+strconv.Itoa(gMount), "/export")},
	}
	runs := map[string][]bench.Results{}
	for round := 1; round <= c.rounds; round++ {
		for _, t := range targets {
			o := t.opts
			o.Progress = &prefixWriter{w: os.Stderr, prefix: fmt.Sprintf("[%s %d/%d] ", t.name, round, c.rounds)}
			res, err := bench.Run(ctx, o)
			if err != nil {
				return fmt.Errorf("%s round %d: %w", t.name, round, err)
			}
			runs[t.name] = append(runs[t.name], res)
		}
	}
	local := c.opts
	local.LocalDir = dirs["local"]
	local.Keep = true // the temporary directory goes as a whole
	local.Progress = &prefixWriter{w: os.Stderr, prefix: "[local disk] "}
	localRes, err := bench.Run(ctx, local)
	if err != nil {
		return fmt.Errorf("local disk: %w", err)
	}
	fmt.Print(table(runs["wormhole"], runs["ganesha"], localRes, c.rounds))
	fmt.Println("3-node cluster with redundancy 2: not run by this program; `make bench-cluster` measures a 3-node cluster on loopback with redundancy 1, 2 and 3.")
	return nil
}

func withNFS(o bench.Options, nfsAddr, mountAddr, export string) bench.Options {
	o.NFSAddr, o.MountAddr, o.Export = nfsAddr, mountAddr, export
	// Runs leave their files (the servers' data go with the temporary
	// directory): cleanup over NFS would take longer than the run.
	o.Keep = true
	return o
}

func printHeader(whBin, tmp string, c config) {
	ver := func(name string, args ...string) string {
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			return "unknown"
		}
		line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
		return line
	}
	var st syscall.Statfs_t
	fsType := "?"
	if syscall.Statfs(tmp, &st) == nil {
		fsType = fmt.Sprintf("%#x", st.Type)
	}
	fmt.Printf("wormhole %s vs %s; %d CPUs; all data under %s (statfs type %s)\n",
		ver(whBin, "version"), ver("ganesha.nfsd", "-v"), runtime.NumCPU(), tmp, fsType)
	fmt.Printf("client: tests/bench (go-nfs-client XDR and NFSv3 types), %d stream(s); %d rounds per server run alternately, best of each shown\n\n",
		max(c.opts.Streams, 1), c.rounds)
}

// table renders best-of-rounds figures, the ratio and the local reference.
func table(wh, ga []bench.Results, local bench.Results, rounds int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-12s %-15s %10s %10s %11s %11s   %s\n", "workload", "unit", "wormhole", "ganesha", "wh/ganesha", "local disk", "all rounds: wormhole | ganesha")
	for _, w := range bench.Workloads {
		wBest, wAll, lower := best(wh, w)
		gBest, gAll, _ := best(ga, w)
		l, _ := local.Figure(w)
		ratio := "-"
		if gBest > 0 {
			ratio = fmt.Sprintf("%.2fx", wBest/gBest)
		}
		unit := l.Unit
		if lower {
			unit += " (lower=better)"
		}
		fmt.Fprintf(&b, "%-12s %-15s %10s %10s %11s %11s   %s | %s\n", w, unit, bench.FormatValue(wBest), bench.FormatValue(gBest), ratio,
			bench.FormatValue(l.Value), wAll, gAll)
	}
	fmt.Fprintf(&b, "\nbest of %d alternating rounds; MB/s is 10^6 bytes/s; list is seconds for one READDIRPLUS pass (wh/ganesha > 1 is slower there)\n", rounds)
	return b.String()
}

// best returns the best figure of the runs for workload w (highest, or
// lowest for durations) and all of them as text.
func best(runs []bench.Results, w string) (float64, string, bool) {
	var v float64
	var all []string
	lower := false
	for i, r := range runs {
		f, _ := r.Figure(w)
		lower = f.LowerIsBetter
		all = append(all, bench.FormatValue(f.Value))
		if i == 0 || (lower && f.Value < v) || (!lower && f.Value > v) {
			v = f.Value
		}
	}
	return v, strings.Join(all, " "), lower
}

// startRPCBind starts rpcbind in the foreground unless one already
// answers on port 111; ganesha registers its services there.
func startRPCBind(ctx context.Context, procs *children) error {
	if c, err := net.DialTimeout("tcp", "127.0.0.1:111", time.Second); err == nil {
		c.Close()
		fmt.Fprintln(os.Stderr, "compare: using the rpcbind already running")
		return nil
	}
	// rpcbind leaves its socket and lock file in /run; remove them after
	// if they were not there before.
	var leftovers []string
	for _, f := range []string{"/run/rpcbind.sock", "/run/rpcbind.lock"} {
		if _, err := os.Lstat(f); errors.Is(err, os.ErrNotExist) {
			leftovers = append(leftovers, f)
		}
	}
	p, err := procs.start(ctx, "rpcbind", "", "", "rpcbind", "-f")
	if err != nil {
		return err
	}
	p.after = func() {
		for _, f := range leftovers {
			os.Remove(f)
		}
	}
	// rpcbind -f prints nothing when ready: poll its port.
	return waitPort(ctx, p, "127.0.0.1:111", 10*time.Second)
}

// startGanesha writes a configuration and starts ganesha.nfsd in the
// foreground, waiting for its "NFS SERVER INITIALIZED" log line.
func startGanesha(ctx context.Context, procs *children, tmp string, dirs map[string]string, nfsPort, mountPort int) error {
	conf := fmt.Sprintf(`# Generated by tests/bench/cmd/compare.
NFS_CORE_PARAM {
	NFS_Port = %d; MNT_Port = %d;
	Protocols = 3; Enable_NLM = false; Enable_RQUOTA = false; Enable_UDP = false;
	Bind_addr = 127.0.0.1;
	Mount_Path_Pseudo = true;
}
NFSV4 { Graceless = true; RecoveryBackend = fs; RecoveryRoot = %q; }
EXPORT {
	Export_Id = 1; Path = %q; Pseudo = /export;
	Protocols = 3; Transports = TCP; Access_Type = RW; Squash = No_Root_Squash; SecType = sys;
	MaxRead = 1048576; MaxWrite = 1048576; PrefRead = 1048576; PrefWrite = 1048576;
	FSAL { Name = VFS; }
}
LOG { Default_Log_Level = EVENT; }
`, nfsPort, mountPort, dirs["ganesha-recovery"], dirs["ganesha-export"])
	confPath := filepath.Join(tmp, "ganesha.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		return err
	}
	_, statErr := os.Stat("/run/ganesha")
	runDirExisted := statErr == nil
	p, err := procs.start(ctx, "nfs-ganesha", "NFS SERVER INITIALIZED", filepath.Join(tmp, "ganesha.log"),
		"ganesha.nfsd", "-F", "-f", confPath, "-L", "/dev/stderr", "-p", filepath.Join(tmp, "ganesha.pid"), "-N", "NIV_EVENT")
	if p != nil && !runDirExisted {
		p.after = func() { os.Remove("/run/ganesha") } // only if empty
	}
	return err
}

// freePorts returns n loopback TCP ports free right now.
func freePorts(n int) ([]int, error) {
	var ports []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// child is a process compare started.
type child struct {
	name  string
	cmd   *exec.Cmd
	done  chan struct{}
	err   error
	log   *tailBuffer
	after func() // cleanup once it has exited
}

// children are the processes to stop, newest first.
type children struct{ list []*child }

// start runs a child process with its output in logPath (if set) and,
// when ready is set, waits until a line of its output contains ready.
func (cs *children) start(ctx context.Context, name, ready, logPath, bin string, args ...string) (*child, error) {
	c := &child{name: name, done: make(chan struct{}), log: &tailBuffer{}}
	c.cmd = exec.Command(bin, args...)
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	var out io.Writer = c.log
	var logFile *os.File
	if logPath != "" {
		f, err := os.Create(logPath)
		if err != nil {
			return nil, err
		}
		logFile = f
		out = io.MultiWriter(c.log, f)
	}
	pr, pw := io.Pipe()
	c.cmd.Stdout, c.cmd.Stderr = pw, pw
	readyCh := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		signalled := ready == ""
		for sc.Scan() {
			fmt.Fprintln(out, sc.Text())
			if !signalled && strings.Contains(sc.Text(), ready) {
				signalled = true
				close(readyCh)
			}
		}
		io.Copy(io.Discard, pr)
		if logFile != nil {
			logFile.Close()
		}
	}()
	if err := c.cmd.Start(); err != nil {
		pw.Close() // ends the copier, which closes the log file
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	cs.list = append(cs.list, c)
	go func() {
		c.err = c.cmd.Wait()
		pw.Close()
		close(c.done)
	}()
	fmt.Fprintf(os.Stderr, "compare: started %s (pid %d)\n", name, c.cmd.Process.Pid)
	if ready == "" {
		return c, nil
	}
	timer := time.NewTimer(60 * time.Second)
	defer timer.Stop()
	select {
	case <-readyCh:
		return c, nil
	case <-c.done:
		return c, fmt.Errorf("%s exited before it was ready (%v):\n%s", name, c.err, c.log.String())
	case <-timer.C:
		return c, fmt.Errorf("%s not ready after 60 s:\n%s", name, c.log.String())
	case <-ctx.Done():
		return c, ctx.Err()
	}
}

// stopAll sends SIGTERM to every child, newest first, waits up to 30 s
// each, then SIGKILLs, and runs their after hooks.
func (cs *children) stopAll() {
	for i := len(cs.list) - 1; i >= 0; i-- {
		c := cs.list[i]
		_ = c.cmd.Process.Signal(syscall.SIGTERM)
		timer := time.NewTimer(30 * time.Second)
		select {
		case <-c.done:
		case <-timer.C:
			fmt.Fprintf(os.Stderr, "compare: %s did not stop on SIGTERM; killing it\n", c.name)
			_ = c.cmd.Process.Kill()
			<-c.done
		}
		timer.Stop()
		if c.after != nil {
			c.after()
		}
		fmt.Fprintf(os.Stderr, "compare: stopped %s\n", c.name)
	}
	cs.list = nil
}

// waitPort polls addr until it accepts a connection: for a child that
// announces nothing when ready.
func waitPort(ctx context.Context, c *child, addr string, limit time.Duration) error {
	deadline := time.NewTimer(limit)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if conn, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			conn.Close()
			return nil
		}
		select {
		case <-tick.C:
		case <-c.done:
			return fmt.Errorf("%s exited (%v):\n%s", c.name, c.err, c.log.String())
		case <-deadline.C:
			return fmt.Errorf("%s not listening on %s after %v", c.name, addr, limit)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// tailBuffer keeps the last 8 KiB written, for error messages.
type tailBuffer struct {
	mu sync.Mutex
	b  []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > 8<<10 {
		t.b = t.b[len(t.b)-8<<10:]
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}

// prefixWriter prefixes each write (one progress line) with a label.
type prefixWriter struct {
	w      io.Writer
	prefix string
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	if _, err := io.WriteString(p.w, p.prefix+string(b)); err != nil {
		return 0, err
	}
	return len(b), nil
}
