package netns

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The test binary doubles as the program run inside the namespaces:
// WH_NETNS_HELPER=listen:ADDR serves a greeting on ADDR until killed,
// WH_NETNS_HELPER=dial:ADDR prints the greeting read from ADDR.
func TestMain(m *testing.M) {
	mode, addr, _ := strings.Cut(os.Getenv("WH_NETNS_HELPER"), ":")
	switch mode {
	case "listen":
		l, err := net.Listen("tcp", addr)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		for {
			c, err := l.Accept()
			if err != nil {
				os.Exit(2)
			}
			fmt.Fprintf(c, "hello from %s\n", addr)
			c.Close()
		}
	case "dial":
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		b, err := io.ReadAll(c)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Stdout.Write(b)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func greet(addr string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	b, err := io.ReadAll(c)
	return string(b), err
}

// waitGreet dials addr until it answers or the deadline passes.
func waitGreet(t *testing.T, addr string) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s, err := greet(addr)
		if err == nil {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s does not answer: %v", addr, err)
		}
		time.Sleep(50 * time.Millisecond) // poll interval, not a wait for an event
	}
}

func TestHostsReachEachOtherAndTheTest(t *testing.T) {
	n := New(t, 2)
	h1, h2 := n.Host(1), n.Host(2)
	addr := h1.Addr(5000)
	if err := os.Setenv("WH_NETNS_HELPER", "listen:"+addr); err != nil {
		t.Fatal(err)
	}
	p, err := h1.Start("listener", os.Args[0])
	os.Unsetenv("WH_NETNS_HELPER")
	if err != nil {
		t.Fatal(err)
	}
	if s := waitGreet(t, addr); !strings.Contains(s, addr) {
		t.Fatalf("greeting %q", s)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dial := func(h *Host, addr string) Result {
		cmd := []string{"env", "WH_NETNS_HELPER=dial:" + addr, os.Args[0]}
		return h.Run(ctx, "dial", cmd...)
	}
	if r := dial(h2, addr); r.Err != nil || !strings.Contains(r.Stdout, addr) {
		t.Fatalf("host 2 to host 1: %v %q %q", r.Err, r.Stdout, r.Stderr)
	}
	// Each host has its own loopback: nothing listens on host 2's.
	if r := dial(h2, "127.0.0.1:5000"); r.Err == nil || r.ExitCode != 1 {
		t.Fatalf("host 2's loopback answered: %v %q", r.Err, r.Stdout)
	}

	if err := h1.LinkDown(); err != nil {
		t.Fatal(err)
	}
	if _, err := greet(addr); err == nil {
		t.Fatal("host 1 answers with its link down")
	}
	if err := h1.LinkUp(); err != nil {
		t.Fatal(err)
	}
	waitGreet(t, addr)

	p.Kill9()
	if exited, _ := p.Exited(); !exited {
		t.Fatal("Kill9 returned before the process exited")
	}
	if _, err := greet(addr); err == nil {
		t.Fatal("killed listener still answers")
	}
	if !strings.Contains(p.Output(), "exited") {
		t.Fatalf("log lacks the exit: %q", p.Output())
	}
}

// Runs after the test above: its namespaces, links and processes are gone.
func TestCleanupLeavesNothing(t *testing.T) {
	if err := Available(); err != nil {
		t.Skip(err)
	}
	mine := strconv.FormatInt(int64(os.Getpid()), 36) + "_"
	for _, args := range [][]string{{"netns", "list"}, {"-o", "link", "show"}} {
		out, err := ipOutput(args...)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range []string{"wh-" + mine, "whb" + mine, "whv" + mine} {
			if strings.Contains(out, p) {
				t.Errorf("left over after the test: %s in\n%s", p, out)
			}
		}
	}
}

func TestOwnerPID(t *testing.T) {
	for _, tc := range []struct {
		name string
		pid  int
		ok   bool
	}{
		{"wh-2hwcg_1_3", 4194304, true},
		{"whb2hwcg_1", 4194304, true},
		{"whv2hwcg_a_12", 4194304, true},
		{"whvx_1_1", 33, true},
		{"wh-2hwcg", 0, false},
		{"eth0", 0, false},
		{"whatever", 0, false},
	} {
		pid, ok := ownerPID(tc.name)
		if pid != tc.pid || ok != tc.ok {
			t.Errorf("ownerPID(%q) = %d, %v; want %d, %v", tc.name, pid, ok, tc.pid, tc.ok)
		}
	}
}

// A leftover of a process that no longer exists is removed by the next
// New; one of a live process is kept.
func TestLeftoversOfDeadRunsRemoved(t *testing.T) {
	if err := Available(); err != nil {
		t.Skip(err)
	}
	// PID 4194304 is above the kernel's maximum, so never alive.
	dead := "wh-2hwcg_1_1"
	if err := runIP("netns", "add", dead); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = runIP("netns", "del", dead) })
	deadLink := "whb2hwcg_1"
	if err := runIP("link", "add", deadLink, "type", "bridge"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if linkExists(deadLink) {
			_ = runIP("link", "del", deadLink)
		}
	})
	New(t, 1)
	out, err := ipOutput("netns", "list")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out, dead) {
		t.Errorf("leftover namespace %s kept", dead)
	}
	if linkExists(deadLink) {
		t.Errorf("leftover bridge %s kept", deadLink)
	}
}
