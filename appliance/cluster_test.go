package appliance_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	nfsc "github.com/willscott/go-nfs-client/nfs"

	"github.com/wormhole-fs/wormhole/appliance"
	"github.com/wormhole-fs/wormhole/cluster/pki"
	"github.com/wormhole-fs/wormhole/etcdmeta"
	"github.com/wormhole-fs/wormhole/tests/testnode"
)

// loopbackIPs picks n addresses 127.0.0.x that no test running at the
// same time is likely to pick, with every port a node uses free on each.
func loopbackIPs(t *testing.T, n int) []string {
	t.Helper()
	base := 100 + os.Getpid()%100
	for try := 0; try < 50; try++ {
		var ips []string
		for i := 0; i < n; i++ {
			ips = append(ips, fmt.Sprintf("127.0.%d.%d", 1+try, base+i))
		}
		if allFree(ips) {
			return ips
		}
	}
	t.Skip("no free loopback addresses for a test cluster")
	return nil
}

var nodePorts = []int{2049, 2379, 2380, 7946, 7947, 7948}

func allFree(ips []string) bool {
	for _, ip := range ips {
		for _, p := range nodePorts {
			l, err := net.Listen("tcp", net.JoinHostPort(ip, fmt.Sprint(p)))
			if err != nil {
				return false
			}
			l.Close()
		}
	}
	return true
}

func clusterConfig(t *testing.T, id, ip string) appliance.Config {
	cfg := appliance.DefaultConfig()
	cfg.ClusterID = "apptest"
	cfg.DataDir = t.TempDir()
	cfg.NFS.Addr = ip + ":2049"
	cfg.Admin.Addr = ""
	cfg.Node.ID = id
	cfg.Node.Advertise = ip
	return cfg
}

func testLogger(t *testing.T) zerolog.Logger {
	return zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
}

// serve starts a node from cfg and stops it when the test ends.
func serve(t *testing.T, cfg appliance.Config) *appliance.Node {
	t.Helper()
	n, _ := start(t, cfg)
	return n
}

// waitStatus waits until ok accepts the node's status.
func waitStatus(t *testing.T, n *appliance.Node, what string, ok func(appliance.Status) bool) appliance.Status {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		st, err := n.Status(ctx)
		if err == nil && ok(st) {
			return st
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: not within 30s; last status %+v, error %v", what, st, err)
		case <-time.After(100 * time.Millisecond): // poll interval
		}
	}
}

func alive(st appliance.Status) int {
	k := 0
	for _, n := range st.Nodes {
		if n.State == "alive" {
			k++
		}
	}
	return k
}

// TestInitJoinServe makes a cluster of two nodes in this process and
// checks that a file written through one reads back through the other.
func TestInitJoinServe(t *testing.T) {
	ips := loopbackIPs(t, 2)
	ctx := context.Background()
	c1, c2 := clusterConfig(t, "n1", ips[0]), clusterConfig(t, "n2", ips[1])
	tok, err := appliance.Init(ctx, c1, time.Hour, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := appliance.Init(ctx, c1, time.Hour, testLogger(t)); err == nil || !strings.Contains(err.Error(), "already belongs") {
		t.Errorf("init of an initialized data dir: %v", err)
	}
	n1 := serve(t, c1)
	if err := appliance.Join(ctx, c2, ips[0]+":7948", tok.String(), testLogger(t)); err != nil {
		t.Fatal(err)
	}
	n2 := serve(t, c2)
	st := waitStatus(t, n1, "two nodes alive", func(s appliance.Status) bool { return alive(s) == 2 })
	if st.Situation != "healthy" || st.Redundancy == nil || st.Redundancy.Copies != 2 {
		t.Errorf("status of a whole two-node cluster: %+v", st)
	}
	waitStatus(t, n2, "n2 sees two nodes", func(s appliance.Status) bool { return alive(s) == 2 })

	data := make([]byte, 3<<20+5)
	r := rand.New(rand.NewPCG(3, 4))
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	t1 := mount(t, n1)
	writeAll(t, t1, "/big.bin", data)

	t2 := mount(t, n2)
	if got := readAll(t, t2, "/big.bin"); !bytes.Equal(got, data) {
		t.Fatalf("read through n2 %d bytes that differ from the %d written through n1", len(got), len(data))
	}
	// where: each chunk on both nodes, as placed.
	wh, err := n2.Where(ctx, "/big.bin")
	if err != nil {
		t.Fatal(err)
	}
	if wh.Copies != 2 || len(wh.Chunks) != 4 {
		t.Errorf("where /big.bin: %d copies, %d chunks; want 2 and 4", wh.Copies, len(wh.Chunks))
	}
	for _, c := range wh.Chunks {
		if strings.Join(c.Holders, ",") != "n1,n2" || len(c.Targets) != 2 {
			t.Errorf("chunk %d held by %v, placed on %v; want n1,n2 both", c.Index, c.Holders, c.Targets)
		}
	}

	// A subtree with one copy: files written below it have one.
	if _, err := t1.Mkdir("/scratch", 0o755); err != nil {
		t.Fatal(err)
	}
	if changed, err := n1.SetRedundancy(ctx, "/scratch", 1); err != nil || changed != 1 {
		t.Fatalf("set redundancy of /scratch: %d changed, %v", changed, err)
	}
	if _, err := n1.SetRedundancy(ctx, "/scratch", 0); err == nil {
		t.Error("redundancy 0 accepted")
	}
	writeAll(t, t1, "/scratch/tmp.bin", data[:2<<20])
	wh, err = n1.Where(ctx, "/scratch/tmp.bin")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range wh.Chunks {
		if wh.Copies != 1 || len(c.Holders) != 1 || c.Holders[0] != c.Targets[0] {
			t.Errorf("chunk %d of a 1-copy file held by %v, placed on %v (copies %d)", c.Index, c.Holders, c.Targets, wh.Copies)
		}
	}

	// The census: big.bin's 4 chunks have their 2 copies, tmp.bin's 2
	// chunks their 1.
	st = waitStatus(t, n2, "census of 6 chunks", func(s appliance.Status) bool { return s.Chunks != nil && s.Chunks.Chunks == 6 })
	if c := st.Chunks; c.On != 6 || c.Below != 0 || c.Above != 0 || len(c.Partial) != 0 || c.Error != "" {
		t.Errorf("census: %+v", c)
	}

	// Both nodes hold copies: with two nodes and two copies, every
	// chunk of big.bin is on each.
	for _, c := range []appliance.Config{c1, c2} {
		if sz := dirSize(t, filepath.Join(c.DataDir, "chunks")); sz < int64(len(data)) {
			t.Errorf("%s holds %d bytes of chunks, want at least %d", c.Node.ID, sz, len(data))
		}
	}
}

func dirSize(t *testing.T, dir string) int64 {
	var n int64
	err := filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			n += fi.Size()
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestJoinRefusals: a wrong token, and a data dir that holds data, are
// refused with a message saying what to do, and leave nothing behind.
func TestJoinRefusals(t *testing.T) {
	ips := loopbackIPs(t, 2)
	ctx := context.Background()
	c1, c2 := clusterConfig(t, "n1", ips[0]), clusterConfig(t, "n2", ips[1])
	tok, err := appliance.Init(ctx, c1, time.Hour, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	serve(t, c1)

	// Same id and CA pin, another secret.
	parts := strings.Split(tok.String(), ".")
	parts[2] = strings.Repeat("A", len(parts[2]))
	err = appliance.Join(ctx, c2, ips[0]+":7948", strings.Join(parts, "."), testLogger(t))
	if !errors.Is(err, pki.ErrTokenInvalid) || !strings.Contains(err.Error(), "token") {
		t.Errorf("join with a wrong secret: %v", err)
	}
	if entries, _ := os.ReadDir(c2.DataDir); len(entries) != 0 {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("a refused join left %v in the data dir", names)
	}

	// A single node's data dir cannot join.
	single := clusterConfig(t, "n2", ips[1])
	if err := os.MkdirAll(filepath.Join(single.DataDir, "chunks", "ab"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := appliance.Join(ctx, single, ips[0]+":7948", tok.String(), testLogger(t)); err == nil || !strings.Contains(err.Error(), "single node") {
		t.Errorf("join of a used data dir: %v", err)
	}
}

// TestExternalEtcd: with etcd.endpoints, init and join use that etcd and
// run no member of their own.
func TestExternalEtcd(t *testing.T) {
	ips := loopbackIPs(t, 2)
	ctx := context.Background()
	ext, err := etcdmeta.StartEmbedded(ctx, etcdmeta.EmbedConfig{Dir: t.TempDir(), ClientURL: "http://" + ips[0] + ":2379"}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ext.Close() }) // after the nodes stop (cleanups run last first)
	c1, c2 := clusterConfig(t, "n1", ips[0]), clusterConfig(t, "n2", ips[1])
	for _, c := range []*appliance.Config{&c1, &c2} {
		c.Etcd.Endpoints = []string{"http://" + ips[0] + ":2379"}
	}
	tok, err := appliance.Init(ctx, c1, time.Hour, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	n1 := serve(t, c1)
	if err := appliance.Join(ctx, c2, ips[0]+":7948", tok.String(), testLogger(t)); err != nil {
		t.Fatal(err)
	}
	serve(t, c2)
	st := waitStatus(t, n1, "two nodes alive", func(s appliance.Status) bool { return alive(s) == 2 })
	for _, n := range st.Nodes {
		if n.Etcd != "external" {
			t.Errorf("node %s etcd role %q, want external", n.ID, n.Etcd)
		}
	}
	for _, c := range []appliance.Config{c1, c2} {
		if _, err := os.Stat(filepath.Join(c.DataDir, "etcd")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s runs an etcd member of its own (%v)", c.Node.ID, err)
		}
	}
	resp, err := ext.Client().Get(ctx, "/wh/apptest/cluster/nodes/n2")
	if err != nil || len(resp.Kvs) != 1 {
		t.Errorf("n2 not recorded in the external etcd: %v", err)
	}
}

// start starts a node from cfg and returns a function that stops it (also
// called when the test ends, if not before).
func start(t *testing.T, cfg appliance.Config) (*appliance.Node, func()) {
	t.Helper()
	return startWith(t, cfg, func(*appliance.Node) {})
}

// mount mounts n's export as root, until the test ends.
func mount(t *testing.T, n *appliance.Node) *nfsc.Target {
	t.Helper()
	v, closeV, err := testnode.Mount(n.NFSAddr().String(), 0, 0)
	if err != nil {
		t.Fatalf("mount %s: %v", n.NFSAddr(), err)
	}
	t.Cleanup(closeV)
	return v
}

// writeAll writes data as the new file p through v.
func writeAll(t *testing.T, v *nfsc.Target, p string, data []byte) {
	t.Helper()
	f, err := v.OpenFile(p, 0o644)
	if err != nil {
		t.Fatalf("create %s: %v", p, err)
	}
	defer f.Close()
	if err := testnode.WriteFile(f, data); err != nil {
		t.Fatalf("write %s: %v", p, err)
	}
}

// readAll reads the file p through v.
func readAll(t *testing.T, v *nfsc.Target, p string) []byte {
	t.Helper()
	f, err := v.Open(p)
	if err != nil {
		t.Fatalf("open %s: %v", p, err)
	}
	defer f.Close()
	var b bytes.Buffer
	if _, err := b.ReadFrom(f); err != nil {
		t.Fatalf("read %s: %v", p, err)
	}
	return b.Bytes()
}

// TestSingleNodeBecomesCluster: init on a stopped single node's data dir
// makes it the first node of a cluster with its files, a client's file
// handle from before still works, and a node that joins receives the
// copies the redundancy asks for. Init refuses while the single node runs
// and with a cluster_id other than its namespace, leaving it as it was.
func TestSingleNodeBecomesCluster(t *testing.T) {
	ips := loopbackIPs(t, 2)
	ctx := context.Background()
	c1, c2 := clusterConfig(t, "n1", ips[0]), clusterConfig(t, "n2", ips[1])
	c1.Repair.Interval, c2.Repair.Interval = time.Second, time.Second
	data := make([]byte, 2<<20+7)
	r := rand.New(rand.NewPCG(5, 6))
	for i := range data {
		data[i] = byte(r.Uint32())
	}

	single, stop := start(t, c1)
	v, closeV, err := testnode.Mount(single.NFSAddr().String(), 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	writeAll(t, v, "/f.bin", data)
	_, fh, err := v.Lookup("/f.bin")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := appliance.Init(ctx, c1, time.Hour, testLogger(t)); err == nil || !strings.Contains(err.Error(), "single node is running") {
		t.Errorf("init while the single node runs: %v", err)
	}
	if got := readAll(t, v, "/f.bin"); !bytes.Equal(got, data) {
		t.Fatal("the single node's file changed after a refused init")
	}
	closeV()
	stop()

	other := c1
	other.ClusterID = "other"
	if _, err := appliance.Init(ctx, other, time.Hour, testLogger(t)); err == nil || !strings.Contains(err.Error(), `namespace "apptest"`) {
		t.Errorf("init with another cluster_id: %v", err)
	}
	if _, err := os.Stat(filepath.Join(c1.DataDir, "cluster")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a refused init left cluster state behind (%v)", err)
	}

	tok, err := appliance.Init(ctx, c1, time.Hour, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	n1 := serve(t, c1)
	v1 := mount(t, n1)
	if got := readAll(t, v1, "/f.bin"); !bytes.Equal(got, data) {
		t.Fatalf("after init, /f.bin reads %d bytes that differ from the %d the single node held", len(got), len(data))
	}
	if a, err := v1.GetAttr(fh); err != nil || a.Filesize != uint64(len(data)) {
		t.Errorf("the single node's file handle after init: %+v, %v", a, err)
	}

	if err := appliance.Join(ctx, c2, ips[0]+":7948", tok.String(), testLogger(t)); err != nil {
		t.Fatal(err)
	}
	n2 := serve(t, c2)
	waitStatus(t, n1, "two nodes alive", func(s appliance.Status) bool { return alive(s) == 2 })
	st := waitStatus(t, n1, "the single node's 3 chunks on both nodes", func(s appliance.Status) bool {
		c := s.Chunks
		return c != nil && c.Chunks == 3 && c.On == 3 && c.Below == 0 && c.Error == ""
	})
	t.Logf("census after the join: %+v", st.Chunks)
	if sz := dirSize(t, filepath.Join(c2.DataDir, "chunks")); sz < int64(len(data)) {
		t.Errorf("n2 holds %d bytes of chunks, want at least %d", sz, len(data))
	}
	v2 := mount(t, n2)
	if got := readAll(t, v2, "/f.bin"); !bytes.Equal(got, data) {
		t.Fatal("/f.bin read through the joined node differs")
	}
}

// TestPostureFollowsMembership: the posture is assessed again as soon as a
// node goes or comes back, not only at the next interval (set to an hour
// here, so only that can change it): with a chunk only on a stopped node,
// writes through the other are refused (read-only) until it is back.
func TestPostureFollowsMembership(t *testing.T) {
	ips := loopbackIPs(t, 2)
	ctx := context.Background()
	c1, c2 := clusterConfig(t, "n1", ips[0]), clusterConfig(t, "n2", ips[1])
	c1.Redundancy.Copies, c2.Redundancy.Copies = 1, 1
	// n2 runs no etcd member: with it gone, etcd keeps its quorum.
	c1.Etcd.Voters, c2.Etcd.Voters = 1, 1
	tok, err := appliance.Init(ctx, c1, time.Hour, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	n1, _ := startWith(t, c1, func(n *appliance.Node) { appliance.SetPostureInterval(n, time.Hour) })
	if err := appliance.Join(ctx, c2, ips[0]+":7948", tok.String(), testLogger(t)); err != nil {
		t.Fatal(err)
	}
	_, stop2 := start(t, c2)
	waitStatus(t, n1, "two nodes alive", func(s appliance.Status) bool { return alive(s) == 2 })

	// Chunks land on both nodes (one copy each, spread by placement).
	v := mount(t, n1)
	writeAll(t, v, "/spread.bin", make([]byte, 8<<20))
	wh, err := n1.Where(ctx, "/spread.bin")
	if err != nil {
		t.Fatal(err)
	}
	onN2 := false
	for _, c := range wh.Chunks {
		onN2 = onN2 || slices.Contains(c.Holders, "n2")
	}
	if !onN2 {
		t.Fatal("no chunk of an 8-chunk file placed on n2")
	}

	stop2()
	waitWrite(t, v, "/while-n2-away", func(err error) bool {
		var ne *nfsc.Error
		return errors.As(err, &ne) && ne.ErrorNum == nfsc.NFS3ErrROFS
	}, "refused with NFS3ERR_ROFS once n2 is gone")

	serve(t, c2)
	waitWrite(t, v, "/n2-back", func(err error) bool { return err == nil }, "accepted once n2 is back")
}

// waitWrite writes a small file at p through v until ok accepts the
// write's error, for 30 s at most.
func waitWrite(t *testing.T, v *nfsc.Target, p string, ok func(error) bool, what string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		f, err := v.OpenFile(p, 0o644)
		if err == nil {
			_, err = f.Write([]byte("x"))
			if cerr := f.Close(); err == nil {
				err = cerr
			}
		}
		if ok(err) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("write of %s not %s within 30s: last error %v", p, what, err)
		}
		time.Sleep(100 * time.Millisecond) // poll interval
	}
}

// TestCertificatesRenewed: nodes renew their certificates before they
// expire, on disk (for the next start), for their etcd member and for the
// connections they make and take. Both nodes restart on certificates
// that expire in 30 s; once those have expired, n2 restarts, connects to
// n1's etcd member, and a file is written through it with a copy on each
// node: every handshake presented a renewed certificate.
func TestCertificatesRenewed(t *testing.T) {
	ips := loopbackIPs(t, 2)
	ctx := context.Background()
	c1, c2 := clusterConfig(t, "n1", ips[0]), clusterConfig(t, "n2", ips[1])
	// n1 alone runs an etcd member, so that either node restarts alone.
	c1.Etcd.Voters, c2.Etcd.Voters = 1, 1
	tok, err := appliance.Init(ctx, c1, time.Hour, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	const validity = 30 * time.Second
	shortLived := func(n *appliance.Node) { appliance.SetCertRenewal(n, 200*time.Millisecond, validity) }
	n1, stop1 := startWith(t, c1, shortLived)
	if err := appliance.Join(ctx, c2, ips[0]+":7948", tok.String(), testLogger(t)); err != nil {
		t.Fatal(err)
	}
	n2, stop2 := startWith(t, c2, shortLived)
	waitStatus(t, n1, "two nodes alive", func(s appliance.Status) bool { return alive(s) == 2 })

	// Certificates that expire in 30 s, then restarts on them: from now
	// on nothing presents the year-long ones made at init and join.
	var expire time.Time
	for _, n := range []*appliance.Node{n1, n2} {
		if err := appliance.RenewCert(ctx, n); err != nil {
			t.Fatal(err)
		}
		expire = later(expire, appliance.CertNotAfter(n))
	}
	stop2()
	stop1()
	n1, _ = startWith(t, c1, shortLived)
	n2, stop2 = startWith(t, c2, shortLived)
	for _, n := range []*appliance.Node{n1, n2} {
		if got := appliance.CertNotAfter(n); got.After(expire) {
			t.Fatalf("restarted with a certificate valid until %v, not the one expiring at %v", got, expire)
		}
	}

	// Renewed when a third of their validity is left.
	deadline := expire.Add(time.Second)
	for appliance.CertNotAfter(n1).Compare(expire) <= 0 || appliance.CertNotAfter(n2).Compare(expire) <= 0 {
		if time.Now().After(deadline) {
			t.Fatalf("certificates not renewed before they expired at %v: n1 until %v, n2 until %v",
				expire, appliance.CertNotAfter(n1), appliance.CertNotAfter(n2))
		}
		time.Sleep(100 * time.Millisecond) // poll interval
	}
	if st, err := n1.Status(ctx); err != nil || st.CertValidUntil == nil || !st.CertValidUntil.After(expire) || st.CertRenewalError != "" {
		t.Errorf("status after the renewal: certificate valid until %v (%q), %v", st.CertValidUntil, st.CertRenewalError, err)
	}
	for _, f := range []string{
		filepath.Join(c1.DataDir, "cluster/node.pem"), filepath.Join(c1.DataDir, "etcd/tls/cert.pem"),
		filepath.Join(c2.DataDir, "cluster/node.pem"),
	} {
		if got := certFileNotAfter(t, f); !got.After(expire) {
			t.Errorf("%s expires %v: not renewed", f, got)
		}
	}
	// Once the certificates they restarted on have expired, what
	// connects must present renewed ones.
	for time.Now().Before(expire.Add(time.Second)) {
		time.Sleep(100 * time.Millisecond) // waiting for a time of day
	}
	stop2()
	n2 = serve(t, c2)
	waitStatus(t, n1, "n2 back", func(s appliance.Status) bool { return alive(s) == 2 })
	v := mount(t, n2)
	writeAll(t, v, "/after-renewal.bin", make([]byte, 2<<20))
	wh, err := n2.Where(ctx, "/after-renewal.bin")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range wh.Chunks {
		if len(c.Holders) != 2 {
			t.Errorf("chunk %d held by %v; want both nodes", c.Index, c.Holders)
		}
	}
}

// startWith starts a node from cfg, calls before on it before it serves,
// and returns a function that stops it (also called when the test ends,
// if not before).
func startWith(t *testing.T, cfg appliance.Config, before func(*appliance.Node)) (*appliance.Node, func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	n, err := appliance.Start(ctx, cfg, testLogger(t))
	if err != nil {
		cancel()
		t.Fatalf("start %s (%s): %v", cfg.Node.ID, cfg.DataDir, err)
	}
	before(n)
	done := make(chan error, 1)
	go func() { done <- n.Serve(ctx) }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve %s (%s): %v", cfg.Node.ID, cfg.DataDir, err)
		}
		n.Close()
	}
	t.Cleanup(stop)
	return n, stop
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// certFileNotAfter is the expiry of the first certificate in the PEM
// file at path.
func certFileNotAfter(t *testing.T, path string) time.Time {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(b)
	if block == nil {
		t.Fatalf("%s: no PEM", path)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return c.NotAfter
}
