package main

import (
	"encoding/json"
	"fmt"
	"net"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/wormhole-fs/wormhole/tests/bench"
)

// newBenchCmd is `wormhole bench`: the tests/bench workloads against any
// NFSv3 server, reached on explicit ports (no portmapper).
func newBenchCmd() *cobra.Command {
	var (
		o         bench.Options
		mountPort int
		size      string
		asJSON    bool
	)
	cmd := &cobra.Command{
		Use:   "bench --nfs HOST:PORT",
		Short: "Benchmark an NFSv3 server (Wormhole or any other) and verify every read",
		Long: `Run the benchmark workloads against an NFSv3 server over TCP: sequential
write and read of a large file in 1 MiB requests, 4 KiB random reads and
writes, file creates, stats (LOOKUP and GETATTR), a READDIRPLUS listing
of a large directory, and 4 KiB small files. Every byte read is checked.
The run works in a new directory under the export and removes it at the
end (unless --keep). Progress goes to stderr, the table (or JSON) to stdout.

Example against nfs-ganesha with its own ports:
  wormhole bench --nfs 127.0.0.1:20490 --mount-port 20491 --export /export`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.NFSAddr == "" && o.LocalDir == "" {
				return fmt.Errorf("bench: --nfs HOST:PORT is required")
			}
			n, err := bench.ParseSize(size)
			if err != nil {
				return fmt.Errorf("--size: %w", err)
			}
			o.Size = n
			if o.NFSAddr != "" && mountPort != 0 {
				host, _, err := net.SplitHostPort(o.NFSAddr)
				if err != nil {
					return fmt.Errorf("--nfs %q: %w", o.NFSAddr, err)
				}
				o.MountAddr = net.JoinHostPort(host, strconv.Itoa(mountPort))
			}
			o.Progress = cmd.ErrOrStderr()
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			res, err := bench.Run(ctx, o)
			if err != nil {
				if len(res.Figures) > 0 {
					fmt.Fprint(cmd.ErrOrStderr(), res.Table())
				}
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(res)
			}
			_, err = fmt.Fprint(cmd.OutOrStdout(), res.Table())
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.NFSAddr, "nfs", "", "NFSv3 server address HOST:PORT")
	f.IntVar(&mountPort, "mount-port", 0, "MOUNT port on the same host (default: the NFS port)")
	f.StringVar(&o.Export, "export", "/", "export path to mount (nfs-ganesha: its Pseudo or Path)")
	f.StringVar(&size, "size", "256MiB", "size of the large file (split over the streams)")
	f.IntVar(&o.Streams, "streams", 1, "parallel connections for every workload but the listing")
	f.IntVar(&o.RandomOps, "random-ops", 2000, "random 4 KiB reads, and writes")
	f.IntVar(&o.Creates, "creates", 2000, "empty files created (then stat'ed) in one directory")
	f.IntVar(&o.ListEntries, "list-entries", 20000, "entries in the listed directory")
	f.IntVar(&o.SmallFiles, "small-files", 1000, "4 KiB files written and read back")
	f.Uint64Var(&o.Seed, "seed", 1, "seed of the content and random offsets")
	f.DurationVar(&o.OpTimeout, "op-timeout", time.Minute, "deadline of each request")
	f.BoolVar(&o.Keep, "keep", false, "leave the run's directory on the server")
	f.BoolVar(&o.Unstable, "unstable", false, "send seq-write and rand-write WRITEs UNSTABLE and COMMIT at the end (as a kernel client does), instead of FILE_SYNC")
	f.StringVar(&o.LocalDir, "local", "", "run on this local directory with os calls instead (reference figures)")
	f.BoolVar(&asJSON, "json", false, "print JSON instead of the table")
	return cmd
}
