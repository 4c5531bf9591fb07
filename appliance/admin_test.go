package appliance

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/rs/zerolog"
	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
)

func TestAdminAPI(t *testing.T) {
	cfg := DefaultConfig()
	cfg.DataDir = t.TempDir()
	cfg.NFS.Addr = "127.0.0.1:0"
	cfg.Admin.Addr = "127.0.0.1:0"
	cfg.Version = "test"
	ctx, cancel := context.WithCancel(context.Background())
	n, err := Start(ctx, cfg, zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- n.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
		n.Close()
	})
	tok, err := os.ReadFile(filepath.Join(cfg.DataDir, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	get := func(path, token string) (int, string) {
		req, _ := http.NewRequest(http.MethodGet, "http://"+n.AdminAddr().String()+path, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, tokTry := range []string{"", "wrong", strings.TrimSpace(string(tok)) + "x"} {
		if code, _ := get("/v1/status", tokTry); code != http.StatusUnauthorized {
			t.Errorf("status with token %q: HTTP %d, want 401", tokTry, code)
		}
		if code, _ := get("/metrics", tokTry); code != http.StatusUnauthorized {
			t.Errorf("metrics with token %q: HTTP %d, want 401", tokTry, code)
		}
	}
	code, body := get("/v1/status", strings.TrimSpace(string(tok)))
	if code != http.StatusOK {
		t.Fatalf("status: HTTP %d: %s", code, body)
	}
	var st Status
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatal(err)
	}
	if st.Version != "test" || st.Inodes < 1 || st.Capacity.TotalBytes == 0 || st.Situation == "" || st.Summary == "" {
		t.Fatalf("status %+v", st)
	}
	// The root read twice: the second answer comes from the single
	// node's metadata cache, and the metrics count it.
	for range 2 {
		if _, err := n.ns.GetAttr(ctx, meta.RootIno); err != nil {
			t.Fatal(err)
		}
	}
	code, body = get("/metrics", strings.TrimSpace(string(tok)))
	if code != http.StatusOK || !strings.Contains(body, "wormhole_inodes 1") || !strings.Contains(body, "wormhole_free_bytes") {
		t.Fatalf("metrics: HTTP %d, missing wormhole gauges:\n%.400s", code, body)
	}
	if !regexp.MustCompile(`(?m)^wormhole_meta_cache_hits_total [1-9]`).MatchString(body) ||
		!regexp.MustCompile(`(?m)^wormhole_meta_cache_entries [1-9]`).MatchString(body) {
		t.Fatalf("metrics: no metadata cache hits or entries counted:\n%s", body)
	}
}
