package cluster

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

// A load is the client of a fault test: workers that overwrite and read
// back a few small files through one or more nodes while the test breaks
// the cluster. Every operation is recorded with its call and return times,
// and stop checks the history for linearizability with porcupine: each file
// behaves as one register whose reads return the last write that completed
// before them, or one that overlaps them. A write that failed or got no
// answer may or may not have happened, and the checker is told so. Bytes
// that are no version ever written fail the test at once.
//
// That a call takes effect at most once holds only for calls sent on one
// connection (the server drops a retransmission of a call in progress):
// so the workers' mounts never connect again (mountOneConnWithin), and a
// call in flight when a node stops or dies fails instead of being sent
// again to the restarted node, which could run it a second time.
//
// Each file is loadSize bytes, written with one FILE_SYNC WRITE at offset
// 0, so a write is atomic at the server and a reader sees one version or
// another, never a mix.
type load struct {
	t       *testing.T
	targets []*node
	// prefix starts the names of the load's files.
	prefix  string
	start   time.Time
	stopped chan struct{}
	wg      sync.WaitGroup
	// versions hands out a unique version number per file.
	versions []atomic.Int64

	mu      sync.Mutex
	history []porcupine.Operation
	phase   string
	counts  map[string]*loadCounts // by phase, and by phase@node
	wrong   []string               // descriptions of reads that returned bytes never written
}

// loadCounts counts one phase's operations by outcome.
type loadCounts struct {
	WritesOK, WritesFailed, ReadsOK, ReadsFailed int
	// Refused counts the calls refused as to a read-only file system
	// (NFS3ERR_ROFS): the read-only and refuse-writes postures.
	Refused int
	// LastError is the last failure seen, for messages.
	LastError string
}

const (
	loadFiles     = 6
	loadSize      = 4096
	loadOpTimeout = 15 * time.Second
)

// loadInput and loadOutput are a recorded operation's arguments and
// result, as the porcupine model reads them.
type loadInput struct {
	file    int
	write   bool
	version int64
}

type loadOutput struct {
	version int64 // what a read returned; 0 for an empty or absent file
}

// registerModel checks each file as a register of versions.
var registerModel = porcupine.Model{
	Partition: func(h []porcupine.Operation) [][]porcupine.Operation {
		byFile := make([][]porcupine.Operation, loadFiles)
		for _, op := range h {
			f := op.Input.(loadInput).file
			byFile[f] = append(byFile[f], op)
		}
		return byFile
	},
	Init: func() any { return int64(0) },
	Step: func(state, input, output any) (bool, any) {
		in := input.(loadInput)
		if in.write {
			return true, in.version
		}
		return output.(loadOutput).version == state.(int64), state
	},
	DescribeOperation: func(input, output any) string {
		in := input.(loadInput)
		if in.write {
			return fmt.Sprintf("write(f%d, v%d)", in.file, in.version)
		}
		return fmt.Sprintf("read(f%d) -> v%d", in.file, output.(loadOutput).version)
	},
	DescribeState: func(state any) string { return fmt.Sprintf("v%d", state.(int64)) },
}

// startLoad starts workersPerTarget workers against each target, each with
// its own mount, in phase "before". The files are created (version 1)
// through the first target before the workers start.
func startLoad(t *testing.T, workersPerTarget int, targets ...*node) *load {
	t.Helper()
	return startLoadNamed(t, "load-", workersPerTarget, targets...)
}

// startLoadNamed is startLoad on files whose names start with prefix: a
// test that runs loads one after the other gives each its own files, so
// that a write of an earlier load still in flight cannot be taken for one
// of a later load.
func startLoadNamed(t *testing.T, prefix string, workersPerTarget int, targets ...*node) *load {
	t.Helper()
	l := &load{
		t: t, targets: targets, prefix: prefix, start: time.Now(), stopped: make(chan struct{}),
		versions: make([]atomic.Int64, loadFiles), phase: "before",
		counts: map[string]*loadCounts{},
	}
	v := targets[0].mount()
	// A node that has just come back (SIGCONT, a heal) may refuse writes
	// for a moment while its view of the others settles (its posture
	// lifts by itself): creating the files is tried again until then.
	deadline := time.Now().Add(loadOpTimeout)
	for f := range loadFiles {
		for !l.write(0, &mounted{v: v}, f, targets[0].id) && time.Now().Before(deadline) {
			select {
			case <-time.After(250 * time.Millisecond): // retry pace while refused
			case <-t.Context().Done():
				t.Fatal("load: test ended while creating the files")
			}
		}
	}
	if c := l.counts["before"]; c == nil || c.WritesOK != loadFiles {
		t.Fatalf("load: creating the files through %s failed: %+v", targets[0].id, c)
	}
	client := 1
	for _, n := range targets {
		for range workersPerTarget {
			l.wg.Add(1)
			go l.worker(client, n, uint64(client))
			client++
		}
	}
	t.Cleanup(l.halt)
	return l
}

// setPhase labels the operations that start from now on.
func (l *load) setPhase(phase string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.phase = phase
}

// phaseCounts returns a copy of phase's counts so far.
func (l *load) phaseCounts(phase string) loadCounts {
	l.mu.Lock()
	defer l.mu.Unlock()
	if c := l.counts[phase]; c != nil {
		return *c
	}
	return loadCounts{}
}

// nodeCounts returns a copy of phase's counts so far for the operations
// made through node id.
func (l *load) nodeCounts(phase, id string) loadCounts {
	return l.phaseCounts(phase + "@" + id)
}

// waitWrites waits up to d for n more acknowledged writes in the current
// phase, and fails the test if they do not come: it shows the cluster
// keeps taking writes.
func (l *load) waitWrites(d time.Duration, n int) {
	l.t.Helper()
	l.waitWritesVia(d, n, "")
}

// waitWritesVia is waitWrites counting only the writes made through node
// id ("" counts them all).
func (l *load) waitWritesVia(d time.Duration, n int, id string) {
	l.t.Helper()
	l.mu.Lock()
	key := l.phase
	l.mu.Unlock()
	if id != "" {
		key += "@" + id
	}
	from := l.phaseCounts(key).WritesOK
	deadline := time.Now().Add(d)
	for {
		c := l.phaseCounts(key)
		if c.WritesOK >= from+n {
			return
		}
		if time.Now().After(deadline) {
			l.t.Fatalf("load: %d writes acknowledged in %v of %q, want %d (failed %d, last error: %s)",
				c.WritesOK-from, d, key, n, c.WritesFailed, c.LastError)
		}
		select {
		case <-l.stopped:
			l.t.Fatalf("load stopped while waiting for writes")
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// worker overwrites and reads random files through n until the load stops.
// After a failure it drops its mount (the failed call may still be in
// flight on it) and mounts again.
func (l *load) worker(client int, n *node, seed uint64) {
	defer l.wg.Done()
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	var m *mounted
	defer func() {
		if m != nil {
			go m.close() // may hang on a dead node; never waited for
		}
	}()
	for {
		select {
		case <-l.stopped:
			return
		default:
		}
		if m == nil {
			mm, err := mountOneConnWithin(n.nfsAddr(), loadOpTimeout)
			if err != nil {
				l.count(n.id, false, false, fmt.Errorf("%s: %w", n.id, err))
				select {
				case <-l.stopped:
					return
				case <-time.After(500 * time.Millisecond): // retry pace while n is unreachable
				}
				continue
			}
			m = &mm
		}
		f := rng.IntN(loadFiles)
		var ok bool
		if rng.IntN(2) == 0 {
			ok = l.write(client, m, f, n.id)
		} else {
			ok = l.read(client, m, f, n.id)
		}
		if !ok {
			go m.close()
			m = nil
		}
	}
}

// write writes a new version of file f through m (node via) and records
// it.
func (l *load) write(client int, m *mounted, f int, via string) bool {
	version := l.versions[f].Add(1)
	call := l.now()
	_, err := untilBroken(m, func() (struct{}, error) {
		return struct{}{}, writeFile(m.v, l.name(f), loadContent(f, version))
	})
	ret := l.now()
	switch {
	case err != nil && strings.Contains(err.Error(), "NFS3ERR_ROFS") && !strings.HasPrefix(err.Error(), "commit "):
		// Its CREATE or WRITE refused by a posture: nothing was written,
		// and it is left out of the history. (A refused COMMIT comes
		// after a FILE_SYNC WRITE that did happen.)
	case err != nil:
		// It may have taken effect: let the checker place it anywhere
		// after its call, or nowhere.
		ret = math.MaxInt64
		fallthrough
	default:
		l.record(porcupine.Operation{ClientId: client, Input: loadInput{file: f, write: true, version: version},
			Call: call, Output: loadOutput{}, Return: ret})
	}
	l.count(via, true, err == nil, err)
	return err == nil
}

// read reads file f through m, checks its bytes and records the version.
func (l *load) read(client int, m *mounted, f int, via string) bool {
	call := l.now()
	data, err := untilBroken(m, func() ([]byte, error) {
		data, _, err := readFile(m.v, l.name(f))
		return data, err
	})
	ret := l.now()
	if err != nil {
		l.count(via, false, false, err) // a failed read tells nothing
		return false
	}
	version, perr := parseLoadContent(f, data)
	if perr != nil {
		l.mu.Lock()
		l.wrong = append(l.wrong, fmt.Sprintf("read of %s through %s: %v", l.name(f), via, perr))
		l.mu.Unlock()
		l.count(via, false, false, perr)
		return true
	}
	l.record(porcupine.Operation{ClientId: client, Input: loadInput{file: f},
		Call: call, Output: loadOutput{version: version}, Return: ret})
	l.count(via, false, true, nil)
	return true
}

func (l *load) now() int64 { return int64(time.Since(l.start)) }

func (l *load) record(op porcupine.Operation) {
	l.mu.Lock()
	defer l.mu.Unlock()
	op.Metadata = l.phase
	l.history = append(l.history, op)
}

// count counts an operation made through node via in the current phase,
// both in the phase's totals and in its counts for via.
func (l *load) count(via string, write, ok bool, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, key := range []string{l.phase, l.phase + "@" + via} {
		c := l.counts[key]
		if c == nil {
			c = &loadCounts{}
			l.counts[key] = c
		}
		c.add(write, ok, err)
	}
}

// add counts one operation.
func (c *loadCounts) add(write, ok bool, err error) {
	switch {
	case write && ok:
		c.WritesOK++
	case write:
		c.WritesFailed++
	case ok:
		c.ReadsOK++
	default:
		c.ReadsFailed++
	}
	if err != nil {
		c.LastError = err.Error()
		if strings.Contains(err.Error(), "NFS3ERR_ROFS") {
			c.Refused++
		}
	}
}

// halt stops the workers and waits for them, without checking anything.
func (l *load) halt() {
	select {
	case <-l.stopped:
	default:
		close(l.stopped)
	}
	l.wg.Wait()
}

// stop stops the workers, reads every file through every target (within d,
// retrying as the cluster settles), and checks the whole history: no read
// returned bytes never written, and the history is linearizable, so no
// acknowledged write was lost or reordered.
func (l *load) stop(d time.Duration) {
	l.t.Helper()
	l.halt()
	l.setPhase("final")
	deadline := time.Now().Add(d)
	for _, n := range l.targets {
		m, err := mountWithin(n.nfsAddr(), time.Until(deadline))
		if err != nil {
			l.t.Fatalf("load: final reads: %v", err)
		}
		for f := range loadFiles {
			for !l.read(0, &m, f, n.id) {
				if time.Now().After(deadline) {
					l.t.Fatalf("load: final read of %s through %s still failing after %v: %s",
						l.name(f), n.id, d, l.phaseCounts("final").LastError)
				}
				m.close()
				if m, err = mountWithin(n.nfsAddr(), time.Until(deadline)); err != nil {
					l.t.Fatalf("load: final reads: %v", err)
				}
			}
		}
		m.close()
	}
	l.check()
}

// check runs the linearizability check and reports the counts per phase.
func (l *load) check() {
	l.t.Helper()
	l.mu.Lock()
	history := append([]porcupine.Operation(nil), l.history...)
	wrong := append([]string(nil), l.wrong...)
	var phases []string
	for p, c := range l.counts {
		phases = append(phases, fmt.Sprintf("%s: %+v", p, *c))
	}
	l.mu.Unlock()
	slices.Sort(phases)
	l.t.Logf("load: %d operations recorded; %s", len(history), strings.Join(phases, "; "))
	for _, w := range wrong {
		l.t.Errorf("load: wrong bytes: %s", w)
	}
	res, info := porcupine.CheckOperationsVerbose(registerModel, history, time.Minute)
	switch res {
	case porcupine.Ok:
	case porcupine.Unknown:
		l.t.Errorf("load: the linearizability check of %d operations did not finish within a minute: "+
			"the history is unchecked", len(history))
	default:
		// Outside the test's temporary directories, which go with the
		// test: the file is there to be opened after the run.
		name := strings.ReplaceAll(l.t.Name(), "/", "_")
		path := "not written"
		dir, err := os.MkdirTemp("", "wormhole-history-")
		if err == nil {
			path = filepath.Join(dir, "history-"+name+".html")
			err = porcupine.VisualizePath(registerModel, info, path)
		}
		if err != nil {
			path = "not written: " + err.Error()
		}
		l.t.Errorf("load: the history of %d operations is not linearizable: a read returned a version "+
			"other than the last one written (an acknowledged write lost or seen out of order); "+
			"visualization: %s", len(history), path)
	}
}

// name is file f's name, in the root of the export.
func (l *load) name(f int) string { return fmt.Sprintf("%s%d", l.prefix, f) }

// loadContent is version v of file f: a header naming both, then bytes
// derived from them, loadSize in all.
func loadContent(f int, v int64) []byte {
	b := make([]byte, loadSize)
	h := fmt.Appendf(nil, "file %d version %d\n", f, v)
	copy(b, h)
	rng := rand.New(rand.NewPCG(uint64(f), uint64(v)))
	for i := len(h); i < len(b); i++ {
		b[i] = byte(rng.Uint32())
	}
	return b
}

// parseLoadContent returns the version data holds, 0 for an empty file,
// or an error if data is no version of file f ever written.
func parseLoadContent(f int, data []byte) (int64, error) {
	if len(data) == 0 {
		return 0, nil
	}
	var gf int
	var v int64
	if _, err := fmt.Sscanf(string(data[:min(len(data), 64)]), "file %d version %d\n", &gf, &v); err != nil || gf != f || v < 1 {
		return 0, fmt.Errorf("%d bytes with no valid header (%q)", len(data), data[:min(len(data), 32)])
	}
	if want := loadContent(f, v); !bytes.Equal(data, want) {
		return 0, fmt.Errorf("%d bytes claiming version %d differ from what was written", len(data), v)
	}
	return v, nil
}

// mountOneConnWithin is mountWithin through a forwarder that passes on
// the mount's first connection and refuses every later one.
//
// When its connection breaks, go-nfs-client connects again and sends the
// calls still waiting for a reply again, with the same xids, on the new
// connection: to a node that was stopped or killed and has come back, a
// WRITE whose first transmission took effect before the node went down
// (its reply lost with the connection) is then run a second time, after
// writes other clients made in between, and the file goes back to an
// older version. No server can tell such a call from a new one (its
// duplicate request cache, if any, is gone with the process; and this
// client reconnects from another port). The load's model counts each
// write once, so the forwarder makes a broken connection fail the calls
// in flight on it: their writes stay pending, as they should. The mount's
// broken channel is closed when its connection breaks (untilBroken).
func mountOneConnWithin(addr string, d time.Duration) (mounted, error) {
	// The node's end first: a node that is down fails the mount at once,
	// not after go-nfs-client has tried to connect again for seconds.
	up, err := net.DialTimeout("tcp", addr, d)
	if err != nil {
		return mounted{}, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		up.Close()
		return mounted{}, err
	}
	var mu sync.Mutex
	conns := []net.Conn{up}
	closed := false
	broken := make(chan struct{})
	closeAll := func() {
		l.Close()
		mu.Lock()
		defer mu.Unlock()
		if !closed {
			closed = true
			close(broken)
			for _, c := range conns {
				c.Close()
			}
		}
	}
	go func() {
		down, err := l.Accept()
		l.Close() // the one connection: a reconnection is refused
		if err != nil {
			closeAll()
			return
		}
		mu.Lock()
		if closed {
			mu.Unlock()
			down.Close()
			return
		}
		conns = append(conns, down)
		mu.Unlock()
		// Either side ending ends both: the client sees its connection
		// break when the node's does.
		pipe := func(dst, src net.Conn) {
			_, _ = io.Copy(dst, src)
			closeAll()
		}
		go pipe(up, down)
		go pipe(down, up)
	}()
	m, err := untilBroken(&mounted{broken: broken}, func() (mounted, error) {
		return mountWithin(l.Addr().String(), d)
	})
	if err != nil {
		closeAll()
		return mounted{}, err
	}
	// go-nfs-client's Close, like a broken connection, closes the reply
	// channel of every call in flight without forgetting it: a Close
	// while a call left running by untilBroken still waits can make the
	// client's receive loop close that channel a second time, a panic
	// that takes the test binary down. Close waits for those calls (they
	// give up within seconds once the connection is gone: it is never
	// made again).
	inflight := new(sync.WaitGroup)
	return mounted{v: m.v, close: func() {
		closeAll()
		inflight.Wait()
		m.close()
	}, broken: broken, inflight: inflight}, nil
}

// untilBroken runs f, a call on m, and returns its results; or an error as
// soon as m's connection breaks, without waiting for go-nfs-client to give
// up (it tries to connect again for seconds): f's call may then have
// taken effect or not, and is left running.
func untilBroken[T any](m *mounted, f func() (T, error)) (T, error) {
	if m.inflight != nil {
		m.inflight.Add(1)
		g := f
		f = func() (T, error) {
			defer m.inflight.Done()
			return g()
		}
	}
	return firstOf(f, m.broken, func() error { return errors.New("connection to the node broken") })
}
