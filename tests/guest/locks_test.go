package guest

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// Lock tests between two guests (tests/e2e TestKernelLocks). Each guest mounts the
// same server without `nolock`, so fcntl and flock locks go to the server over
// NLM; the guests take turns through marker files on the mount itself. They skip
// unless these are set:
//
//	WH_LOCK_DIR    directory under WH_MNT both guests use (made if missing)
//	WH_LOCK_CRASH  "1": after the two-guest exchange, the holder takes one more
//	               lock and waits to be killed; the contender waits for that lock,
//	               which it gets once the holder's next boot notifies the server
//	WH_LOCK_SHARE  a directory (the 9p share) where markers are also written, for
//	               the host to see
//
// The holder (guest 1) runs TestLockHolder, then after being killed
// TestLockAfterReboot; the contender (guest 2) runs TestLockContender.

// Deadlines. A blocked F_SETLKW is granted when the Linux client sends its LOCK
// again, 30 s (NLMCLNT_POLL_TIMEOUT) after the server answered NLM4_BLOCKED,
// unless the server calls back with NLM_GRANTED first.
const (
	// peerWait bounds waiting for the other guest's next step, which includes
	// its boot when it is the first step.
	peerWait = 6 * time.Minute
	// lockWait bounds an F_SETLKW or blocking flock after the holder released.
	lockWait = 90 * time.Second
	// rebootWait bounds an F_SETLKW whose lock holder is killed and booted
	// again: the boot, its SM_NOTIFY, then the client's next poll.
	rebootWait = 5 * time.Minute
	// markPoll is how often a marker file is looked for.
	markPoll = 200 * time.Millisecond
)

// lockDir returns WH_LOCK_DIR under the mount, made if missing, skipping the
// test when it is unset.
func lockDir(t *testing.T) string {
	t.Helper()
	mnt := mountDir(t)
	name := os.Getenv("WH_LOCK_DIR")
	if name == "" {
		t.Skip("WH_LOCK_DIR is unset: this test runs in two guests at once (tests/e2e TestKernelLocks)")
	}
	d := filepath.Join(mnt, name)
	if err := os.MkdirAll(d, 0o777); err != nil {
		t.Fatalf("make lock dir: %v", err)
	}
	return d
}

// mark tells the other guest (and the host, with WH_LOCK_SHARE) that step name
// is done.
func mark(t *testing.T, dir, name string) {
	t.Helper()
	stamp := []byte(time.Now().UTC().Format(time.RFC3339Nano) + "\n")
	if err := os.WriteFile(filepath.Join(dir, "mark-"+name), stamp, 0o644); err != nil {
		t.Fatalf("write marker %s: %v", name, err)
	}
	if share := os.Getenv("WH_LOCK_SHARE"); share != "" {
		if err := os.WriteFile(filepath.Join(share, "mark-"+name), stamp, 0o644); err != nil {
			t.Fatalf("write marker %s to the share: %v", name, err)
		}
	}
	t.Logf("marked %s", name)
}

// waitMark waits until the other guest marked step name, or fails the test
// after d.
func waitMark(t *testing.T, dir, name string, d time.Duration) {
	t.Helper()
	p := filepath.Join(dir, "mark-"+name)
	deadline := time.Now().Add(d)
	for {
		_, err := os.Stat(p)
		if err == nil {
			t.Logf("saw marker %s", name)
			return
		}
		if !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("look for marker %s: %v", name, err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("marker %s did not appear within %v", name, d)
		}
		time.Sleep(markPoll) // poll interval: another machine writes the marker
	}
}

// openLockFile opens (creating) a file in dir for reading and writing.
func openLockFile(t *testing.T, dir, name string) *os.File {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(dir, name), os.O_RDWR|os.O_CREATE, 0o666)
	if err != nil {
		t.Fatalf("open %s: %v", name, err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// lockRange is an fcntl lock request: type (F_RDLCK, F_WRLCK or F_UNLCK) and
// byte range, length 0 meaning to the end of the file.
func lockRange(typ int16, start, length int64) *syscall.Flock_t {
	return &syscall.Flock_t{Type: typ, Whence: io.SeekStart, Start: start, Len: length}
}

// setlk is fcntl(F_SETLK).
func setlk(f *os.File, typ int16, start, length int64) error {
	return syscall.FcntlFlock(f.Fd(), syscall.F_SETLK, lockRange(typ, start, length))
}

// isConflict reports whether err is what a refused F_SETLK or LOCK_NB flock
// returns: EAGAIN (EWOULDBLOCK) or, for fcntl, EACCES.
func isConflict(err error) bool {
	return errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EACCES)
}

// blockFor runs a blocking lock call and returns how long it took and its
// error, or an error once d has passed without it returning (the call is left
// blocked: the test binary is failing anyway). It may run on any goroutine.
func blockFor(what string, d time.Duration, lock func() error) (time.Duration, error) {
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- lock() }()
	select {
	case err := <-done:
		took := time.Since(start)
		if err != nil {
			return took, fmt.Errorf("%s: %w (after %v)", what, err, took.Round(time.Millisecond))
		}
		return took, nil
	case <-time.After(d):
		return d, fmt.Errorf("%s: not granted within %v", what, d)
	}
}

// waitBlocked waits until n threads of this process sleep in nlmclnt_block
// (nlmclnt_wait before Linux 5.x), the NLM client's wait for a lock the server
// answered NLM4_BLOCKED (their /proc wchan), or fails the test after d.
func waitBlocked(t *testing.T, n int, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		tasks, _ := filepath.Glob("/proc/self/task/*/wchan")
		var blocked int
		var seen []string
		for _, p := range tasks {
			b, err := os.ReadFile(p)
			if err != nil {
				continue // the thread exited
			}
			seen = append(seen, string(b))
			if w := string(b); w == "nlmclnt_block" || w == "nlmclnt_wait" {
				blocked++
			}
		}
		if blocked >= n {
			t.Logf("%d threads wait in the NLM client for a blocked lock: the server answered NLM4_BLOCKED", blocked)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d lock calls blocked after %v (thread wchans: %q)", blocked, n, d, seen)
		}
		time.Sleep(markPoll) // poll interval: the kernel moves the threads
	}
}

// TestLockHolder is guest 1: it takes an fcntl write lock on bytes 0-99 of
// "range" and a flock on "whole", waits until guest 2 saw them conflict and
// is blocked on them, releases them, and checks that guest 2 then holds them.
// With WH_LOCK_CRASH it then locks "crash" and waits to be killed.
func TestLockHolder(t *testing.T) {
	dir := lockDir(t)
	rf := openLockFile(t, dir, "range")
	wf := openLockFile(t, dir, "whole")
	if err := setlk(rf, syscall.F_WRLCK, 0, 100); err != nil {
		t.Fatalf("fcntl write lock on bytes 0-99: %v", err)
	}
	if err := syscall.Flock(int(wf.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Fatalf("flock LOCK_EX: %v", err)
	}
	// Our own locks never conflict with each other: upgrade in place.
	if err := setlk(rf, syscall.F_WRLCK, 0, 50); err != nil {
		t.Fatalf("fcntl write lock on bytes 0-49 inside our own lock: %v", err)
	}
	mark(t, dir, "holder-locked")

	waitMark(t, dir, "contender-blocked", peerWait)
	if err := setlk(rf, syscall.F_UNLCK, 0, 100); err != nil {
		t.Fatalf("fcntl unlock: %v", err)
	}
	if err := syscall.Flock(int(wf.Fd()), syscall.LOCK_UN); err != nil {
		t.Fatalf("flock LOCK_UN: %v", err)
	}
	mark(t, dir, "holder-released")

	// Guest 2 now holds both: ours are refused.
	waitMark(t, dir, "contender-got-locks", peerWait)
	if err := setlk(rf, syscall.F_WRLCK, 0, 100); !isConflict(err) {
		t.Errorf("fcntl write lock on bytes 0-99 held by guest 2: got %v, want EAGAIN or EACCES", err)
	}
	if err := syscall.Flock(int(wf.Fd()), syscall.LOCK_SH|syscall.LOCK_NB); !errors.Is(err, syscall.EWOULDBLOCK) {
		t.Errorf("flock LOCK_SH|LOCK_NB held by guest 2: got %v, want EWOULDBLOCK", err)
	}
	mark(t, dir, "holder-checked")

	if os.Getenv("WH_LOCK_CRASH") != "1" {
		return
	}
	waitMark(t, dir, "contender-done", peerWait)
	cf := openLockFile(t, dir, "crash")
	if err := setlk(cf, syscall.F_WRLCK, 0, 0); err != nil {
		t.Fatalf("fcntl write lock on the whole of crash: %v", err)
	}
	mark(t, dir, "holder-crash-locked")
	// The host kills this guest now; the marker below comes only after its
	// next boot.
	waitMark(t, dir, "contender-got-crash-lock", rebootWait)
	t.Errorf("still running after guest 2 got the lock of a guest that should have been killed")
}

// TestLockContender is guest 2: it sees guest 1's locks conflict (F_GETLK,
// F_SETLK, LOCK_NB), takes a range beside them, and waits for them with
// F_SETLKW and a blocking flock, both blocked in the kernel before guest 1
// releases. With WH_LOCK_CRASH it then waits for the lock of guest 1, killed
// while holding it, until guest 1's next boot frees it.
func TestLockContender(t *testing.T) {
	dir := lockDir(t)
	waitMark(t, dir, "holder-locked", peerWait)
	rf := openLockFile(t, dir, "range")
	wf := openLockFile(t, dir, "whole")

	lk := lockRange(syscall.F_WRLCK, 0, 100)
	if err := syscall.FcntlFlock(rf.Fd(), syscall.F_GETLK, lk); err != nil {
		t.Fatalf("F_GETLK: %v", err)
	}
	if lk.Type != syscall.F_WRLCK || lk.Start != 0 || lk.Len != 100 {
		t.Errorf("F_GETLK on bytes 0-99 reports type %d bytes %d+%d, want guest 1's write lock on 0+100",
			lk.Type, lk.Start, lk.Len)
	}
	if err := setlk(rf, syscall.F_WRLCK, 0, 100); !isConflict(err) {
		t.Errorf("fcntl write lock on bytes 0-99: got %v, want EAGAIN or EACCES", err)
	}
	if err := setlk(rf, syscall.F_RDLCK, 50, 10); !isConflict(err) {
		t.Errorf("fcntl read lock on bytes 50-59 under a write lock: got %v, want EAGAIN or EACCES", err)
	}
	if err := setlk(rf, syscall.F_WRLCK, 100, 100); err != nil {
		t.Errorf("fcntl write lock on bytes 100-199, beside guest 1's: %v", err)
	}
	if err := syscall.Flock(int(wf.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); !errors.Is(err, syscall.EWOULDBLOCK) {
		t.Errorf("flock LOCK_EX|LOCK_NB: got %v, want EWOULDBLOCK", err)
	}
	if err := syscall.Flock(int(wf.Fd()), syscall.LOCK_SH|syscall.LOCK_NB); !errors.Is(err, syscall.EWOULDBLOCK) {
		t.Errorf("flock LOCK_SH|LOCK_NB: got %v, want EWOULDBLOCK", err)
	}
	if t.Failed() {
		t.FailNow()
	}

	// Both waits start at once and block (the server answers NLM4_BLOCKED);
	// then guest 1 releases.
	var (
		flockTook time.Duration
		flockErr  error
		done      = make(chan struct{})
	)
	go func() {
		defer close(done)
		flockTook, flockErr = blockFor("blocking flock LOCK_EX", lockWait, func() error {
			return syscall.Flock(int(wf.Fd()), syscall.LOCK_EX)
		})
	}()
	var (
		fcntlTook time.Duration
		err       error
		fcntlDone = make(chan struct{})
	)
	go func() {
		defer close(fcntlDone)
		fcntlTook, err = blockFor("F_SETLKW write lock on bytes 0-99", lockWait, func() error {
			return syscall.FcntlFlock(rf.Fd(), syscall.F_SETLKW, lockRange(syscall.F_WRLCK, 0, 100))
		})
	}()
	waitBlocked(t, 2, lockWait)
	mark(t, dir, "contender-blocked")
	<-fcntlDone
	<-done
	if err != nil || flockErr != nil {
		t.Fatalf("waiting for guest 1's locks: %v; %v", err, flockErr)
	}
	t.Logf("F_SETLKW granted after %v, blocking flock after %v", fcntlTook.Round(time.Millisecond), flockTook.Round(time.Millisecond))
	fmt.Printf("FIGURE lock-wait fcntl=%.1fs flock=%.1fs\n", fcntlTook.Seconds(), flockTook.Seconds())
	mark(t, dir, "contender-got-locks")

	waitMark(t, dir, "holder-checked", peerWait)
	if err := setlk(rf, syscall.F_UNLCK, 0, 0); err != nil {
		t.Errorf("fcntl unlock: %v", err)
	}
	if err := syscall.Flock(int(wf.Fd()), syscall.LOCK_UN); err != nil {
		t.Errorf("flock LOCK_UN: %v", err)
	}
	mark(t, dir, "contender-done")

	if os.Getenv("WH_LOCK_CRASH") != "1" {
		return
	}
	waitMark(t, dir, "holder-crash-locked", peerWait)
	cf := openLockFile(t, dir, "crash")
	if err := setlk(cf, syscall.F_WRLCK, 0, 0); !isConflict(err) {
		t.Fatalf("fcntl write lock on crash, held by guest 1: got %v, want EAGAIN or EACCES", err)
	}
	mark(t, dir, "contender-saw-crash-conflict")
	took, err := blockFor("F_SETLKW on the lock of the killed guest 1", rebootWait, func() error {
		return syscall.FcntlFlock(cf.Fd(), syscall.F_SETLKW, lockRange(syscall.F_WRLCK, 0, 0))
	})
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("FIGURE lock-wait-reboot %.1fs\n", took.Seconds())
	mark(t, dir, "contender-got-crash-lock")
	if err := setlk(cf, syscall.F_UNLCK, 0, 0); err != nil {
		t.Errorf("fcntl unlock: %v", err)
	}
}

// TestLockAfterReboot is guest 1 booted again after being killed while holding
// a lock: its boot (sm-notify) told the server, which released the lock, so
// guest 2's F_SETLKW completes.
func TestLockAfterReboot(t *testing.T) {
	dir := lockDir(t)
	waitMark(t, dir, "contender-got-crash-lock", rebootWait)
}
