package appliance

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/wormhole-fs/wormhole/chunker/repair"
	"github.com/wormhole-fs/wormhole/chunker/scrub"
	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
)

// The admin API: status for people and scripts, and Prometheus metrics.
// Every request needs the token kept in <data_dir>/admin.token
// ("Authorization: Bearer <token>"); it listens only where admin.addr says
// (loopback by default).

// Status is what `wormhole status` reports, as JSON for scripts.
type Status struct {
	Version   string    `json:"version"`
	ClusterID string    `json:"cluster_id"`
	Started   time.Time `json:"started"`
	NFSAddr   string    `json:"nfs_addr"`
	DataDir   string    `json:"data_dir"`
	Exports   int       `json:"exports"`
	Capacity  Capacity  `json:"capacity"`
	Inodes    uint64    `json:"inodes"`
	// Situation is healthy, degraded or critical; Summary says what it
	// means and Advice what to do, in plain words.
	Situation string `json:"situation"`
	Summary   string `json:"summary"`
	Advice    string `json:"advice,omitempty"`

	// The cluster part, empty on a single node: this node's id, every
	// node, the declared redundancy and the chunk census.
	Node       string            `json:"node,omitempty"`
	Nodes      []NodeStatus      `json:"nodes,omitempty"`
	Redundancy *RedundancyStatus `json:"redundancy,omitempty"`
	Chunks     *ChunkCensus      `json:"chunks,omitempty"`
	// Posture is what the cluster does in its situation (serve,
	// refuse-writes, read-only, freeze), PostureMeaning says it in words
	// and AtRisk says what could be lost.
	Posture        string `json:"posture,omitempty"`
	PostureMeaning string `json:"posture_meaning,omitempty"`
	AtRisk         string `json:"at_risk,omitempty"`
	// Repair is the cluster's repair worker, as last recorded.
	Repair *repair.Progress `json:"repair,omitempty"`
	// Scrub is this node's scrubber; nil when scrub.rate is 0.
	Scrub *ScrubStatus `json:"scrub,omitempty"`
	// CertValidUntil is when this cluster node's certificate expires; the
	// node renews it when a third of its validity is left.
	CertValidUntil *time.Time `json:"cert_valid_until,omitempty"`
	// CertRenewalError is why the last renewal that was due failed.
	CertRenewalError string `json:"cert_renewal_error,omitempty"`
}

// Capacity is the chunk store's disk.
type Capacity struct {
	TotalBytes uint64 `json:"total_bytes"`
	FreeBytes  uint64 `json:"free_bytes"`
}

// lowSpace is the free fraction under which status warns.
const lowSpace = 0.05

// Status gathers the node's status.
func (n *Node) Status(ctx context.Context) (Status, error) {
	st := Status{
		Version: n.cfg.Version, ClusterID: n.cfg.ClusterID, Started: n.started,
		NFSAddr: n.lis.Addr().String(), DataDir: n.cfg.DataDir, Exports: max(len(n.cfg.NFS.Exports), 1),
		Scrub: n.scrubStatus(),
	}
	var err error
	if st.Capacity.TotalBytes, st.Capacity.FreeBytes, err = n.store.Usage(); err != nil {
		return st, fmt.Errorf("chunk store usage: %w", err)
	}
	mctx, cancel := context.WithTimeout(ctx, statusMetaTimeout)
	st.Inodes, err = n.ns.StatFS(mctx)
	cancel()
	if err != nil && n.cl != nil {
		// Cut off from etcd's quorum, a node of a cluster still says
		// what it knows, and the posture it applies.
		st.ClusterID = n.cl.st.ClusterID
		n.statusWithoutMeta(ctx, &st, err)
		return st, nil
	}
	if err != nil {
		return st, fmt.Errorf("namespace: %w", err)
	}
	if n.cl != nil {
		st.ClusterID = n.cl.st.ClusterID
		return st, n.clusterStatus(ctx, &st)
	}
	st.Situation, st.Summary = "healthy", "single node: every chunk has its one copy on this node's disk, and its checksum is verified on every read."
	if st.Capacity.TotalBytes > 0 && float64(st.Capacity.FreeBytes) < lowSpace*float64(st.Capacity.TotalBytes) {
		st.Situation = "degraded"
		st.Summary = fmt.Sprintf("the data disk is %.0f%% full: writes will fail with 'no space left' when it fills.",
			100-100*float64(st.Capacity.FreeBytes)/float64(st.Capacity.TotalBytes))
		st.Advice = "free space on " + n.cfg.DataDir + ", or move the data dir to a larger disk."
	}
	return st, nil
}

// adminHandler serves /v1/status and /metrics behind the token.
func (n *Node) adminHandler(token string, reg *prometheus.Registry) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/tokens", func(w http.ResponseWriter, r *http.Request) {
		ttl := DefaultTokenTTL
		if v := r.URL.Query().Get("ttl"); v != "" {
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 {
				http.Error(w, fmt.Sprintf("ttl %q: want a positive duration such as 24h", v), http.StatusBadRequest)
				return
			}
			ttl = d
		}
		tok, err := n.NewJoinToken(r.Context(), ttl)
		if err != nil {
			http.Error(w, err.Error(), http.StatusConflict)
			return
		}
		n.log.Info().Str("token", tok.Redacted()).Dur("ttl", ttl).Msg("join token created")
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"token": tok.String(), "expires": time.Now().Add(ttl)})
	})
	mux.HandleFunc("GET /v1/where", func(w http.ResponseWriter, r *http.Request) {
		wh, err := n.Where(r.Context(), r.URL.Query().Get("path"))
		if err != nil {
			code := http.StatusInternalServerError
			switch {
			case errors.Is(err, meta.ErrNotFound):
				code = http.StatusNotFound
			case errors.Is(err, ErrNotClustered):
				code = http.StatusConflict
			}
			http.Error(w, err.Error(), code)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(wh)
	})
	mux.HandleFunc("POST /v1/redundancy", func(w http.ResponseWriter, r *http.Request) {
		copies, err := strconv.Atoi(r.URL.Query().Get("copies"))
		if err != nil {
			http.Error(w, "copies: want a number", http.StatusBadRequest)
			return
		}
		changed, err := n.SetRedundancy(r.Context(), r.URL.Query().Get("path"), copies)
		if err != nil {
			code := http.StatusInternalServerError
			switch {
			case errors.Is(err, meta.ErrNotFound):
				code = http.StatusNotFound
			case errors.Is(err, meta.ErrInvalid):
				code = http.StatusBadRequest
			case errors.Is(err, ErrNotClustered):
				code = http.StatusConflict
			}
			http.Error(w, err.Error(), code)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]int{"changed": changed, "copies": copies})
	})
	nodeErr := func(w http.ResponseWriter, err error) {
		code := http.StatusInternalServerError
		switch {
		case errors.Is(err, ErrUnknownNode):
			code = http.StatusNotFound
		case errors.Is(err, ErrNotClustered), errors.Is(err, ErrOnlyCopy):
			code = http.StatusConflict
		}
		http.Error(w, err.Error(), code)
	}
	mux.HandleFunc("POST /v1/nodes/{id}/drain", func(w http.ResponseWriter, r *http.Request) {
		if err := n.Drain(r.Context(), r.PathValue("id"), r.URL.Query().Get("cancel") == ""); err != nil {
			nodeErr(w, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET /v1/nodes/{id}", func(w http.ResponseWriter, r *http.Request) {
		nc, err := n.NodeChunks(r.Context(), r.PathValue("id"))
		if err != nil {
			nodeErr(w, err)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(nc)
	})
	mux.HandleFunc("POST /v1/nodes/{id}/remove", func(w http.ResponseWriter, r *http.Request) {
		if err := n.Remove(r.Context(), r.PathValue("id"), r.URL.Query().Get("force") != ""); err != nil {
			nodeErr(w, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /v1/scrub", func(w http.ResponseWriter, r *http.Request) {
		if n.scrub == nil {
			http.Error(w, "scrubbing is off (scrub.rate is 0)", http.StatusConflict)
			return
		}
		n.scrub.Kick()
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		st, err := n.Status(r.Context())
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(st)
	})
	gatherers := prometheus.Gatherers{reg, prometheus.DefaultGatherer} // etcd registers its own metrics globally
	mux.Handle("GET /metrics", promhttp.HandlerFor(gatherers, promhttp.HandlerOpts{}))
	want := []byte("Bearer " + token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="wormhole"`)
			http.Error(w, "admin token required: send 'Authorization: Bearer <token from admin.token in the data dir>'", http.StatusUnauthorized)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// metrics registers the node's gauges in a registry of its own.
func (n *Node) metrics() *prometheus.Registry {
	// Go and process metrics come with prometheus.DefaultGatherer, which
	// adminHandler serves beside this registry.
	reg := prometheus.NewRegistry()
	usage := func(free bool) func() float64 {
		return func() float64 {
			total, avail, err := n.store.Usage()
			if err != nil {
				return 0
			}
			if free {
				return float64(avail)
			}
			return float64(total)
		}
	}
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "wormhole_capacity_bytes", Help: "Size of the chunk store's disk."}, usage(false)),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "wormhole_free_bytes", Help: "Free space on the chunk store's disk."}, usage(true)),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "wormhole_inodes", Help: "Inodes in the namespace."}, func() float64 {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			v, err := n.ns.StatFS(ctx)
			if err != nil {
				return 0
			}
			return float64(v)
		}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "wormhole_chunks_below_redundancy_reports_total", Help: "Chunks found below their redundancy by reads and writes."},
			func() float64 { return float64(n.underReplicated.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "wormhole_meta_cache_hits_total", Help: "Metadata reads a single node answered from memory (etcd.cache_entries)."},
			func() float64 { h, _, _ := n.ns.CacheStats(); return float64(h) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "wormhole_meta_cache_misses_total", Help: "Metadata reads a single node's cache sent to etcd."},
			func() float64 { _, m, _ := n.ns.CacheStats(); return float64(m) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "wormhole_meta_cache_entries", Help: "Records in a single node's metadata cache."},
			func() float64 { _, _, e := n.ns.CacheStats(); return float64(e) }),
	)
	if n.scrub != nil {
		stat := func(f func(scrub.Stats) uint64) func() float64 {
			return func() float64 { return float64(f(n.scrub.Stats())) }
		}
		reg.MustRegister(
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "wormhole_scrub_checked_chunks_total", Help: "Chunks the scrubber verified."}, stat(func(s scrub.Stats) uint64 { return s.Checked })),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "wormhole_scrub_corrupt_chunks_total", Help: "Damaged chunk copies the scrubber set aside."}, stat(func(s scrub.Stats) uint64 { return s.Corrupt })),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "wormhole_scrub_read_bytes_total", Help: "Bytes the scrubber read."}, stat(func(s scrub.Stats) uint64 { return s.BytesRead })),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "wormhole_scrub_passes_total", Help: "Full scrub passes finished."}, stat(func(s scrub.Stats) uint64 { return s.Passes })),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "wormhole_scrub_suspects_total", Help: "Chunks checked at once because a read found them damaged."}, stat(func(s scrub.Stats) uint64 { return s.Suspects })),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "wormhole_scrub_quarantine_pruned_total", Help: "Quarantined chunk copies deleted after scrub.quarantine_keep."}, stat(func(s scrub.Stats) uint64 { return s.Pruned })),
		)
	}
	if n.cl != nil && n.cl.repair != nil {
		tot := func(f func(repair.Totals) uint64) func() float64 {
			return func() float64 { return float64(f(n.cl.repair.Totals())) }
		}
		reg.MustRegister(
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "wormhole_repair_passes_total", Help: "Repair passes this node finished as leader."}, tot(func(t repair.Totals) uint64 { return t.Passes })),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "wormhole_repair_copies_total", Help: "Chunk copies this node's repair passes made."}, tot(func(t repair.Totals) uint64 { return t.Copied })),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "wormhole_repair_copied_bytes_total", Help: "Bytes this node's repair passes copied."}, tot(func(t repair.Totals) uint64 { return t.BytesCopied })),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "wormhole_repair_deletes_total", Help: "Extra chunk copies this node's repair passes removed."}, tot(func(t repair.Totals) uint64 { return t.Deleted })),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "wormhole_repair_orphans_deleted_total", Help: "Copies of chunks no file refers to that this node's repair passes removed."}, tot(func(t repair.Totals) uint64 { return t.OrphansDeleted })),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "wormhole_repair_failures_total", Help: "Repair work items that failed (a later pass retries them)."}, tot(func(t repair.Totals) uint64 { return t.Failed })),
		)
	}
	return reg
}

// ScrubStatus is what the scrubber has done since the node started.
type ScrubStatus struct {
	Passes       uint64     `json:"passes"`
	Checked      uint64     `json:"checked"`
	Corrupt      uint64     `json:"corrupt"`
	Errors       uint64     `json:"errors"`
	BytesRead    uint64     `json:"bytes_read"`
	Running      bool       `json:"running"`
	LastFinished *time.Time `json:"last_finished,omitempty"`
}

func (n *Node) scrubStatus() *ScrubStatus {
	if n.scrub == nil {
		return nil
	}
	s := n.scrub.Stats()
	st := &ScrubStatus{Passes: s.Passes, Checked: s.Checked, Corrupt: s.Corrupt, Errors: s.Errors, BytesRead: s.BytesRead, Running: s.Running}
	if !s.LastPassFinished.IsZero() {
		st.LastFinished = &s.LastPassFinished
	}
	return st
}

// listenAdmin binds the admin address, with a clear error when it is taken.
func listenAdmin(addr string) (net.Listener, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return nil, fmt.Errorf("admin address %s is already in use: stop the other program or set admin.addr (or --admin-addr): %w", addr, err)
		}
		return nil, fmt.Errorf("admin address %s: %w", addr, err)
	}
	return l, nil
}

// loadAdminToken reads the admin token, creating it on first start.
func loadAdminToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		tok := strings.TrimSpace(string(b))
		if len(tok) < 32 {
			return "", fmt.Errorf("admin token %s is too short: delete it to have a new one made", path)
		}
		return tok, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("admin token %s: %w", path, err)
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return "", err
	}
	tok := hex.EncodeToString(raw)
	if err := writeFileSync(path+".tmp", []byte(tok+"\n")); err != nil {
		return "", fmt.Errorf("admin token %s: %w", path, err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		return "", fmt.Errorf("admin token %s: %w", path, err)
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		return "", fmt.Errorf("admin token %s: %w", path, err)
	}
	return tok, nil
}

// serveAdmin serves the admin API on l until ctx ends.
func (n *Node) serveAdmin(ctx context.Context, l net.Listener, h http.Handler) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	stop := context.AfterFunc(ctx, func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	})
	defer stop()
	if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("admin API: %w", err)
	}
	return nil
}
