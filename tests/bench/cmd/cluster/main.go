// Command cluster measures a large sequential write and read through one
// node of a 3-node Wormhole cluster, once per redundancy (copies) value,
// with the client of package tests/bench.
//
// First (unless --single=false) it measures a single node the same way:
// one `wormhole serve` on a fresh data dir that never joined a cluster,
// as a newcomer runs it, so that each cluster figure can be shown as a
// ratio of the single node's, measured in the same run on the same disk.
//
// For each --copies value it starts a fresh cluster of the binary given
// with --wormhole in a new temporary directory: three nodes on loopback
// addresses of this machine (127.0.0.51-53, or the next free triple of
// 127.0.0.x when one of the ports 2049, 2379, 2380, 7946, 7947, 7948 and
// 9470 is taken there), made with `wormhole init` and `wormhole join`,
// each with its admin API on its own address. It waits, with a deadline,
// until every node's `wormhole status --json` lists the three nodes alive,
// then runs bench.Run against the first node with --size for the large
// file and the other workloads at their smallest (one operation each),
// and sums the chunk files in every node's data dir, which shows how many
// copies were really written (about copies × size). It prints a table and
// one FIGURE line per figure:
//
//	FIGURE cluster copies=2 seq-write 123.4 MB/s (2.07 s)
//
// All three nodes share this machine's CPUs and one disk, so the figures
// are a lower bound for a cluster of real machines, where each copy goes
// to another disk (though over a slower network than loopback).
//
// Everything it started is stopped and everything it wrote removed
// between clusters and on exit, also on failure or SIGINT/SIGTERM;
// children are also killed if cluster itself dies (PR_SET_PDEATHSIG).
// Progress goes to stderr, results to stdout.
//
// With --repair it measures instead how fast a 4-node cluster restores
// redundancy after losing a node and rebalances onto a new one (see
// repair.go).
//
// Usage (from the repository root; make bench-cluster and make
// bench-repair do this):
//
//	go run ./tests/bench/cmd/cluster --wormhole bin/wormhole [--size 256MiB] [--copies 1,2,3] [--rounds 1] [--unstable]
//	go run ./tests/bench/cmd/cluster --wormhole bin/wormhole --repair [--lose 1GiB] [--repair-bandwidth 256MiB]
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/wormhole-fs/wormhole/tests/bench"
)

// nodes is the size of the cluster measured without --repair.
const nodes = 3

// Ports every node uses on its own address (the defaults): NFS, etcd
// client and peer, gossip, data, join, admin. Gossip and NFS (its
// portmapper) also listen on UDP.
var (
	tcpPorts = []int{2049, 2379, 2380, 7946, 7947, 7948, 9470}
	udpPorts = []int{2049, 7946}
)

const (
	nfsPort   = 2049
	joinPort  = 7948
	adminPort = 9470
)

func main() {
	var c config
	flag.StringVar(&c.wormholeBin, "wormhole", "bin/wormhole", "wormhole binary to benchmark")
	size := flag.String("size", "256MiB", "large file size")
	copies := flag.String("copies", "1,2,3", "redundancy values to measure, comma-separated (1 to 3)")
	flag.IntVar(&c.rounds, "rounds", 1, "runs per redundancy value, on the same cluster; the best is reported")
	flag.IntVar(&c.randomOps, "random-ops", 500, "random 4 KiB READs of the large file per round, and as many random WRITEs (0: none)")
	flag.BoolVar(&c.unstable, "unstable", false, "send the large file's WRITEs UNSTABLE and COMMIT at the end, as a kernel client does, instead of FILE_SYNC")
	flag.BoolVar(&c.single, "single", true, "first measure a single node the same way, and show each cluster's figures as a ratio of its")
	flag.StringVar(&c.workDir, "workdir", os.TempDir(), "parent of the temporary directories holding all data")
	repairMode := flag.Bool("repair", false, "measure repair after losing a node and rebalancing onto a new one instead (4 nodes, copies 2)")
	lose := flag.String("lose", "1GiB", "with --repair: chunk bytes the killed node holds")
	bandwidth := flag.String("repair-bandwidth", "256MiB", "with --repair: the nodes' repair.bandwidth, bytes per second")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	var err error
	if *repairMode {
		var rc repairConfig
		if rc, err = parseRepair(c, *lose, *bandwidth); err == nil {
			err = runRepair(ctx, rc)
		}
	} else if err = c.parse(*size, *copies); err == nil {
		err = run(ctx, c)
	}
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "cluster: %v\n", err)
		os.Exit(1)
	}
}

type config struct {
	wormholeBin string
	size        int64
	copies      []int
	rounds      int
	workDir     string
	randomOps   int  // bench.Options.RandomOps
	single      bool // also measure a single node, as the reference
	unstable    bool // UNSTABLE writes and a COMMIT (bench.Options.Unstable)
}

func (c *config) parse(size, copies string) error {
	n, err := bench.ParseSize(size)
	if err != nil {
		return err
	}
	c.size = n
	for f := range strings.SplitSeq(copies, ",") {
		v, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || v < 1 || v > nodes {
			return fmt.Errorf("--copies: %q is not a number from 1 to %d", f, nodes)
		}
		c.copies = append(c.copies, v)
	}
	if c.rounds < 1 {
		return errors.New("--rounds must be at least 1")
	}
	return nil
}

// result is what one redundancy value measured: every round's figures and
// the chunk bytes each round added on each node.
type result struct {
	copies int
	runs   []bench.Results
	chunks [][]int64 // per round, per node
}

func run(ctx context.Context, c config) error {
	whBin, err := filepath.Abs(c.wormholeBin)
	if err != nil {
		return err
	}
	if _, err := os.Stat(whBin); err != nil {
		return fmt.Errorf("wormhole binary: %w (run make build)", err)
	}
	printHeader(whBin, c)
	var results []result
	if c.single {
		r, err := measure(ctx, c, whBin, 0)
		if err != nil {
			return fmt.Errorf("single node: %w", err)
		}
		results = append(results, r)
	}
	for _, n := range c.copies {
		r, err := measure(ctx, c, whBin, n)
		if err != nil {
			return fmt.Errorf("copies=%d: %w", n, err)
		}
		results = append(results, r)
	}
	fmt.Print(table(results, c))
	return nil
}

// measure starts a fresh cluster with the given redundancy (or, for
// copies 0, a single node), runs the rounds against its first node and
// stops it; deferred calls undo every step taken.
func measure(ctx context.Context, c config, whBin string, copies int) (res result, err error) {
	res.copies = copies
	name, n := fmt.Sprintf("copies=%d", copies), nodes
	if copies == 0 {
		name, n = "single", 1
	}
	ips, err := freeAddrs(n)
	if err != nil {
		return res, err
	}
	tmp, err := os.MkdirTemp(c.workDir, "wormhole-bench-cluster-")
	if err != nil {
		return res, err
	}
	defer func() {
		if rerr := os.RemoveAll(tmp); rerr != nil && err == nil {
			err = rerr
		}
	}()
	progress("%s: node(s) on %s, data in %s", name, strings.Join(ips, ", "), tmp)

	procs := &children{}
	defer procs.stopAll()
	var cl *testCluster
	if copies == 0 {
		cl, err = startSingle(ctx, procs, whBin, tmp, ips[0])
	} else {
		cl, err = startCluster(ctx, procs, whBin, tmp, ips, copies, "")
	}
	if err != nil {
		return res, err
	}
	// Any failure from here on but an interruption: show what the nodes
	// logged.
	defer func() {
		if err != nil && ctx.Err() == nil {
			for _, p := range procs.list {
				fmt.Fprintf(os.Stderr, "--- %s log (last 8 KiB) ---\n%s", p.name, p.log.String())
			}
		}
	}()

	if copies > 0 {
		progress("%s: nodes (state/etcd) as n1 sees them: %s", name, roles(ctx, whBin, cl.confs[0]))
	}
	for round := 1; round <= c.rounds; round++ {
		before, err := cl.chunkBytes()
		if err != nil {
			return res, err
		}
		r, err := bench.Run(ctx, bench.Options{
			NFSAddr:     cl.nfsAddr(0),
			Size:        c.size,
			RandomOps:   max(c.randomOps, 1),
			Creates:     1,
			ListEntries: 1,
			SmallFiles:  1,
			Unstable:    c.unstable,
			// The files stay until the cluster goes, so the chunk count
			// below includes them.
			Keep:     true,
			Progress: &prefixWriter{w: os.Stderr, prefix: fmt.Sprintf("[%s %d/%d] ", name, round, c.rounds)},
		})
		if err != nil {
			return res, fmt.Errorf("round %d: %w", round, err)
		}
		after, err := cl.chunkBytes()
		if err != nil {
			return res, err
		}
		added := make([]int64, len(after))
		for i := range added {
			added[i] = after[i] - before[i]
		}
		res.runs = append(res.runs, r)
		res.chunks = append(res.chunks, added)
		progress("%s round %d: chunk files grew by %s", name, round, perNodeTotal(added))
	}
	if copies > 0 {
		progress("%s: nodes (state/etcd) as n1 sees them: %s", name, roles(ctx, whBin, cl.confs[0]))
	}
	for _, p := range procs.list {
		if lines := p.log.lines(); lines > 0 {
			progress("%s: %s logged %d line(s) at warn or above; last ones:\n%s", name, p.name, lines, lastLines(p.log.String(), 5))
		}
	}
	return res, nil
}

// testCluster is a running cluster: node i (named n<i+1>) has address
// ips[i], data dir dirs[i], configuration confs[i] and process nodes[i].
type testCluster struct {
	whBin  string
	tmp    string
	copies int
	extra  string // appended to every node's configuration
	token  string // join token from init
	ips    []string
	dirs   []string
	confs  []string
	nodes  []*child
}

func (cl *testCluster) nfsAddr(i int) string {
	return net.JoinHostPort(cl.ips[i], strconv.Itoa(nfsPort))
}

// chunkBytes sums the sizes of the files under each node's chunks dir.
func (cl *testCluster) chunkBytes() ([]int64, error) {
	out := make([]int64, len(cl.dirs))
	for i, d := range cl.dirs {
		var err error
		if out[i], err = dirBytes(filepath.Join(d, "chunks")); err != nil {
			return out, fmt.Errorf("count chunks of n%d: %w", i+1, err)
		}
	}
	return out, nil
}

// dirBytes sums the sizes of the regular files under dir; a missing dir
// holds none.
func dirBytes(dir string) (int64, error) {
	var n int64
	err := filepath.WalkDir(dir, func(_ string, e fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // removed while walking (a temporary file)
			}
			return err
		}
		if !e.Type().IsRegular() {
			return nil
		}
		info, err := e.Info()
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		n += info.Size()
		return nil
	})
	return n, err
}

// startCluster writes the nodes' configurations (each with extra
// appended), makes the cluster with init and join, starts the nodes and
// waits until each sees all of them alive.
func startCluster(ctx context.Context, procs *children, whBin, tmp string, ips []string, copies int, extra string) (*testCluster, error) {
	cl := &testCluster{whBin: whBin, tmp: tmp, copies: copies, extra: extra}
	for _, ip := range ips {
		if err := cl.configure(ip); err != nil {
			return cl, err
		}
	}
	out, err := command(ctx, whBin, "init", "--config", cl.confs[0])
	if err != nil {
		return cl, fmt.Errorf("wormhole init: %w", err)
	}
	for l := range strings.Lines(out) {
		if t := strings.TrimSpace(l); strings.HasPrefix(t, "whj1") {
			cl.token = t
		}
	}
	if cl.token == "" {
		return cl, fmt.Errorf("wormhole init printed no join token:\n%s", out)
	}
	for i := range ips {
		if err := cl.start(ctx, procs, i); err != nil {
			return cl, err
		}
	}
	return cl, waitMembers(ctx, procs, whBin, cl.confs, len(cl.confs), 90*time.Second)
}

// startSingle starts one node on ip that was never made part of a
// cluster: a single node on its embedded etcd, as `wormhole serve` runs
// on a fresh machine, with redundancy 1 (one copy, on its own disk).
func startSingle(ctx context.Context, procs *children, whBin, tmp, ip string) (*testCluster, error) {
	cl := &testCluster{whBin: whBin, tmp: tmp, copies: 1}
	if err := cl.configure(ip); err != nil {
		return cl, err
	}
	return cl, cl.start(ctx, procs, 0)
}

// configure writes the configuration of a new node on ip, numbered after
// the others.
func (cl *testCluster) configure(ip string) error {
	i := len(cl.confs)
	id := fmt.Sprintf("n%d", i+1)
	dir := filepath.Join(cl.tmp, "d"+strconv.Itoa(i+1))
	cl.ips = append(cl.ips, ip)
	cl.dirs = append(cl.dirs, dir)
	conf := fmt.Sprintf(`# Generated by tests/bench/cmd/cluster.
cluster_id: bench
data_dir: %q
nfs: { addr: %q }
admin: { addr: %q }
node: { id: %s, advertise: %s }
redundancy: { copies: %d }
log: { level: warn }
`, dir, cl.nfsAddr(i), net.JoinHostPort(ip, strconv.Itoa(adminPort)), id, ip, cl.copies) + cl.extra
	path := filepath.Join(cl.tmp, id+".yaml")
	cl.confs = append(cl.confs, path)
	return os.WriteFile(path, []byte(conf), 0o600)
}

// start joins node i through the first node (unless it is the first),
// starts it and waits until it answers NFS.
func (cl *testCluster) start(ctx context.Context, procs *children, i int) error {
	if i > 0 {
		seed := net.JoinHostPort(cl.ips[0], strconv.Itoa(joinPort))
		if _, err := command(ctx, cl.whBin, "join", seed, "--token", cl.token, "--config", cl.confs[i]); err != nil {
			return fmt.Errorf("wormhole join (n%d): %w", i+1, err)
		}
	}
	name := fmt.Sprintf("n%d", i+1)
	p, err := procs.start(name, filepath.Join(cl.tmp, name+".log"), cl.whBin, "serve", "--config", cl.confs[i])
	if err != nil {
		return err
	}
	cl.nodes = append(cl.nodes, p)
	if err := waitNFS(ctx, p, cl.nfsAddr(i), 60*time.Second); err != nil {
		return err
	}
	progress("%s serving NFS on %s", name, cl.nfsAddr(i))
	return nil
}

// command runs the wormhole binary to completion (one minute at most) and
// returns its standard output; on failure the error holds both outputs.
func command(ctx context.Context, bin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%w\n%s%s", err, stdout.String(), stderr.String())
	}
	return stdout.String(), nil
}

// waitNFS polls the node's NFS address with NULL calls until one is
// answered.
func waitNFS(ctx context.Context, p *child, addr string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		err := ping(addr, time.Second)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not answering NFS on %s after %v (%v):\n%s", p.name, addr, limit, err, p.log.String())
		}
		select {
		case <-p.done:
			return fmt.Errorf("%s exited (%v):\n%s", p.name, p.err, p.log.String())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond): // poll interval
		}
	}
}

// ping sends an NFSv3 NULL call to addr and waits up to timeout for a
// successful reply. (tests/testnode.Ping does the same; importing it
// would link the whole node into this command.)
func ping(addr string, timeout time.Duration) error {
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(timeout)); err != nil {
		return err
	}
	// Record mark, then xid, CALL, RPC v2, NFS (100003) v3 proc 0,
	// AUTH_NONE credentials and verifier.
	var buf []byte
	for _, v := range []uint32{0x80000000 | 40, 1, 0, 2, 100003, 3, 0, 0, 0, 0, 0} {
		buf = binary.BigEndian.AppendUint32(buf, v)
	}
	if _, err := c.Write(buf); err != nil {
		return err
	}
	reply := make([]byte, 4+24)
	if _, err := io.ReadFull(c, reply); err != nil {
		return err
	}
	// xid 1, REPLY, accepted, AUTH_NONE verifier, SUCCESS.
	if binary.BigEndian.Uint32(reply[4:]) != 1 || binary.BigEndian.Uint32(reply[8:]) != 1 || binary.BigEndian.Uint32(reply[24:]) != 0 {
		return fmt.Errorf("NFS NULL call to %s: unexpected reply %x", addr, reply)
	}
	return nil
}

// waitMembers polls the status of each node whose configuration is given
// until each lists want nodes alive.
func waitMembers(ctx context.Context, procs *children, whBin string, confs []string, want int, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	start := time.Now()
	for i := 0; i < len(confs); {
		alive, err := aliveNodes(ctx, whBin, confs[i])
		if err == nil && len(alive) == want {
			i++
			continue
		}
		if time.Now().After(deadline) {
			if err == nil {
				err = fmt.Errorf("alive: %v", alive)
			}
			return fmt.Errorf("n%d does not see %d alive nodes after %v (%v)", i+1, want, limit, err)
		}
		if err := procs.exited(); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond): // poll interval
		}
	}
	progress("all %d nodes alive in every node's view after %.1f s", want, time.Since(start).Seconds())
	return nil
}

// nodeState is one node as another node's status lists it.
type nodeState struct {
	ID    string `json:"id"`
	State string `json:"state"` // alive or dead
	Etcd  string `json:"etcd"`  // voter, learner, client or external
	// DownSince is when the asked node saw this one go down.
	DownSince *time.Time `json:"down_since"`
}

// nodeStatus is the part of `wormhole status --json` cluster reads.
type nodeStatus struct {
	Situation string          `json:"situation"`
	Nodes     []nodeState     `json:"nodes"`
	Chunks    *chunkCensus    `json:"chunks"`
	Repair    *repairProgress `json:"repair"`
}

// chunkCensus counts the cluster's chunks by copies held against copies
// wanted (appliance.ChunkCensus).
type chunkCensus struct {
	Chunks  int       `json:"chunks"`
	Below   int       `json:"below"`
	On      int       `json:"on"`
	Above   int       `json:"above"`
	Missing int       `json:"missing"`
	Partial []string  `json:"partial"`
	At      time.Time `json:"at"`
	Error   string    `json:"error"`
}

// repairProgress is the repair leader's record of its current or last
// pass (chunker/repair.Progress); its counts are the pass's own.
type repairProgress struct {
	Leader      string    `json:"leader"`
	Running     bool      `json:"running"`
	Pass        uint64    `json:"pass"`
	Started     time.Time `json:"started"`
	Finished    time.Time `json:"finished"`
	ToCopy      int       `json:"to_copy"`
	Copied      int       `json:"copied"`
	ToDelete    int       `json:"to_delete"`
	Deleted     int       `json:"deleted"`
	Failed      int       `json:"failed"`
	BytesCopied int64     `json:"bytes_copied"`
	Deferred    int       `json:"deferred"`
	Unavailable int       `json:"unavailable"`
	Partial     []string  `json:"partial"`
	LastError   string    `json:"last_error"`
}

// aliveNodes asks a node (through `wormhole status --json`) which nodes
// it sees alive.
func aliveNodes(ctx context.Context, whBin, conf string) ([]string, error) {
	nodes, err := nodeStates(ctx, whBin, conf)
	var alive []string
	for _, n := range nodes {
		if n.State == "alive" {
			alive = append(alive, n.ID)
		}
	}
	return alive, err
}

// nodeStates asks a node for its status and returns the nodes it lists.
func nodeStates(ctx context.Context, whBin, conf string) ([]nodeState, error) {
	st, err := status(ctx, whBin, conf)
	return st.Nodes, err
}

// status asks a node for its status.
func status(ctx context.Context, whBin, conf string) (nodeStatus, error) {
	var st nodeStatus
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := command(ctx, whBin, "status", "--config", conf, "--json")
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return st, fmt.Errorf("status of %s: %w", conf, err)
	}
	return st, nil
}

// roles describes the nodes' etcd roles as the first node sees them.
func roles(ctx context.Context, whBin, conf string) string {
	nodes, err := nodeStates(ctx, whBin, conf)
	if err != nil {
		return fmt.Sprintf("unknown (%v)", err)
	}
	var parts []string
	for _, n := range nodes {
		parts = append(parts, fmt.Sprintf("%s %s/%s", n.ID, n.State, n.Etcd))
	}
	return strings.Join(parts, ", ")
}

// freeAddrs returns the first n consecutive loopback addresses, from
// 127.0.0.51 on in steps of ten, on which every port is free.
func freeAddrs(n int) ([]string, error) {
	for base := 51; base+n-1 <= 254; base += 10 {
		var ips []string
		ok := true
		for i := range n {
			ip := "127.0.0." + strconv.Itoa(base+i)
			if err := portsFree(ip); err != nil {
				progress("%v; trying other addresses", err)
				ok = false
				break
			}
			ips = append(ips, ip)
		}
		if ok {
			return ips, nil
		}
	}
	return nil, fmt.Errorf("no %d loopback addresses 127.0.0.x with the ports free", n)
}

// portsFree binds every port a node needs on ip, then releases them.
func portsFree(ip string) error {
	for _, p := range tcpPorts {
		l, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(p)))
		if err != nil {
			return fmt.Errorf("TCP %s:%d taken", ip, p)
		}
		l.Close()
	}
	for _, p := range udpPorts {
		l, err := net.ListenPacket("udp", net.JoinHostPort(ip, strconv.Itoa(p)))
		if err != nil {
			return fmt.Errorf("UDP %s:%d taken", ip, p)
		}
		l.Close()
	}
	return nil
}

func printHeader(whBin string, c config) {
	fmt.Printf("%s\n", machineFacts(whBin, c.workDir))
	if c.single {
		fmt.Printf("A single node, then a 3-node cluster per redundancy value, on this machine (loopback addresses).\n")
	}
	fmt.Printf("3-node cluster on this machine (loopback addresses): all nodes share its CPUs and one disk, so every copy\n")
	fmt.Printf("lands on the same disk; the figures are a lower bound for real clusters (whose network is slower than loopback).\n")
	writes := "FILE_SYNC writes"
	if c.unstable {
		writes = "UNSTABLE writes (+ COMMIT)"
	}
	fmt.Printf("client: tests/bench against n1, 1 stream, %s in 1 MiB requests, file of %s; %d round(s) per value, best shown\n\n",
		writes, mib(c.size), c.rounds)
}

// machineFacts describes the binary and this machine: version, CPUs, RAM
// and the file system holding workDir.
func machineFacts(whBin, workDir string) string {
	ver := "unknown"
	if out, err := exec.Command(whBin, "version").Output(); err == nil {
		ver, _, _ = strings.Cut(strings.TrimSpace(string(out)), "\n")
	}
	cpu := "?"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for l := range strings.Lines(string(b)) {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				cpu = strings.TrimSpace(v)
				break
			}
		}
	}
	mem := "?"
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb int64
		if _, err := fmt.Sscanf(string(b), "MemTotal: %d kB", &kb); err == nil {
			mem = fmt.Sprintf("%.1f GiB", float64(kb)/(1<<20))
		}
	}
	fsType := "?"
	var st syscall.Statfs_t
	if syscall.Statfs(workDir, &st) == nil {
		fsType = fmt.Sprintf("%#x", st.Type)
	}
	return fmt.Sprintf("wormhole %s; %d CPUs (%s); %s RAM; data under %s (statfs type %s)", ver, runtime.NumCPU(), cpu, mem, workDir, fsType)
}

// table renders the best round of each measurement, the chunk bytes that
// round added, the ratios to the single node when it was measured, and
// FIGURE lines.
func table(results []result, c config) string {
	var b, figs strings.Builder
	var single *result
	if len(results) > 0 && results[0].copies == 0 {
		single = &results[0]
	}
	fmt.Fprintf(&b, "%-7s %15s %8s %14s %8s %11s %15s   %-42s %s\n", "copies", "seq-write MB/s", "write s", "seq-read MB/s", "read s",
		"vs single", "rand-read op/s", "chunk files added: n1 / n2 / n3 = total", "total/size")
	for _, r := range results {
		w, wi := bestRun(r.runs, bench.SeqWrite)
		rd, _ := bestRun(r.runs, bench.SeqRead)
		rr, _ := bestRun(r.runs, bench.RandRead)
		ch := r.chunks[wi]
		label, vs, key := strconv.Itoa(r.copies), "", fmt.Sprintf("copies=%d", r.copies)
		if r.copies == 0 {
			label, key = "single", "single"
		}
		if c.unstable {
			key += " unstable"
		}
		if r.copies != 0 && single != nil {
			sw, _ := bestRun(single.runs, bench.SeqWrite)
			sr, _ := bestRun(single.runs, bench.SeqRead)
			vs = fmt.Sprintf("%.2fx %.2fx", ratio(w.Value, sw.Value), ratio(rd.Value, sr.Value))
			fmt.Fprintf(&figs, "FIGURE cluster %s seq-write-vs-single %.2fx\n", key, ratio(w.Value, sw.Value))
		}
		fmt.Fprintf(&b, "%-7s %15s %8.2f %14s %8.2f %11s %15s   %-42s %.2fx\n", label, bench.FormatValue(w.Value), w.Seconds,
			bench.FormatValue(rd.Value), rd.Seconds, vs, bench.FormatValue(rr.Value), perNodeTotal(ch), float64(sum(ch))/float64(c.size))
		if c.randomOps > 0 {
			fmt.Fprintf(&figs, "FIGURE cluster %s rand-read %s ops/s (%d x 4 KiB)\n", key, bench.FormatValue(rr.Value), rr.Ops)
		}
		fmt.Fprintf(&figs, "FIGURE cluster %s seq-write %s MB/s (%.2f s)\n", key, bench.FormatValue(w.Value), w.Seconds)
		fmt.Fprintf(&figs, "FIGURE cluster %s seq-read %s MB/s (%.2f s)\n", key, bench.FormatValue(rd.Value), rd.Seconds)
		fmt.Fprintf(&figs, "FIGURE cluster %s chunk-bytes %d (%.2f x size)\n", key, sum(ch), float64(sum(ch))/float64(c.size))
	}
	fmt.Fprintf(&b, "\nMB/s is 10^6 bytes/s. single: one node that never joined a cluster (embedded etcd, redundancy 1), measured\n")
	fmt.Fprintf(&b, "the same way on the same disk; vs single: the cluster's best write and read over the single node's best.\n")
	fmt.Fprintf(&b, "Chunk files added: bytes of files under each node's data_dir/chunks that the round added (the large\n")
	fmt.Fprintf(&b, "file, the random writes and the small workloads), for the round with the best write. rand-read: 4 KiB READs\n")
	fmt.Fprintf(&b, "at random offsets of the large file, one at a time through n1 (most of them of chunks n1 does not hold\n")
	fmt.Fprintf(&b, "with copies 1).\n\n")
	return b.String() + figs.String()
}

// ratio is a / b, or 0 when b is.
func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

// perNodeTotal renders chunk bytes per node and, for several, their sum.
func perNodeTotal(ch []int64) string {
	if len(ch) == 1 {
		return mib(ch[0])
	}
	return perNode(ch) + " = " + mib(sum(ch))
}

// bestRun returns the highest figure of workload w over the runs and the
// index of its run.
func bestRun(runs []bench.Results, w string) (bench.Figure, int) {
	var best bench.Figure
	idx := 0
	for i, r := range runs {
		f, _ := r.Figure(w)
		if i == 0 || f.Value > best.Value {
			best, idx = f, i
		}
	}
	return best, idx
}

func sum(v []int64) int64 {
	var s int64
	for _, x := range v {
		s += x
	}
	return s
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "cluster: "+format+"\n", args...)
}

// ansiEscape matches the colour codes of the nodes' console log format.
var ansiEscape = regexp.MustCompile("\x1b\\[[0-9;]*m")

func lastLines(s string, n int) string {
	s = ansiEscape.ReplaceAllString(s, "")
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "    " + strings.Join(lines, "\n    ")
}

// child is a node process cluster started.
type child struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	err  error
	log  *tailBuffer
	// killed is set when cluster killed it on purpose: its exit is no
	// failure.
	killed bool
}

// children are the processes to stop.
type children struct{ list []*child }

// start runs a child process with its output in logPath and in memory.
func (cs *children) start(name, logPath, bin string, args ...string) (*child, error) {
	c := &child{name: name, done: make(chan struct{}), log: &tailBuffer{}}
	c.cmd = exec.Command(bin, args...)
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	out := io.MultiWriter(c.log, logFile)
	pr, pw := io.Pipe()
	c.cmd.Stdout, c.cmd.Stderr = pw, pw
	go func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			fmt.Fprintln(out, sc.Text())
		}
		io.Copy(io.Discard, pr)
		logFile.Close()
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
	progress("started %s (pid %d)", name, c.cmd.Process.Pid)
	return c, nil
}

// exited returns an error naming the first child that exited although
// it was not killed on purpose, with its log; nil if none did.
func (cs *children) exited() error {
	for _, p := range cs.list {
		if p.killed {
			continue
		}
		select {
		case <-p.done:
			return fmt.Errorf("%s exited (%v):\n%s", p.name, p.err, p.log.String())
		default:
		}
	}
	return nil
}

// stopAll sends SIGTERM to every child at once (a node stopping alone
// might wait for an etcd quorum the others already left), waits up to
// 30 s, then SIGKILLs the rest.
func (cs *children) stopAll() {
	for _, c := range cs.list {
		_ = c.cmd.Process.Signal(syscall.SIGTERM)
	}
	timer := time.NewTimer(30 * time.Second)
	defer timer.Stop()
	for _, c := range cs.list {
		select {
		case <-c.done:
		case <-timer.C:
			fmt.Fprintf(os.Stderr, "cluster: %s did not stop on SIGTERM; killing it\n", c.name)
			_ = c.cmd.Process.Kill()
			<-c.done
			timer.Reset(0) // the rest get no more grace either
		}
		progress("stopped %s (%v)", c.name, c.err)
	}
	cs.list = nil
}

// tailBuffer keeps the last 8 KiB written, for error messages, and counts
// the lines.
type tailBuffer struct {
	mu sync.Mutex
	b  []byte
	n  int
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.n += bytes.Count(p, []byte("\n"))
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

func (t *tailBuffer) lines() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.n
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
