package etcdmeta

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3client"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Defaults for EmbedConfig.
const (
	// DefaultQuotaBytes is the backend quota of the embedded etcd (2 GiB,
	// etcd's own default). Past it etcd raises a NOSPACE alarm and the
	// Store returns meta.ErrNoSpace for writes.
	DefaultQuotaBytes = 2 << 30
	// DefaultName is the member name of the embedded etcd.
	DefaultName = "wormhole"
	// DefaultMaxTxnOps is the per-transaction operation limit the embedded
	// etcd is started with (etcd's default of 128 is too small for a
	// CommitWrite of many chunk references).
	DefaultMaxTxnOps = 10000
	// DefaultCompactionRetention is how much history auto-compaction keeps
	// (periodic mode: it compacts every period to the revision of one
	// period before, so between one and two periods are kept). Operations
	// read history only within themselves (a snapshot revision, retried
	// when compacted); the history's index lives in memory, so the shorter
	// the period the less memory metadata churn takes.
	DefaultCompactionRetention = time.Minute
	// maxLearners is how many learners an embedded member lets the cluster
	// hold at once: two, so that growing from 3 to 5 voters can promote
	// the fourth while the fifth is waiting (see PromoteWhenReady).
	maxLearners = 2

	// maxUnixPath is the longest usable unix socket path on Linux
	// (sun_path is 108 bytes including the terminating NUL).
	maxUnixPath = 107
)

// EmbedConfig configures an embedded etcd member. The zero value apart
// from Dir starts (or restarts) a single-member cluster that serves
// clients on a unix socket only.
type EmbedConfig struct {
	// Dir holds everything the embedded etcd owns: a lock file, the data
	// (Dir/data), TLS files given as PEM (Dir/tls) and, by default, the
	// client unix sockets. Required.
	Dir string
	// ClientURL is where etcd serves clients (etcdctl, other tools, and
	// nodes of the cluster that run no member). The default,
	// "unix://<Dir>/client.sock" ("unixs://" with TLS), cannot collide with
	// another instance; if that path is too long for a unix socket, or
	// ClientURL is ClientURLNone, etcd serves no clients over the network.
	// A member other nodes must reach as clients needs a TCP URL it is
	// reachable at, such as "https://10.0.0.1:2379". This node itself
	// always talks to its member in process.
	ClientURL string
	// PeerURL is where etcd serves raft peers, and the URL it advertises
	// to them. The default, "http://127.0.0.1:0" ("https://" with TLS),
	// takes a free loopback port: enough for a single node, which never
	// dials itself. A member of a cluster, and a single node that may grow
	// into one, needs the real address and fixed port other members dial,
	// such as "https://10.0.0.1:2380": AddLearner refuses to grow a
	// cluster whose members advertise port 0.
	PeerURL string
	// Join, when not nil, starts a new member of an existing cluster that
	// has already added it as a learner (AddLearner). Leave it nil to start
	// a new single-member cluster, and to restart any member on a data
	// directory that holds its log: the log records the cluster, and etcd
	// then ignores Join. Never start a former member of a cluster on an
	// emptied Dir without Join: it would become a cluster of its own.
	Join *JoinSpec
	// TLS, when not nil, turns on mutual TLS (1.3) for the peer and client
	// listeners: both serve with the node certificate, require a client
	// certificate from the CA, and dial peers with the same certificate.
	// PeerURL and a TCP ClientURL must then be https, a socket ClientURL
	// unixs. Without it everything is plaintext, which is only for tests on
	// loopback or private test networks: production clusters use TLS.
	TLS *EmbedTLS
	// Name is the etcd member name (default DefaultName).
	Name string
	// QuotaBytes is the backend quota in bytes (default DefaultQuotaBytes).
	QuotaBytes int64
	// MaxTxnOps is the most operations per transaction (default
	// DefaultMaxTxnOps).
	MaxTxnOps uint
	// CompactionRetention is how much key history is kept; older revisions
	// are compacted periodically (default DefaultCompactionRetention).
	CompactionRetention time.Duration
	// UnsafeNoFsync skips fsync of etcd's log and database: a crash can
	// lose acknowledged writes. For tests only.
	UnsafeNoFsync bool
}

// ClientURLNone as EmbedConfig.ClientURL turns off etcd's client listener.
const ClientURLNone = "none"

func (c EmbedConfig) withDefaults() EmbedConfig {
	if c.ClientURL == "" {
		c.ClientURL = ClientURLNone
		if p := filepath.Join(c.Dir, "client.sock"); len(p) <= maxUnixPath {
			c.ClientURL = "unix://" + p
			if c.TLS != nil {
				c.ClientURL = "unixs://" + p
			}
		}
	}
	if c.PeerURL == "" {
		c.PeerURL = "http://127.0.0.1:0"
		if c.TLS != nil {
			c.PeerURL = "https://127.0.0.1:0"
		}
	}
	if c.Name == "" {
		c.Name = DefaultName
	}
	if c.QuotaBytes == 0 {
		c.QuotaBytes = DefaultQuotaBytes
	}
	if c.MaxTxnOps == 0 {
		c.MaxTxnOps = DefaultMaxTxnOps
	}
	if c.CompactionRetention == 0 {
		c.CompactionRetention = DefaultCompactionRetention
	}
	return c
}

// Validate reports whether c (after defaults) can be started.
func (c EmbedConfig) Validate() error {
	if c.Dir == "" {
		return errors.New("embedded etcd: Dir is required")
	}
	if !filepath.IsAbs(c.Dir) {
		return fmt.Errorf("embedded etcd: Dir %q must be an absolute path", c.Dir)
	}
	c = c.withDefaults()
	if c.QuotaBytes < 0 {
		return fmt.Errorf("embedded etcd: QuotaBytes %d is negative", c.QuotaBytes)
	}
	if c.CompactionRetention < 0 {
		return fmt.Errorf("embedded etcd: CompactionRetention %v is negative", c.CompactionRetention)
	}
	for _, s := range []string{c.ClientURL, c.PeerURL} {
		if s == ClientURLNone && s == c.ClientURL {
			continue
		}
		u, err := url.Parse(s)
		if err != nil {
			return fmt.Errorf("embedded etcd: bad URL %q: %w", s, err)
		}
		if (u.Scheme == "unix" || u.Scheme == "unixs") && len(u.Host+u.Path) > maxUnixPath {
			return fmt.Errorf("embedded etcd: unix socket path %q is longer than %d bytes; use a shorter Dir or set ClientURL", u.Host+u.Path, maxUnixPath)
		}
		if err := checkScheme(u, s == c.PeerURL, c.TLS != nil); err != nil {
			return fmt.Errorf("embedded etcd: URL %q: %w", s, err)
		}
	}
	if c.TLS != nil {
		if err := c.TLS.validate(); err != nil {
			return fmt.Errorf("embedded etcd: %w", err)
		}
	}
	if c.Join != nil {
		if err := checkPeerURL(c.PeerURL); err != nil {
			return fmt.Errorf("embedded etcd: joining member %s: %w", c.Name, err)
		}
		if err := c.Join.validate(c.Name, c.PeerURL); err != nil {
			return fmt.Errorf("embedded etcd: joining member %s: %w", c.Name, err)
		}
	}
	return nil
}

// checkScheme reports whether u has a scheme the listener can serve: http
// or https for peers, those or unix or unixs for clients, the secure ones
// exactly when tls is on.
func checkScheme(u *url.URL, peer, tls bool) error {
	want := []string{"http", "unix"}
	if tls {
		want = []string{"https", "unixs"}
	}
	if peer {
		want = want[:1]
	}
	if slices.Contains(want, u.Scheme) {
		return nil
	}
	if tls {
		return fmt.Errorf("scheme must be %s with TLS", strings.Join(want, " or "))
	}
	return fmt.Errorf("scheme must be %s without TLS", strings.Join(want, " or "))
}

// JoinSpec is what a new member needs to join an existing cluster.
type JoinSpec struct {
	// InitialCluster is the comma-separated name=peerURL list of the
	// cluster's members including the new one under its own Name and
	// PeerURL, as AddLearner returns it.
	InitialCluster string
}

func (j *JoinSpec) validate(name, peerURL string) error {
	self := false
	for p := range strings.SplitSeq(j.InitialCluster, ",") {
		n, u, ok := strings.Cut(p, "=")
		if !ok || u == "" {
			return fmt.Errorf("InitialCluster %q: entry %q is not name=peerURL", j.InitialCluster, p)
		}
		if n == name && u == peerURL {
			self = true
		}
	}
	if !self {
		return fmt.Errorf("InitialCluster %q does not list %s=%s", j.InitialCluster, name, peerURL)
	}
	return nil
}

// Embedded is a running etcd member with an in-process client.
type Embedded struct {
	etcd *embed.Etcd
	cli  *clientv3.Client
	lock *os.File
	dir  string
	log  zerolog.Logger
	// certFile is the node certificate etcd reads at each handshake,
	// when StartEmbedded wrote it from PEM bytes (ReplaceCert).
	certFile string
	// closing is set when Close starts; etcd's complaints about its own
	// listeners closing are then logged at debug level.
	closing *atomic.Bool

	closeOnce sync.Once
	closeErr  error
}

// StartEmbedded starts an etcd member with its data under cfg.Dir and
// waits, at most until ctx is done, for it to serve: for a member of a
// cluster that means it has reached the leader and published itself
// through raft, so a restarted member of a cluster without quorum never
// becomes ready. It takes an exclusive lock on the
// directory, so a second instance on the same Dir fails at once with an error
// naming it. etcd's own logs go to log at warning level and above. On any
// error, everything already started is stopped again.
func StartEmbedded(ctx context.Context, cfg EmbedConfig, log zerolog.Logger) (_ *Embedded, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()

	dataDir := filepath.Join(cfg.Dir, "data")
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("embedded etcd: create data dir %s: %w", dataDir, err)
	}
	lock, err := lockDir(cfg.Dir)
	if err != nil {
		return nil, err
	}
	e := &Embedded{lock: lock, dir: cfg.Dir, log: log, closing: new(atomic.Bool)}
	defer func() {
		if err != nil {
			_ = e.Close()
		}
	}()

	ecfg, err := etcdConfig(cfg, dataDir, log, e.closing)
	if err != nil {
		return nil, err
	}
	e.etcd, err = embed.StartEtcd(ecfg)
	if err != nil {
		return nil, fmt.Errorf("embedded etcd: start in %s: %w", cfg.Dir, err)
	}
	select {
	case <-e.etcd.Server.ReadyNotify():
	case err := <-e.etcd.Err():
		return nil, fmt.Errorf("embedded etcd: serve in %s: %w", cfg.Dir, err)
	case <-ctx.Done():
		return nil, fmt.Errorf("embedded etcd: waiting for %s to become ready: %w", cfg.Dir, ctx.Err())
	}
	e.cli = v3client.New(e.etcd.Server)
	if cfg.TLS != nil && cfg.TLS.CertFile == "" {
		e.certFile = filepath.Join(cfg.Dir, "tls", "cert.pem")
	}
	log.Debug().Str("dir", cfg.Dir).Str("client_url", cfg.ClientURL).Msg("embedded etcd ready")
	return e, nil
}

// ReplaceCert replaces the member's certificate (chain, for the same key)
// with certPEM: etcd reads its certificate file at every handshake, so
// new peer and client connections present it at once; those open stay
// as they are. Only for a member whose TLS was given as PEM bytes
// (EmbedTLS.CertPEM); with files, whoever owns them replaces them.
func (e *Embedded) ReplaceCert(certPEM []byte) error {
	if e.certFile == "" {
		return errors.New("embedded etcd: its TLS files are not its own to replace")
	}
	if err := writeFileAtomic(e.certFile, certPEM); err != nil {
		return fmt.Errorf("embedded etcd: replace certificate: %w", err)
	}
	return nil
}

func etcdConfig(cfg EmbedConfig, dataDir string, log zerolog.Logger, closing *atomic.Bool) (*embed.Config, error) {
	ec := embed.NewConfig()
	ec.Name = cfg.Name
	ec.Dir = dataDir
	pu, err := url.Parse(cfg.PeerURL)
	if err != nil {
		return nil, fmt.Errorf("embedded etcd: peer URL %q: %w", cfg.PeerURL, err)
	}
	ec.ListenClientUrls, ec.AdvertiseClientUrls = nil, nil
	if cfg.ClientURL != ClientURLNone {
		cu, err := url.Parse(cfg.ClientURL)
		if err != nil {
			return nil, fmt.Errorf("embedded etcd: client URL %q: %w", cfg.ClientURL, err)
		}
		ec.ListenClientUrls = []url.URL{*cu}
		ec.AdvertiseClientUrls = []url.URL{*cu}
		// A separate HTTP listener avoids serving HTTP and gRPC on one
		// port (etcd warns about that); place it beside a unix socket.
		if cu.Scheme == "unix" || cu.Scheme == "unixs" {
			hu := *cu
			hu.Path += ".http"
			if len(hu.Host+hu.Path) <= maxUnixPath {
				ec.ListenClientHttpUrls = []url.URL{hu}
			}
		}
	}
	ec.ListenPeerUrls = []url.URL{*pu}
	ec.AdvertisePeerUrls = []url.URL{*pu}
	ec.InitialCluster = ec.InitialClusterFromName(ec.Name)
	if cfg.Join != nil {
		ec.ClusterState = embed.ClusterStateFlagExisting
		ec.InitialCluster = cfg.Join.InitialCluster
	}
	ec.MaxLearners = maxLearners
	if cfg.TLS != nil {
		f, err := cfg.TLS.files(cfg.Dir)
		if err != nil {
			return nil, err
		}
		ec.PeerTLSInfo.CertFile, ec.PeerTLSInfo.KeyFile, ec.PeerTLSInfo.TrustedCAFile = f.CertFile, f.KeyFile, f.CAFile
		ec.PeerTLSInfo.ClientCertAuth = true
		ec.ClientTLSInfo.CertFile, ec.ClientTLSInfo.KeyFile, ec.ClientTLSInfo.TrustedCAFile = f.CertFile, f.KeyFile, f.CAFile
		ec.ClientTLSInfo.ClientCertAuth = true
		ec.TlsMinVersion = "TLS1.3"
	}
	ec.EnableGRPCGateway = false
	ec.ListenMetricsUrls = nil
	ec.Metrics = "basic"
	ec.QuotaBackendBytes = cfg.QuotaBytes
	ec.MaxTxnOps = cfg.MaxTxnOps
	ec.AutoCompactionMode = embed.CompactorModePeriodic
	ec.AutoCompactionRetention = cfg.CompactionRetention.String()
	ec.UnsafeNoFsync = cfg.UnsafeNoFsync
	ec.LogLevel = "warn"
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.New(&zerologCore{log: log, level: zapcore.WarnLevel, closing: closing}))
	return ec, nil
}

// ErrDirLocked is returned by StartEmbedded when another process (a
// running node) has its data directory.
var ErrDirLocked = errors.New("etcd data directory in use")

// lockDir takes an exclusive, non-blocking flock on dir/lock. etcd's bbolt
// backend would otherwise block forever on a directory in use.
func lockDir(dir string) (*os.File, error) {
	p := filepath.Join(dir, "lock")
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("embedded etcd: open lock file in %s: %w", dir, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		_ = f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("embedded etcd: data dir %s is in use by another etcd (locked): %w: %w", dir, ErrDirLocked, err)
		}
		return nil, fmt.Errorf("embedded etcd: lock data dir %s: %w", dir, err)
	}
	return f, nil
}

// Client returns the in-process client. It is valid until Close.
//
// In a cluster of several members it still talks only to this member, in
// process, and that is enough: the member forwards proposals (writes,
// transactions, leases) to the leader over raft, and serves
// linearizable reads (the default) only after confirming with the leader
// that it has applied everything committed before the read. So every
// node sees the writes of every other node once they are acknowledged.
// Requests fail (at the latest when their ctx is done) while the member
// cannot reach a quorum, and while it is a learner, which serves
// serializable reads only.
func (e *Embedded) Client() *clientv3.Client { return e.cli }

// ID returns this member's etcd member ID (as in Member.ID).
func (e *Embedded) ID() uint64 { return uint64(e.etcd.Server.MemberID()) }

// IsLearner reports whether this member is currently a non-voting learner.
// A promotion reaches it when it applies the change, a moment after
// PromoteWhenReady returns.
func (e *Embedded) IsLearner() bool { return e.etcd.Server.IsLearner() }

// HasLeader reports whether this member currently knows a raft leader. A
// member that cannot reach a quorum loses its leader within about an
// election timeout (1 s), and its requests then fail when their ctx is
// done; this is the cheap check for health reporting.
func (e *Embedded) HasLeader() bool { return e.etcd.Server.Leader() != 0 }

// Server returns the underlying etcd instance, for cluster management.
func (e *Embedded) Server() *embed.Etcd { return e.etcd }

// Defragment rewrites the backend database to return space freed by
// compaction to the file system. It blocks writes while it runs. Use it
// instead of Client().Defragment, which panics for the in-process client of
// etcd v3.7 (its maintenance server has no health notifier).
func (e *Embedded) Defragment() error {
	if err := e.etcd.Server.Defragment(); err != nil {
		return fmt.Errorf("defragment etcd in %s: %w", e.dir, err)
	}
	return nil
}

// Err returns a channel that reports a fatal server error.
func (e *Embedded) Err() <-chan error { return e.etcd.Err() }

// Close stops the client and the server, waits for them and releases the
// data directory. It is idempotent.
func (e *Embedded) Close() error {
	e.closeOnce.Do(func() {
		e.closing.Store(true)
		var errs []error
		if e.cli != nil {
			if err := e.cli.Close(); err != nil && !errors.Is(err, context.Canceled) {
				errs = append(errs, fmt.Errorf("close etcd client: %w", err))
			}
		}
		if e.etcd != nil {
			e.etcd.Close()
		}
		if e.lock != nil {
			if err := e.lock.Close(); err != nil {
				errs = append(errs, fmt.Errorf("release lock on %s: %w", e.dir, err))
			}
		}
		e.closeErr = errors.Join(errs...)
	})
	return e.closeErr
}

// zerologCore is a zapcore.Core that writes to a zerolog.Logger, dropping
// entries below level.
type zerologCore struct {
	log     zerolog.Logger
	level   zapcore.Level
	closing *atomic.Bool
	fields  []zapcore.Field
}

// benign reports whether an etcd message is expected in Wormhole's setup
// and belongs at debug level: the single node runs without auth, Close
// makes etcd complain about its own listeners and requests going away,
// PromoteWhenReady is refused until the learner has caught up, and a
// member that has just joined checks its storage version before its
// backend holds a raft term (it succeeds on a later check).
func benign(msg string, fields []zapcore.Field, closing bool) bool {
	switch msg {
	case "failed to update storage version", "Failed to detect schema version":
		// etcd's schema package returns an unexported, unwrapped error;
		// its text is all there is to match.
		for _, f := range fields {
			if err, ok := f.Interface.(error); ok && f.Key == "error" && strings.HasSuffix(err.Error(), "missing term information") {
				return true
			}
		}
		return false
	case "simple token is not cryptographically signed",
		"Running http and grpc server on single port. This is not recommended for production.",
		// PromoteWhenReady asks until the learner has caught up.
		"rejecting promote learner: learner is not ready":
		return true
	case "setting up serving from embedded etcd failed.",
		"stopping insecure grpc server due to error",
		"stopped insecure grpc server due to error",
		"stopping secure grpc server due to error",
		"stopped secure grpc server due to error",
		"failed to update cluster version",
		"failed to publish local member to cluster through raft":
		return closing
	}
	return false
}

func (c *zerologCore) Enabled(l zapcore.Level) bool { return l >= c.level }

func (c *zerologCore) With(fields []zapcore.Field) zapcore.Core {
	nc := *c
	nc.fields = append(append([]zapcore.Field(nil), c.fields...), fields...)
	return &nc
}

func (c *zerologCore) Check(ent zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(ent.Level) {
		return ce.AddCore(ent, c)
	}
	return ce
}

func (c *zerologCore) Write(ent zapcore.Entry, fields []zapcore.Field) error {
	var ev *zerolog.Event
	switch {
	case benign(ent.Message, fields, c.closing.Load()):
		ev = c.log.Debug()
	case ent.Level >= zapcore.ErrorLevel:
		ev = c.log.Error()
	case ent.Level >= zapcore.WarnLevel:
		ev = c.log.Warn()
	case ent.Level >= zapcore.InfoLevel:
		ev = c.log.Info()
	default:
		ev = c.log.Debug()
	}
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range c.fields {
		f.AddTo(enc)
	}
	for _, f := range fields {
		f.AddTo(enc)
	}
	if ent.LoggerName != "" {
		ev = ev.Str("logger", ent.LoggerName)
	}
	ev.Fields(enc.Fields).Msg(ent.Message)
	return nil
}

func (c *zerologCore) Sync() error { return nil }
