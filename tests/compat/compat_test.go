// Package compat runs independent NFS client programs against a real
// Wormhole node (appliance in process, loopback sockets): Debian's
// libnfs-utils, go-nfs-client's portmapper client, and rpcinfo/showmount
// when they are installed.
//
// A missing client program skips its test, unless WH_E2E_REQUIRE=1 makes
// it a failure (CI installs them with tests/install-deps.sh).
// WH_TEST_PORT111=1 also runs the portmapper on 127.0.0.1:111 and queries
// it the way clients without port options do; it needs root and a free
// port 111 (no rpcbind running).
package compat

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wormhole-fs/wormhole/tests/testnode"

	"github.com/willscott/go-nfs-client/nfs/rpc"

	"github.com/wormhole-fs/wormhole/appliance"
)

// node is an in-process node serving until the test ends.
type node struct {
	nfs     *net.TCPAddr
	portmap *net.TCPAddr // nil when disabled
}

func startNode(t *testing.T, portmapAddr string) *node {
	t.Helper()
	n := testnode.InProcess(t, "", func(cfg *appliance.Config) {
		cfg.NFS.PortmapAddr = portmapAddr
		cfg.Chunks.Size = 64 << 10
	})
	nd := &node{nfs: n.NFSAddr().(*net.TCPAddr)}
	if a := n.PortmapAddr(); a != nil {
		nd.portmap = a.(*net.TCPAddr)
	}
	return nd
}

// tool finds a client program, skipping the test when it is missing
// unless WH_E2E_REQUIRE=1.
func tool(t *testing.T, name string, dirs ...string) string {
	t.Helper()
	if p := findTool(name, dirs...); p != "" {
		return p
	}
	if os.Getenv("WH_E2E_REQUIRE") == "1" {
		t.Fatalf("%s not installed (run tests/install-deps.sh)", name)
	}
	t.Skipf("%s not installed (run tests/install-deps.sh; WH_E2E_REQUIRE=1 makes this a failure)", name)
	return ""
}

// run runs a client program with a deadline and returns its output.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", filepath.Base(name), strings.Join(args, " "), err, out)
	}
	return string(out)
}

// libnfsURL is a libnfs URL for path on n. libnfs takes the export from
// the URL path up to the last slash, and refuses an empty one, so a file
// in the root export "/" is written //name.
func libnfsURL(n *node, path string) string {
	return fmt.Sprintf("nfs://127.0.0.1%s?version=3&nfsport=%d&mountport=%d", path, n.nfs.Port, n.nfs.Port)
}

func TestLibnfs(t *testing.T) {
	nfsLs := tool(t, "nfs-ls")
	nfsCp := tool(t, "nfs-cp")
	n := startNode(t, "")

	// An empty root lists (this failed against go-nfs's MOUNT).
	if out := run(t, nfsLs, libnfsURL(n, "/")); strings.TrimSpace(out) != "" {
		t.Errorf("empty root lists %q", out)
	}

	dir := t.TempDir()
	data := make([]byte, 1<<20+17) // crosses chunks and libnfs's WRITE size
	r := rand.New(rand.NewPCG(1, 2))
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	up := filepath.Join(dir, "up.bin")
	if err := os.WriteFile(up, data, 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, nfsCp, up, libnfsURL(n, "//data.bin"))

	if out := run(t, nfsLs, libnfsURL(n, "/")); !strings.Contains(out, "data.bin") || !strings.Contains(out, fmt.Sprint(len(data))) {
		t.Errorf("listing after upload: %q", out)
	}

	down := filepath.Join(dir, "down.bin")
	run(t, nfsCp, libnfsURL(n, "//data.bin"), down)
	got, err := os.ReadFile(down)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("read back %d bytes that differ from the %d written", len(got), len(data))
	}
}

// getport asks a portmapper at addr with go-nfs-client (whose calls have
// no deadline of their own).
func getport(t *testing.T, pm *rpc.Portmapper, m rpc.Mapping) int {
	t.Helper()
	type result struct {
		port int
		err  error
	}
	done := make(chan result, 1)
	go func() {
		p, err := pm.Getport(m)
		done <- result{p, err}
	}()
	select {
	case r := <-done:
		if r.err != nil {
			t.Fatalf("getport %+v: %v", m, r.err)
		}
		return r.port
	case <-time.After(10 * time.Second):
		t.Fatalf("getport %+v: timed out", m)
		return 0
	}
}

func checkPortmapper(t *testing.T, pm *rpc.Portmapper, nfsPort int) {
	t.Helper()
	// NFS, MOUNT, the lock manager (NLM v4) and status monitor (NSM v1)
	// are all served on the NFS port.
	for _, m := range []rpc.Mapping{
		{Prog: 100003, Vers: 3, Prot: rpc.IPProtoTCP},
		{Prog: 100005, Vers: 3, Prot: rpc.IPProtoTCP},
		{Prog: 100005, Vers: 3, Prot: rpc.IPProtoUDP},
		{Prog: 100021, Vers: 4, Prot: rpc.IPProtoTCP},
		{Prog: 100021, Vers: 4, Prot: rpc.IPProtoUDP},
		{Prog: 100024, Vers: 1, Prot: rpc.IPProtoTCP},
	} {
		if got := getport(t, pm, m); got != nfsPort {
			t.Errorf("getport %+v = %d, want %d", m, got, nfsPort)
		}
	}
	// A program this node does not serve is not registered.
	if got := getport(t, pm, rpc.Mapping{Prog: 100227, Vers: 3, Prot: rpc.IPProtoTCP}); got != 0 {
		t.Errorf("NFS_ACL registered at %d", got)
	}
}

func TestPortmapper(t *testing.T) {
	n := startNode(t, "127.0.0.1:0")
	for _, addr := range []string{n.portmap.String(), n.nfs.String()} {
		// go-nfs-client picks its local port at random: retry when it
		// picks one that is taken.
		c, err := rpc.DialTCP("tcp", addr, false)
		for i := 0; i < 20 && errors.Is(err, syscall.EADDRINUSE); i++ {
			c, err = rpc.DialTCP("tcp", addr, false)
		}
		if err != nil {
			t.Fatal(err)
		}
		checkPortmapper(t, &rpc.Portmapper{Client: c}, n.nfs.Port)
		c.Close()
	}
}

// sbin are where Debian puts rpcinfo and showmount.
var sbin = []string{"/usr/sbin", "/sbin"}

// TestPort111 is what a client without port options does: ask the
// portmapper on port 111, then MOUNT and NFS where it says.
func TestPort111(t *testing.T) {
	if os.Getenv("WH_TEST_PORT111") != "1" {
		t.Skip("set WH_TEST_PORT111=1 to run the portmapper on 127.0.0.1:111 (root, no rpcbind)")
	}
	n := startNode(t, "127.0.0.1:111")
	pm, err := rpc.DialPortmapper("tcp", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	defer pm.Close()
	checkPortmapper(t, pm, n.nfs.Port)

	if rpcinfo := findTool("rpcinfo", sbin...); rpcinfo != "" {
		out := run(t, rpcinfo, "-p", "127.0.0.1")
		for _, want := range [][]string{
			{"100000", "4", "tcp", "111"},
			{"100003", "3", "tcp", fmt.Sprint(n.nfs.Port)},
			{"100005", "3", "udp", fmt.Sprint(n.nfs.Port)},
			{"100005", "1", "tcp", fmt.Sprint(n.nfs.Port)},
		} {
			if !hasMapping(out, want) {
				t.Errorf("rpcinfo -p lacks %v:\n%s", want, out)
			}
		}
		// NULL pings, at the ports the portmapper gives (rpcinfo has no
		// way to skip the portmapper).
		for _, args := range [][]string{
			{"-t", "127.0.0.1", "100003", "3"},
			{"-t", "127.0.0.1", "100005", "3"},
			{"-u", "127.0.0.1", "100005", "3"},
			{"-u", "127.0.0.1", "100005", "1"},
		} {
			if out := run(t, rpcinfo, args...); !strings.Contains(out, "ready and waiting") {
				t.Errorf("rpcinfo %v: %s", args, out)
			}
		}
		// A version we lack: the server's PROG_MISMATCH says 3 to 3.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		mout, _ := exec.CommandContext(ctx, rpcinfo, "-t", "127.0.0.1", "100003", "4").CombinedOutput()
		if !strings.Contains(string(mout), "low version = 3, high version = 3") {
			t.Errorf("rpcinfo -t nfs 4: %s", mout)
		}
	}
	if showmount := findTool("showmount", sbin...); showmount != "" {
		if out := run(t, showmount, "-e", "127.0.0.1"); !strings.Contains(out, "/ *") {
			t.Errorf("showmount -e: %s", out)
		}
	}
}

// hasMapping reports whether rpcinfo -p output has a line starting with
// the fields of m (program, version, protocol, port).
func hasMapping(out string, m []string) bool {
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 4 && f[0] == m[0] && f[1] == m[1] && f[2] == m[2] && f[3] == m[3] {
			return true
		}
	}
	return false
}

// findTool is the path of a program, or "".
func findTool(name string, dirs ...string) string {
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, d := range dirs {
		if p := filepath.Join(d, name); fileExists(p) {
			return p
		}
	}
	return ""
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
