package appliance

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"time"

	"github.com/go-playground/validator/v10"
	"github.com/go-viper/mapstructure/v2"
	"github.com/knadh/koanf/parsers/yaml"
	"github.com/knadh/koanf/providers/confmap"
	"github.com/knadh/koanf/providers/file"
	"github.com/knadh/koanf/v2"

	"github.com/wormhole-fs/wormhole/etcdmeta"
	"github.com/wormhole-fs/wormhole/nfsfront"
)

// Config is the one configuration file of a node. Unknown keys are errors.
type Config struct {
	// ClusterID names the namespace in etcd (keys live under /wh/<id>/).
	ClusterID string `koanf:"cluster_id" validate:"required,max=64,clusterid"`
	// DataDir holds the embedded etcd, the chunk store and node secrets.
	DataDir string      `koanf:"data_dir" validate:"required"`
	NFS     NFSConfig   `koanf:"nfs"`
	Chunks  ChunkConfig `koanf:"chunks"`
	Etcd    EtcdConfig  `koanf:"etcd"`
	Admin   AdminConfig `koanf:"admin"`
	// Node, Cluster and Redundancy matter once the node belongs to a
	// cluster made by `wormhole init` or `wormhole join`; a data
	// directory that never was is a single node of its own.
	Node       NodeConfig       `koanf:"node"`
	Cluster    ClusterConfig    `koanf:"cluster"`
	Redundancy RedundancyConfig `koanf:"redundancy"`
	Repair     RepairConfig     `koanf:"repair"`
	Scrub      ScrubConfig      `koanf:"scrub"`
	Postures   PosturesConfig   `koanf:"postures"`
	Log        LogConfig        `koanf:"log"`
	// MemoryLimit is a soft limit, in bytes, on the memory the node's Go
	// runtime uses (as GOMEMLIMIT): near it, garbage is collected sooner
	// and freed memory goes back to the system sooner. It is not a cap:
	// live data above it is kept. 0 leaves the runtime's default (or
	// GOMEMLIMIT from the environment).
	MemoryLimit int64 `koanf:"memory_limit" validate:"min=0"`

	// Version is the running binary's version, set by the command, not
	// the file.
	Version string `koanf:"-"`
}

// AdminConfig configures the admin API (status and metrics).
type AdminConfig struct {
	// Addr is where the admin API listens; empty disables it. Every
	// request needs the token in <data_dir>/admin.token.
	Addr string `koanf:"addr" validate:"omitempty,hostname_port"`
}

// NFSConfig configures the NFS front.
type NFSConfig struct {
	// Addr is the address NFS (TCP), MOUNT and the portmapper (TCP and UDP)
	// listen on.
	Addr string `koanf:"addr" validate:"required,hostname_port"`
	// OpTimeout bounds the work done for one request.
	OpTimeout time.Duration `koanf:"op_timeout" validate:"min=100ms"`
	// PortmapAddr is where the portmapper (program 100000, versions 2-4)
	// listens on TCP and UDP, so a plain `mount -t nfs node:/ /mnt` finds
	// NFS and MOUNT. Empty disables it (portmapper calls are still answered
	// on the NFS port); the appliance image sets 0.0.0.0:111.
	PortmapAddr string `koanf:"portmap_addr" validate:"omitempty,hostname_port"`
	// Exports say which clients may mount and how. Without any, the node
	// admits this machine only (127.0.0.0/8 and ::1) without squashing
	// root: a local trial.
	Exports []ExportConfig `koanf:"exports" validate:"max=255,dive"`
	// MaxConnections bounds open client connections, in all and per
	// client address.
	MaxConnections          int `koanf:"max_connections" validate:"min=1"`
	MaxConnectionsPerClient int `koanf:"max_connections_per_client" validate:"min=1"`
	// IdleTimeout closes connections that sent nothing for that long.
	IdleTimeout time.Duration `koanf:"idle_timeout" validate:"min=1s"`
}

// ExportConfig is one export rule (see nfsfront.Export).
type ExportConfig struct {
	// Path is what clients mount; only "/" so far.
	Path string `koanf:"path" validate:"required,eq=/"`
	// Clients are the networks admitted, as CIDRs or single addresses.
	Clients []string `koanf:"clients" validate:"required,min=1,dive,cidr|ip"`
	// ReadOnly refuses every change.
	ReadOnly bool `koanf:"read_only"`
	// Squash is root (default: root_squash), none or all (all_squash).
	Squash string `koanf:"squash" validate:"omitempty,oneof=root none all"`
	// AnonUID and AnonGID are what squashed callers become.
	AnonUID uint32 `koanf:"anon_uid"`
	AnonGID uint32 `koanf:"anon_gid"`
	// Secure admits only requests from client ports below 1024.
	Secure bool `koanf:"secure"`
}

// nfsExports converts the configured exports for the front.
func (c NFSConfig) nfsExports() ([]nfsfront.Export, error) {
	if len(c.Exports) == 0 {
		return []nfsfront.Export{nfsfront.LoopbackExport()}, nil
	}
	out := make([]nfsfront.Export, 0, len(c.Exports))
	for i, x := range c.Exports {
		squash, err := nfsfront.ParseSquash(x.Squash)
		if err != nil {
			return nil, fmt.Errorf("nfs.exports[%d].squash: %w", i, err)
		}
		e := nfsfront.Export{Path: x.Path, ReadOnly: x.ReadOnly, Squash: squash, AnonUID: x.AnonUID, AnonGID: x.AnonGID, Secure: x.Secure}
		for j, cl := range x.Clients {
			p, err := parseClient(cl)
			if err != nil {
				return nil, fmt.Errorf("nfs.exports[%d].clients[%d] = %q: %w", i, j, cl, err)
			}
			e.Clients = append(e.Clients, p)
		}
		out = append(out, e)
	}
	return out, nil
}

// parseClient reads a CIDR or a single address.
func parseClient(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("want a network such as 192.168.1.0/24 or an address")
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// ChunkConfig configures how file bytes are split and stored.
type ChunkConfig struct {
	// Size is the chunk size in bytes. It is fixed for the life of the
	// data: changing it on existing data is refused.
	Size int `koanf:"size" validate:"min=65536,max=67108864"`
	// WriteBack is how many bytes of data that NFS clients wrote UNSTABLE
	// (and have not committed yet) a node keeps in memory, counted in
	// whole chunks; past it, writes commit to make room. 0 makes every
	// write stable.
	WriteBack int64 `koanf:"write_back" validate:"min=0,max=17179869184"`
	// WriteBackAge is how long such data may wait for the client's
	// COMMIT: older, it is committed by the node (as the kernel writes
	// back dirty pages), so that a client that never commits neither holds
	// memory nor leaves data at risk for long, and other nodes see it. 0
	// waits for the COMMIT (or the write_back limit).
	WriteBackAge time.Duration `koanf:"write_back_age" validate:"min=0"`
	// WriteBehind stores each chunk that UNSTABLE writes fill whole at
	// once, in the background, so that the client's COMMIT (or the
	// write_back limit) finds it stored and only records it: a large
	// sequential write streams instead of stopping at every commit.
	WriteBehind bool `koanf:"write_behind"`
	// OpenFiles is how many chunk files a node keeps open, with their
	// verified headers, so that a read of part of a chunk costs one pread
	// of the 64 KiB blocks it covers (each still verified). 0 turns the
	// cache off.
	OpenFiles int `koanf:"open_files" validate:"min=0,max=1048576"`
	// OpenBytes bounds the memory of those files' headers and block-sum
	// tables.
	OpenBytes int64 `koanf:"open_bytes" validate:"min=0,max=4294967296"`
}

// EtcdConfig configures the embedded etcd member, or the external etcd
// cluster used instead.
type EtcdConfig struct {
	// QuotaBytes is etcd's backend quota (etcd suggests at most 8 GiB).
	QuotaBytes int64 `koanf:"quota_bytes" validate:"min=104857600,max=8589934592"`
	// CacheEntries is how many inode, directory-entry and chunk-reference
	// records a single node keeps in memory (a few hundred bytes each) to
	// answer lookups, attribute reads and the chunk map of READs without
	// asking etcd; 0 turns the cache off.
	// Nodes of a cluster, and nodes on an external etcd, read etcd every
	// time: the cache is exact only for a namespace's only writer.
	CacheEntries int `koanf:"cache_entries" validate:"min=0,max=10000000"`
	// CompactionRetention is how long an embedded etcd member keeps the
	// superseded versions of metadata records before compacting them
	// (etcd keeps between one and two such periods). etcd holds an index
	// of that history in memory, so a node's memory grows with the rate
	// of metadata changes times this. Nothing in Wormhole reads history
	// older than one operation; an external etcd sets its own.
	CompactionRetention time.Duration `koanf:"compaction_retention" validate:"min=10s,max=24h"`
	// Voters is how many nodes of a cluster run an embedded etcd member
	// (1, 3 or 5): the first nodes to join do, the others are clients.
	Voters int `koanf:"voters" validate:"oneof=1 3 5"`
	// PeerPort and ClientPort are the embedded member's raft and client
	// ports, on node.advertise.
	PeerPort   int `koanf:"peer_port" validate:"min=1,max=65535"`
	ClientPort int `koanf:"client_port" validate:"min=1,max=65535"`
	// Endpoints, when set, point at an external etcd cluster
	// (https://host:port) used instead of embedded members.
	Endpoints []string `koanf:"endpoints" validate:"dive,url"`
	// CAFile, CertFile and KeyFile authenticate this node to the external
	// etcd cluster (mutual TLS); empty uses the system roots and no client
	// certificate.
	CAFile   string `koanf:"ca_file"`
	CertFile string `koanf:"cert_file" validate:"required_with=KeyFile"`
	KeyFile  string `koanf:"key_file" validate:"required_with=CertFile"`
}

// NodeConfig describes this node to the cluster.
type NodeConfig struct {
	// ID names the node in the cluster; default: the host name.
	ID string `koanf:"id" validate:"omitempty,max=64,clusterid"`
	// Advertise is the IP address other nodes reach this one at. Needed
	// by `wormhole init` and `wormhole join`.
	Advertise string `koanf:"advertise" validate:"omitempty,ip"`
	// Zone is the node's failure domain (a rack, a room, a site): copies
	// of a chunk spread over zones first.
	Zone string `koanf:"zone" validate:"max=64"`
	// Tier is the node's storage class, such as ssd or hdd.
	Tier string `koanf:"tier" validate:"max=64"`
}

// ClusterConfig sets the ports nodes talk to each other on, all on
// node.advertise.
type ClusterConfig struct {
	// GossipPort (TCP and UDP) carries membership and liveness.
	GossipPort int `koanf:"gossip_port" validate:"min=1,max=65535"`
	// DataPort carries chunks between nodes, over mutual TLS.
	DataPort int `koanf:"data_port" validate:"min=1,max=65535"`
	// JoinPort answers `wormhole join` (TLS, token-authenticated).
	JoinPort int `koanf:"join_port" validate:"min=1,max=65535"`
}

// RepairConfig paces the background work that keeps every chunk where
// placement puts it: re-replication after a node is lost, rebalancing
// after one joins, draining, redundancy changes.
type RepairConfig struct {
	// Grace is how long a node may be down before the chunks it held are
	// copied elsewhere (a reboot should not start a storm of copies).
	Grace time.Duration `koanf:"grace" validate:"min=1s"`
	// Bandwidth bounds the bytes per second copied between nodes.
	Bandwidth int64 `koanf:"bandwidth" validate:"min=1048576"`
	// Interval is the pause between passes when nothing changes.
	Interval time.Duration `koanf:"interval" validate:"min=1s"`
	// OrphanGrace is how long a chunk no file refers to (left by a failed
	// write or delete) is kept before it is deleted: longer than any
	// write takes between storing its chunks and committing them.
	OrphanGrace time.Duration `koanf:"orphan_grace" validate:"min=1s"`
}

// ScrubConfig paces the background re-reading of this node's chunks.
type ScrubConfig struct {
	// Rate bounds the bytes per second read; 0 turns scrubbing off.
	Rate int64 `koanf:"rate" validate:"min=0"`
	// Interval is the pause between full passes.
	Interval time.Duration `koanf:"interval" validate:"min=1s"`
	// Delay is the wait after start before the first pass.
	Delay time.Duration `koanf:"delay" validate:"min=0"`
	// QuarantineKeep is how long damaged copies the scrubber set aside
	// (<data_dir>/chunks/quarantine) are kept for inspection before a
	// pass deletes them; 0 keeps them until an operator does.
	QuarantineKeep time.Duration `koanf:"quarantine_keep" validate:"min=0"`
}

// PosturesConfig says what the cluster does in each situation (see
// cluster/posture): serve, refuse-writes, read-only or freeze.
type PosturesConfig struct {
	// Favourable: some chunks below their copies, none lost, and enough
	// nodes and space to restore them all.
	Favourable string `koanf:"favourable" validate:"oneof=serve refuse-writes read-only freeze"`
	// Mixed: none lost, but too few nodes or too little space to restore
	// every copy.
	Mixed string `koanf:"mixed" validate:"oneof=serve refuse-writes read-only freeze"`
	// Critical: some chunks have no copy on a node that is up, or etcd
	// lost its quorum.
	Critical string `koanf:"critical" validate:"oneof=serve refuse-writes read-only freeze"`
}

// RedundancyConfig is the cluster's default redundancy policy.
type RedundancyConfig struct {
	// Copies is how many nodes hold each chunk.
	Copies int `koanf:"copies" validate:"min=1,max=5"`
	// WhenShort says what a write does when fewer nodes than Copies can
	// take it: "degraded" stores the copies it can (at least one), answers
	// the client and reports the chunk for repair; "refuse" fails the
	// write, so an acknowledged write always has every copy.
	WhenShort string `koanf:"when_short" validate:"oneof=degraded refuse"`
}

// LogConfig configures logging.
type LogConfig struct {
	Level  string `koanf:"level" validate:"oneof=trace debug info warn error"`
	Format string `koanf:"format" validate:"oneof=console json"`
}

// DefaultConfig is a single node on embedded defaults.
func DefaultConfig() Config {
	return Config{
		ClusterID: "default",
		DataDir:   defaultDataDir(),
		NFS: NFSConfig{
			Addr: "127.0.0.1:2049", OpTimeout: 30 * time.Second,
			MaxConnections: 4096, MaxConnectionsPerClient: 64, IdleTimeout: 15 * time.Minute,
		},
		Chunks: ChunkConfig{Size: 1 << 20, WriteBack: 64 << 20, WriteBackAge: 30 * time.Second, WriteBehind: true, OpenFiles: 1024, OpenBytes: 16 << 20},
		Etcd: EtcdConfig{
			QuotaBytes: 2 << 30, CacheEntries: 65536, CompactionRetention: etcdmeta.DefaultCompactionRetention,
			Voters: 3, PeerPort: 2380, ClientPort: 2379,
		},
		Admin:      AdminConfig{Addr: "127.0.0.1:9470"},
		Log:        LogConfig{Level: "info", Format: "console"},
		Cluster:    ClusterConfig{GossipPort: 7946, DataPort: 7947, JoinPort: 7948},
		Redundancy: RedundancyConfig{Copies: 2, WhenShort: "degraded"},
		Repair:     RepairConfig{Grace: 10 * time.Minute, Bandwidth: 64 << 20, Interval: time.Minute, OrphanGrace: time.Hour},
		Scrub:      ScrubConfig{Rate: 16 << 20, Interval: 24 * time.Hour, Delay: 10 * time.Minute, QuarantineKeep: 30 * 24 * time.Hour},
		Postures:   PosturesConfig{Favourable: "serve", Mixed: "serve", Critical: "read-only"},
	}
}

func defaultDataDir() string {
	if os.Geteuid() == 0 {
		return "/var/lib/wormhole"
	}
	if d, err := os.UserHomeDir(); err == nil {
		return filepath.Join(d, ".local", "share", "wormhole")
	}
	return "wormhole-data"
}

// Overrides are command-line settings that win over the file.
type Overrides struct {
	DataDir   string
	NFSAddr   string
	AdminAddr string
}

// LoadConfig reads path (if not empty) over the defaults, applies the
// overrides and validates the result. Errors name the key or value at fault.
func LoadConfig(path string, o Overrides) (Config, error) {
	k := koanf.New(".")
	if err := k.Load(confmap.Provider(map[string]any{}, "."), nil); err != nil {
		return Config{}, err
	}
	if path != "" {
		if _, err := os.Stat(path); err != nil {
			return Config{}, fmt.Errorf("config file %s: %w", path, err)
		}
		if err := k.Load(file.Provider(path), yaml.Parser()); err != nil {
			return Config{}, fmt.Errorf("config file %s: %w", path, err)
		}
	}
	cfg := DefaultConfig()
	err := k.UnmarshalWithConf("", &cfg, koanf.UnmarshalConf{
		DecoderConfig: &mapstructure.DecoderConfig{
			DecodeHook:       mapstructure.ComposeDecodeHookFunc(mapstructure.StringToTimeDurationHookFunc()),
			ErrorUnused:      true,
			WeaklyTypedInput: true,
			Result:           &cfg,
			TagName:          "koanf",
		},
	})
	if err != nil {
		return Config{}, fmt.Errorf("config file %s: %w (see packaging/wormhole.yaml for every key)", path, err)
	}
	if o.DataDir != "" {
		cfg.DataDir = o.DataDir
	}
	if o.NFSAddr != "" {
		cfg.NFS.Addr = o.NFSAddr
	}
	if o.AdminAddr != "" {
		cfg.Admin.Addr = o.AdminAddr
	}
	if err := cfg.Validate(); err != nil {
		if path != "" {
			return Config{}, fmt.Errorf("config file %s: %w", path, err)
		}
		return Config{}, err
	}
	return cfg, nil
}

// Validate checks every field and says which key is wrong and why.
func (c Config) Validate() error {
	err := newValidator().Struct(c)
	var verrs validator.ValidationErrors
	if !errors.As(err, &verrs) {
		return err
	}
	msgs := make([]string, 0, len(verrs))
	for _, fe := range verrs {
		key := keyOf(fe.Namespace())
		msgs = append(msgs, fmt.Sprintf("%s = %q: %s", key, fmt.Sprint(fe.Value()), rule(fe)))
	}
	return fmt.Errorf("invalid configuration: %s", strings.Join(msgs, "; "))
}

// rule says in words what a failed validation tag asks for.
func rule(fe validator.FieldError) string {
	switch fe.Tag() {
	case "required":
		return "must be set"
	case "hostname_port":
		return "must be HOST:PORT with a port from 1 to 65535"
	case "clusterid":
		return "must use letters, digits, '.', '_' and '-' only"
	case "min":
		return "must be at least " + fe.Param()
	case "max":
		return "must be at most " + fe.Param()
	case "oneof":
		return "must be one of: " + fe.Param()
	case "cidr|ip":
		return "must be a network such as 192.168.1.0/24 or an address"
	case "ip":
		return "must be an IP address"
	case "url":
		return "must be a URL such as https://10.0.0.1:2379"
	case "required_with":
		return "must be set together with " + fe.Param()
	case "eq":
		return "must be " + fe.Param() + " (subdirectory exports are not supported yet)"
	}
	return "must satisfy " + fe.Tag() + " " + fe.Param()
}

// keyOf turns a validator namespace (Config.nfs.addr) into the file key
// (nfs.addr).
func keyOf(ns string) string {
	_, key, _ := strings.Cut(ns, ".")
	return key
}

var clusterIDPattern = regexp.MustCompile(`^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$`)

// newValidator reports fields by their config file key.
func newValidator() *validator.Validate {
	v := validator.New(validator.WithRequiredStructEnabled())
	// A cluster id becomes an etcd key prefix and the host of certificate
	// URIs: letters, digits, '.', '_' and '-' only.
	_ = v.RegisterValidation("clusterid", func(fl validator.FieldLevel) bool {
		return clusterIDPattern.MatchString(fl.Field().String())
	})
	v.RegisterTagNameFunc(func(f reflect.StructField) string {
		name, _, _ := strings.Cut(f.Tag.Get("koanf"), ",")
		return name
	})
	return v
}
