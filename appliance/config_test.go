package appliance

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/wormhole-fs/wormhole/nfsfront"
)

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "wormhole.yaml")
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadConfigErrorsNameTheKey(t *testing.T) {
	cases := map[string]struct{ body, want string }{
		"unknown top-level key": {"dta_dir: /x\n", "dta_dir"},
		"unknown nested key":    {"nfs:\n  adress: 1.2.3.4:5\n", "adress"},
		"bad cluster id":        {"cluster_id: a/b\n", "cluster_id"},
		"bad address":           {"nfs:\n  addr: nowhere\n", "nfs.addr"},
		"chunk size too small":  {"chunks:\n  size: 12\n", "chunks.size"},
		"bad log level":         {"log:\n  level: loud\n", "log.level"},
		"bad duration":          {"nfs:\n  op_timeout: soon\n", "op_timeout"},
		"not yaml":              {"nfs: [\n", "wormhole.yaml"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			p := writeConfig(t, c.body)
			_, err := LoadConfig(p, Overrides{DataDir: t.TempDir()})
			if err == nil {
				t.Fatalf("config %q accepted", c.body)
			}
			if !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), p) {
				t.Fatalf("error %q does not name %q and the file", err, c.want)
			}
		})
	}
}

func TestLoadConfigDefaultsAndOverrides(t *testing.T) {
	p := writeConfig(t, "data_dir: /from/file\nnfs:\n  addr: 127.0.0.1:3049\n  op_timeout: 5s\n")
	cfg, err := LoadConfig(p, Overrides{NFSAddr: "127.0.0.1:4049"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.DataDir != "/from/file" || cfg.NFS.Addr != "127.0.0.1:4049" || cfg.NFS.OpTimeout != 5*time.Second {
		t.Fatalf("file and overrides not applied: %+v", cfg)
	}
	if cfg.Chunks.Size != DefaultConfig().Chunks.Size || cfg.ClusterID != "default" {
		t.Fatalf("defaults lost for keys the file does not set: %+v", cfg)
	}
	if _, err := LoadConfig("", Overrides{DataDir: t.TempDir()}); err != nil {
		t.Fatalf("defaults without a file: %v", err)
	}
	if _, err := LoadConfig(filepath.Join(t.TempDir(), "missing.yaml"), Overrides{}); err == nil {
		t.Fatal("a missing config file was accepted")
	}
}

// The packaged example must load as it is, and say the defaults it claims
// to show: it is what users copy.
func TestPackagedConfigLoads(t *testing.T) {
	got, err := LoadConfig("../packaging/wormhole.yaml", Overrides{})
	if err != nil {
		t.Fatalf("packaging/wormhole.yaml: %v", err)
	}
	want := DefaultConfig()
	want.DataDir = "/var/lib/wormhole" // the file shows the packaged (root) default
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("packaging/wormhole.yaml does not show the defaults:\n got %+v\nwant %+v", got, want)
	}
}

func TestExportsConfig(t *testing.T) {
	p := writeConfig(t, `nfs:
  exports:
    - path: /
      clients: [192.168.1.0/24, 10.0.0.7]
      read_only: true
    - path: /
      clients: ["::1"]
      squash: all
      anon_uid: 1000
      anon_gid: 1000
`)
	cfg, err := LoadConfig(p, Overrides{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	xs, err := cfg.NFS.nfsExports()
	if err != nil {
		t.Fatal(err)
	}
	if len(xs) != 2 || !xs[0].ReadOnly || xs[0].Squash != nfsfront.SquashRoot || xs[1].Squash != nfsfront.SquashAll || xs[1].AnonUID != 1000 {
		t.Fatalf("exports %+v", xs)
	}
	if got := xs[0].Clients[1].String(); got != "10.0.0.7/32" {
		t.Fatalf("single address became %s, want 10.0.0.7/32", got)
	}

	for name, c := range map[string]struct{ body, want string }{
		"subdirectory": {"nfs:\n  exports:\n    - path: /home\n      clients: [10.0.0.0/8]\n", "subdirectory"},
		"bad network":  {"nfs:\n  exports:\n    - path: /\n      clients: [10.0.0.0/33]\n", "clients"},
		"no clients":   {"nfs:\n  exports:\n    - path: /\n", "clients"},
		"bad squash":   {"nfs:\n  exports:\n    - path: /\n      clients: [10.0.0.0/8]\n      squash: some\n", "squash"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := LoadConfig(writeConfig(t, c.body), Overrides{DataDir: t.TempDir()})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v does not mention %q", err, c.want)
			}
		})
	}
}
