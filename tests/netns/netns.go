// Package netns gives an integration test several hosts on one machine:
// a Linux bridge in the root network namespace and one network namespace
// per host, each joined to the bridge by a veth pair and addressed in a
// private /24 (10.77.S.0/24, S = 0 unless a parallel run holds it).
//
// The test process stays in the root namespace. The bridge carries the
// address 10.77.S.1, so the test reaches every host directly; hosts are
// 10.77.S.11, 10.77.S.12, and so on, each with its own loopback. Programs
// run inside a host with `ip netns exec`, their output going to a log per
// process that is printed when the test fails.
//
// Everything a Net creates is named after the test process's PID and a
// sequence number, and is removed in t.Cleanup; namespaces, links and
// processes left by earlier runs whose process is gone are removed when
// the next Net is created. A Net needs root and a working `ip netns`; New
// skips the test otherwise.
//
// Traffic only flows between loopback, the bridge and the namespaces: the
// bridge has no uplink and nothing is forwarded or NATed.
package netns

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// cmdTimeout bounds every `ip` invocation the harness makes.
const cmdTimeout = 30 * time.Second

// seq numbers the Nets of this process, so that tests running in
// parallel in one process get distinct names.
var seq atomic.Uint32

// Net is a bridge and the hosts attached to it.
type Net struct {
	// Prefix is the first three octets of the subnet, such as "10.77.0".
	Prefix string
	// Bridge is the bridge's interface name in the root namespace.
	Bridge string

	t      testing.TB
	run    string // PID and sequence number, base 36: "2hwcg_1"
	lock   *os.File
	logDir string
	hosts  []*Host

	mu    sync.Mutex
	procs []*Proc
}

// Host is one network namespace on the bridge.
type Host struct {
	// Index counts hosts from 1.
	Index int
	// NS is the network namespace's name (for `ip netns exec`).
	NS string
	// IP is the host's address on the bridge, such as "10.77.0.11".
	IP string
	// Veth is the root-namespace end of the host's veth pair; inside the
	// namespace the other end is eth0.
	Veth string

	net *Net
}

// New creates a bridge and n hosts, and removes them when the test ends.
// It skips the test when it is not run as root or network namespaces are
// unavailable.
func New(t testing.TB, n int) *Net {
	t.Helper()
	if err := Available(); err != nil {
		t.Skipf("network namespaces unavailable: %v", err)
	}
	CleanLeftovers(t)

	run := strconv.FormatInt(int64(os.Getpid()), 36) + "_" + strconv.FormatUint(uint64(seq.Add(1)), 36)
	nt := &Net{t: t, run: run, Bridge: "whb" + run, logDir: t.TempDir()}
	// Cleanup first: it runs after every cleanup the test registers later
	// (mounts, say), and removes whatever part of the set-up was made.
	t.Cleanup(nt.cleanup)

	lock, third, err := lockSubnet()
	if err != nil {
		t.Fatalf("netns: %v", err)
	}
	nt.lock = lock
	nt.Prefix = fmt.Sprintf("10.77.%d", third)

	if err := nt.ip("link", "add", nt.Bridge, "type", "bridge"); err != nil {
		if os.IsPermission(err) || strings.Contains(err.Error(), "Operation not permitted") {
			t.Skipf("cannot create a bridge: %v", err)
		}
		t.Fatalf("netns: %v", err)
	}
	for _, args := range [][]string{
		{"addr", "add", nt.Prefix + ".1/24", "dev", nt.Bridge},
		{"link", "set", nt.Bridge, "up"},
	} {
		if err := nt.ip(args...); err != nil {
			t.Fatalf("netns: %v", err)
		}
	}
	for i := 1; i <= n; i++ {
		h := &Host{
			Index: i,
			NS:    fmt.Sprintf("wh-%s_%d", run, i),
			IP:    fmt.Sprintf("%s.%d", nt.Prefix, 10+i),
			Veth:  fmt.Sprintf("whv%s_%d", run, i),
			net:   nt,
		}
		nt.hosts = append(nt.hosts, h)
		for _, args := range [][]string{
			{"netns", "add", h.NS},
			{"-n", h.NS, "link", "set", "lo", "up"},
			{"link", "add", h.Veth, "type", "veth", "peer", "name", "eth0", "netns", h.NS},
			{"link", "set", h.Veth, "master", nt.Bridge},
			{"link", "set", h.Veth, "up"},
			{"-n", h.NS, "addr", "add", h.IP + "/24", "dev", "eth0"},
			{"-n", h.NS, "link", "set", "eth0", "up"},
		} {
			if err := nt.ip(args...); err != nil {
				t.Fatalf("netns: host %d: %v", i, err)
			}
		}
	}
	return nt
}

// Available says why network namespaces cannot be used here, or nil.
func Available() error {
	if os.Geteuid() != 0 {
		return errors.New("not running as root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return fmt.Errorf("no ip command (iproute2): %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "ip", "netns", "list").CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns list: %v: %s", err, bytes.TrimSpace(out))
	}
	return nil
}

// Hosts returns the hosts, first (10.77.S.11) first.
func (n *Net) Hosts() []*Host { return n.hosts }

// Host returns host i, counted from 1.
func (n *Net) Host(i int) *Host { return n.hosts[i-1] }

// Gateway is the root namespace's address on the bridge, from which the
// test's own connections come.
func (n *Net) Gateway() string { return n.Prefix + ".1" }

// CIDR is the bridge's subnet, such as "10.77.0.0/24".
func (n *Net) CIDR() string { return n.Prefix + ".0/24" }

// LogDir is the directory holding the per-process logs.
func (n *Net) LogDir() string { return n.logDir }

// ip runs the ip command with a deadline.
func (n *Net) ip(args ...string) error { return runIP(args...) }

func runIP(args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// cleanup prints the logs of a failed test, kills every process started
// in the hosts, and removes the namespaces, links and subnet lock.
func (n *Net) cleanup() {
	if n.t.Failed() {
		n.DumpLogs()
	}
	n.mu.Lock()
	procs := n.procs
	n.mu.Unlock()
	for _, p := range procs {
		p.Kill9()
	}
	for _, h := range n.hosts {
		killNamespacePIDs(h.NS)
		if err := runIP("netns", "del", h.NS); err != nil {
			n.t.Logf("netns cleanup: %v", err)
		}
		// Deleting the namespace deletes eth0 and so its peer; this only
		// matters when the namespace was never created.
		if linkExists(h.Veth) {
			_ = runIP("link", "del", h.Veth)
		}
	}
	if linkExists(n.Bridge) {
		if err := runIP("link", "del", n.Bridge); err != nil {
			n.t.Logf("netns cleanup: %v", err)
		}
	}
	if n.lock != nil {
		n.lock.Close() // releases the flock
	}
}

// ansiEscape matches the colour codes of console loggers.
var ansiEscape = regexp.MustCompile("\x1b\\[[0-9;]*m")

// DumpLogs prints the tail of every process log through t.Log. The
// environment variable WH_NETNS_LOG_BYTES sets how much of each log is
// printed (default 8192, 0 for all of it).
func (n *Net) DumpLogs() {
	limit := 8192
	if v, err := strconv.Atoi(os.Getenv("WH_NETNS_LOG_BYTES")); err == nil && v >= 0 {
		limit = v
	}
	n.mu.Lock()
	procs := append([]*Proc(nil), n.procs...)
	n.mu.Unlock()
	seen := map[string]bool{}
	for _, p := range procs {
		if seen[p.LogPath] {
			continue
		}
		seen[p.LogPath] = true
		b, err := os.ReadFile(p.LogPath)
		if err != nil {
			n.t.Logf("log %s: %v", p.LogPath, err)
			continue
		}
		b = ansiEscape.ReplaceAll(b, nil)
		cut := ""
		if limit > 0 && len(b) > limit {
			b = b[len(b)-limit:]
			cut = " (last " + strconv.Itoa(limit) + " bytes)"
		}
		n.t.Logf("===== %s%s =====\n%s", filepath.Base(p.LogPath), cut, b)
	}
}

// LinkDown cuts the host off the bridge (its eth0 stays up, so the host
// itself notices nothing until its peers stop answering).
func (h *Host) LinkDown() error { return runIP("link", "set", h.Veth, "down") }

// LinkUp reconnects a host cut off with LinkDown.
func (h *Host) LinkUp() error { return runIP("link", "set", h.Veth, "up") }

// Addr is the host's address with port, such as "10.77.0.11:2049".
func (h *Host) Addr(port int) string { return h.IP + ":" + strconv.Itoa(port) }

// Command returns a command that runs argv inside the host's namespace.
func (h *Host) Command(ctx context.Context, argv ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", h.NS}, argv...)...)
}

// Result is the outcome of a command run to completion with Run.
type Result struct {
	Stdout, Stderr string
	// ExitCode is the command's exit code, or -1 when it did not exit
	// normally (killed at the deadline, say, or not started).
	ExitCode int
	// Err is the error from running the command, nil on exit code 0.
	Err error
}

// Run runs argv inside the host's namespace until it exits or ctx ends,
// and returns its output. The command line and output are also appended
// to the host's log under the given name, unless name is empty (for
// commands polled in a loop, whose last output the caller reports).
func (h *Host) Run(ctx context.Context, name string, argv ...string) Result {
	var stdout, stderr bytes.Buffer
	cmd := h.Command(ctx, argv...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	r := Result{Stdout: stdout.String(), Stderr: stderr.String(), ExitCode: -1, Err: err}
	var ee *exec.ExitError
	switch {
	case err == nil:
		r.ExitCode = 0
	case errors.As(err, &ee):
		r.ExitCode = ee.ExitCode()
	}
	if name == "" {
		return r
	}
	path := h.logPath(name)
	if f, ferr := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); ferr == nil {
		fmt.Fprintf(f, "$ %s\n--- stdout\n%s--- stderr\n%s--- exit %d (%v)\n", strings.Join(argv, " "), r.Stdout, r.Stderr, r.ExitCode, err)
		f.Close()
		h.net.track(&Proc{Host: h, Name: name, LogPath: path, done: closedChan()})
	}
	return r
}

func closedChan() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}

func (h *Host) logPath(name string) string {
	return filepath.Join(h.net.logDir, fmt.Sprintf("n%d-%s.log", h.Index, name))
}

func (n *Net) track(p *Proc) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.procs = append(n.procs, p)
}

// Start starts argv inside the host's namespace in the background, its
// stdout and stderr appended to a log named after the host and name.
// The process is killed when the test ends, if it still runs.
func (h *Host) Start(name string, argv ...string) (*Proc, error) {
	path := h.logPath(name)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(f, "$ %s\n", strings.Join(argv, " "))
	// `ip netns exec` execs argv in place, so the PID is argv's own and
	// SIGKILL reaches it directly.
	cmd := exec.Command("ip", append([]string{"netns", "exec", h.NS}, argv...)...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, err
	}
	p := &Proc{Host: h, Name: name, LogPath: path, cmd: cmd, done: make(chan struct{})}
	h.net.track(p)
	go func() {
		p.err = cmd.Wait()
		fmt.Fprintf(f, "--- exited: %v\n", p.err)
		f.Close()
		close(p.done)
	}()
	return p, nil
}

// Proc is a process started in a host with Start.
type Proc struct {
	Host *Host
	Name string
	// LogPath is the file holding the process's output.
	LogPath string

	cmd  *exec.Cmd
	done chan struct{}
	err  error // valid once done is closed
}

// Pid is the process's ID.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Signal sends sig to the process.
func (p *Proc) Signal(sig syscall.Signal) error { return p.cmd.Process.Signal(sig) }

// Kill9 kills the process with SIGKILL and waits until it is gone.
func (p *Proc) Kill9() {
	if p.cmd == nil {
		return
	}
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// Wait waits until the process exits or ctx ends, and returns its exit
// code (-1 when it was killed by a signal).
func (p *Proc) Wait(ctx context.Context) (int, error) {
	select {
	case <-p.done:
	case <-ctx.Done():
		return -1, ctx.Err()
	}
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		return ee.ExitCode(), nil
	}
	return 0, p.err
}

// Exited reports whether the process has exited, and how.
func (p *Proc) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// Output is what the process wrote so far.
func (p *Proc) Output() string {
	b, err := os.ReadFile(p.LogPath)
	if err != nil {
		return fmt.Sprintf("(log %s: %v)", p.LogPath, err)
	}
	return string(b)
}
