package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/wormhole-fs/wormhole/appliance"
)

// clusterFlags are the settings init and join take from flags as well as
// from the file.
type clusterFlags struct {
	configPath string
	o          appliance.Overrides
	nodeID     string
	advertise  string
}

func (f *clusterFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.configPath, "config", "", "configuration file (YAML); see packaging/wormhole.yaml")
	cmd.Flags().StringVar(&f.o.DataDir, "data-dir", "", "data directory (overrides data_dir)")
	cmd.Flags().StringVar(&f.nodeID, "node-id", "", "this node's id (overrides node.id; default: the host name)")
	cmd.Flags().StringVar(&f.advertise, "advertise", "", "IP address other nodes reach this one at (overrides node.advertise)")
}

func (f *clusterFlags) load() (appliance.Config, error) {
	cfg, err := appliance.LoadConfig(f.configPath, f.o)
	if err != nil {
		return cfg, err
	}
	if f.nodeID != "" {
		cfg.Node.ID = f.nodeID
	}
	if f.advertise != "" {
		cfg.Node.Advertise = f.advertise
	}
	cfg.Version = version
	return cfg, cfg.Validate()
}

func newInitCmd() *cobra.Command {
	var f clusterFlags
	var ttl time.Duration
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Make this machine the first node of a new cluster, and print a join token",
		Long: `Create a cluster in an empty data directory: its certificate authority, this
node's certificate, the cluster secret and the first etcd member. Then start
the node with 'wormhole serve' and add machines with 'wormhole join'.

Run on the data directory of a single node (stopped first), init makes that
node the cluster's first, with all its files: clients' mounts and file
handles stay valid, and the nodes that join receive copies of its chunks as
the redundancy asks. Keep the single node's cluster_id (default "default").`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := f.load()
			if err != nil {
				return err
			}
			log, err := appliance.NewLogger(cfg.Log, os.Stderr)
			if err != nil {
				return err
			}
			tok, err := appliance.Init(cmd.Context(), cfg, ttl, log)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "Cluster %q created; this node's data is in %s.\n", cfg.ClusterID, cfg.DataDir)
			fmt.Fprintf(w, "Start it:          wormhole serve --config <this config>\n")
			fmt.Fprintf(w, "Add a machine:     wormhole join %s:%d --token <token> --config <its config>\n", cfg.Node.Advertise, cfg.Cluster.JoinPort)
			fmt.Fprintf(w, "Join token (secret, valid %s; make more with 'wormhole token create'):\n%s\n", ttl, tok.String())
			return nil
		},
	}
	f.register(cmd)
	cmd.Flags().DurationVar(&ttl, "token-ttl", appliance.DefaultTokenTTL, "how long the printed join token is accepted")
	return cmd
}

func newJoinCmd() *cobra.Command {
	var f clusterFlags
	var token string
	cmd := &cobra.Command{
		Use:   "join SEED:PORT --token TOKEN",
		Short: "Join this machine to a cluster through one of its nodes",
		Long: `Ask a node of the cluster (its advertise address and cluster.join_port) to
admit this machine, with a token from 'wormhole init' or 'wormhole token create'.
The data directory must be empty. Then start the node with 'wormhole serve'.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if token == "" {
				return fmt.Errorf("--token is required: get one with 'wormhole token create' on a node of the cluster")
			}
			cfg, err := f.load()
			if err != nil {
				return err
			}
			log, err := appliance.NewLogger(cfg.Log, os.Stderr)
			if err != nil {
				return err
			}
			if err := appliance.Join(cmd.Context(), cfg, args[0], token, log); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Joined; start the node with: wormhole serve --config <this config>\n")
			return nil
		},
	}
	f.register(cmd)
	cmd.Flags().StringVar(&token, "token", "", "join token (whj1...)")
	return cmd
}

func newTokenCmd() *cobra.Command {
	var f adminFlags
	var ttl time.Duration
	create := &cobra.Command{
		Use:   "create",
		Short: "Make a join token for a new machine (asks the running node)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := f.load()
			if err != nil {
				return err
			}
			raw, err := adminCall(cmd, cfg, http.MethodPost, "/v1/tokens?ttl="+url.QueryEscape(ttl.String()))
			if err != nil {
				return err
			}
			var resp struct {
				Token string `json:"token"`
			}
			if err := json.Unmarshal(raw, &resp); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), resp.Token)
			return nil
		},
	}
	f.register(create)
	create.Flags().DurationVar(&ttl, "ttl", appliance.DefaultTokenTTL, "how long the token is accepted")
	cmd := &cobra.Command{Use: "token", Short: "Manage join tokens"}
	cmd.AddCommand(create)
	return cmd
}

func newWhereCmd() *cobra.Command {
	var f adminFlags
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "where PATH",
		Short: "Show which nodes hold the chunks of a file",
		Long: `Ask the running node which nodes hold each chunk of the file at PATH (a path
in the cluster's namespace, such as /projects/data.bin), and which nodes
placement puts them on.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := f.load()
			if err != nil {
				return err
			}
			raw, err := adminCall(cmd, cfg, http.MethodGet, "/v1/where?path="+url.QueryEscape(args[0]))
			if err != nil {
				return err
			}
			if asJSON {
				_, err = cmd.OutOrStdout().Write(raw)
				return err
			}
			var w appliance.Where
			if err := json.Unmarshal(raw, &w); err != nil {
				return err
			}
			printWhere(cmd.OutOrStdout(), w)
			return nil
		},
	}
	f.register(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON for scripts")
	return cmd
}

func printWhere(out io.Writer, w appliance.Where) {
	short := 0
	for _, c := range w.Chunks {
		if len(c.Holders) < w.Copies {
			short++
		}
	}
	fmt.Fprintf(out, "%s: %s in %d chunk(s), %d copies wanted", w.Path, bytesHuman(w.Size), len(w.Chunks), w.Copies)
	if short > 0 {
		fmt.Fprintf(out, "; %d chunk(s) have fewer", short)
	}
	fmt.Fprintln(out)
	if len(w.Unreachable) > 0 {
		fmt.Fprintf(out, "Not answering (their copies are not counted): %s\n", strings.Join(w.Unreachable, ", "))
	}
	tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  CHUNK\tBYTES\tHELD BY\tPLACED ON")
	for _, c := range w.Chunks {
		fmt.Fprintf(tw, "  %d\t%d\t%s\t%s\n", c.Index, c.Bytes, dash(strings.Join(c.Holders, ",")), strings.Join(c.Targets, ","))
	}
	tw.Flush()
}

func newRedundancyCmd() *cobra.Command {
	var f adminFlags
	set := &cobra.Command{
		Use:   "set PATH COPIES",
		Short: "Keep COPIES copies of the chunks of PATH and everything below it",
		Long: `Set the redundancy of a file or directory subtree (a path in the cluster's
namespace). Files created below it later inherit it. Chunks already written
keep the copies they have until they are rewritten: re-replicating them is
the repair worker's job, which is not built yet.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := f.load()
			if err != nil {
				return err
			}
			raw, err := adminCall(cmd, cfg, http.MethodPost,
				"/v1/redundancy?path="+url.QueryEscape(args[0])+"&copies="+url.QueryEscape(args[1]))
			if err != nil {
				return err
			}
			var resp struct{ Changed, Copies int }
			if err := json.Unmarshal(raw, &resp); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: %d copies; %d file(s) and directorie(s) changed. New writes use it; chunks written before keep their copies until rewritten.\n",
				args[0], resp.Copies, resp.Changed)
			return nil
		},
	}
	f.register(set)
	cmd := &cobra.Command{Use: "redundancy", Short: "Per-directory redundancy"}
	cmd.AddCommand(set)
	return cmd
}
