// Package cluster tests several wormhole processes as one cluster, each
// in its own network namespace (see tests/netns): joining, one namespace
// served by every node, replication, a node killed during writes, and
// refused joins. The tests need root and `ip netns`; they skip otherwise.
package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	nfsc "github.com/willscott/go-nfs-client/nfs"
	"github.com/willscott/go-nfs-client/nfs/rpc"
	"github.com/willscott/go-nfs-client/nfs/xdr"

	"github.com/wormhole-fs/wormhole/tests/netns"
	"github.com/wormhole-fs/wormhole/tests/testnode"
)

// Ports every node uses on its own address.
const (
	nfsPort    = 2049
	gossipPort = 7946
	dataPort   = 7947
	joinPort   = 7948
)

var bin string

func TestMain(m *testing.M) { testnode.RunWithBinary(m, &bin) }

// options shape a test cluster.
type options struct {
	nodes  int
	voters int // etcd voters: 1, 3 or 5
	copies int // redundancy.copies

	// Self-healing settings; zero values keep the binary's defaults.
	repairGrace    time.Duration // repair.grace
	repairInterval time.Duration // repair.interval
	repairRate     int64         // repair.bandwidth in bytes per second
	scrubRate      int64         // scrub.rate in bytes per second
	scrubDelay     time.Duration // scrub.delay
	scrubInterval  time.Duration // scrub.interval
	critical       string        // postures.critical

	// orphanGrace is repair.orphan_grace: how long a chunk no file
	// refers to is kept before the repair worker deletes it.
	orphanGrace time.Duration
	// smallDisks maps nodes, counted from 1, to the size in bytes of a
	// tmpfs newCluster mounts as their data directory (lazily unmounted
	// when the test ends).
	smallDisks map[int]int64
}

// cluster is a set of wormhole nodes, one per network namespace.
type cluster struct {
	t     *testing.T
	net   *netns.Net
	nodes []*node
	token string
}

// node is one wormhole node: its host, data directory and configuration,
// and its `wormhole serve` process once started.
type node struct {
	c      *cluster
	id     string
	host   *netns.Host
	dir    string
	config string
	proc   *netns.Proc
}

// newCluster creates the namespaces and writes each node's configuration.
// Nothing runs yet.
func newCluster(t *testing.T, o options) *cluster {
	t.Helper()
	c := &cluster{t: t, net: netns.New(t, o.nodes)}
	for _, h := range c.net.Hosts() {
		n := &node{c: c, id: fmt.Sprintf("n%d", h.Index), host: h, dir: t.TempDir()}
		if size, ok := o.smallDisks[h.Index]; ok {
			mountSmallDisk(t, n.dir, size)
		}
		n.config = filepath.Join(t.TempDir(), "wormhole.yaml")
		if err := os.WriteFile(n.config, []byte(nodeConfig(n, c.net.CIDR(), o)), 0o644); err != nil {
			t.Fatal(err)
		}
		c.nodes = append(c.nodes, n)
	}
	return c
}

func nodeConfig(n *node, cidr string, o options) string {
	return fmt.Sprintf(`cluster_id: test
data_dir: %q
nfs:
  addr: %q
  exports:
    - path: /
      clients: [%q, "127.0.0.0/8"]
      squash: none
admin:
  addr: "127.0.0.1:9470"
node:
  id: %s
  advertise: %s
  zone: ""
  tier: ""
cluster:
  gossip_port: %d
  data_port: %d
  join_port: %d
etcd:
  voters: %d
  peer_port: 2380
  client_port: 2379
redundancy:
  copies: %d
  when_short: degraded
log:
  level: %s
`, n.dir, n.host.Addr(nfsPort), cidr, n.id, n.host.IP, gossipPort, dataPort, joinPort, o.voters, o.copies, logLevel()) +
		healingConfig(o)
}

// healingConfig is the repair, scrub and postures sections for the
// settings o gives, empty when it gives none.
func healingConfig(o options) string {
	var b strings.Builder
	if o.repairGrace > 0 || o.repairInterval > 0 || o.repairRate > 0 || o.orphanGrace > 0 {
		b.WriteString("repair:\n")
		if o.orphanGrace > 0 {
			fmt.Fprintf(&b, "  orphan_grace: %s\n", o.orphanGrace)
		}
		if o.repairRate > 0 {
			fmt.Fprintf(&b, "  bandwidth: %d\n", o.repairRate)
		}
		if o.repairGrace > 0 {
			fmt.Fprintf(&b, "  grace: %s\n", o.repairGrace)
		}
		if o.repairInterval > 0 {
			fmt.Fprintf(&b, "  interval: %s\n", o.repairInterval)
		}
	}
	if o.scrubRate > 0 || o.scrubDelay > 0 || o.scrubInterval > 0 {
		b.WriteString("scrub:\n")
		if o.scrubRate > 0 {
			fmt.Fprintf(&b, "  rate: %d\n", o.scrubRate)
		}
		if o.scrubDelay > 0 {
			fmt.Fprintf(&b, "  delay: %s\n", o.scrubDelay)
		}
		if o.scrubInterval > 0 {
			fmt.Fprintf(&b, "  interval: %s\n", o.scrubInterval)
		}
	}
	if o.critical != "" {
		fmt.Fprintf(&b, "postures:\n  critical: %s\n", o.critical)
	}
	return b.String()
}

// logLevel is the nodes' log level: $WH_CLUSTER_LOG_LEVEL, or info.
func logLevel() string {
	if l := os.Getenv("WH_CLUSTER_LOG_LEVEL"); l != "" {
		return l
	}
	return "info"
}

// node returns node i, counted from 1.
func (c *cluster) node(i int) *node { return c.nodes[i-1] }

// tokenRE matches a join token as `wormhole init` prints it.
var tokenRE = regexp.MustCompile(`whj1\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+`)

// start initializes the cluster on node 1 and serves it, then joins and
// serves every other node in turn, and waits until all serve NFS.
func (c *cluster) start() {
	c.t.Helper()
	t0 := time.Now()
	c.init()
	c.node(1).serve()
	c.node(1).waitServing(60 * time.Second)
	c.t.Logf("%v n1 initialized and serving", time.Since(t0).Round(time.Millisecond))
	for _, n := range c.nodes[1:] {
		if r := n.join(c.token); r.Err != nil {
			c.t.Fatalf("%s: wormhole join: exit %d: %v\nstdout: %s\nstderr: %s", n.id, r.ExitCode, r.Err, r.Stdout, r.Stderr)
		}
		n.serve()
		n.waitServing(60 * time.Second)
		c.t.Logf("%v %s joined and serving", time.Since(t0).Round(time.Millisecond), n.id)
	}
}

// init runs `wormhole init` on node 1 and keeps the join token it prints.
func (c *cluster) init() {
	c.t.Helper()
	n := c.node(1)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r := n.host.Run(ctx, "init", bin, "init", "--config", n.config)
	if r.Err != nil {
		c.t.Fatalf("wormhole init: exit %d: %v\nstdout: %s\nstderr: %s", r.ExitCode, r.Err, r.Stdout, r.Stderr)
	}
	c.token = tokenRE.FindString(r.Stdout)
	if c.token == "" {
		c.t.Fatalf("wormhole init printed no join token on stdout:\nstdout: %s\nstderr: %s", r.Stdout, r.Stderr)
	}
}

// join runs `wormhole join` on the node against node 1's join port. It
// retries while nothing listens there yet (node 1 may open the join port
// after its NFS port), for at most 20 seconds.
func (n *node) join(token string) netns.Result {
	n.c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	seed := n.c.node(1).host.Addr(joinPort)
	deadline := time.Now().Add(20 * time.Second)
	for {
		r := n.host.Run(ctx, "join", bin, "join", seed, "--token", token, "--config", n.config)
		if r.Err == nil || !strings.Contains(r.Stderr, "connection refused") || time.Now().After(deadline) {
			return r
		}
		time.Sleep(200 * time.Millisecond) // poll interval: the seed is starting
	}
}

// serve starts `wormhole serve` on the node.
func (n *node) serve() {
	n.c.t.Helper()
	p, err := n.host.Start("serve", bin, "serve", "--config", n.config)
	if err != nil {
		n.c.t.Fatalf("%s: start serve: %v", n.id, err)
	}
	n.proc = p
}

// restart starts `wormhole serve` again on the node, with the same data
// directory and configuration, and waits until it serves NFS.
func (n *node) restart(d time.Duration) {
	n.c.t.Helper()
	n.serve()
	n.waitServing(d)
}

// wormhole runs a wormhole command (args, then --config) in the node's
// namespace, logged under the command's first word, and gives up after d.
func (n *node) wormhole(d time.Duration, args ...string) netns.Result {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	argv := append(append([]string{bin}, args...), "--config", n.config)
	return n.host.Run(ctx, args[0], argv...)
}

// admin makes one request to the node's admin API (on the namespace's
// loopback, so with curl inside the namespace) with the node's token, and
// returns the body of a 2xx answer. Requests other than GET are logged.
func (n *node) admin(method, path string) (string, error) {
	tok, err := os.ReadFile(filepath.Join(n.dir, "admin.token"))
	if err != nil {
		return "", fmt.Errorf("admin token: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	name := "admin" // GETs are polled: not logged
	if method == "GET" {
		name = ""
	}
	r := n.host.Run(ctx, name, "curl", "-sS", "--fail-with-body", "-X", method,
		"-H", "Authorization: Bearer "+strings.TrimSpace(string(tok)), "http://127.0.0.1:9470"+path)
	if r.Err != nil {
		return r.Stdout, fmt.Errorf("admin %s %s: exit %d: %v: %s%s", method, path, r.ExitCode, r.Err, r.Stdout, r.Stderr)
	}
	return r.Stdout, nil
}

// metricSum adds up the value of the metric name (a counter or gauge
// without labels) over the nodes running, from their admin APIs.
func (c *cluster) metricSum(name string) float64 {
	c.t.Helper()
	var sum float64
	for _, n := range c.nodes {
		if exited, _ := n.proc.Exited(); exited {
			continue
		}
		out, err := n.admin("GET", "/metrics")
		if err != nil {
			c.t.Fatalf("%s: %v", n.id, err)
		}
		for l := range strings.Lines(out) {
			if v, ok := strings.CutPrefix(strings.TrimSpace(l), name+" "); ok {
				f, err := strconv.ParseFloat(v, 64)
				if err != nil {
					c.t.Fatalf("%s: metric %s: %v", n.id, name, err)
				}
				sum += f
			}
		}
	}
	return sum
}

// waitServing waits until the node answers NFS NULL calls, and fails the
// test if it exits first or the time runs out.
func (n *node) waitServing(d time.Duration) {
	n.c.t.Helper()
	deadline := time.Now().Add(d)
	var err error
	for time.Now().Before(deadline) {
		if err = testnode.Ping(n.nfsAddr(), time.Second); err == nil {
			return
		}
		if exited, werr := n.proc.Exited(); exited {
			n.c.t.Fatalf("%s: wormhole serve exited before serving: %v", n.id, werr)
		}
		time.Sleep(100 * time.Millisecond) // poll interval, not a wait for an event
	}
	n.c.t.Fatalf("%s: not serving NFS on %s after %v: %v", n.id, n.nfsAddr(), d, err)
}

func (n *node) nfsAddr() string { return n.host.Addr(nfsPort) }

// status is the part of `wormhole status --json` the tests read.
type status struct {
	Nodes []struct {
		ID    string `json:"id"`
		State string `json:"state"`
		// Etcd is the node's etcd role: voter, learner, client or external.
		Etcd      string     `json:"etcd"`
		Draining  bool       `json:"draining"`
		DownSince *time.Time `json:"down_since"`
	} `json:"nodes"`
	// Situation is healthy, favourable, mixed or critical; Posture what
	// the cluster does about it.
	Situation  string `json:"situation"`
	Posture    string `json:"posture"`
	AtRisk     string `json:"at_risk"`
	Advice     string `json:"advice"`
	Summary    string `json:"summary"`
	Redundancy struct {
		Copies int `json:"copies"`
	} `json:"redundancy"`
	// Chunks counts chunks below, on and above their redundancy; nil when
	// the status has no census.
	Chunks *struct {
		Chunks  int      `json:"chunks"`
		Below   int      `json:"below"`
		On      int      `json:"on"`
		Above   int      `json:"above"`
		Missing int      `json:"missing"`
		Orphans int      `json:"orphans"`
		Partial []string `json:"partial"`
		// At is when the census was taken (status reuses one for
		// seconds).
		At time.Time `json:"at"`
	} `json:"chunks"`
	// Repair is the repair worker's current or last pass; nil without one.
	Repair *repairProgress `json:"repair"`
	// Scrub is this node's scrubber; nil when scrubbing is off.
	Scrub *struct {
		Passes  uint64 `json:"passes"`
		Checked uint64 `json:"checked"`
		Corrupt uint64 `json:"corrupt"`
		Errors  uint64 `json:"errors"`
	} `json:"scrub"`
}

// repairProgress is one repair pass as status reports it.
type repairProgress struct {
	Leader         string         `json:"leader"`
	Running        bool           `json:"running"`
	Pass           uint64         `json:"pass"`
	Copied         int            `json:"copied"`
	ToCopy         int            `json:"to_copy"`
	Deleted        int            `json:"deleted"`
	ToDelete       int            `json:"to_delete"`
	Failed         int            `json:"failed"`
	Deferred       int            `json:"deferred"`
	Unavailable    int            `json:"unavailable"`
	BytesCopied    int64          `json:"bytes_copied"`
	DrainRemaining map[string]int `json:"drain_remaining"`
	LastError      string         `json:"last_error"`
	Orphans        int            `json:"orphans"`
	OrphansDeleted int            `json:"orphans_deleted"`
}

// states maps node ids to their states.
func (s status) states() map[string]string {
	m := map[string]string{}
	for _, n := range s.Nodes {
		m[n.ID] = n.State
	}
	return m
}

// where is `wormhole where --json`.
type where struct {
	Path   string `json:"path"`
	Chunks []struct {
		Index   int      `json:"index"`
		ID      string   `json:"id"`
		Targets []string `json:"targets"`
		Holders []string `json:"holders"`
	} `json:"chunks"`
}

// jsonCommand runs a wormhole subcommand with --config and --json inside
// the node's namespace and decodes its stdout into v. The command is not
// logged: callers poll it, and report the last output.
func (n *node) jsonCommand(v any, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	argv := append([]string{bin, args[0], "--config", n.config, "--json"}, args[1:]...)
	r := n.host.Run(ctx, "", argv...)
	if r.Err != nil {
		return r.Stdout, fmt.Errorf("wormhole %s: exit %d: %v: %s", args[0], r.ExitCode, r.Err, strings.TrimSpace(r.Stderr))
	}
	if err := json.Unmarshal([]byte(r.Stdout), v); err != nil {
		return r.Stdout, fmt.Errorf("wormhole %s --json: %w in %q", args[0], err, r.Stdout)
	}
	return r.Stdout, nil
}

// waitStatus polls the node's status until ok accepts it, and fails the
// test with the last status seen when d passes first.
func (n *node) waitStatus(d time.Duration, what string, ok func(status) bool) status {
	n.c.t.Helper()
	st, out, err := n.pollStatus(d, ok)
	if err != nil {
		n.c.t.Fatalf("%s: status never showed %s: %v\n%s", n.id, what, err, out)
	}
	return st
}

// pollStatus polls the node's status until ok accepts it. When d passes
// first, it returns the last output and why it was not accepted.
func (n *node) pollStatus(d time.Duration, ok func(status) bool) (status, string, error) {
	deadline := time.Now().Add(d)
	for {
		var st status
		out, err := n.jsonCommand(&st, "status")
		if err == nil && ok(st) {
			return st, out, nil
		}
		if time.Now().After(deadline) {
			if err == nil {
				err = fmt.Errorf("not within %v", d)
			}
			return st, out, err
		}
		time.Sleep(250 * time.Millisecond) // poll interval, not a wait for an event
	}
}

// allAlive says whether st lists exactly these node ids, all alive.
func allAlive(ids ...string) func(status) bool {
	return func(st status) bool {
		s := st.states()
		if len(s) != len(ids) {
			return false
		}
		for _, id := range ids {
			if s[id] != "alive" {
				return false
			}
		}
		return true
	}
}

func (c *cluster) ids() []string {
	var ids []string
	for _, n := range c.nodes {
		ids = append(ids, n.id)
	}
	return ids
}

// mount mounts the node's export as root with go-nfs-client from the
// root namespace, and unmounts it when the test ends.
func (n *node) mount() *nfsc.Target {
	n.c.t.Helper()
	m, err := mountWithin(n.nfsAddr(), 20*time.Second)
	if err != nil {
		n.c.t.Fatalf("%s: %v", n.id, err)
	}
	n.c.t.Cleanup(m.close)
	return m.v
}

// mounted is a go-nfs-client mount and what unmounts it.
type mounted struct {
	v     *nfsc.Target
	close func()
	// broken, when not nil, is closed once the mount's connection is
	// broken (mountOneConnWithin).
	broken <-chan struct{}
	// inflight counts the calls untilBroken left running on v; close
	// waits for them (mountOneConnWithin).
	inflight *sync.WaitGroup
}

// mountWithin mounts addr as root, giving up after d.
func mountWithin(addr string, d time.Duration) (mounted, error) {
	return within(d, "mount "+addr, func() (mounted, error) {
		v, closeMount, err := testnode.Mount(addr, 0, 0)
		return mounted{v: v, close: closeMount}, err
	})
}

// within runs f and returns its results, or an error once d passes first:
// go-nfs-client's calls have no deadline of their own. On a timeout f is
// left running, and its results are dropped.
func within[T any](d time.Duration, what string, f func() (T, error)) (T, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return firstOf(f, ctx.Done(), func() error { return fmt.Errorf("%s: no answer within %v", what, d) })
}

// firstOf runs f on a goroutine of its own and returns its results, or
// why() once stop is closed first (f's results, if already there, still
// win); f is then left running, and its results dropped.
func firstOf[T any](f func() (T, error), stop <-chan struct{}, why func() error) (T, error) {
	type result struct {
		v   T
		err error
	}
	done := make(chan result, 1)
	go func() {
		v, err := f()
		done <- result{v, err}
	}()
	select {
	case r := <-done:
		return r.v, r.err
	case <-stop:
		select {
		case r := <-done:
			return r.v, r.err
		default:
		}
		var zero T
		return zero, why()
	}
}

// writeFile creates (or overwrites from offset 0) name with data, and
// commits it.
func writeFile(v *nfsc.Target, name string, data []byte) error {
	_, err := within(60*time.Second, "write "+name, func() (struct{}, error) {
		f, err := v.OpenFile(name, 0o644)
		if err != nil {
			return struct{}{}, fmt.Errorf("open %s: %w", name, err)
		}
		if err := testnode.WriteFile(f, data); err != nil {
			return struct{}{}, fmt.Errorf("write %s: %w", name, err)
		}
		if err := f.Close(); err != nil {
			return struct{}{}, fmt.Errorf("commit %s: %w", name, err)
		}
		return struct{}{}, nil
	})
	return err
}

// lookup returns the attributes and handle of name.
func lookup(v *nfsc.Target, name string) (*nfsc.Fattr, []byte, error) {
	type res struct {
		attr *nfsc.Fattr
		fh   []byte
	}
	r, err := within(20*time.Second, "lookup "+name, func() (res, error) {
		fi, fh, err := v.Lookup(name)
		if err != nil {
			return res{}, fmt.Errorf("lookup %s: %w", name, err)
		}
		return res{fi.(*nfsc.Fattr), fh}, nil
	})
	return r.attr, r.fh, err
}

// readFile reads all of name, and returns its attributes too.
func readFile(v *nfsc.Target, name string) ([]byte, *nfsc.Fattr, error) {
	attr, _, err := lookup(v, name)
	if err != nil {
		return nil, nil, err
	}
	data, err := within(60*time.Second, "read "+name, func() ([]byte, error) {
		f, err := v.Open(name)
		if err != nil {
			return nil, fmt.Errorf("open %s: %w", name, err)
		}
		var buf bytes.Buffer
		p := make([]byte, 1<<20)
		for off := int64(0); ; {
			n, err := f.ReadAt(p, off)
			buf.Write(p[:n])
			off += int64(n)
			if errors.Is(err, io.EOF) || (err == nil && n == 0) {
				return buf.Bytes(), nil
			}
			if err != nil {
				return nil, fmt.Errorf("read %s at %d: %w", name, off, err)
			}
		}
	})
	return data, attr, err
}

// readByHandle reads size bytes of the file with handle fh with raw NFSv3
// READ calls, as a client does after failing over with a handle it got
// from another node.
func readByHandle(v *nfsc.Target, fh []byte, size int) ([]byte, error) {
	type readArgs struct {
		rpc.Header
		FH     []byte
		Offset uint64
		Count  uint32
	}
	type readRes struct {
		Attr  nfsc.PostOpAttr
		Count uint32
		EOF   uint32
		Data  struct {
			Length uint32
		}
	}
	const step = 64 << 10
	return within(60*time.Second, "read by handle", func() ([]byte, error) {
		var out []byte
		for len(out) < size {
			res, err := v.Call(&readArgs{
				Header: rpc.Header{
					Rpcvers: 2, Prog: nfsc.Nfs3Prog, Vers: nfsc.Nfs3Vers, Proc: nfsc.NFSProc3Read,
					Cred: rpc.NewAuthUnix("testclient", 0, 0).Auth(), Verf: rpc.AuthNull,
				},
				FH: fh, Offset: uint64(len(out)), Count: step,
			})
			if err != nil {
				return nil, err
			}
			st, err := xdr.ReadUint32(res)
			if err != nil {
				return nil, err
			}
			if st != nfsc.NFS3Ok {
				return nil, fmt.Errorf("READ at %d: NFS status %d (%v)", len(out), st, nfsc.NFS3Error(st))
			}
			var rr readRes
			if err := xdr.Read(res, &rr); err != nil {
				return nil, err
			}
			b := make([]byte, rr.Data.Length)
			if _, err := io.ReadFull(res, b); err != nil {
				return nil, err
			}
			out = append(out, b...)
			if rr.EOF != 0 || rr.Data.Length == 0 {
				break
			}
		}
		return out, nil
	})
}

// mountSmallDisk mounts a tmpfs of size bytes on dir, and unmounts it
// (lazily: a node may still hold files open) when the test ends.
func mountSmallDisk(t *testing.T, dir string, size int64) {
	t.Helper()
	if size <= 0 {
		t.Fatalf("small disk of %d bytes", size)
	}
	out, err := exec.Command("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%d,mode=0700", size), "wh-small", dir).CombinedOutput()
	if err != nil {
		t.Skipf("cannot mount a tmpfs on %s (needs root): %v: %s", dir, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", "-l", dir).CombinedOutput(); err != nil {
			t.Logf("umount %s: %v: %s", dir, err, out)
		}
	})
}
