package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wormhole-fs/wormhole/tests/netns"
	"github.com/wormhole-fs/wormhole/tests/testnode"
)

// Two guests lock files on one Wormhole node through the kernel's NLM client
// (TestKernelLocks). The node runs in a network namespace of its own with the
// standard ports, NFS on 2049 and the portmapper on 111: the kernel finds the
// server's lock manager only through port 111, which rpcbind often holds on the
// host. Both qemus run in that namespace too, so their 10.0.2.2 is its loopback.
// Each guest runs Debian's rpcbind and rpc.statd (Config.RPCDaemons), with
// statd's state directory on the guest's 9p share so that it outlives a killed
// guest.

var (
	lockGuestOnce sync.Once
	lockGuest     *Guest
	lockGuestErr  error
)

// requireLockGuest returns the guest whose image holds the RPC daemons, built
// once per test process, and the guest test binary. It skips the test when the
// daemons or qemu are missing, unless WH_E2E_REQUIRE=1.
func requireLockGuest(t *testing.T) (*Guest, string) {
	t.Helper()
	_, bin := requireGuest(t)
	cfg := Config{Kernel: os.Getenv("WH_E2E_KERNEL"), RPCDaemons: true}
	if err := Available(cfg); err != nil {
		if os.Getenv("WH_E2E_REQUIRE") == "1" {
			t.Fatalf("lock guest unavailable and WH_E2E_REQUIRE=1: %v", err)
		}
		t.Skipf("lock guest unavailable (set WH_E2E_REQUIRE=1 to fail instead): %v", err)
	}
	lockGuestOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		lockGuest, lockGuestErr = NewGuest(ctx, cfg)
	})
	if lockGuestErr != nil {
		t.Fatalf("prepare lock guest: %v", lockGuestErr)
	}
	return lockGuest, bin
}

// lockGuestSetup is the /init step of a lock guest: its own host name (the
// NLM caller_name, which tells the two guests apart: the server sees both
// coming from its loopback), then rpcbind, sm-notify and statd, statd's state
// kept on the share. sm-notify finds the servers this guest held locks on
// before it was killed and tells them it rebooted.
func lockGuestSetup(hostname string) string {
	return fmt.Sprintf(`hostname %[1]s
printf '127.0.0.1 localhost\n10.0.2.15 %[1]s\n' >/etc/hosts
st=/share/statd
mkdir -p $st/sm $st/sm.bak
rpcbind || fatal "rpcbind did not start"
sm-notify -P $st || fatal "sm-notify failed"
rpc.statd --no-notify -P $st || fatal "rpc.statd did not start"
`, hostname)
}

// lockMountOptions mount through the server's portmapper, with locking. No
// attribute caching and no cached negative lookups: the guests poll for each
// other's marker files.
const lockMountOptions = "vers=3,proto=tcp,mountproto=tcp,actimeo=0,lookupcache=positive"

// errKilled is the cause given when the test kills guest 1.
var errKilled = errors.New("killed by the test while holding a lock")

// guestRun is the outcome of Guest.Run in a goroutine.
type guestRun struct {
	res Result
	err error
}

// startGuest runs g in the background and delivers its outcome on the channel.
func startGuest(ctx context.Context, g *Guest, opts Options) <-chan guestRun {
	ch := make(chan guestRun, 1)
	go func() {
		res, err := g.Run(ctx, opts)
		ch <- guestRun{res, err}
	}()
	return ch
}

// reportGuest fails the test unless the guest ran test and it passed.
func reportGuest(t *testing.T, name, test string, r guestRun) {
	t.Helper()
	t.Logf("%s: %s\n--- %s test output ---\n%s", name, r.res.Summary(), name, r.res.TestOutput)
	switch {
	case r.err != nil:
		t.Errorf("%s: %v\n--- console (tail) ---\n%s", name, r.err, r.res.ConsoleTail(60))
	case r.res.MountExit != 0:
		t.Errorf("%s: mount failed with status %d: %s\n--- console (tail) ---\n%s",
			name, r.res.MountExit, strings.TrimSpace(r.res.MountOutput), r.res.ConsoleTail(60))
	case r.res.TestExit != 0 || !strings.Contains(r.res.TestOutput, "--- PASS: "+test):
		t.Errorf("%s: %s failed (exit %d)\n--- console (tail) ---\n%s", name, test, r.res.TestExit, r.res.ConsoleTail(30))
	}
}

// waitShareFile waits until a guest wrote file into its share, or one of the
// guests (named by the map's keys) stopped, or ctx ended. A guest that stopped
// is returned with its outcome.
func waitShareFile(ctx context.Context, path string, guests map[string]<-chan guestRun) (string, *guestRun, error) {
	tick := time.NewTicker(250 * time.Millisecond) // poll interval: the guest writes the file
	defer tick.Stop()
	for {
		if _, err := os.Stat(path); err == nil {
			return "", nil, nil
		}
		for name, g := range guests {
			select {
			case r := <-g:
				return name, &r, fmt.Errorf("%s stopped before %s appeared", name, filepath.Base(path))
			default:
			}
		}
		select {
		case <-ctx.Done():
			return "", nil, fmt.Errorf("waiting for %s: %w", path, ctx.Err())
		case <-tick.C:
		}
	}
}

// TestKernelLocks boots two guests mounting one node without `nolock`. Guest 1
// takes an fcntl write lock on a byte range and a flock; guest 2 is refused
// both (EAGAIN, EWOULDBLOCK), is granted a range beside them, then waits with
// F_SETLKW and a blocking flock, granted once guest 1 releases (within 90 s;
// the Linux client polls every 30 s). Then guest 1 takes another lock and is
// killed (qemu killed); guest 2 waits for that lock, which the server releases
// when guest 1 boots again and its sm-notify sends SM_NOTIFY. The guest side is
// tests/guest/locks_test.go.
func TestKernelLocks(t *testing.T) {
	bin := os.Getenv("WH_BIN")
	if bin == "" {
		t.Skip("WH_BIN is unset: point it at a built wormhole binary")
	}
	g, testBin := requireLockGuest(t)
	nt := netns.New(t, 1)
	h := nt.Host(1)
	t.Cleanup(func() {
		if t.Failed() {
			nt.DumpLogs()
		}
	})

	cfg := filepath.Join(t.TempDir(), "wormhole.yaml")
	if err := os.WriteFile(cfg, []byte("nfs:\n  portmap_addr: 0.0.0.0:111\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	node, err := h.Start("wormhole", bin, "serve", "--data-dir", t.TempDir(), "--nfs-addr", "0.0.0.0:2049",
		"--admin-addr", "127.0.0.1:9470", "--config", cfg)
	if err != nil {
		t.Fatalf("start wormhole: %v", err)
	}
	t.Cleanup(node.Kill9)
	readyCtx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if err := testnode.PingUntil(readyCtx, h.Addr(2049)); err != nil {
		t.Fatalf("wormhole not serving in its namespace: %v\n%s", err, node.Output())
	}

	ctx := t.Context()
	if dl, ok := t.Deadline(); ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, dl.Add(-30*time.Second))
		defer cancel()
	}
	share1, share2 := t.TempDir(), t.TempDir()
	opts := func(host, test, share string) Options {
		o := Options{
			TestBinary:   testBin,
			MountOptions: lockMountOptions,
			TestRun:      "^" + test + "$",
			Setup:        lockGuestSetup(host),
			NetNS:        h.NS,
			ShareDir:     share,
			Env:          map[string]string{"WH_LOCK_DIR": "locks", "WH_LOCK_CRASH": "1", "WH_LOCK_SHARE": "/share"},
			Timeout:      12 * time.Minute,
		}
		if os.Getenv("WH_E2E_CONSOLE") == "1" {
			o.Console = t.Output()
		}
		return o
	}

	start := time.Now()
	ctx1, kill1 := context.WithCancelCause(ctx)
	defer kill1(nil)
	guest1 := startGuest(ctx1, g, opts("guest1", "TestLockHolder", share1))
	guest2 := startGuest(ctx, g, opts("guest2", "TestLockContender", share2))

	// Guest 1 holds its last lock and guest 2 was refused it: kill guest 1.
	for _, f := range []string{filepath.Join(share1, "mark-holder-crash-locked"), filepath.Join(share2, "mark-contender-saw-crash-conflict")} {
		name, stopped, err := waitShareFile(ctx, f, map[string]<-chan guestRun{"guest 1": guest1, "guest 2": guest2})
		if err != nil {
			if stopped != nil {
				reportGuest(t, name, "TestLock", *stopped)
			}
			t.Fatalf("before killing guest 1: %v", err)
		}
	}
	t.Logf("two-guest exchange done after %v; killing guest 1", time.Since(start).Round(time.Second))
	kill1(errKilled)
	r1 := <-guest1
	if !errors.Is(r1.err, errKilled) {
		t.Errorf("guest 1 ended on its own before being killed: %v (%s)", r1.err, r1.res.Summary())
	}
	t.Logf("guest 1, first boot (killed): %s\n--- output ---\n%s", r1.res.Summary(), r1.res.TestOutput)
	for _, v := range testVerdicts(r1.res.TestOutput) {
		if strings.Contains(v, "--- FAIL") {
			t.Errorf("guest 1 failed before being killed: %s", strings.TrimSpace(v))
		}
	}

	// Booted again, guest 1 tells the server it restarted (sm-notify); the
	// server drops its locks and guest 2's F_SETLKW is granted.
	reboot := time.Now()
	again := startGuest(ctx, g, opts("guest1", "TestLockAfterReboot", share1))
	r2 := <-guest2
	t.Logf("guest 2 finished %v after guest 1 was killed", time.Since(reboot).Round(time.Second))
	reportGuest(t, "guest 2", "TestLockContender", r2)
	reportGuest(t, "guest 1 (rebooted)", "TestLockAfterReboot", <-again)
	// The server says why it released guest 1's locks.
	var notes []string
	for line := range strings.Lines(node.Output()) {
		if strings.Contains(line, "nlm:") {
			notes = append(notes, strings.TrimSpace(line))
		}
	}
	t.Logf("server lock log:\n%s", strings.Join(notes, "\n"))
	if !strings.Contains(node.Output(), "SM_NOTIFY") {
		t.Errorf("the server logged no release on SM_NOTIFY")
	}
	t.Logf("TestKernelLocks: %v in all", time.Since(start).Round(time.Second))
	for _, f := range figures(r2.res.TestOutput) {
		t.Log(f)
	}
}
