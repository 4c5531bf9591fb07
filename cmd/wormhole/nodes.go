package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"

	"github.com/wormhole-fs/wormhole/appliance"
)

// adminFlags are the flags of commands that talk to the local node.
type adminFlags struct {
	configPath string
	o          appliance.Overrides
}

func (f *adminFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.configPath, "config", "", "the node's configuration file")
	cmd.Flags().StringVar(&f.o.DataDir, "data-dir", "", "the node's data directory (holds admin.token)")
	cmd.Flags().StringVar(&f.o.AdminAddr, "admin-addr", "", "the node's admin API address")
}

func (f *adminFlags) load() (appliance.Config, error) { return appliance.LoadConfig(f.configPath, f.o) }

// drainPoll is how often drain asks how much is left.
const drainPoll = 2 * time.Second

func newDrainCmd() *cobra.Command {
	var f adminFlags
	var cancel, detach bool
	cmd := &cobra.Command{
		Use:   "drain NODE",
		Short: "Move every chunk off a node while it keeps serving",
		Long: `Mark NODE as draining: it takes no new chunks, and the cluster copies what it
holds to other nodes, then deletes it there. The node keeps serving NFS
meanwhile. drain shows progress until the node is empty; interrupting it
stops only the display (the drain goes on; --cancel stops it). Then
'wormhole remove NODE' takes it out of the cluster.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := f.load()
			if err != nil {
				return err
			}
			id := url.PathEscape(args[0])
			q := ""
			if cancel {
				q = "?cancel=1"
			}
			if _, err := adminCall(cmd, cfg, http.MethodPost, "/v1/nodes/"+id+"/drain"+q); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if cancel {
				fmt.Fprintf(out, "%s is no longer draining; it takes new chunks again.\n", args[0])
				return nil
			}
			if detach {
				fmt.Fprintf(out, "%s is draining; follow it with 'wormhole drain %s' or 'wormhole status'.\n", args[0], args[0])
				return nil
			}
			return followDrain(cmd, cfg, args[0], id)
		},
	}
	f.register(cmd)
	cmd.Flags().BoolVar(&cancel, "cancel", false, "stop draining the node")
	cmd.Flags().BoolVar(&detach, "detach", false, "start the drain and return at once")
	return cmd
}

// followDrain shows a progress bar until the node holds no chunk.
func followDrain(cmd *cobra.Command, cfg appliance.Config, name, id string) error {
	var bar *progressbar.ProgressBar
	total, waiting := 0, false
	for {
		raw, err := adminCall(cmd, cfg, http.MethodGet, "/v1/nodes/"+id)
		if err != nil {
			return err
		}
		var nc appliance.NodeChunks
		if err := json.Unmarshal(raw, &nc); err != nil {
			return err
		}
		if !nc.Alive {
			return fmt.Errorf("%s is down: its chunks cannot be copied from it; bring it back, or 'wormhole remove %s' once status shows no chunk missing", name, name)
		}
		if nc.Remaining < 0 { // no repair pass since the drain began
			if !waiting {
				waiting = true
				fmt.Fprintf(cmd.ErrOrStderr(), "draining %s: waiting for the first repair pass (%d chunks on it)\n", name, nc.Chunks)
			}
		} else {
			if bar == nil || nc.Remaining > total {
				total = max(total, nc.Remaining)
				bar = progressbar.NewOptions(max(total, 1),
					progressbar.OptionSetWriter(cmd.ErrOrStderr()),
					progressbar.OptionSetDescription("draining "+name),
					progressbar.OptionShowCount(),
					progressbar.OptionSetPredictTime(true),
					progressbar.OptionShowElapsedTimeOnFinish(),
					progressbar.OptionFullWidth())
			}
			_ = bar.Set(total - nc.Remaining)
			if nc.Remaining == 0 {
				_ = bar.Finish()
				fmt.Fprintf(cmd.OutOrStdout(), "\n%s holds no chunk a file refers to any more: remove it with 'wormhole remove %s'.\n", name, name)
				return nil
			}
		}
		select {
		case <-cmd.Context().Done():
			fmt.Fprintf(cmd.OutOrStdout(), "\nStopped following; %s keeps draining.\n", name)
			return nil
		case <-time.After(drainPoll): // poll interval
		}
	}
}

func newRemoveCmd() *cobra.Command {
	var f adminFlags
	var force bool
	cmd := &cobra.Command{
		Use:   "remove NODE",
		Short: "Take a node out of the cluster (refused while it holds the only copy of anything)",
		Long: `Forget NODE: its etcd member, if it runs one, and its record. Refused while
NODE holds the only copy of any chunk (drain it first), or, if NODE is down,
while some chunk has no copy on a node that is up (--force gives them up).
Run it on another node than NODE.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := f.load()
			if err != nil {
				return err
			}
			q := ""
			if force {
				q = "?force=1"
			}
			if _, err := adminCall(cmd, cfg, http.MethodPost, "/v1/nodes/"+url.PathEscape(args[0])+"/remove"+q); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s removed from the cluster; stop its wormhole service.\n", args[0])
			return nil
		},
	}
	f.register(cmd)
	cmd.Flags().BoolVar(&force, "force", false, "remove a down node even if some chunks have no copy on a node that is up")
	return cmd
}
