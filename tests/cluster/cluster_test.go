package cluster

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	nfsc "github.com/willscott/go-nfs-client/nfs"
)

// chunkSize is the default chunk size the nodes run with.
const chunkSize = 1 << 20

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// firstDiff describes where got and want first differ.
func firstDiff(got, want []byte) string {
	for i := range min(len(got), len(want)) {
		if got[i] != want[i] {
			return fmt.Sprintf("first difference at byte %d of %d (got %d bytes)", i, len(want), len(got))
		}
	}
	return fmt.Sprintf("got %d bytes, want %d", len(got), len(want))
}

func TestThreeNodesOneNamespace(t *testing.T) {
	c := newCluster(t, options{nodes: 3, voters: 3, copies: 2})
	c.start()

	v1 := c.node(1).mount()
	data := randomBytes(t, 6<<20+12345) // 7 chunks, the last one partial
	if err := writeFile(v1, "/big", data); err != nil {
		t.Fatalf("through n1: %v", err)
	}
	attr1, fh1, err := lookup(v1, "/big")
	if err != nil {
		t.Fatalf("through n1: %v", err)
	}
	if attr1.Filesize != uint64(len(data)) {
		t.Fatalf("through n1: size %d, wrote %d bytes", attr1.Filesize, len(data))
	}

	mounts := map[int]*nfsc.Target{}
	for _, i := range []int{2, 3} {
		v := c.node(i).mount()
		mounts[i] = v
		got, attr, err := readFile(v, "/big")
		if err != nil {
			t.Fatalf("through n%d: %v", i, err)
		}
		if !bytes.Equal(got, data) {
			t.Errorf("through n%d: content differs from what n1 wrote: %s", i, firstDiff(got, data))
		}
		if attr.Filesize != attr1.Filesize || attr.Fileid != attr1.Fileid {
			t.Errorf("through n%d: size %d, file id %d; through n1: size %d, file id %d", i, attr.Filesize, attr.Fileid, attr1.Filesize, attr1.Fileid)
		}
	}

	// A handle issued by n1 works on n2, as after a client fails over.
	attr2, err := within(20*time.Second, "GETATTR", func() (*nfsc.Fattr, error) { return mounts[2].GetAttr(fh1) })
	if err != nil {
		t.Fatalf("n1's handle on n2: GETATTR: %v", err)
	}
	if attr2.Fileid != attr1.Fileid || attr2.Filesize != attr1.Filesize {
		t.Errorf("n1's handle on n2: file id %d size %d, want %d %d", attr2.Fileid, attr2.Filesize, attr1.Fileid, attr1.Filesize)
	}
	got, err := readByHandle(mounts[2], fh1, len(data))
	if err != nil {
		t.Fatalf("n1's handle on n2: %v", err)
	}
	if !bytes.Equal(got, data) {
		t.Errorf("n1's handle on n2: %s", firstDiff(got, data))
	}

	wantChunks := (len(data) + chunkSize - 1) / chunkSize
	st := c.node(1).waitStatus(30*time.Second, "3 alive nodes", allAlive(c.ids()...))
	if st.Redundancy.Copies != 2 {
		t.Errorf("status: redundancy.copies %d, want 2", st.Redundancy.Copies)
	}

	// The census sees every chunk of /big at its redundancy.
	if st, out, err := c.node(1).pollStatus(30*time.Second, func(st status) bool {
		return st.Chunks != nil && st.Chunks.Below == 0 && st.Chunks.On+st.Chunks.Above >= wantChunks
	}); err != nil {
		if st.Chunks == nil {
			err = fmt.Errorf("%w; the status has no \"chunks\" census", err)
		}
		t.Errorf("status never showed no chunk below redundancy and %d on or above: %v\n%s", wantChunks, err, out)
	} else {
		t.Logf("status: chunks %+v", *st.Chunks)
	}

	// Every chunk is held by two different nodes.
	w := c.node(1).waitWhere(30*time.Second, "/big", func(w where) error {
		if len(w.Chunks) != wantChunks {
			return fmt.Errorf("%d chunks listed, want %d", len(w.Chunks), wantChunks)
		}
		for _, ch := range w.Chunks {
			if err := distinctNodes(c, ch.Holders, 2); err != nil {
				return fmt.Errorf("chunk %d (%s) holders %v: %v", ch.Index, ch.ID, ch.Holders, err)
			}
		}
		return nil
	})
	for _, ch := range w.Chunks {
		t.Logf("where /big: chunk %d %s targets %v holders %v", ch.Index, ch.ID, ch.Targets, ch.Holders)
	}
}

// distinctNodes checks that ids names n different nodes of c.
func distinctNodes(c *cluster, ids []string, n int) error {
	known := map[string]bool{}
	for _, id := range c.ids() {
		known[id] = true
	}
	seen := map[string]bool{}
	for _, id := range ids {
		if !known[id] {
			return fmt.Errorf("unknown node %q", id)
		}
		seen[id] = true
	}
	if len(ids) != n || len(seen) != n {
		return fmt.Errorf("want %d different nodes", n)
	}
	return nil
}

// waitWhere polls `wormhole where --json path` until check accepts it,
// and fails the test with the last answer when d passes first.
func (n *node) waitWhere(d time.Duration, path string, check func(where) error) where {
	n.c.t.Helper()
	deadline := time.Now().Add(d)
	for {
		var w where
		out, err := n.jsonCommand(&w, "where", path)
		if err == nil {
			if err = check(w); err == nil {
				return w
			}
		}
		if time.Now().After(deadline) {
			n.c.t.Fatalf("%s: where %s: %v\n%s", n.id, path, err, out)
		}
		time.Sleep(250 * time.Millisecond) // poll interval, not a wait for an event
	}
}

func TestFiveNodes(t *testing.T) {
	c := newCluster(t, options{nodes: 5, voters: 3, copies: 2})
	c.start()

	// The first three nodes are etcd voters, the others clients only.
	st := c.node(1).waitStatus(30*time.Second, "5 alive nodes", allAlive(c.ids()...))
	for _, n := range st.Nodes {
		want := "voter"
		if n.ID == "n4" || n.ID == "n5" {
			want = "client"
		}
		if n.Etcd != want {
			t.Errorf("status: %s has etcd role %q, want %q", n.ID, n.Etcd, want)
		}
	}

	data := randomBytes(t, 3<<20+777)
	if err := writeFile(c.node(4).mount(), "/from-n4", data); err != nil {
		t.Fatalf("through n4: %v", err)
	}
	for _, i := range []int{5, 1} {
		got, attr, err := readFile(c.node(i).mount(), "/from-n4")
		if err != nil {
			t.Fatalf("through n%d: %v", i, err)
		}
		if !bytes.Equal(got, data) || attr.Filesize != uint64(len(data)) {
			t.Errorf("through n%d: size %d, %s", i, attr.Filesize, firstDiff(got, data))
		}
	}
}

// ackedFile is a file whose every write and commit the server
// acknowledged.
type ackedFile struct {
	name string
	size int
	sum  [sha256.Size]byte
}

// writer writes files through one node in a loop, retrying a file until
// the server acknowledges all of it.
type writer struct {
	addr string

	mu      sync.Mutex
	acked   []ackedFile
	retries []string // errors that were retried
}

func (w *writer) ackedCount() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.acked)
}

// payload is file i's content: sizes vary around the chunk size, so files
// end inside chunks and span several.
func payload(i int) []byte {
	b := make([]byte, 96<<10+(i*389<<10)%(3*chunkSize/2))
	rand.Read(b)
	return b
}

// run writes /w0000, /w0001, ... until stop is closed. A failed file is
// written again from the start over a fresh mount (retryable errors such
// as NFS3ERR_JUKEBOX are expected while the cluster notices a dead node);
// run gives up when one file cannot be written for retryFor.
func (w *writer) run(stop <-chan struct{}, retryFor time.Duration) error {
	var v *nfsc.Target
	closeMount := func() {}
	defer func() { closeMount() }()
	for i := 0; ; i++ {
		select {
		case <-stop:
			return nil
		default:
		}
		name := fmt.Sprintf("/w%04d", i)
		data := payload(i)
		giveUp := time.Now().Add(retryFor)
		for {
			var err error
			if v == nil {
				var m mounted
				if m, err = mountWithin(w.addr, 20*time.Second); err == nil {
					v, closeMount = m.v, m.close
				}
			}
			if err == nil {
				err = writeFile(v, name, data)
			}
			if err == nil {
				w.mu.Lock()
				w.acked = append(w.acked, ackedFile{name: name, size: len(data), sum: sha256.Sum256(data)})
				w.mu.Unlock()
				break
			}
			w.mu.Lock()
			w.retries = append(w.retries, fmt.Sprintf("%s %s: %v", time.Now().Format("15:04:05.000"), name, err))
			w.mu.Unlock()
			if time.Now().After(giveUp) {
				return fmt.Errorf("%s not written in %v: %w", name, retryFor, err)
			}
			// A fresh mount: the old connection may be stuck or broken.
			// Unmounting may block on a stuck one, so it is not waited for.
			go closeMount()
			v, closeMount = nil, func() {}
			time.Sleep(200 * time.Millisecond) // back off before retrying, as a client does on JUKEBOX
		}
	}
}

// waitAcked waits until the writer has n acknowledged files, and fails
// the test if the writer stops or d passes first.
func waitAcked(t *testing.T, w *writer, finished <-chan struct{}, runErr *error, n int, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for w.ackedCount() < n {
		select {
		case <-finished:
			t.Fatalf("writer stopped after %d files: %v", w.ackedCount(), *runErr)
		case <-time.After(50 * time.Millisecond): // poll interval
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d files acknowledged within %v", w.ackedCount(), n, d)
		}
	}
}

func TestKillNodeDuringIO(t *testing.T) {
	c := newCluster(t, options{nodes: 3, voters: 3, copies: 2})
	c.start()
	c.node(1).waitStatus(30*time.Second, "3 alive nodes", allAlive(c.ids()...))

	w := &writer{addr: c.node(1).nfsAddr()}
	stop := make(chan struct{})
	finished := make(chan struct{})
	var runErr error // set before finished is closed
	go func() {
		defer close(finished)
		runErr = w.run(stop, 45*time.Second)
	}()
	var stopOnce sync.Once
	stopWriter := func() error {
		stopOnce.Do(func() { close(stop) })
		select {
		case <-finished:
			return runErr
		case <-time.After(90 * time.Second):
			return fmt.Errorf("writer did not stop within 90 s")
		}
	}
	defer func() { _ = stopWriter() }()

	t0 := time.Now()
	waitAcked(t, w, finished, &runErr, 8, 90*time.Second)
	before := w.ackedCount()
	c.node(3).proc.Kill9()
	t.Logf("%v killed n3 (kill -9) after %d acknowledged files", time.Since(t0).Round(time.Millisecond), before)
	waitAcked(t, w, finished, &runErr, before+8, 90*time.Second)
	t.Logf("%v %d files acknowledged", time.Since(t0).Round(time.Millisecond), w.ackedCount())
	// Writes go on once the cluster knows n3 is dead, too.
	c.node(1).waitStatus(30*time.Second, "n3 dead", func(st status) bool {
		s := st.states()
		return s["n3"] == "dead" && s["n1"] == "alive" && s["n2"] == "alive"
	})
	dead := w.ackedCount()
	t.Logf("%v n1 reports n3 dead after %d acknowledged files", time.Since(t0).Round(time.Millisecond), dead)
	waitAcked(t, w, finished, &runErr, dead+4, 90*time.Second)
	t.Logf("%v %d files acknowledged, stopping the writer", time.Since(t0).Round(time.Millisecond), w.ackedCount())
	if err := stopWriter(); err != nil {
		t.Fatal(err)
	}
	w.mu.Lock()
	acked, retries := append([]ackedFile(nil), w.acked...), append([]string(nil), w.retries...)
	w.mu.Unlock()
	t.Logf("%d files acknowledged, %d retried errors", len(acked), len(retries))
	for _, r := range retries[:min(len(retries), 20)] {
		t.Logf("  retried: %s", r)
	}

	var st status
	if _, err := c.node(1).jsonCommand(&st, "status"); err == nil && st.Chunks != nil {
		t.Logf("status with n3 dead: chunks %+v", *st.Chunks)
	}

	for _, i := range []int{1, 2} {
		v := c.node(i).mount()
		bad := 0
		for _, f := range acked {
			got, _, err := readFile(v, f.name)
			switch {
			case err != nil:
				t.Errorf("through n%d: acknowledged %s: %v", i, f.name, err)
			case len(got) != f.size || sha256.Sum256(got) != f.sum:
				t.Errorf("through n%d: acknowledged %s: %d bytes with other content, wrote %d", i, f.name, len(got), f.size)
			default:
				continue
			}
			if bad++; bad == 5 {
				t.Fatalf("through n%d: giving up after 5 bad files", i)
			}
		}
	}
}

func TestJoinRefused(t *testing.T) {
	c := newCluster(t, options{nodes: 2, voters: 3, copies: 2})
	c.init()
	n1, n2 := c.node(1), c.node(2)
	n1.serve()
	n1.waitServing(60 * time.Second)

	// A token of the right form whose secret is wrong.
	parts := strings.Split(c.token, ".")
	secret := make([]byte, 32)
	rand.Read(secret)
	parts[2] = base64.RawURLEncoding.EncodeToString(secret)
	wrong := strings.Join(parts, ".")
	r := n2.join(wrong)
	if r.Err == nil {
		t.Fatalf("join with a wrong token succeeded:\nstdout: %s\nstderr: %s", r.Stdout, r.Stderr)
	}
	if !strings.Contains(strings.ToLower(r.Stderr), "token") {
		t.Errorf("join with a wrong token: stderr does not mention the token:\n%s", r.Stderr)
	}
	if strings.Contains(r.Stderr+r.Stdout, parts[2]) {
		t.Errorf("join with a wrong token: the token's secret is printed:\n%s%s", r.Stdout, r.Stderr)
	}
	if _, err := os.Stat(filepath.Join(n2.dir, "cluster", "state.json")); !os.IsNotExist(err) {
		t.Errorf("refused join left cluster state in %s (%v)", n2.dir, err)
	}
	t.Logf("wrong token: exit %d: %s", r.ExitCode, strings.TrimSpace(r.Stderr))

	// n1 holds a chunk; the data port gives it to no one without the
	// cluster's certificate.
	id := strings.Repeat("ab", 32)
	if err := writeFile(n1.mount(), "/secret", randomBytes(t, 4096)); err != nil {
		t.Fatal(err)
	}
	var w where
	if out, err := n1.jsonCommand(&w, "where", "/secret"); err != nil || len(w.Chunks) == 0 {
		t.Logf("where /secret: %v %s (asking for a made-up chunk id instead)", err, out)
	} else {
		id = w.Chunks[0].ID
	}
	addr := n1.host.Addr(dataPort)
	if how, err := fetchChunk(addr, id, nil); err != nil {
		t.Error(err)
	} else {
		t.Logf("no certificate: %s", how)
	}
	stranger := selfSignedCert(t)
	if how, err := fetchChunk(addr, id, &stranger); err != nil {
		t.Errorf("with a certificate of another CA: %v", err)
	} else {
		t.Logf("certificate of another CA: %s", how)
	}
}

// fetchChunk asks the data port at addr for a chunk over TLS that does
// not check the server, presenting cert (nil: none). The handshake must be
// refused, or the request rejected with a 4xx status: fetchChunk says how
// it was refused, or returns an error when it was not.
func fetchChunk(addr, id string, cert *tls.Certificate) (string, error) {
	conf := &tls.Config{InsecureSkipVerify: true}
	if cert != nil {
		// Sent whatever CAs the server asks for (with Certificates, Go
		// would send none that the server's CA list does not match).
		conf.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
	}
	d := &net.Dialer{Timeout: 5 * time.Second}
	conn, err := tls.DialWithDialer(d, "tcp", addr, conf)
	if err != nil {
		return fmt.Sprintf("handshake refused: %v", err), nil
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	req := fmt.Sprintf("GET /v1/chunks/%s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", id, addr)
	if _, err := io.WriteString(conn, req); err != nil {
		// TLS 1.3: the server's refusal arrives after the client's
		// handshake is done.
		return fmt.Sprintf("refused after the handshake: %v", err), nil
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return "", fmt.Errorf("data port %s: no answer and no refusal within 10 s", addr)
		}
		return fmt.Sprintf("refused after the handshake: %v", err), nil
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode >= 400 && resp.StatusCode < 500 {
		return "answered " + resp.Status, nil
	}
	return "", fmt.Errorf("data port %s without the cluster's certificate: GET chunk %s answered %s with %d bytes", addr, id, resp.Status, len(body))
}

// selfSignedCert makes a client certificate no cluster CA signed.
func selfSignedCert(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "n1"},
		DNSNames:     []string{"n1"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}
