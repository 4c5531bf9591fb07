package testnode

import (
	"context"
	"testing"

	"github.com/rs/zerolog"

	"github.com/wormhole-fs/wormhole/appliance"
)

// Node is a node running in the test's process.
type Node struct {
	*appliance.Node
	stop func()
}

// InProcess starts a node in this process: data in dataDir (a fresh
// temporary directory when empty), NFS on a free loopback port, no admin
// API (test nodes must not share its port). edit, when not nil, adjusts
// the configuration first. The node stops when the test ends, or at Stop.
func InProcess(t testing.TB, dataDir string, edit func(*appliance.Config)) *Node {
	t.Helper()
	cfg := appliance.DefaultConfig()
	cfg.DataDir = dataDir
	if cfg.DataDir == "" {
		cfg.DataDir = t.TempDir()
	}
	cfg.NFS.Addr = "127.0.0.1:0"
	cfg.Admin.Addr = ""
	if edit != nil {
		edit(&cfg)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n, err := appliance.Start(ctx, cfg, zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel))
	if err != nil {
		cancel()
		t.Fatalf("start node: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- n.Serve(ctx) }()
	stopped := false
	node := &Node{Node: n}
	node.stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
		if err := n.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	}
	t.Cleanup(node.stop)
	return node
}

// Stop stops the node now (it is also stopped when the test ends).
func (n *Node) Stop() { n.stop() }
