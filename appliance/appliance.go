// Package appliance is Wormhole's only composition root: it loads the one
// configuration file, starts the components in order (data directory, NFS
// listener, embedded etcd, namespace, chunk store, NFS front), and stops
// them in reverse. It holds no file system logic of its own.
//
// Only cmd/wormhole imports this package.
package appliance

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/wormhole-fs/wormhole/chunker"
	"github.com/wormhole-fs/wormhole/chunker/chunk"
	"github.com/wormhole-fs/wormhole/chunker/scrub"
	"github.com/wormhole-fs/wormhole/cluster/pki"
	"github.com/wormhole-fs/wormhole/cluster/posture"
	"github.com/wormhole-fs/wormhole/etcdmeta"
	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
	"github.com/wormhole-fs/wormhole/nfsfront"
)

// Node is a running single Wormhole node.
type Node struct {
	cfg     Config
	log     zerolog.Logger
	lis     *nfsfront.Listeners
	etcd    *etcdmeta.Embedded
	store   *chunker.LocalStore
	files   *chunker.Files
	nfs     *nfsfront.Server
	ns      *etcdmeta.Store
	started time.Time
	closers []func() error

	// cl is nil for a single node, which keeps every chunk on its own
	// disk; a node of a cluster made by `wormhole init` or `wormhole join`
	// holds its cluster parts there.
	cl *clusterNode
	// underReplicated counts the chunks found below their redundancy.
	underReplicated atomic.Uint64
	// gate applies the cluster's crisis posture to NFS requests; nil on
	// a single node.
	gate *postureGate
	// scrub re-reads this node's chunks; nil when scrub.rate is 0.
	scrub *scrub.Scrubber

	admin      net.Listener // nil when admin.addr is empty
	adminToken string
}

// NewLogger builds the root logger the configuration asks for.
func NewLogger(cfg LogConfig, w io.Writer) (zerolog.Logger, error) {
	lvl, err := zerolog.ParseLevel(cfg.Level)
	if err != nil {
		return zerolog.Nop(), fmt.Errorf("log.level %q: %w", cfg.Level, err)
	}
	if cfg.Format == "console" {
		w = zerolog.ConsoleWriter{Out: w, TimeFormat: time.DateTime, NoColor: !isTerminal(w)}
	}
	return zerolog.New(w).Level(lvl).With().Timestamp().Logger(), nil
}

// isTerminal reports whether w is a terminal; colours are for people
// watching one, not for log files and journals.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// Start brings a node up. On any error everything started so far is
// stopped again and the error says what failed and what to do.
func Start(ctx context.Context, cfg Config, log zerolog.Logger) (_ *Node, err error) {
	n := &Node{cfg: cfg, log: log, started: time.Now()}
	defer func() {
		if err != nil {
			n.Close()
		}
	}()
	dataDir, err := prepareDataDir(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	// Bind the NFS port (TCP and UDP) and the portmapper before starting
	// anything heavy: a taken port is the most common start failure.
	n.lis, err = nfsfront.Listen(cfg.NFS.Addr, cfg.NFS.PortmapAddr)
	if err != nil {
		return nil, err
	}
	n.closers = append(n.closers, func() error { return ignoreClosed(n.lis.Close()) })
	if cfg.Admin.Addr != "" {
		if n.admin, err = listenAdmin(cfg.Admin.Addr); err != nil {
			return nil, err
		}
		n.closers = append(n.closers, func() error { return ignoreClosed(n.admin.Close()) })
		if n.adminToken, err = loadAdminToken(filepath.Join(dataDir, "admin.token")); err != nil {
			return nil, err
		}
	}

	st, clustered, err := loadState(dataDir)
	if err != nil {
		return nil, err
	}
	var (
		secret []byte
		cli    *clientv3.Client
	)
	clusterID := cfg.ClusterID
	if clustered {
		if cfg.Node.ID != "" && cfg.Node.ID != st.NodeID {
			return nil, fmt.Errorf("node.id is %s but data dir %s belongs to node %s: fix node.id", cfg.Node.ID, dataDir, st.NodeID)
		}
		if err := checkAdvertise(cfg.Node.Advertise); err != nil {
			return nil, err
		}
		n.cl = &clusterNode{st: st, adv: cfg.Node.Advertise,
			renewal: certRenewal{every: certCheckInterval, validity: pki.DefaultNodeValidity}}
		if n.cl.id, err = loadIdentity(dataDir); err != nil {
			return nil, err
		}
		if err := n.cl.listen(cfg); err != nil {
			return nil, err
		}
		n.closers = append(n.closers, func() error {
			// Serve closes them; closing again only matters when it never ran.
			ignoreClosed(n.cl.peerLis.Close())
			return ignoreClosed(n.cl.joinLis.Close())
		})
		secret, clusterID = n.cl.id.secret, st.ClusterID
		if cli, err = n.startClusterEtcd(ctx, dataDir); err != nil {
			return nil, err
		}
	} else {
		if secret, err = loadSecret(secretPath(dataDir)); err != nil {
			return nil, err
		}
		n.etcd, err = etcdmeta.StartEmbedded(ctx, etcdmeta.EmbedConfig{
			Dir:                 filepath.Join(dataDir, "etcd"),
			QuotaBytes:          cfg.Etcd.QuotaBytes,
			CompactionRetention: cfg.Etcd.CompactionRetention,
		}, log.With().Str("component", "etcd").Logger())
		if err != nil {
			return nil, err
		}
		n.closers = append(n.closers, n.etcd.Close)
		cli = n.etcd.Client()
	}

	var nsOpts []etcdmeta.Option
	if !clustered {
		// This process is the namespace's only writer, and its embedded
		// etcd (one member) is locked to it.
		nsOpts = append(nsOpts, etcdmeta.WithExclusiveCache(cfg.Etcd.CacheEntries), etcdmeta.WithSoleMember())
	}
	ns, err := etcdmeta.New(ctx, cli, clusterID, log.With().Str("component", "meta").Logger(), nsOpts...)
	if err != nil {
		return nil, fmt.Errorf("namespace: %w", err)
	}
	n.ns = ns

	if _, err := ns.ChunkSize(ctx, uint64(cfg.Chunks.Size)); err != nil {
		return nil, fmt.Errorf("chunks.size: %w (set chunks.size back; the chunk size is fixed when a namespace is created)", err)
	}

	n.store, err = chunker.OpenLocal(filepath.Join(dataDir, "chunks"), log.With().Str("component", "chunks").Logger())
	if err != nil {
		return nil, err
	}
	n.closers = append(n.closers, n.store.Close)
	n.store.SetOpenCache(cfg.Chunks.OpenFiles, cfg.Chunks.OpenBytes)
	var (
		blobs chunker.Blobs = n.store
		usage usageReporter = n.store
	)
	if clustered {
		if err := n.startCluster(ctx); err != nil {
			return nil, err
		}
		blobs, usage = n.cl.replica, clusterUsage{n.cl.members, cfg.Redundancy.Copies}
	}
	if cfg.Scrub.Rate > 0 {
		n.scrub = scrub.New(scrub.Config{
			Rate: cfg.Scrub.Rate, Interval: cfg.Scrub.Interval, Delay: cfg.Scrub.Delay, QuarantineKeep: cfg.Scrub.QuarantineKeep,
		},
			n.store, n.badChunk, log.With().Str("component", "scrub").Logger())
		// A copy a read finds damaged is checked and set aside at once,
		// so that repair restores it without waiting for a pass.
		n.store.SetOnCorrupt(n.scrub.Suspect)
	}
	files := chunker.NewFiles(ns, blobs, cfg.Chunks.Size, log.With().Str("component", "files").Logger())
	files.SetWriteBack(cfg.Chunks.WriteBack)
	switch {
	case !cfg.Chunks.WriteBehind:
	case cfg.Repair.OrphanGrace < minGraceForWriteBehind:
		log.Info().Dur("orphan_grace", cfg.Repair.OrphanGrace).
			Msg("chunks.write_behind is off: repair.orphan_grace is under a minute")
	default:
		// An early copy waits for its commit as a chunk no file refers
		// to: it is used only well within the orphan collection's grace.
		files.SetWriteBehind(cfg.Repair.OrphanGrace / 2)
	}
	n.files = files

	exports, err := cfg.NFS.nfsExports()
	if err != nil {
		return nil, err
	}
	var gate nfsfront.Gate
	if n.gate != nil {
		gate = n.gate
	}
	n.nfs, err = nfsfront.New(nfsfront.Config{Gate: gate, Locks: etcdLocks{ns},
		OpTimeout: cfg.NFS.OpTimeout, MaxRecord: nfsfront.DefaultConfig().MaxRecord, Exports: exports,
		MaxConns: cfg.NFS.MaxConnections, MaxConnsPerClient: cfg.NFS.MaxConnectionsPerClient, IdleTimeout: cfg.NFS.IdleTimeout,
	}, ns, dataPath{files, usage, n.gate}, secret, log.With().Str("component", "nfs").Logger())
	if err != nil {
		return nil, err
	}
	return n, nil
}

// usageReporter reports the capacity NFS clients see.
type usageReporter interface {
	Usage() (total, free uint64, err error)
}

// dataPath joins the byte layer and the capacity report into the front's
// Data interface.
type dataPath struct {
	*chunker.Files
	usageReporter
	// gate, in a cluster, tells whether the situation is critical.
	gate *postureGate
}

// errNoLiveCopy is a read of a chunk no node that is up holds, while the
// cluster is critical: the client gets an I/O error (it is not wrapped,
// so it does not map to "try again later").
var errNoLiveCopy = errors.New("no live copy of this data: the nodes that hold it are down")

// ReadAt reads through Files. A chunk whose holders are down is "try again
// later" (clients wait for the node), except when the cluster is critical
// (data is missing past the repair grace, or etcd lost its quorum): then
// it is an I/O error, never a wait without end nor wrong bytes.
func (d dataPath) ReadAt(ctx context.Context, ino meta.Ino, size uint64, p []byte, off int64) (int, error) {
	n, err := d.Files.ReadAt(ctx, ino, size, p, off)
	return n, d.readErr(ino, err)
}

// ReadView lends file bytes in place (Files.ReadView), its errors seen as
// ReadAt's are.
func (d dataPath) ReadView(ctx context.Context, ino meta.Ino, size uint64, off int64, n int) ([]byte, func(), bool, error) {
	data, release, ok, err := d.Files.ReadView(ctx, ino, size, off, n)
	return data, release, ok, d.readErr(ino, err)
}

// readErr is the error a read of ino gives the front for err.
func (d dataPath) readErr(ino meta.Ino, err error) error {
	if err != nil && d.gate != nil && errors.Is(err, chunk.ErrUnavailable) {
		if a := d.gate.cur.Load(); a != nil && a.Situation == posture.Critical {
			return fmt.Errorf("read inode %d: %w (%v)", ino, errNoLiveCopy, err)
		}
	}
	return err
}

// NFSAddr is the address the NFS front listens on.
func (n *Node) NFSAddr() net.Addr { return n.lis.Addr() }

// PortmapAddr is the portmapper's address, or nil when it is disabled.
func (n *Node) PortmapAddr() net.Addr { return n.lis.PortmapAddr() }

// AdminAddr is the admin API's address, or nil when it is disabled.
func (n *Node) AdminAddr() net.Addr {
	if n.admin == nil {
		return nil
	}
	return n.admin.Addr()
}

// Serve serves NFS and the admin API until ctx ends, or until one of them
// or the embedded etcd fails, which stops the others.
func (n *Node) Serve(ctx context.Context) error {
	ev := n.log.Info().Str("nfs", n.lis.Addr().String()).Str("data_dir", n.cfg.DataDir)
	if n.admin != nil {
		ev = ev.Str("admin", n.admin.Addr().String())
	}
	ev.Msg("wormhole serving")
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, 3)
	var errMu sync.Mutex
	var more []error // failures of the cluster services
	if n.cl != nil {
		n.serveCluster(ctx, &wg, func(err error) {
			errMu.Lock()
			more = append(more, err)
			errMu.Unlock()
			cancel()
		})
	}
	if n.scrub != nil {
		wg.Go(func() {
			if err := n.scrub.Run(ctx); err != nil {
				n.log.Error().Err(err).Msg("scrub stopped")
			}
		})
	}
	wg.Go(func() {
		if errs[0] = n.nfs.Serve(ctx, n.lis); errs[0] != nil {
			cancel()
		}
		// Writes clients sent UNSTABLE and have not committed yet are
		// stored before stopping (clients would send them again, after
		// the restart, but only if they are still there).
		cctx, ccancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownGrace/2)
		if err := n.files.CommitAll(cctx); err != nil {
			n.log.Warn().Err(err).Msg("uncommitted writes not stored at shutdown")
		}
		ccancel()
	})
	if age := n.cfg.Chunks.WriteBackAge; age > 0 && n.cfg.Chunks.WriteBack > 0 {
		wg.Go(func() { n.commitOld(ctx, age) })
	}
	if n.admin != nil {
		h := n.adminHandler(n.adminToken, n.metrics())
		wg.Go(func() {
			if errs[1] = n.serveAdmin(ctx, n.admin, h); errs[1] != nil {
				cancel()
			}
		})
	}
	select {
	case <-ctx.Done():
	case err := <-n.etcdErr():
		// etcd stopped under us: stop serving rather than answer wrongly.
		errs[2] = fmt.Errorf("embedded etcd stopped: %w", err)
		cancel()
	}
	cancel()
	n.waitStopped(&wg)
	return errors.Join(append(errs, more...)...)
}

// commitOld commits, until ctx ends, the UNSTABLE writes that waited
// longer than age for their client's COMMIT. It looks every quarter of
// age, so none waits much longer than that.
func (n *Node) commitOld(ctx context.Context, age time.Duration) {
	t := time.NewTicker(max(age/4, 100*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			k, err := n.files.CommitOlder(ctx, now.Add(-age))
			if err != nil && ctx.Err() == nil {
				n.log.Warn().Err(err).Dur("age", age).Msg("write-back: committing writes no client committed")
			}
			if k > 0 {
				n.log.Info().Int("files", k).Dur("age", age).Msg("write-back: committed writes no client committed")
			}
		}
	}
}

// minGraceForWriteBehind is the shortest repair.orphan_grace with which
// write-behind runs: its early copies are used for half the grace, which
// must leave a wide margin for the commit that refers to them.
const minGraceForWriteBehind = time.Minute

// shutdownGrace is how long Serve waits for its components to stop
// before it closes the etcd client under them.
const shutdownGrace = 10 * time.Second

// waitStopped waits for the components to stop. Some wait on etcd (an
// election's resignation, a lease): when etcd cannot be reached they
// would wait for ever, so after shutdownGrace the etcd client is closed,
// which ends their calls.
func (n *Node) waitStopped(wg *sync.WaitGroup) {
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return
	case <-time.After(shutdownGrace):
	}
	n.log.Warn().Dur("after", shutdownGrace).Msg("still stopping (is etcd unreachable?): closing the etcd client")
	if n.ns != nil {
		_ = n.ns.Client().Close()
	}
	<-done
}

// badChunk hears of a damaged copy the scrubber set aside: in a cluster
// the repair worker copies a good one back.
func (n *Node) badChunk(id chunk.ID, reason string) {
	if n.cl != nil {
		n.kickRepair()
	}
}

// etcdErr reports the embedded etcd's failure; nil (never ready) when the
// node runs no member.
func (n *Node) etcdErr() <-chan error {
	if n.etcd == nil {
		return nil
	}
	return n.etcd.Err()
}

// Close stops every component in reverse start order. It is idempotent.
func (n *Node) Close() error {
	var errs []error
	for i := len(n.closers) - 1; i >= 0; i-- {
		errs = append(errs, n.closers[i]())
	}
	n.closers = nil
	return errors.Join(errs...)
}

func ignoreClosed(err error) error {
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// prepareDataDir makes the data directory and proves it is writable, so
// an unusable directory fails before anything starts.
func prepareDataDir(dir string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("data dir %s: %w", dir, err)
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return "", fmt.Errorf("data dir %s cannot be created: %w (choose another with --data-dir)", abs, err)
	}
	probe, err := os.CreateTemp(abs, ".probe-*")
	if err != nil {
		return "", fmt.Errorf("data dir %s is not writable: %w (fix its permissions or choose another with --data-dir)", abs, err)
	}
	probe.Close()
	os.Remove(probe.Name())
	return abs, nil
}

// loadSecret reads the key that authenticates file handles, creating it on
// first start.
func loadSecret(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		if len(b) < 32 {
			return nil, fmt.Errorf("handle key %s is %d bytes, want 32: restore it from a backup, or delete it to invalidate every client's file handles", path, len(b))
		}
		return b, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("handle key %s: %w", path, err)
	}
	b = make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	if err := writeAtomic(path, b); err != nil {
		return nil, fmt.Errorf("handle key: %w", err)
	}
	return b, nil
}

func writeFileSync(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// syncDir makes a rename in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
