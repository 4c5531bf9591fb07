package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
)

// The RPC daemons a guest needs to lock files over NFSv3 without `nolock`, taken
// from the host (Debian's rpcbind and nfs-common packages, installed by
// tests/install-deps.sh) rather than reimplemented:
//
//   - rpcbind, the guest's portmapper: the kernel's lockd registers with it when
//     the first NFS mount without `nolock` starts lockd (the mount fails
//     otherwise), and the kernel finds statd through it;
//   - rpc.statd: the kernel's lockd asks it (SM_MON to 127.0.0.1) to monitor each
//     server before the first lock there, and a lock fails with ENOLCK without it;
//   - sm-notify: run at boot, it tells every server statd recorded (in its state
//     directory) that this client rebooted, so they release its locks.
//
// They are dynamically linked, so their shared libraries and the dynamic loader
// go into the image at the paths ldd reports.

// rpcDaemons are the host programs put into the image.
var rpcDaemons = []string{"/usr/sbin/rpcbind", "/usr/sbin/rpc.statd", "/usr/sbin/sm-notify"}

// rpcEtcFiles are host files the daemons read, copied when present:
// libtirpc's transports (required), the service and protocol names
// (rpcbind looks up "sunrpc"), and the RPC program names.
var rpcEtcFiles = []string{"/etc/netconfig", "/etc/services", "/etc/protocols", "/etc/rpc"}

// rpcDaemonUsers are /etc/passwd lines for the users the daemons switch to:
// rpcbind runs as _rpc; statd and sm-notify run as the owner of their state
// directory (root in the guest), so "statd" is only there for completeness.
const rpcDaemonUsers = "_rpc:x:102:65534::/run/rpcbind:/bin/false\nstatd:x:103:65534::/var/lib/nfs:/bin/false\n"

// rpcNsswitch makes the C library look names up in /etc only.
const rpcNsswitch = "passwd: files\ngroup: files\nshadow: files\nhosts: files\nservices: files\nprotocols: files\nrpc: files\n"

// hostFile is a host file to copy into the image.
type hostFile struct {
	dst string // path in the image, without the leading slash
	src string // file on the host, symlinks resolved
}

// RPCDaemonsAvailable reports why the RPC daemons cannot go into a guest image
// (Config.RPCDaemons), or nil.
func RPCDaemonsAvailable() error {
	for _, p := range append(slices.Clone(rpcDaemons), "/etc/netconfig") {
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("%s missing (apt-get install rpcbind nfs-common): %w", p, err)
		}
	}
	if _, err := exec.LookPath("ldd"); err != nil {
		return fmt.Errorf("no ldd to find the RPC daemons' libraries: %w", err)
	}
	return nil
}

// rpcDaemonFiles lists the daemons, every shared library they load and the /etc
// files they read.
func rpcDaemonFiles(ctx context.Context) ([]hostFile, error) {
	if err := RPCDaemonsAvailable(); err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	var files []hostFile
	add := func(p string) error {
		if seen[p] {
			return nil
		}
		seen[p] = true
		src, err := filepath.EvalSymlinks(p)
		if err != nil {
			return err
		}
		files = append(files, hostFile{dst: strings.TrimPrefix(p, "/"), src: src})
		return nil
	}
	for _, d := range rpcDaemons {
		if err := add(d); err != nil {
			return nil, err
		}
		libs, err := sharedLibs(ctx, d)
		if err != nil {
			return nil, err
		}
		for _, l := range libs {
			if err := add(l); err != nil {
				return nil, err
			}
		}
	}
	for _, p := range rpcEtcFiles {
		if _, err := os.Stat(p); errors.Is(err, os.ErrNotExist) && p != "/etc/netconfig" {
			continue
		}
		if err := add(p); err != nil {
			return nil, err
		}
	}
	return files, nil
}

// sharedLibs returns the paths ldd reports for the libraries and the dynamic
// loader of the program at p.
func sharedLibs(ctx context.Context, p string) ([]string, error) {
	cmd := exec.CommandContext(ctx, "ldd", p)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("ldd %s: %w: %s", p, err, strings.TrimSpace(stderr.String()))
	}
	var libs []string
	for line := range strings.Lines(string(out)) {
		// "\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)",
		// "\t/lib64/ld-linux-x86-64.so.2 (0x...)", "\tlinux-vdso.so.1 (0x...)".
		if strings.Contains(line, "not found") {
			return nil, fmt.Errorf("ldd %s: %s", p, strings.TrimSpace(line))
		}
		f := strings.Fields(line)
		if i := slices.Index(f, "=>"); i >= 0 {
			f = f[i+1:]
		}
		if len(f) > 0 && strings.HasPrefix(f[0], "/") {
			libs = append(libs, f[0])
		}
	}
	return libs, nil
}

// writeRPCDaemons adds files to the image, with the directories above them, the
// nsswitch.conf they need and the directories they write to: /run (with
// /var/run pointing at it, where the kernel looks for rpcbind's socket) and
// /var/lib/nfs.
func writeRPCDaemons(cw *cpioWriter, files []hostFile) error {
	made := map[string]bool{}
	for _, d := range []string{"bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp",
		"mnt", "share", "root", "etc", "lib", "lib/modules"} {
		made[d] = true
	}
	mkdirAll := func(d string) {
		var missing []string
		for ; d != "." && d != "/" && d != "" && !made[d]; d = path.Dir(d) {
			missing = append(missing, d)
		}
		for i := len(missing) - 1; i >= 0; i-- {
			cw.dir(missing[i])
			made[missing[i]] = true
		}
	}
	for _, d := range []string{"run", "run/rpcbind", "var", "var/lib/nfs/sm", "var/lib/nfs/sm.bak"} {
		mkdirAll(d)
	}
	cw.file("var/run", 0o777|cpioSymlink, []byte("../run"))
	cw.file("etc/nsswitch.conf", 0o644, []byte(rpcNsswitch))
	for _, f := range files {
		data, err := os.ReadFile(f.src)
		if err != nil {
			return err
		}
		fi, err := os.Stat(f.src)
		if err != nil {
			return err
		}
		mkdirAll(path.Dir(f.dst))
		cw.file(f.dst, int(fi.Mode().Perm()), data)
	}
	return cw.err
}
