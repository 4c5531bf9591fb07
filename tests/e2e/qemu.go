// Package e2e runs Wormhole against the Linux kernel's own NFSv3 client.
//
// The host kernel has no NFS client, so the harness boots a Debian kernel under qemu
// (software emulation, -accel tcg) with a small cached initramfs: static busybox, the
// virtio, 9p and NFS modules, and an /init that brings up user-mode networking,
// mounts a 9p share from the host, mounts the server with the kernel NFS client, runs
// the Go test binary of package tests/guest against the mount and powers off. Inside
// the guest the host's loopback is 10.0.2.2, so a server listening on the host's
// 127.0.0.1:PORT is mounted from 10.0.2.2:PORT.
//
// One boot runs a whole guest test suite: booting costs about 15 s of emulated CPU.
//
// Entry points: NewGuest prepares the kernel and initramfs, Guest.Run (or Run) boots
// one guest, BuildGuestTests compiles tests/guest. The servers under test are run
// with tests/testnode.
//
// The harness only imports the standard library; the tests add go-nfs for an
// in-process reference server.
package e2e

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Config selects what a Guest is built from. Zero values pick the defaults.
type Config struct {
	// QEMU is the emulator binary (default qemu-system-x86_64 from PATH).
	QEMU string
	// Kernel is the kernel image (default the newest /boot/vmlinuz-* whose modules
	// are installed). Its version, taken from the file name after "vmlinuz-", selects
	// /lib/modules/VERSION.
	Kernel string
	// Busybox is a statically linked busybox (default /bin/busybox).
	Busybox string
	// CacheDir holds built initramfs images, keyed by kernel version and content
	// (default $WH_E2E_CACHE, else .cache in the current directory, which for
	// "go test" is tests/e2e).
	CacheDir string
	// RPCDaemons adds the host's rpcbind, rpc.statd and sm-notify, with their
	// shared libraries and the files they read, to the initramfs (see
	// RPCDaemonsAvailable). A guest needs them to mount without `nolock`: the
	// kernel's lockd registers with the local portmapper and asks the local statd
	// to monitor each server. The /init does not start them; Options.Setup does.
	RPCDaemons bool
}

// Guest is a prepared guest: an emulator, a kernel and an initramfs. It is safe to
// Run several guests from one Guest at once.
type Guest struct {
	QEMU          string // emulator binary
	Kernel        string // kernel image
	KernelVersion string // version of Kernel, as in /lib/modules
	Initrd        string // initramfs built for Kernel
}

// Available reports why a guest cannot be booted on this machine, or nil if the
// emulator and a kernel with modules are present. It does not build anything.
func Available(cfg Config) error {
	if _, err := exec.LookPath(cmp.Or(cfg.QEMU, "qemu-system-x86_64")); err != nil {
		return fmt.Errorf("no qemu (apt-get install qemu-system-x86): %w", err)
	}
	if cfg.RPCDaemons {
		if err := RPCDaemonsAvailable(); err != nil {
			return err
		}
	}
	if cfg.Kernel != "" {
		_, err := os.Stat(cfg.Kernel)
		return err
	}
	_, _, err := latestKernel()
	return err
}

// NewGuest finds the emulator and kernel and builds (or reuses from the cache) the
// initramfs.
func NewGuest(ctx context.Context, cfg Config) (*Guest, error) {
	qemu, err := exec.LookPath(cmp.Or(cfg.QEMU, "qemu-system-x86_64"))
	if err != nil {
		return nil, fmt.Errorf("no qemu (apt-get install qemu-system-x86): %w", err)
	}
	kernel, kver := cfg.Kernel, ""
	if kernel == "" {
		if kernel, kver, err = latestKernel(); err != nil {
			return nil, err
		}
	} else {
		kver = strings.TrimPrefix(filepath.Base(kernel), "vmlinuz-")
	}
	cache := cfg.CacheDir
	if cache == "" {
		cache = cmp.Or(os.Getenv("WH_E2E_CACHE"), ".cache")
	}
	if cache, err = filepath.Abs(cache); err != nil {
		return nil, err
	}
	initrd, err := buildInitramfs(ctx, cache, kver, cmp.Or(cfg.Busybox, "/bin/busybox"), cfg.RPCDaemons)
	if err != nil {
		return nil, fmt.Errorf("build initramfs for kernel %s: %w", kver, err)
	}
	return &Guest{QEMU: qemu, Kernel: kernel, KernelVersion: kver, Initrd: initrd}, nil
}

// Options describe one guest run.
type Options struct {
	// Port is the server's NFS port on the host's 127.0.0.1; MOUNT is expected on the
	// same port, as go-nfs and Wormhole serve both. Required unless MountOptions is set.
	Port int
	// MountOptions replaces the default mount options entirely. The default is
	// vers=3,proto=tcp,port=P,mountport=P,mountproto=tcp,nolock,addr=10.0.2.2.
	MountOptions string
	// ExtraMountOptions are appended to the mount options (for example
	// "actimeo=0" or "soft,timeo=50,retrans=2").
	ExtraMountOptions string
	// Export is the exported path to mount (default "/").
	Export string

	// TestBinary is the guest test binary (see BuildGuestTests). Required.
	TestBinary string
	// TestRun and TestSkip become -test.run and -test.skip when set.
	TestRun, TestSkip string
	// TestArgs are further arguments to the test binary; -test.v and -test.timeout
	// are always passed.
	TestArgs []string
	// Env is extra environment for the test binary; WH_MNT is always set to the
	// mount point.
	Env map[string]string

	// Timeout bounds the whole run, boot included (default 20 minutes). The guest
	// test binary gets a -test.timeout somewhat shorter, so a hung test prints its
	// goroutines before qemu is killed.
	Timeout time.Duration
	// MemoryMiB and CPUs size the guest (default 1024 MiB, 1 CPU).
	MemoryMiB, CPUs int
	// ShareDir is the host directory shared with the guest. By default a temporary
	// directory is made and removed after the run.
	ShareDir string
	// Console, if set, receives a live copy of the guest console.
	Console io.Writer

	// Setup is a shell script the guest's /init sources after the network and the
	// share are up and before mounting (in the same shell, so it may call
	// `fatal "why"`, and anything it starts keeps running). Empty means none.
	Setup string
	// NetNS, if set, runs qemu inside that network namespace (`ip netns exec`), so
	// that the guest's 10.0.2.2 is the namespace's loopback rather than the host's.
	// A server there may then take fixed ports, such as 111 for the portmapper,
	// whatever runs on the host.
	NetNS string
}

// Result is what a guest run produced. Exit codes are -1 for steps the guest never
// reached.
type Result struct {
	MountExit    int    // exit status of mount(8)
	MountOutput  string // its output
	TestExit     int    // exit status of the guest test binary
	TestOutput   string // its output (go test -v format)
	UmountExit   int    // exit status of umount(8)
	UmountOutput string // its output
	Console      string // the guest console, kernel messages included
	// Phases maps each "WH-PHASE name" marker of the guest /init (init, ready,
	// mounted, tested, unmounted, poweroff) to the time since qemu started.
	Phases  map[string]time.Duration
	Elapsed time.Duration // qemu start to exit
}

// OK reports whether the mount succeeded, every guest test passed and the unmount
// succeeded.
func (r Result) OK() bool { return r.MountExit == 0 && r.TestExit == 0 && r.UmountExit == 0 }

// ConsoleTail returns the last n lines of the console.
func (r Result) ConsoleTail(n int) string { return tail(r.Console, n) }

// Summary is a one-line account of the run.
func (r Result) Summary() string {
	var phases []string
	for _, name := range slices.SortedFunc(maps.Keys(r.Phases), func(a, b string) int {
		return int(r.Phases[a] - r.Phases[b])
	}) {
		phases = append(phases, fmt.Sprintf("%s@%.1fs", name, r.Phases[name].Seconds()))
	}
	return fmt.Sprintf("mount=%d tests=%d umount=%d elapsed=%.1fs phases=[%s]",
		r.MountExit, r.TestExit, r.UmountExit, r.Elapsed.Seconds(), strings.Join(phases, " "))
}

// Run prepares a Guest with the default Config and runs it once.
func Run(ctx context.Context, opts Options) (Result, error) {
	g, err := NewGuest(ctx, Config{})
	if err != nil {
		return Result{MountExit: -1, TestExit: -1, UmountExit: -1}, err
	}
	return g.Run(ctx, opts)
}

// Run boots the guest, which mounts the server, runs the test binary and powers off.
// The error reports harness failures: qemu not starting, the timeout, or the guest
// not reaching the mount step. A failed mount or failed guest tests are reported in
// the Result, whose Console is filled in either way.
func (g *Guest) Run(ctx context.Context, opts Options) (Result, error) {
	res := Result{MountExit: -1, TestExit: -1, UmountExit: -1}
	if opts.TestBinary == "" {
		return res, errors.New("e2e: Options.TestBinary is required")
	}
	if opts.Port == 0 && opts.MountOptions == "" {
		return res, errors.New("e2e: Options.Port or Options.MountOptions is required")
	}
	timeout := cmp.Or(opts.Timeout, 20*time.Minute)
	share := opts.ShareDir
	if share == "" {
		dir, err := os.MkdirTemp("", "wormhole-e2e-share-")
		if err != nil {
			return res, err
		}
		defer os.RemoveAll(dir)
		share = dir
	}
	// Guest users other than root run the test binary too: let them reach it.
	if err := os.Chmod(share, 0o755); err != nil {
		return res, err
	}
	if err := prepareShare(share, opts, timeout); err != nil {
		return res, err
	}

	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	console := newConsole(opts.Console)
	args := []string{
		"-accel", "tcg", "-cpu", "max",
		"-m", strconv.Itoa(cmp.Or(opts.MemoryMiB, 1024)),
		"-smp", strconv.Itoa(cmp.Or(opts.CPUs, 1)),
		"-nographic", "-no-reboot",
		"-kernel", g.Kernel, "-initrd", g.Initrd,
		"-append", "console=ttyS0 panic=-1 quiet",
		"-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0",
		"-virtfs", "local,path=" + share + ",mount_tag=share,security_model=none,id=s0",
	}
	argv := append([]string{g.QEMU}, args...)
	if opts.NetNS != "" {
		// `ip netns exec` execs qemu in place: the PID, which a cancelled ctx
		// kills, is qemu's own.
		argv = append([]string{"ip", "netns", "exec", opts.NetNS}, argv...)
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = console, console
	cmd.WaitDelay = 10 * time.Second
	console.start = time.Now()
	err := cmd.Run()
	res.Elapsed = time.Since(console.start)
	res.Console, res.Phases = console.snapshot()
	readResults(share, &res)

	switch {
	case ctx.Err() != nil:
		return res, fmt.Errorf("guest did not finish within %v (so far: %s): %w",
			timeout, res.Summary(), context.Cause(ctx))
	case err != nil:
		return res, fmt.Errorf("qemu: %w", err)
	case res.MountExit == -1:
		return res, errors.New("guest powered off before trying to mount (see the console)")
	}
	return res, nil
}

// prepareShare copies the test binary into the share and writes the guest's
// config.sh.
func prepareShare(share string, opts Options, timeout time.Duration) error {
	for _, name := range []string{"mount.out", "mount.rc", "test.out", "test.rc", "umount.out", "umount.rc", "setup.sh"} {
		if err := os.Remove(filepath.Join(share, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	if err := copyFile(opts.TestBinary, filepath.Join(share, "guest.test"), 0o755); err != nil {
		return fmt.Errorf("copy test binary: %w", err)
	}
	mountOpts := opts.MountOptions
	if mountOpts == "" {
		mountOpts = fmt.Sprintf("vers=3,proto=tcp,port=%d,mountport=%d,mountproto=tcp,nolock,addr=10.0.2.2",
			opts.Port, opts.Port)
	}
	if opts.ExtraMountOptions != "" {
		mountOpts += "," + opts.ExtraMountOptions
	}
	// Leave the guest time to report a hung test before the host kills qemu.
	guestTimeout := timeout - 2*time.Minute
	if guestTimeout < timeout/2 {
		guestTimeout = timeout * 3 / 4
	}
	args := []string{"-test.v", "-test.timeout=" + guestTimeout.String()}
	if opts.TestRun != "" {
		args = append(args, "-test.run="+opts.TestRun)
	}
	if opts.TestSkip != "" {
		args = append(args, "-test.skip="+opts.TestSkip)
	}
	args = append(args, opts.TestArgs...)

	var b strings.Builder
	const mnt = "/mnt"
	fmt.Fprintf(&b, "WH_MOUNT_SRC=%s\n", shellQuote("10.0.2.2:"+cmp.Or(opts.Export, "/")))
	fmt.Fprintf(&b, "WH_MOUNT_OPTS=%s\n", shellQuote(mountOpts))
	fmt.Fprintf(&b, "WH_MOUNT_POINT=%s\n", mnt)
	fmt.Fprintf(&b, "export WH_MNT=%s\n", mnt)
	for _, k := range slices.Sorted(maps.Keys(opts.Env)) {
		if !validEnvName(k) {
			return fmt.Errorf("invalid environment variable name %q", k)
		}
		fmt.Fprintf(&b, "export %s=%s\n", k, shellQuote(opts.Env[k]))
	}
	b.WriteString("set --")
	for _, a := range args {
		b.WriteString(" " + shellQuote(a))
	}
	b.WriteString("\n")
	if opts.Setup != "" {
		if err := os.WriteFile(filepath.Join(share, "setup.sh"), []byte(opts.Setup), 0o644); err != nil {
			return err
		}
	}
	return os.WriteFile(filepath.Join(share, "config.sh"), []byte(b.String()), 0o644)
}

// readResults fills res from the files the guest left in the share.
func readResults(share string, res *Result) {
	read := func(name string) string {
		b, _ := os.ReadFile(filepath.Join(share, name))
		return string(b)
	}
	code := func(name string) int {
		n, err := strconv.Atoi(strings.TrimSpace(read(name)))
		if err != nil {
			return -1
		}
		return n
	}
	res.MountExit, res.MountOutput = code("mount.rc"), read("mount.out")
	res.TestExit, res.TestOutput = code("test.rc"), read("test.out")
	res.UmountExit, res.UmountOutput = code("umount.rc"), read("umount.out")
}

// console collects qemu's output, optionally copies it on, and notes when each
// "WH-PHASE name" line arrives.
type console struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	line   []byte
	copyTo io.Writer
	start  time.Time
	phases map[string]time.Duration
}

func newConsole(copyTo io.Writer) *console {
	return &console{copyTo: copyTo, phases: map[string]time.Duration{}}
}

func (c *console) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.buf.Write(p)
	if c.copyTo != nil {
		c.copyTo.Write(p) // best effort: a broken copy must not stop the guest
	}
	for _, ch := range p {
		if ch != '\n' {
			c.line = append(c.line, ch)
			continue
		}
		if i := bytes.Index(c.line, []byte("WH-PHASE ")); i >= 0 {
			if f := strings.Fields(string(c.line[i+len("WH-PHASE "):])); len(f) > 0 {
				if _, seen := c.phases[f[0]]; !seen {
					c.phases[f[0]] = time.Since(c.start)
				}
			}
		}
		c.line = c.line[:0]
	}
	return len(p), nil
}

func (c *console) snapshot() (string, map[string]time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	text := ansiEscape.ReplaceAllString(c.buf.String(), "")
	return strings.ReplaceAll(text, "\r", ""), maps.Clone(c.phases)
}

// ansiEscape matches the terminal control sequences the firmware writes to the
// serial console.
var ansiEscape = regexp.MustCompile(`\x1b(\[[0-9;?]*[A-Za-z]|c)`)

// copyFile copies src to dst with the given permissions.
func copyFile(src, dst string, perm os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Chmod(dst, perm)
}

// BuildGuestTests compiles package tests/guest into a static test binary at out.
// moduleDir is the root of the Wormhole module.
func BuildGuestTests(ctx context.Context, moduleDir, out string) error {
	cmd := exec.CommandContext(ctx, "go", "test", "-c", "-o", out, "./tests/guest")
	cmd.Dir = moduleDir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build guest tests: %v\n%s", err, b)
	}
	return nil
}

// ModuleDir returns the root of the Go module containing the current directory.
func ModuleDir(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("not inside a Go module")
	}
	return filepath.Dir(gomod), nil
}

// shellQuote quotes s for a POSIX shell.
func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// validEnvName reports whether s can be exported by a POSIX shell.
func validEnvName(s string) bool {
	for i, r := range s {
		if !(r == '_' || r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || i > 0 && r >= '0' && r <= '9') {
			return false
		}
	}
	return s != ""
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
