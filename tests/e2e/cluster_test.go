package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	nfsc "github.com/willscott/go-nfs-client/nfs"

	"github.com/wormhole-fs/wormhole/tests/testnode"
)

// The ports every node of a loopback cluster uses on its own 127.x.y.z address.
const (
	lbNFSPort    = 2049
	lbGossipPort = 7946
	lbDataPort   = 7947
	lbJoinPort   = 7948
	lbEtcdClient = 2379
	lbEtcdPeer   = 2380
)

// lbNode is one node of a cluster on loopback addresses, run from WH_BIN.
type lbNode struct {
	ID, IP  string
	Dir     string // data directory
	Config  string // its YAML file
	Process *testnode.Process
}

// NFSAddr is where the node serves NFS and MOUNT.
func (n *lbNode) NFSAddr() string { return net.JoinHostPort(n.IP, fmt.Sprint(lbNFSPort)) }

// tokenPattern matches a join token as `wormhole init` prints it.
var tokenPattern = regexp.MustCompile(`whj1\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+`)

// startLoopbackCluster starts a cluster of n nodes from WH_BIN, each on its own
// loopback address with the standard ports: `wormhole init` and serve on the first,
// then `wormhole join` and serve on each other one. It waits until the first node
// reports every node alive, and kills them all when the test ends. It skips the
// test when WH_BIN is unset or no free addresses are found.
func startLoopbackCluster(t *testing.T, n int) []*lbNode {
	t.Helper()
	bin := os.Getenv("WH_BIN")
	if bin == "" {
		t.Skip("WH_BIN is unset: point it at a built wormhole binary")
	}
	ips, err := freeLoopbackIPs(n)
	if err != nil {
		t.Skipf("no loopback addresses with the cluster ports free: %v", err)
	}
	var nodes []*lbNode
	for i, ip := range ips {
		node := &lbNode{ID: fmt.Sprintf("n%d", i+1), IP: ip, Dir: t.TempDir()}
		node.Config = filepath.Join(t.TempDir(), "wormhole.yaml")
		cfg := fmt.Sprintf(`cluster_id: e2e
data_dir: %q
nfs: { addr: %q }
node: { id: %s, advertise: %s }
cluster: { gossip_port: %d, data_port: %d, join_port: %d }
etcd: { client_port: %d, peer_port: %d }
`, node.Dir, node.NFSAddr(), node.ID, ip, lbGossipPort, lbDataPort, lbJoinPort, lbEtcdClient, lbEtcdPeer)
		if err := os.WriteFile(node.Config, []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, node)
	}
	t.Cleanup(func() {
		for _, node := range nodes {
			if node.Process == nil {
				continue
			}
			node.Process.Kill9()
			if t.Failed() {
				t.Logf("--- %s log (tail) ---\n%s", node.ID, tail(node.Process.Output(), 80))
			}
		}
	})

	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	t0 := time.Now()
	out, err := runCLI(ctx, bin, "init", "--config", nodes[0].Config)
	if err != nil {
		t.Fatalf("wormhole init: %v\n%s", err, out)
	}
	token := tokenPattern.FindString(out)
	if token == "" {
		t.Fatalf("wormhole init printed no join token:\n%s", out)
	}
	nodes[0].serve(ctx, t, bin)
	for _, node := range nodes[1:] {
		seed := net.JoinHostPort(nodes[0].IP, fmt.Sprint(lbJoinPort))
		for {
			out, err := runCLI(ctx, bin, "join", seed, "--token", token, "--config", node.Config)
			if err == nil {
				break
			}
			// The seed may open its join port after its NFS port.
			if !strings.Contains(out, "connection refused") || ctx.Err() != nil {
				t.Fatalf("%s: wormhole join %s: %v\n%s", node.ID, seed, err, out)
			}
			select {
			case <-ctx.Done():
			case <-time.After(200 * time.Millisecond): // poll interval, not a wait for an event
			}
		}
		node.serve(ctx, t, bin)
	}
	waitAllAlive(ctx, t, bin, nodes)
	t.Logf("cluster of %d nodes on %s serving in %v", n, strings.Join(ips, ", "), time.Since(t0).Round(time.Millisecond))
	return nodes
}

// serve starts `wormhole serve` on the node and waits until it answers NFS.
func (n *lbNode) serve(ctx context.Context, t *testing.T, bin string) {
	t.Helper()
	p, err := testnode.Start(bin, n.Dir, n.NFSAddr(), "--config", n.Config)
	if err != nil {
		t.Fatalf("%s: start: %v", n.ID, err)
	}
	n.Process = p
	if err := p.WaitReady(ctx); err != nil {
		t.Fatalf("%s: %v", n.ID, err)
	}
}

// clusterStatus is the part of `wormhole status --json` the tests read.
type clusterStatus struct {
	Situation string `json:"situation"`
	Summary   string `json:"summary"`
	Nodes     []struct {
		ID    string `json:"id"`
		State string `json:"state"`
	} `json:"nodes"`
}

// waitAllAlive polls the first node's status until it reports every node alive.
func waitAllAlive(ctx context.Context, t *testing.T, bin string, nodes []*lbNode) {
	t.Helper()
	first := nodes[0]
	var last string
	for {
		out, err := runCLI(ctx, bin, "status", "--json", "--config", first.Config,
			"--data-dir", first.Dir, "--admin-addr", first.Process.AdminAddr)
		var st clusterStatus
		if err == nil && json.Unmarshal([]byte(lastLine(out)), &st) == nil {
			alive := 0
			for _, n := range st.Nodes {
				if n.State == "alive" {
					alive++
				}
			}
			if alive == len(nodes) {
				t.Logf("%s status: %s: %s", first.ID, st.Situation, st.Summary)
				return
			}
		}
		last = out
		select {
		case <-ctx.Done():
			t.Fatalf("%s never reported all %d nodes alive; last status: %v\n%s", first.ID, len(nodes), err, last)
		case <-time.After(250 * time.Millisecond): // poll interval, not a wait for an event
		}
	}
}

// runCLI runs a short wormhole command and returns its combined output.
func runCLI(ctx context.Context, bin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// lastLine returns the last non-empty line of s.
func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// freeLoopbackIPs returns n addresses 127.A.B.11, .12, ... on which every cluster
// port is free right now. A and B derive from the process id, so that concurrent
// test processes are unlikely to collide.
func freeLoopbackIPs(n int) ([]string, error) {
	pid := os.Getpid()
	var lastErr error
	for try := range 16 {
		a := 100 + (pid+try)%100
		b := 1 + (pid/100+3*try)%250
		var ips []string
		ok := true
		for i := range n {
			ip := fmt.Sprintf("127.%d.%d.%d", a, b, 11+i)
			if err := portsFree(ip); err != nil {
				lastErr, ok = err, false
				break
			}
			ips = append(ips, ip)
		}
		if ok {
			return ips, nil
		}
	}
	return nil, lastErr
}

// portsFree checks that the cluster's TCP ports, and its UDP gossip port, can be
// bound on ip.
func portsFree(ip string) error {
	for _, port := range []int{lbNFSPort, lbGossipPort, lbDataPort, lbJoinPort, lbEtcdClient, lbEtcdPeer} {
		l, err := net.Listen("tcp", net.JoinHostPort(ip, fmt.Sprint(port)))
		if err != nil {
			return err
		}
		l.Close()
	}
	pc, err := net.ListenPacket("udp", net.JoinHostPort(ip, fmt.Sprint(lbGossipPort)))
	if err != nil {
		return err
	}
	return pc.Close()
}

// switchManifest mirrors the guest's SwitchManifest (tests/guest/switch_test.go).
type switchManifest struct {
	Dir   string `json:"dir"`
	Files []struct {
		Path   string `json:"path"`
		Size   int64  `json:"size"`
		SHA256 string `json:"sha256"`
		Ino    uint64 `json:"ino"`
	} `json:"files"`
}

// TestKernelClientSwitchesNodes mounts a two-node cluster in the guest through a
// forwarder on the host: the kernel client writes through node A, the forwarder
// moves its connection to node B, and the guest (tests/guest TestSwitch) reads
// everything back through B, keeps using a descriptor and a working directory
// opened on A, and creates new files. Then the host reads every file through both
// nodes with go-nfs-client and checks that they give the same handles.
func TestKernelClientSwitchesNodes(t *testing.T) {
	requireGuest(t) // skip before starting a cluster if there is no guest
	nodes := startLoopbackCluster(t, 2)
	a, b := nodes[0], nodes[1]
	fwd := newForwarder(t, a.NFSAddr())
	share := t.TempDir()

	// The host half of the guest's protocol (see tests/guest/switch_test.go).
	type switched struct {
		ended   fwdStats // node A's epoch, final
		listed  int      // entries of big another client listed through B
		listErr error
		err     error
	}
	ctx, stopWatch := context.WithCancel(t.Context())
	defer stopWatch()
	switchc := make(chan switched, 1)
	go func() {
		for {
			if req, err := os.ReadFile(filepath.Join(share, "switch-request")); err == nil {
				var sw switched
				// Another client lists the directory the guest is in the middle of
				// listing, through B: B's readdir state is not A's.
				sw.listed, sw.listErr = listThrough(b, path.Join(strings.TrimSpace(string(req)), "big"))
				sw.ended = fwd.Switch(b.NFSAddr())
				sw.err = os.WriteFile(filepath.Join(share, "switch-done"), []byte(b.NFSAddr()+"\n"), 0o644)
				switchc <- sw
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(100 * time.Millisecond): // poll interval, not a wait for an event
			}
		}
	}()

	res := runGuest(t, Options{
		Port:     fwd.Port(),
		TestRun:  "^TestSwitch$",
		Env:      map[string]string{"WH_SWITCH": "1"},
		ShareDir: share,
		Timeout:  15 * time.Minute,
	})
	stopWatch()
	t.Logf("guest test output:\n%s", res.TestOutput)

	var sw switched
	select {
	case sw = <-switchc:
	default:
		t.Fatalf("the guest never asked for the switch (no %s/switch-request): nothing was tested", share)
	}
	if sw.err != nil {
		t.Fatalf("signal the switch to the guest: %v", sw.err)
	}
	if sw.listErr != nil {
		t.Errorf("another client listing the guest's directory through %s: %v", b.ID, sw.listErr)
	} else {
		t.Logf("another client listed %d entries of the guest's directory through %s before the switch", sw.listed, b.ID)
	}
	if res.TestExit != 0 || !strings.Contains(res.TestOutput, "--- PASS: TestSwitch") {
		t.Errorf("guest TestSwitch did not pass (exit %d)", res.TestExit)
	}
	if res.UmountExit != 0 {
		t.Errorf("umount failed with status %d: %s", res.UmountExit, res.UmountOutput)
	}

	// The forwarder's account: A served the guest before the switch and not after;
	// B served it after.
	stats := fwd.Stats()
	for i, s := range stats {
		t.Logf("forwarder epoch %d: %v", i, s)
	}
	if len(stats) != 2 {
		t.Fatalf("forwarder has %d epochs, want 2 (one switch)", len(stats))
	}
	if stats[0] != sw.ended {
		t.Errorf("node A served traffic after the switch: %v at the switch, %v at the end", sw.ended, stats[0])
	}
	if stats[0].Backend != a.NFSAddr() || stats[0].Conns == 0 || stats[0].BytesToClnt == 0 {
		t.Errorf("node A (%s) served nothing before the switch: %v", a.NFSAddr(), stats[0])
	}
	if stats[1].Backend != b.NFSAddr() || stats[1].Conns == 0 || stats[1].BytesToClnt == 0 {
		t.Errorf("node B (%s) served nothing after the switch: %v", b.NFSAddr(), stats[1])
	}
	if stats[0].DialErrors+stats[1].DialErrors != 0 {
		t.Errorf("the forwarder could not reach a node: %v", stats)
	}

	// Every file the guest left, read through each node.
	raw, err := os.ReadFile(filepath.Join(share, "switch-manifest.json"))
	if err != nil {
		t.Fatalf("the guest left no manifest: %v", err)
	}
	var m switchManifest
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("manifest: %v", err)
	}
	if len(m.Files) == 0 {
		t.Fatal("the manifest lists no files")
	}
	handles := map[string][]byte{} // path → handle from node A
	for _, node := range []*lbNode{a, b} {
		problems, err := withDeadline(2*time.Minute, func() []string {
			return checkFiles(node, a, m, handles)
		})
		for _, p := range problems {
			t.Errorf("%s: %s", node.ID, p)
		}
		if err != nil {
			t.Errorf("%s: check the guest's files: %v", node.ID, err)
			break // its goroutine may still be filling handles
		}
	}
	t.Logf("checked %d files through both nodes", len(m.Files))

	for _, node := range nodes {
		if lines := warnings(node.Process.Output()); len(lines) > 0 {
			t.Logf("%s logged %d warnings or errors (last 20):\n%s", node.ID, len(lines),
				strings.Join(lines[max(0, len(lines)-20):], "\n"))
		}
	}
}

// checkFiles reads every file of the manifest through node with go-nfs-client and
// returns what differs from what the guest saw. Through node a it records each
// file's handle in handles; through the other nodes it checks that they give the
// same handle and answer GETATTR with a's.
func checkFiles(node, a *lbNode, m switchManifest, handles map[string][]byte) []string {
	v, closeMount, err := testnode.Mount(node.NFSAddr(), 0, 0)
	if err != nil {
		return []string{fmt.Sprintf("mount: %v", err)}
	}
	defer closeMount()
	var problems []string
	report := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	for _, f := range m.Files {
		fi, fh, err := v.Lookup(f.Path)
		if err != nil {
			report("lookup %s: %v", f.Path, err)
			continue
		}
		if attr, ok := fi.(*nfsc.Fattr); !ok || attr.Fileid != f.Ino || attr.Size() != f.Size {
			report("%s has attributes %+v, want fileid %d size %d", f.Path, fi, f.Ino, f.Size)
		}
		if node == a {
			handles[f.Path] = fh
		} else if !bytes.Equal(handles[f.Path], fh) {
			report("%s has handle %x, node %s gave %x", f.Path, fh, a.ID, handles[f.Path])
		} else if attr, err := v.GetAttr(handles[f.Path]); err != nil || attr.Fileid != f.Ino {
			report("GETATTR with node %s's handle of %s: %+v, %v", a.ID, f.Path, attr, err)
		}
		file, err := v.Open(f.Path)
		if err != nil {
			report("open %s: %v", f.Path, err)
			continue
		}
		h := sha256.New()
		n, err := io.Copy(h, file)
		file.Close()
		if err != nil {
			report("read %s: %v", f.Path, err)
		} else if sum := hex.EncodeToString(h.Sum(nil)); n != f.Size || sum != f.SHA256 {
			report("%s reads as %d bytes with sha256 %s, the guest wrote %d bytes with %s", f.Path, n, sum, f.Size, f.SHA256)
		}
	}
	return problems
}

// listThrough lists a directory through node with go-nfs-client, as another
// client of that node, and returns the number of entries.
func listThrough(node *lbNode, dir string) (int, error) {
	type result struct {
		n   int
		err error
	}
	r, err := withDeadline(time.Minute, func() result {
		v, closeMount, err := testnode.Mount(node.NFSAddr(), 0, 0)
		if err != nil {
			return result{0, fmt.Errorf("mount: %w", err)}
		}
		defer closeMount()
		ents, err := v.ReadDirPlus(dir)
		return result{len(ents), err}
	})
	if err != nil {
		return 0, err
	}
	return r.n, r.err
}

// withDeadline runs fn, giving up after d: go-nfs-client calls have no timeout of
// their own. A call that hangs is left running.
func withDeadline[T any](d time.Duration, fn func() T) (T, error) {
	done := make(chan T, 1)
	go func() { done <- fn() }()
	select {
	case v := <-done:
		return v, nil
	case <-time.After(d):
		var zero T
		return zero, errors.New("no answer within " + d.String())
	}
}

// warnings returns a node's log lines at warning level or above.
func warnings(log string) []string {
	var lines []string
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, "WRN") || strings.Contains(line, "ERR") || strings.Contains(line, "FTL") {
			lines = append(lines, line)
		}
	}
	return lines
}
