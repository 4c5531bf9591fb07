package e2e

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"text/template"
)

// guestModules are the kernel modules the guest needs, beyond what the kernel has
// built in: virtio PCI and networking, the 9p share and the NFSv3 client. Their
// dependencies are added by resolveModules.
var guestModules = []string{
	"virtio_pci", "virtio_net",
	"9pnet_virtio", "9p",
	"sunrpc", "grace", "lockd", "nfs", "nfsv3",
}

// initramfsFormat changes whenever the layout of the image changes in a way the cache
// key would not otherwise notice.
const initramfsFormat = "wormhole-e2e-initramfs-v3"

// module is one kernel module to put into the image.
type module struct {
	name string // as modinfo names it
	path string // file on the host; may be compressed
}

// resolveModules returns the modules named in want plus their dependencies, in an
// order in which each module comes after everything it depends on. It asks
// modinfo -k kver for each module's file and dependencies; built-in modules are left
// out.
func resolveModules(ctx context.Context, kver string, want []string) ([]module, error) {
	var (
		order []module
		state = map[string]int{} // 1 visiting, 2 done
	)
	var visit func(name string, chain []string) error
	visit = func(name string, chain []string) error {
		switch state[name] {
		case 1:
			return fmt.Errorf("module dependency cycle: %s", strings.Join(append(chain, name), " -> "))
		case 2:
			return nil
		}
		state[name] = 1
		path, err := modinfo(ctx, kver, "-n", name)
		if err != nil {
			return err
		}
		if !strings.Contains(filepath.Base(path), ".ko") { // "(builtin)" or similar
			state[name] = 2
			return nil
		}
		deps, err := modinfo(ctx, kver, "-F", "depends", name)
		if err != nil {
			return err
		}
		for _, d := range strings.Split(deps, ",") {
			if d = strings.TrimSpace(d); d != "" {
				if err := visit(d, append(chain, name)); err != nil {
					return err
				}
			}
		}
		state[name] = 2
		order = append(order, module{name: name, path: path})
		return nil
	}
	for _, name := range want {
		if err := visit(name, nil); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// modinfo runs modinfo -k kver with args and returns its trimmed output.
func modinfo(ctx context.Context, kver string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "modinfo", append([]string{"-k", kver}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("modinfo -k %s %s: %v: %s (is the kmod package installed?)",
			kver, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(string(out)), nil
}

// readModule returns a module's object code, decompressing .ko.gz, .ko.xz and
// .ko.zst files on the host so that busybox insmod only ever sees plain ELF.
func readModule(ctx context.Context, path string) ([]byte, error) {
	var tool []string
	switch {
	case strings.HasSuffix(path, ".ko"):
		return os.ReadFile(path)
	case strings.HasSuffix(path, ".ko.gz"):
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		zr, err := gzip.NewReader(f)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		return io.ReadAll(zr)
	case strings.HasSuffix(path, ".ko.xz"):
		tool = []string{"xz", "-dc", path}
	case strings.HasSuffix(path, ".ko.zst"):
		tool = []string{"zstd", "-dcq", path}
	default:
		return nil, fmt.Errorf("%s: unknown module file type", path)
	}
	cmd := exec.CommandContext(ctx, tool[0], tool[1:]...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("decompress %s with %s: %v: %s", path, tool[0], err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// checkStatic fails unless path is a statically linked ELF executable: the image has
// no shared libraries.
func checkStatic(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked; install busybox-static", path)
		}
	}
	return nil
}

// initTemplate is the guest's /init. The host writes /share/config.sh, which sets
// WH_MOUNT_SRC, WH_MOUNT_OPTS and WH_MOUNT_POINT, exports the payload's environment
// and sets the payload's arguments as positional parameters. Results go back to the
// share as mount.{out,rc}, test.{out,rc} and umount.{out,rc}. "WH-PHASE name" lines on
// the console let the host time each step.
var initTemplate = template.Must(template.New("init").Parse(`#!/bin/busybox sh
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
phase() { echo "WH-PHASE $1 $(cut -d' ' -f1 /proc/uptime)"; }
fatal() { echo "WH-ERROR $*"; sync; poweroff -f; }
phase init
for m in {{range .Modules}}{{.}} {{end}}; do
	insmod /lib/modules/$m.ko || echo "WH-ERROR insmod $m failed"
done
ip link set lo up
ip addr add 10.0.2.15/24 dev eth0 || fatal "no eth0"
ip link set eth0 up
ip route add default via 10.0.2.2 || fatal "no default route"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 share /share || fatal "cannot mount the 9p share"
[ -r /share/config.sh ] || fatal "no /share/config.sh"
. /share/config.sh
if [ -r /share/setup.sh ]; then
	. /share/setup.sh
	phase setup
fi
phase ready
mkdir -p "$WH_MOUNT_POINT"
mount -t nfs -o "$WH_MOUNT_OPTS" "$WH_MOUNT_SRC" "$WH_MOUNT_POINT" >/share/mount.out 2>&1
echo $? >/share/mount.rc
if [ "$(cat /share/mount.rc)" = 0 ]; then
	phase mounted
	cd /tmp
	# The output goes to the share and, for live progress, to the console.
	{ /share/guest.test "$@"; echo $? >/share/test.rc; } 2>&1 | tee /share/test.out
	cd /
	phase tested
	umount "$WH_MOUNT_POINT" >/share/umount.out 2>&1
	echo $? >/share/umount.rc
	phase unmounted
else
	echo "WH-ERROR mount failed: $(cat /share/mount.out)"
fi
sync
phase poweroff
poweroff -f
`))

// buildInitramfs returns the path of a gzip-compressed initramfs for kernel kver,
// building it under cacheDir unless an identical one is there already.
// With daemons set, the image also holds the RPC daemons (see Config.RPCDaemons).
func buildInitramfs(ctx context.Context, cacheDir, kver, busybox string, daemons bool) (string, error) {
	if err := checkStatic(busybox); err != nil {
		return "", err
	}
	mods, err := resolveModules(ctx, kver, guestModules)
	if err != nil {
		return "", err
	}
	names := make([]string, len(mods))
	for i, m := range mods {
		names[i] = m.name
	}
	var script bytes.Buffer
	if err := initTemplate.Execute(&script, struct{ Modules []string }{names}); err != nil {
		return "", err
	}
	bb, err := os.Stat(busybox)
	if err != nil {
		return "", err
	}
	prefix := "initramfs-"
	var extra []hostFile
	if daemons {
		prefix = "initramfs-rpc-"
		if extra, err = rpcDaemonFiles(ctx); err != nil {
			return "", err
		}
	}

	// The key covers everything that goes into the image.
	h := sha256.New()
	fmt.Fprintf(h, "%s\n%s\n%s %d %d\n", initramfsFormat, kver, busybox, bb.Size(), bb.ModTime().UnixNano())
	h.Write(script.Bytes())
	for _, m := range mods {
		fi, err := os.Stat(m.path)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%s %s %d %d\n", m.name, m.path, fi.Size(), fi.ModTime().UnixNano())
	}
	fmt.Fprintf(h, "rpc daemons %v\n", daemons)
	for _, f := range extra {
		fi, err := os.Stat(f.src)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%s %s %d %d\n", f.dst, f.src, fi.Size(), fi.ModTime().UnixNano())
	}
	out := filepath.Join(cacheDir, fmt.Sprintf("%s%s-%s.cpio.gz", prefix, kver, hex.EncodeToString(h.Sum(nil))[:12]))
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}

	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return "", err
	}
	tmp, err := os.CreateTemp(cacheDir, ".initramfs-*")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	bw := bufio.NewWriter(tmp)
	zw := gzip.NewWriter(bw)
	cw := &cpioWriter{w: zw}
	for _, d := range []string{"bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp",
		"mnt", "share", "root", "etc", "lib", "lib/modules"} {
		cw.dir(d)
	}
	cw.node("dev/console", 0o600|cpioChar, 5, 1)
	cw.node("dev/null", 0o666|cpioChar, 1, 3)
	bbData, err := os.ReadFile(busybox)
	if err != nil {
		return "", err
	}
	cw.file("bin/busybox", 0o755, bbData)
	cw.file("bin/sh", 0o755|cpioSymlink, []byte("busybox"))
	cw.file("init", 0o755, script.Bytes())
	passwd := "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/tmp:/bin/sh\n"
	if daemons {
		passwd += rpcDaemonUsers
	}
	cw.file("etc/passwd", 0o644, []byte(passwd))
	cw.file("etc/group", 0o644, []byte("root:x:0:\nuser:x:1000:\n"))
	for _, m := range mods {
		data, err := readModule(ctx, m.path)
		if err != nil {
			return "", err
		}
		cw.file("lib/modules/"+m.name+".ko", 0o644, data)
	}
	if daemons {
		if err := writeRPCDaemons(cw, extra); err != nil {
			return "", err
		}
	}
	cw.trailer()
	if cw.err != nil {
		return "", fmt.Errorf("write initramfs: %w", cw.err)
	}
	if err := zw.Close(); err != nil {
		return "", err
	}
	if err := bw.Flush(); err != nil {
		return "", err
	}
	if err := tmp.Close(); err != nil {
		return "", err
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return "", err
	}
	// Drop images of older builds for this kernel. A guest booting from one right
	// now is unaffected: qemu has the file open.
	stale, _ := filepath.Glob(filepath.Join(cacheDir, prefix+kver+"-*.cpio.gz"))
	for _, f := range stale {
		if f != out {
			os.Remove(f)
		}
	}
	return out, nil
}

// File type bits of a cpio mode.
const (
	cpioDir     = 0o040000
	cpioFile    = 0o100000
	cpioSymlink = 0o120000
	cpioChar    = 0o020000
)

// cpioWriter writes an archive in the "newc" format the kernel unpacks as initramfs.
// The first error sticks in err.
type cpioWriter struct {
	w   io.Writer
	ino int
	err error
}

// dir adds a directory.
func (c *cpioWriter) dir(name string) { c.entry(name, cpioDir|0o755, 0, 0, nil) }

// node adds a device node; mode includes the type bits.
func (c *cpioWriter) node(name string, mode, major, minor int) {
	c.entry(name, mode, major, minor, nil)
}

// file adds a regular file, or a symlink when mode has cpioSymlink set (data is then
// the link target).
func (c *cpioWriter) file(name string, mode int, data []byte) {
	if mode&0o170000 == 0 {
		mode |= cpioFile
	}
	c.entry(name, mode, 0, 0, data)
}

// trailer ends the archive.
func (c *cpioWriter) trailer() { c.entry("TRAILER!!!", 0, 0, 0, nil) }

func (c *cpioWriter) entry(name string, mode, rmajor, rminor int, data []byte) {
	if c.err != nil {
		return
	}
	c.ino++
	nlink := 1
	if mode&0o170000 == cpioDir {
		nlink = 2
	}
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rmajor, rminor, len(name)+1, 0)
	var buf bytes.Buffer
	buf.WriteString(hdr)
	buf.WriteString(name)
	buf.WriteByte(0)
	pad4(&buf)
	buf.Write(data)
	pad4(&buf)
	_, c.err = c.w.Write(buf.Bytes())
}

// pad4 pads buf with zeros to a multiple of four bytes.
func pad4(buf *bytes.Buffer) {
	for buf.Len()%4 != 0 {
		buf.WriteByte(0)
	}
}

// latestKernel returns the newest /boot/vmlinuz-* with modules installed, and its
// version.
func latestKernel() (path, kver string, err error) {
	matches, _ := filepath.Glob("/boot/vmlinuz-*")
	var found []string
	for _, m := range matches {
		v := strings.TrimPrefix(filepath.Base(m), "vmlinuz-")
		if _, err := os.Stat(filepath.Join("/lib/modules", v, "kernel")); err == nil {
			found = append(found, m)
		}
	}
	if len(found) == 0 {
		return "", "", fmt.Errorf("no /boot/vmlinuz-* with modules in /lib/modules (install linux-image-amd64)")
	}
	sort.Slice(found, func(i, j int) bool { return versionLess(found[i], found[j]) })
	path = found[len(found)-1]
	return path, strings.TrimPrefix(filepath.Base(path), "vmlinuz-"), nil
}

// versionLess orders strings like "vmlinuz-6.1.0-9-amd64" with numeric runs compared
// as numbers.
func versionLess(a, b string) bool {
	for a != "" && b != "" {
		na, ra := splitRun(a)
		nb, rb := splitRun(b)
		if na != nb {
			if isDigits(na) && isDigits(nb) && len(na) != len(nb) {
				return len(strings.TrimLeft(na, "0")) < len(strings.TrimLeft(nb, "0"))
			}
			return na < nb
		}
		a, b = ra, rb
	}
	return len(a) < len(b)
}

// splitRun splits off the leading run of digits or of non-digits.
func splitRun(s string) (run, rest string) {
	digit := s[0] >= '0' && s[0] <= '9'
	i := 1
	for i < len(s) && (s[i] >= '0' && s[i] <= '9') == digit {
		i++
	}
	return s[:i], s[i:]
}

func isDigits(s string) bool { return s != "" && s[0] >= '0' && s[0] <= '9' }
