package main

// Repair mode (--repair): how fast the cluster restores redundancy after
// losing a node, and how fast it rebalances onto a new one.
//
// It starts four nodes (n1-n4, copies 2) whose repair worker has a grace
// of 5 s, passes every 5 s and the bandwidth of --repair-bandwidth, and
// writes files through n1 with bench.Run until n4's chunk files hold
// --lose bytes (n4 holds about half of what is written). Once n1's status
// counts no chunk below its copies, it kills n4 with SIGKILL and polls
// n1's status until it lists n4 dead (detection), then until a census
// taken after that counts no chunk below its copies again (full
// redundancy). It then joins a fresh node n5 and polls until a repair
// pass that started after n5 came up found nothing to copy or delete and
// a census counts no chunk above or below its copies (balanced).
//
// The repair worker's record in status covers one pass at a time, so
// cluster keeps the last record it saw of each pass (polling every
// second) and sums them; the times come from the passes' start and
// finish. A pass that did work is followed at once by another, whose
// record can replace the final one before a poll sees it: its end is then
// taken as the next seen pass's start (an upper bound), and the bytes as
// the chunk bytes on disk (growth on the survivors, then on n5), which
// are printed as a cross-check in any case.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/wormhole-fs/wormhole/tests/bench"
)

const (
	repairNodes    = 4 // nodes before the loss; n5 joins for the rebalance
	repairCopies   = 2
	repairGrace    = 5 * time.Second
	repairInterval = 5 * time.Second
	// phaseLimit bounds each wait: healthy, detection, full redundancy,
	// balanced.
	phaseLimit = 10 * time.Minute
	// minFree is the least free space under --workdir repair mode starts
	// with (besides seven times --lose: four copies written, one repaired,
	// one rebalanced, and slack).
	minFree = 8 << 30
)

// repairConfig is what --repair measures with.
type repairConfig struct {
	wormholeBin string
	workDir     string
	lose        int64 // chunk bytes n4 must hold when killed
	bandwidth   int64 // repair.bandwidth, bytes per second
}

func parseRepair(c config, lose, bandwidth string) (repairConfig, error) {
	rc := repairConfig{wormholeBin: c.wormholeBin, workDir: c.workDir}
	var err error
	if rc.lose, err = bench.ParseSize(lose); err != nil {
		return rc, fmt.Errorf("--lose: %w", err)
	}
	if rc.lose < 16<<20 {
		return rc, errors.New("--lose must be at least 16MiB")
	}
	if rc.bandwidth, err = bench.ParseSize(bandwidth); err != nil {
		return rc, fmt.Errorf("--repair-bandwidth: %w", err)
	}
	if rc.bandwidth < 1<<20 {
		return rc, errors.New("--repair-bandwidth must be at least 1MiB (per second), as the node's configuration requires")
	}
	return rc, nil
}

// passLog keeps the last record seen of each repair pass.
type passLog map[uint64]repairProgress

func (l passLog) see(p *repairProgress) {
	if p != nil && p.Pass > 0 {
		l[p.Pass] = *p
	}
}

// passTotals sums the passes that started after some moment.
type passTotals struct {
	passes, working     int // passes seen; those that copied or deleted
	copied, deleted     int
	failed, deferred    int
	bytes               int64
	firstWork, lastWork time.Time // start of the first and end of the last working pass
	workTime            time.Duration
	complete            bool // every pass number seen, each to its end
	bounded             bool // a working pass's end is the next pass's start
	leaders, errs       []string
}

// since sums the passes that started after t.
func (l passLog) since(t time.Time) passTotals {
	var s passTotals
	var nums []uint64
	for n, p := range l {
		if p.Started.After(t) {
			nums = append(nums, n)
		}
	}
	slices.Sort(nums)
	s.complete = len(nums) > 0
	for i, n := range nums {
		p := l[n]
		s.passes++
		if i > 0 && n != nums[i-1]+1 {
			s.complete = false
		}
		if p.Finished.IsZero() {
			s.complete = false
		}
		s.copied += p.Copied
		s.deleted += p.Deleted
		s.failed += p.Failed
		s.deferred = p.Deferred // the last pass's: what is still waiting
		s.bytes += p.BytesCopied
		if !slices.Contains(s.leaders, p.Leader) {
			s.leaders = append(s.leaders, p.Leader)
		}
		if p.LastError != "" {
			s.errs = append(s.errs, fmt.Sprintf("pass %d: %s", n, p.LastError))
		}
		if p.Copied+p.Deleted > 0 {
			s.working++
			if s.firstWork.IsZero() {
				s.firstWork = p.Started
			}
			end := p.Finished
			if end.IsZero() && i+1 < len(nums) {
				// Its last record was overwritten before a poll saw it (a
				// pass that did work is followed at once by another): it
				// ended before the next one seen started.
				end, s.bounded = l[nums[i+1]].Started, true
			}
			if !end.IsZero() {
				s.lastWork = end
				s.workTime += end.Sub(p.Started)
			}
		}
	}
	return s
}

// show prints to stderr the last record seen of each pass that started
// after t, with times relative to t.
func (l passLog) show(t time.Time, label string) {
	var nums []uint64
	for n, p := range l {
		if p.Started.After(t) {
			nums = append(nums, n)
		}
	}
	slices.Sort(nums)
	for _, n := range nums {
		p := l[n]
		end := "running when last seen"
		if !p.Finished.IsZero() {
			end = fmt.Sprintf("to %.1f s", p.Finished.Sub(t).Seconds())
		}
		progress("repair: pass %d (%s) from %.1f s %s after %s: copied %d/%d (%s), deleted %d/%d, failed %d, deferred %d, unavailable %d",
			n, p.Leader, p.Started.Sub(t).Seconds(), end, label, p.Copied, p.ToCopy, mib(p.BytesCopied), p.Deleted, p.ToDelete, p.Failed, p.Deferred, p.Unavailable)
	}
}

// idleAfter reports whether a pass that started after t has finished
// having found nothing to copy or delete and no failure.
func (l passLog) idleAfter(t time.Time) bool {
	for _, p := range l {
		if p.Started.After(t) && !p.Finished.IsZero() && p.ToCopy == 0 && p.ToDelete == 0 && p.Failed == 0 && p.Deferred == 0 {
			return true
		}
	}
	return false
}

// repairRun is one --repair measurement on a running cluster.
type repairRun struct {
	rc    repairConfig
	cl    *testCluster
	procs *children
	ips   []string // every node's address, n5's included
}

func runRepair(ctx context.Context, rc repairConfig) (err error) {
	whBin, err := filepath.Abs(rc.wormholeBin)
	if err != nil {
		return err
	}
	if _, err := os.Stat(whBin); err != nil {
		return fmt.Errorf("wormhole binary: %w (run make build)", err)
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(rc.workDir, &st); err != nil {
		return fmt.Errorf("free space of %s: %w", rc.workDir, err)
	}
	free, need := int64(st.Bavail)*st.Bsize, max(int64(minFree), 7*rc.lose)
	if free < need {
		return fmt.Errorf("only %s free under %s; --repair with --lose %s needs %s: free space or pass another --workdir",
			gib(free), rc.workDir, gib(rc.lose), gib(need))
	}
	fmt.Printf("%s\n", machineFacts(whBin, rc.workDir))
	fmt.Printf("%d-node cluster on this machine (loopback addresses), copies %d: all nodes share its CPUs and one disk, so\n", repairNodes, repairCopies)
	fmt.Printf("each copy repaired is read from and written to the same disk; the figures are a lower bound for real clusters.\n")
	fmt.Printf("repair: grace %v, interval %v, bandwidth %s/s (%d bytes/s); scrub delayed 24 h (not to compete); %s free before.\n\n",
		repairGrace, repairInterval, mib(rc.bandwidth), rc.bandwidth, gib(free))

	ips, err := freeAddrs(repairNodes + 1)
	if err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(rc.workDir, "wormhole-bench-repair-")
	if err != nil {
		return err
	}
	defer func() {
		if rerr := os.RemoveAll(tmp); rerr != nil && err == nil {
			err = rerr
		}
	}()
	progress("repair: cluster on %s (n5 joins later), data in %s", strings.Join(ips[:repairNodes], ", "), tmp)
	procs := &children{}
	defer procs.stopAll()
	extra := fmt.Sprintf("repair: { grace: %s, interval: %s, bandwidth: %d }\nscrub: { delay: 24h }\n",
		repairGrace, repairInterval, rc.bandwidth)
	cl, err := startCluster(ctx, procs, whBin, tmp, ips[:repairNodes], repairCopies, extra)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil && ctx.Err() == nil {
			for _, p := range procs.list {
				fmt.Fprintf(os.Stderr, "--- %s log (last 8 KiB) ---\n%s", p.name, p.log.String())
			}
		}
	}()
	r := &repairRun{rc: rc, cl: cl, procs: procs, ips: ips}
	progress("repair: nodes (state/etcd) as n1 sees them: %s", roles(ctx, whBin, cl.confs[0]))
	if err := r.fill(ctx); err != nil {
		return err
	}
	var figs strings.Builder
	if err := r.loseNode(ctx, &figs); err != nil {
		return err
	}
	if err := r.rebalance(ctx, &figs); err != nil {
		return err
	}
	progress("repair: nodes (state/etcd) as n1 sees them: %s", roles(ctx, whBin, cl.confs[0]))
	for _, p := range procs.list {
		if lines := p.log.lines(); lines > 0 {
			progress("repair: %s logged %d line(s) at warn or above; last ones:\n%s", p.name, lines, lastLines(p.log.String(), 5))
		}
	}
	fmt.Printf("\nMB/s is 10^6 bytes/s. Times count from the SIGKILL (repair) and from n5 answering NFS (rebalance).\n\n")
	fmt.Print(figs.String())
	return nil
}

// victim is the index of the node killed: n4.
const victim = repairNodes - 1

// fill writes files through n1 until n4's chunk files hold rc.lose bytes,
// then waits until no chunk is below its copies.
func (r *repairRun) fill(ctx context.Context) error {
	var written int64
	start := time.Now()
	for round := 1; ; round++ {
		held, err := dirBytes(filepath.Join(r.cl.dirs[victim], "chunks"))
		if err != nil {
			return err
		}
		if held >= r.rc.lose {
			progress("repair: n4 holds %s of chunk files after %s written in %.0f s", mib(held), mib(written), time.Since(start).Seconds())
			break
		}
		if round > 20 {
			return fmt.Errorf("n4 holds only %s after %s written in %d rounds", mib(held), mib(written), round-1)
		}
		// n4 gets about copies/nodes = half of what is written; 5% more
		// so that one round usually does.
		size := max((r.rc.lose-held)*21/10, 64<<20)
		size = (size + 1<<20 - 1) &^ (1<<20 - 1)
		res, err := bench.Run(ctx, bench.Options{
			NFSAddr:     r.cl.nfsAddr(0),
			Size:        size,
			RandomOps:   1,
			Creates:     1,
			ListEntries: 1,
			SmallFiles:  1,
			Keep:        true,
			Progress:    &prefixWriter{w: os.Stderr, prefix: fmt.Sprintf("[fill %d] ", round)},
		})
		if err != nil {
			return fmt.Errorf("fill round %d: %w", round, err)
		}
		written += size
		w, _ := res.Figure(bench.SeqWrite)
		progress("repair: fill round %d wrote %s through n1 at %s MB/s", round, mib(size), bench.FormatValue(w.Value))
	}
	after := time.Now()
	_, err := r.poll(ctx, "no chunk below its copies before the kill", 500*time.Millisecond, func(st nodeStatus) bool {
		c := st.Chunks
		return c != nil && c.At.After(after) && c.Error == "" && len(c.Partial) == 0 && c.Chunks > 0 && c.Below == 0
	})
	return err
}

// loseNode kills n4 and measures detection and the repair.
func (r *repairRun) loseNode(ctx context.Context, figs *strings.Builder) error {
	before, err := r.cl.chunkBytes()
	if err != nil {
		return err
	}
	st, err := status(ctx, r.cl.whBin, r.cl.confs[0])
	if err != nil {
		return err
	}
	lost := before[victim]
	progress("repair: before the kill: chunk files %s; %s", perNode(before), st.brief())

	p := r.cl.nodes[victim]
	p.killed = true
	killAt := time.Now()
	if err := p.cmd.Process.Kill(); err != nil {
		return fmt.Errorf("kill n4: %w", err)
	}
	progress("repair: n4 (pid %d) killed with SIGKILL", p.cmd.Process.Pid)

	passes := passLog{}
	var detectAt, downSince time.Time
	st, err = r.poll(ctx, "n1 lists n4 dead", 250*time.Millisecond, func(st nodeStatus) bool {
		passes.see(st.Repair)
		for _, n := range st.Nodes {
			if n.ID == "n4" && n.State == "dead" {
				detectAt = time.Now()
				if n.DownSince != nil {
					downSince = *n.DownSince
				}
				return true
			}
		}
		return false
	})
	if err != nil {
		return err
	}
	progress("repair: n1 lists n4 dead after %.1f s (down since +%.1f s); %s", detectAt.Sub(killAt).Seconds(),
		sinceOr(downSince, killAt), st.brief())
	if downSince.IsZero() {
		downSince = detectAt
	}
	st, err = r.poll(ctx, "no chunk below its copies after the loss", time.Second, func(st nodeStatus) bool {
		passes.see(st.Repair)
		c := st.Chunks
		return c != nil && c.At.After(detectAt) && c.Error == "" && len(c.Partial) == 0 && c.Below == 0 && !running(st)
	})
	if err != nil {
		return err
	}
	healedCensus := st.Chunks.At
	after, err := r.cl.chunkBytes()
	if err != nil {
		return err
	}
	t := passes.since(killAt)
	// Full redundancy: the end of the last pass that copied, if every pass
	// was seen to its end; else the census that found it (up to 10 s late:
	// status reuses a census that long).
	healed, how := healedCensus, "census"
	if !t.lastWork.IsZero() {
		healed, how = t.lastWork, "end of the last copying pass"
		if t.bounded {
			how = "at most: start of the next pass seen after the last copying pass"
		}
	}
	graceEnd := downSince.Add(repairGrace)
	window := healed.Sub(graceEnd)
	grown := sum(after[:victim]) - sum(before[:victim])
	copied := t.bytes
	if !t.complete {
		copied = grown
	}
	progress("repair: %d pass(es) after the kill (%d copying, %v of pass time), leader(s) %s: %d copies, %s, %d failed, %d deleted; complete record: %v",
		t.passes, t.working, t.workTime.Round(100*time.Millisecond), strings.Join(t.leaders, ", "), t.copied, mib(t.bytes), t.failed, t.deleted, t.complete)
	for _, e := range t.errs {
		progress("repair: pass error: %s", e)
	}
	passes.show(killAt, "the kill")
	progress("repair: chunk files now %s (survivors grew by %s)", perNode(after[:victim]), mib(grown))

	fmt.Printf("repair after SIGKILL of n4 holding %s of chunk files:\n", gib(lost))
	fmt.Printf("  n1 lists n4 dead after   %6.1f s (polled every 250 ms; n1's down_since +%.1f s)\n", detectAt.Sub(killAt).Seconds(), downSince.Sub(killAt).Seconds())
	fmt.Printf("  grace ends at            %6.1f s (down_since + %v)\n", graceEnd.Sub(killAt).Seconds(), repairGrace)
	fmt.Printf("  full redundancy at       %6.1f s (%s; census confirming it at %.1f s)\n", healed.Sub(killAt).Seconds(), how, healedCensus.Sub(killAt).Seconds())
	fmt.Printf("  repair took              %6.1f s after the grace; copying passes ran %.1f s\n", window.Seconds(), t.workTime.Seconds())
	fmt.Printf("  copied                   %s in %d chunk copies (repair.bytes_copied summed over %d passes%s); survivors' chunk files grew %s\n",
		gib(t.bytes), t.copied, t.passes, incomplete(t), gib(grown))
	fmt.Printf("  chunk files per node     before %s; after %s\n\n", perNode(before), perNode(after[:victim]))
	fmt.Fprintf(figs, "FIGURE repair lost=%s detect=%.1fs full-redundancy=%.1fs (after grace %v) copied=%s throughput=%sMB/s (over the %.1f s after the grace; %sMB/s over copying-pass time) bandwidth-limit=%dMiB/s\n",
		gib(lost), detectAt.Sub(killAt).Seconds(), healed.Sub(killAt).Seconds(), repairGrace, gib(copied),
		mbps(copied, window), window.Seconds(), mbps(copied, t.workTime), r.rc.bandwidth>>20)
	return nil
}

// rebalance joins a fresh node n5 and measures until the chunks sit where
// placement puts them.
func (r *repairRun) rebalance(ctx context.Context, figs *strings.Builder) error {
	before, err := r.cl.chunkBytes()
	if err != nil {
		return err
	}
	if err := r.cl.configure(r.ips[repairNodes]); err != nil {
		return err
	}
	joinAt := time.Now()
	if err := r.cl.start(ctx, r.procs, repairNodes); err != nil {
		return err
	}
	upAt := time.Now()
	progress("repair: n5 joined and serving after %.1f s", upAt.Sub(joinAt).Seconds())
	if err := waitMembers(ctx, r.procs, r.cl.whBin, []string{r.cl.confs[0], r.cl.confs[repairNodes]}, repairNodes, 90*time.Second); err != nil {
		return err
	}
	aliveAt := time.Now()
	passes := passLog{}
	maxAbove := 0
	st, err := r.poll(ctx, "the chunks balanced onto n5", time.Second, func(st nodeStatus) bool {
		passes.see(st.Repair)
		c := st.Chunks
		if c != nil {
			maxAbove = max(maxAbove, c.Above)
		}
		t := passes.since(joinAt)
		if t.working == 0 {
			if time.Since(aliveAt) > 2*time.Minute && passes.idleAfter(aliveAt) {
				// Reported as found, not waited for: n5 stays empty.
				progress("repair: WARNING no pass moved anything to n5 within 2 minutes of it coming up")
				return true
			}
			return false
		}
		return !t.lastWork.IsZero() && passes.idleAfter(t.lastWork) && !running(st) &&
			c != nil && c.At.After(t.lastWork) && c.Error == "" && len(c.Partial) == 0 && c.Below == 0 && c.Above == 0
	})
	if err != nil {
		return err
	}
	after, err := r.cl.chunkBytes()
	if err != nil {
		return err
	}
	t := passes.since(joinAt)
	moved, n5 := t.bytes, after[repairNodes]
	if !t.complete {
		moved = n5
	}
	done := t.lastWork
	if done.IsZero() {
		done = st.Chunks.At
	}
	span := done.Sub(upAt)
	progress("repair: %d pass(es) after n5 joined (%d working, %v of pass time), leader(s) %s: %d copies, %s, %d deleted, %d failed; most chunks above their copies at once: %d; complete record: %v",
		t.passes, t.working, t.workTime.Round(100*time.Millisecond), strings.Join(t.leaders, ", "), t.copied, mib(t.bytes), t.deleted, t.failed, maxAbove, t.complete)
	for _, e := range t.errs {
		progress("repair: pass error: %s", e)
	}
	passes.show(upAt, "n5 came up")
	liveAfter := slices.Concat(after[:victim], after[repairNodes:])
	fmt.Printf("rebalance onto a fresh n5 (n4 stays dead and recorded):\n")
	fmt.Printf("  n5 answers NFS after     %6.1f s from 'wormhole join'; alive in n1's view %.1f s later\n", upAt.Sub(joinAt).Seconds(), aliveAt.Sub(upAt).Seconds())
	how := "end of the last working pass"
	if t.bounded {
		how = "at most: start of the next pass seen after the last working pass"
	}
	fmt.Printf("  balanced at              %6.1f s after n5 answered NFS (%s; an idle pass and a census confirm)\n", span.Seconds(), how)
	fmt.Printf("  moved                    %s in %d chunk copies (repair.bytes_copied summed over %d passes%s), then %d copies deleted from the others;\n",
		gib(t.bytes), t.copied, t.passes, incomplete(t), t.deleted)
	fmt.Printf("                           n5 holds %s of chunk files\n", gib(n5))
	fmt.Printf("  chunk files per node     before %s (n1-n3); after %s (n1-n3, n5)\n\n", perNode(before[:victim]), perNode(liveAfter))
	fmt.Fprintf(figs, "FIGURE rebalance joined=n5 moved=%s deleted=%d-copies balanced=%.1fs throughput=%sMB/s (over the %.1f s from n5 up; %sMB/s over working-pass time) n5-holds=%s\n",
		gib(moved), t.deleted, span.Seconds(), mbps(moved, span), span.Seconds(), mbps(moved, t.workTime), gib(n5))
	return nil
}

// poll asks n1 for its status every interval until done returns true,
// at most phaseLimit, and prints what it sees to stderr every 10 s.
// Failed status calls are retried until the deadline.
func (r *repairRun) poll(ctx context.Context, what string, interval time.Duration, done func(nodeStatus) bool) (nodeStatus, error) {
	start := time.Now()
	deadline := start.Add(phaseLimit)
	lastShown := start
	var lastErr error
	for {
		st, err := status(ctx, r.cl.whBin, r.cl.confs[0])
		lastErr = err
		if err == nil && done(st) {
			return st, nil
		}
		if time.Since(lastShown) >= 10*time.Second {
			lastShown = time.Now()
			if err != nil {
				progress("repair: waiting %.0f s for %s; status of n1: %v", time.Since(start).Seconds(), what, err)
			} else {
				progress("repair: waiting %.0f s for %s; %s", time.Since(start).Seconds(), what, st.brief())
			}
		}
		if time.Now().After(deadline) {
			return st, fmt.Errorf("no %s after %v (last status: %v)", what, phaseLimit, lastErr)
		}
		if err := r.procs.exited(); err != nil {
			return st, err
		}
		select {
		case <-ctx.Done():
			return st, ctx.Err()
		case <-time.After(interval):
		}
	}
}

// brief is one line of what a status says: situation, nodes, chunks and
// the repair pass.
func (st nodeStatus) brief() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s;", st.Situation)
	for _, n := range st.Nodes {
		fmt.Fprintf(&b, " %s %s", n.ID, n.State)
	}
	if c := st.Chunks; c != nil {
		fmt.Fprintf(&b, "; chunks %d (below %d, on %d, above %d, missing %d", c.Chunks, c.Below, c.On, c.Above, c.Missing)
		if len(c.Partial) > 0 {
			fmt.Fprintf(&b, ", not counted: %s", strings.Join(c.Partial, " "))
		}
		fmt.Fprintf(&b, ", %.0f s old)", time.Since(c.At).Seconds())
	}
	if p := st.Repair; p != nil && p.Pass > 0 {
		state := "done"
		if p.Running {
			state = "running"
		}
		fmt.Fprintf(&b, "; repair pass %d (%s, %s) copied %d/%d (%s) deleted %d/%d failed %d deferred %d",
			p.Pass, p.Leader, state, p.Copied, p.ToCopy, mib(p.BytesCopied), p.Deleted, p.ToDelete, p.Failed, p.Deferred)
	}
	return b.String()
}

// incomplete says, for a printed sum of pass records, that some records
// were not seen to their end, so the figures use the bytes on disk.
func incomplete(t passTotals) string {
	if t.complete {
		return ""
	}
	return "; some records not seen to their end, so the figures use the bytes on disk"
}

// running reports whether the repair record in st is of a pass still
// running; waiting for its end makes every pass's last record the final one.
func running(st nodeStatus) bool { return st.Repair != nil && st.Repair.Running }

// sinceOr returns t-from in seconds, or 0 for a zero t.
func sinceOr(t, from time.Time) float64 {
	if t.IsZero() {
		return 0
	}
	return t.Sub(from).Seconds()
}

func perNode(v []int64) string {
	var parts []string
	for _, x := range v {
		parts = append(parts, mib(x))
	}
	return strings.Join(parts, " / ")
}

func gib(n int64) string { return fmt.Sprintf("%.2fGiB", float64(n)/(1<<30)) }

// mbps is n bytes over d in MB/s (10^6 bytes/s), "?" for no time.
func mbps(n int64, d time.Duration) string {
	if d <= 0 {
		return "?"
	}
	return bench.FormatValue(float64(n) / d.Seconds() / 1e6)
}
