// Command wormhole runs a Wormhole node and administers a cluster.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/wormhole-fs/wormhole/appliance"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	if err := newRootCmd().Execute(); err != nil {
		fmt.Fprintf(os.Stderr, "wormhole: %v\n", err)
		os.Exit(1)
	}
}

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "wormhole",
		Short:         "Wormhole merges the disks of several machines into one NFS filesystem",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newServeCmd(), newInitCmd(), newJoinCmd(), newTokenCmd(), newWhereCmd(), newRedundancyCmd(), newDrainCmd(), newRemoveCmd(), newStatusCmd(), newBenchCmd(), &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Run:   func(cmd *cobra.Command, _ []string) { fmt.Fprintln(cmd.OutOrStdout(), version) },
	})
	return root
}

func newServeCmd() *cobra.Command {
	var configPath string
	var o appliance.Overrides
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run a node: embedded etcd, chunk store and the NFSv3 export",
		Long: `Run a Wormhole node. Without --config it runs a single node on embedded
defaults: etcd and chunks under the data directory, NFS on 127.0.0.1:2049.
SIGTERM or SIGINT stops it cleanly.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := appliance.LoadConfig(configPath, o)
			if err != nil {
				return err
			}
			cfg.Version = version
			log, err := appliance.NewLogger(cfg.Log, os.Stderr)
			if err != nil {
				return err
			}
			if cfg.MemoryLimit > 0 {
				debug.SetMemoryLimit(cfg.MemoryLimit)
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			node, err := appliance.Start(ctx, cfg, log)
			if err != nil {
				if ctx.Err() != nil {
					// Signalled while starting: Start undid what it began.
					log.Info().Msg("wormhole stopped before serving")
					return nil
				}
				return err
			}
			serveErr := node.Serve(ctx)
			closeErr := node.Close()
			if serveErr != nil {
				return serveErr
			}
			if closeErr != nil {
				return fmt.Errorf("shutdown: %w", closeErr)
			}
			log.Info().Msg("wormhole stopped")
			return nil
		},
	}
	cmd.Flags().StringVar(&configPath, "config", "", "configuration file (YAML); see packaging/wormhole.yaml")
	cmd.Flags().StringVar(&o.DataDir, "data-dir", "", "data directory (overrides data_dir)")
	cmd.Flags().StringVar(&o.NFSAddr, "nfs-addr", "", "NFS listen address HOST:PORT (overrides nfs.addr)")
	cmd.Flags().StringVar(&o.AdminAddr, "admin-addr", "", "admin API address HOST:PORT (overrides admin.addr)")
	return cmd
}
