// Package testnode starts real Wormhole nodes for integration tests: the
// built binary as a child process (for kill -9 and restart cases) or the
// appliance in process, and mounts them with go-nfs-client.
package testnode

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	nfsc "github.com/willscott/go-nfs-client/nfs"
	"github.com/willscott/go-nfs-client/nfs/rpc"
	"github.com/wormhole-fs/wormhole/tests/freeport"
)

// BuildBinary builds cmd/wormhole into dir and returns its path. It uses
// $WH_BIN instead when set.
func BuildBinary(ctx context.Context, dir string) (string, error) {
	if p := os.Getenv("WH_BIN"); p != "" {
		return p, nil
	}
	out := filepath.Join(dir, "wormhole")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "github.com/wormhole-fs/wormhole/cmd/wormhole")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build: %w\n%s", err, b)
	}
	return out, nil
}

// FreeAddr returns a loopback address with a port free right now.
func FreeAddr(t testing.TB) string {
	t.Helper()
	a, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func freePort() (string, error) { return freeport.Addr() }

// Process is a wormhole binary running as a child process.
type Process struct {
	Addr      string
	AdminAddr string
	DataDir   string
	cmd       *exec.Cmd
	stderr    *syncBuffer
	done      chan struct{}
	waitErr   error
}

// Start runs `wormhole serve` with the given data dir and address plus
// extra arguments. It does not wait for the node to serve.
func Start(bin, dataDir, addr string, extra ...string) (*Process, error) {
	admin, err := freePort()
	if err != nil {
		return nil, err
	}
	args := append([]string{"serve", "--data-dir", dataDir, "--nfs-addr", addr, "--admin-addr", admin}, extra...)
	p := &Process{Addr: addr, AdminAddr: admin, DataDir: dataDir, stderr: &syncBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Stdout = p.stderr
	p.cmd.Stderr = p.stderr
	if err := p.cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		p.waitErr = p.cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// WaitReady waits until the node answers an NFS NULL call (the listener
// is bound before the node has started, so an open port is not enough),
// the process exits, or ctx ends.
func (p *Process) WaitReady(ctx context.Context) error {
	for {
		if Ping(p.Addr, time.Second) == nil {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("wormhole exited before serving: %v\n%s", p.waitErr, p.Output())
		case <-ctx.Done():
			return fmt.Errorf("wormhole not serving on %s: %w\n%s", p.Addr, ctx.Err(), p.Output())
		case <-time.After(50 * time.Millisecond): // poll interval, not a wait for an event
		}
	}
}

// PingUntil sends NFSv3 NULL calls to addr until one is answered or ctx
// ends, and returns the last error then. Use it where a node may refuse
// connections for a while by design (its connection limit reached while
// closed connections are reaped, say) but must answer again.
func PingUntil(ctx context.Context, addr string) error {
	for {
		err := Ping(addr, time.Second)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last attempt: %v)", ctx.Err(), err)
		case <-time.After(50 * time.Millisecond): // poll interval, not a wait for an event
		}
	}
}

// Ping sends an NFSv3 NULL call to addr and waits up to timeout for the
// reply.
func Ping(addr string, timeout time.Duration) error {
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
	call := []uint32{0x80000000 | 40, 1, 0, 2, 100003, 3, 0, 0, 0, 0, 0}
	buf := make([]byte, 0, 4*len(call))
	for _, v := range call {
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

// Wait waits for the process to exit and returns its exit code.
func (p *Process) Wait(ctx context.Context) (int, error) {
	select {
	case <-p.done:
	case <-ctx.Done():
		return -1, ctx.Err()
	}
	var ee *exec.ExitError
	if errors.As(p.waitErr, &ee) {
		return ee.ExitCode(), nil
	}
	if p.waitErr != nil {
		return -1, p.waitErr
	}
	return 0, nil
}

// Port is the TCP port the node serves NFS on.
func (p *Process) Port() int {
	_, port, _ := net.SplitHostPort(p.Addr)
	n, _ := strconv.Atoi(port)
	return n
}

// Signal sends sig to the process.
func (p *Process) Signal(sig syscall.Signal) error { return p.cmd.Process.Signal(sig) }

// Kill9 kills the process with SIGKILL and waits for it.
func (p *Process) Kill9() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// Output is what the process wrote to stdout and stderr so far.
func (p *Process) Output() string { return p.stderr.String() }

// Mount mounts the export at addr with go-nfs-client as the given user.
// Close the returned mount when done.
func Mount(addr string, uid, gid uint32) (*nfsc.Target, func(), error) {
	// go-nfs-client binds a random local port in 49152-65535 and fails
	// when that one is taken: try another.
	var c *rpc.Client
	var err error
	for range 20 {
		if c, err = rpc.DialTCP("tcp", addr, false); !errors.Is(err, syscall.EADDRINUSE) {
			break
		}
	}
	if err != nil {
		return nil, nil, err
	}
	m := &nfsc.Mount{Client: c}
	target, err := m.Mount("/", rpc.NewAuthUnix("testclient", uid, gid).Auth())
	if err != nil {
		c.Close()
		return nil, nil, err
	}
	return target, func() {
		_ = m.Unmount()
		// The target shares c: one Close. go-nfs-client's receive loop
		// closes the reply channels of calls in flight when the
		// connection breaks, without forgetting them, and Close closes
		// them again: closing a broken mount can panic inside the
		// library, which must not take the test binary down.
		defer func() { _ = recover() }()
		c.Close()
	}, nil
}

// WriteFile writes data at off in WRITE requests of at most 64 KiB
// (go-nfs-client otherwise sends the whole buffer in one request).
func WriteFile(f *nfsc.File, data []byte) error {
	const step = 64 << 10
	for len(data) > 0 {
		n := min(step, len(data))
		if _, err := f.Write(data[:n]); err != nil {
			return err
		}
		data = data[n:]
	}
	return nil
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// RunWithBinary is the TestMain of packages that run the wormhole binary:
// it builds it (BuildBinary, into a temporary directory), stores its path
// in *bin, runs the tests and removes the build. It does not return.
func RunWithBinary(m *testing.M, bin *string) {
	dir, err := os.MkdirTemp("", "wh-bin-")
	if err != nil {
		panic(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	*bin, err = BuildBinary(ctx, dir)
	cancel()
	if err != nil {
		os.RemoveAll(dir)
		panic(err)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}
