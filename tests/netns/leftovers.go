package netns

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// Names the harness gives, with the creating process's PID in base 36:
// namespaces "wh-<pid>_<seq>_<i>", bridges "whb<pid>_<seq>" and veth ends
// "whv<pid>_<seq>_<i>" (at most 15 bytes, the kernel's limit).
var ownName = regexp.MustCompile(`^wh[-bv]([0-9a-z]+)_[0-9a-z]+(?:_[0-9]+)?$`)

// ownerPID returns the PID of the process that created a harness object
// with this name, or false when the name is not the harness's.
func ownerPID(name string) (int, bool) {
	m := ownName.FindStringSubmatch(name)
	if m == nil {
		return 0, false
	}
	pid, err := strconv.ParseInt(m[1], 36, 32)
	if err != nil {
		return 0, false
	}
	return int(pid), true
}

// alive reports whether a process with this PID exists.
func alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// CleanLeftovers removes the namespaces (and the processes in them),
// bridges and veth ends that harness runs whose process has exited left
// behind, for instance after a crash or a killed `go test`.
func CleanLeftovers(t testing.TB) {
	t.Helper()
	out, err := ipOutput("netns", "list")
	if err != nil {
		t.Logf("netns leftovers: %v", err)
		return
	}
	for line := range strings.Lines(out) {
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		ns := fields[0]
		if pid, ok := ownerPID(ns); ok && ns[2] == '-' && !alive(pid) {
			t.Logf("netns: removing namespace %s left by process %d", ns, pid)
			killNamespacePIDs(ns)
			if err := runIP("netns", "del", ns); err != nil {
				t.Logf("netns leftovers: %v", err)
			}
		}
	}
	links, err := ipOutput("-o", "link", "show")
	if err != nil {
		t.Logf("netns leftovers: %v", err)
		return
	}
	for line := range strings.Lines(links) {
		// "12: whv2hwcg_1_1@if2: <BROADCAST,..."
		_, rest, ok := strings.Cut(line, ": ")
		if !ok {
			continue
		}
		name, _, _ := strings.Cut(rest, ":")
		name, _, _ = strings.Cut(name, "@")
		if pid, ok := ownerPID(name); ok && name[2] != '-' && !alive(pid) {
			t.Logf("netns: removing link %s left by process %d", name, pid)
			if err := runIP("link", "del", name); err != nil && linkExists(name) {
				t.Logf("netns leftovers: %v", err)
			}
		}
	}
}

// killNamespacePIDs kills with SIGKILL every process in the namespace:
// only processes the harness started live there.
func killNamespacePIDs(ns string) {
	out, err := ipOutput("netns", "pids", ns)
	if err != nil {
		return
	}
	for _, f := range strings.Fields(out) {
		if pid, err := strconv.Atoi(f); err == nil && pid > 1 {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

func linkExists(name string) bool {
	_, err := os.Stat(filepath.Join("/sys/class/net", name))
	return err == nil
}

func ipOutput(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", args...).Output()
	if err != nil {
		return "", fmt.Errorf("ip %s: %w", strings.Join(args, " "), err)
	}
	return string(out), nil
}

// lockSubnet picks the first 10.77.S.0/24 that no other Net holds and no
// interface of the root namespace uses, and returns the open lock file
// that holds it (an flock, released when the file is closed or the
// process dies).
func lockSubnet() (*os.File, int, error) {
	dir := "/run/lock"
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		dir = os.TempDir()
	}
	for third := range 256 {
		path := filepath.Join(dir, fmt.Sprintf("wormhole-netns-10.77.%d.lock", third))
		f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
		if err != nil {
			return nil, 0, err
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			f.Close()
			continue
		}
		used, err := ipOutput("-4", "-o", "addr", "show", "to", fmt.Sprintf("10.77.%d.0/24", third))
		if err != nil || strings.TrimSpace(used) != "" {
			f.Close()
			continue
		}
		return f, third, nil
	}
	return nil, 0, errors.New("no free subnet in 10.77.0.0/16")
}
