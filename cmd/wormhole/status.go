package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/wormhole-fs/wormhole/appliance"
)

func newStatusCmd() *cobra.Command {
	var f adminFlags
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the node's situation, capacity and what to do about problems",
		Long: `Ask a running node for its status through its admin API. The address and
the token come from the same config file and data dir the node runs with.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := f.load()
			if err != nil {
				return err
			}
			st, raw, err := fetchStatus(cmd, cfg)
			if err != nil {
				return err
			}
			if asJSON {
				_, err = cmd.OutOrStdout().Write(raw)
				return err
			}
			printStatus(cmd.OutOrStdout(), st)
			return nil
		},
	}
	f.register(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON for scripts")
	return cmd
}

func fetchStatus(cmd *cobra.Command, cfg appliance.Config) (appliance.Status, []byte, error) {
	var st appliance.Status
	raw, err := adminCall(cmd, cfg, http.MethodGet, "/v1/status")
	if err != nil {
		return st, nil, err
	}
	if err := json.Unmarshal(raw, &st); err != nil {
		return st, nil, fmt.Errorf("status from %s: %w", cfg.Admin.Addr, err)
	}
	return st, raw, nil
}

// adminCall makes one request to the node's admin API with the node's
// token and returns the body of a successful answer.
func adminCall(cmd *cobra.Command, cfg appliance.Config, method, path string) ([]byte, error) {
	if cfg.Admin.Addr == "" {
		return nil, errors.New("the admin API is disabled (admin.addr is empty): enable it to use this command")
	}
	tokPath := filepath.Join(cfg.DataDir, "admin.token")
	tok, err := os.ReadFile(tokPath)
	if err != nil {
		return nil, fmt.Errorf("admin token: %w (run this as the node's user, with the node's --data-dir or --config)", err)
	}
	req, err := http.NewRequestWithContext(cmd.Context(), method, "http://"+cfg.Admin.Addr+path, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
	resp, err := (&http.Client{Timeout: 2 * time.Minute}).Do(req)
	if err != nil {
		return nil, fmt.Errorf("no node answers at %s: %w (is `wormhole serve` running with this config?)", cfg.Admin.Addr, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("%s from %s: %w", path, cfg.Admin.Addr, err)
	}
	if resp.StatusCode/100 != 2 { // 204 No Content for actions
		return nil, fmt.Errorf("%s: %s", cfg.Admin.Addr, strings.TrimSpace(string(raw)))
	}
	return raw, nil
}

func printStatus(w io.Writer, st appliance.Status) {
	fmt.Fprintf(w, "Wormhole %s, cluster %q, up %s\n", st.Version, st.ClusterID, time.Since(st.Started).Round(time.Second))
	fmt.Fprintf(w, "  Situation:  %s: %s\n", strings.ToUpper(st.Situation), st.Summary)
	if st.Posture != "" && st.Situation != "healthy" {
		fmt.Fprintf(w, "  Posture:    %s: %s\n", strings.ToUpper(st.Posture), st.PostureMeaning)
	}
	if st.AtRisk != "" && st.Situation != "healthy" {
		fmt.Fprintf(w, "  At risk:    %s\n", st.AtRisk)
	}
	if st.Advice != "" {
		fmt.Fprintf(w, "  To do:      %s\n", st.Advice)
	}
	fmt.Fprintf(w, "  NFS:        %s (%d export rule(s))\n", st.NFSAddr, st.Exports)
	fmt.Fprintf(w, "  Capacity:   %s free of %s\n", bytesHuman(st.Capacity.FreeBytes), bytesHuman(st.Capacity.TotalBytes))
	fmt.Fprintf(w, "  Files:      %d inodes\n", st.Inodes)
	fmt.Fprintf(w, "  Data dir:   %s\n", st.DataDir)
	if st.Redundancy != nil {
		fmt.Fprintf(w, "  Redundancy: %d copies of every chunk; when fewer nodes are up: %s\n", st.Redundancy.Copies, st.Redundancy.WhenShort)
	}
	if st.CertValidUntil != nil {
		renewal := "renewed automatically"
		if st.CertRenewalError != "" {
			renewal = "renewal failing: " + st.CertRenewalError
		}
		fmt.Fprintf(w, "  Node cert:  valid until %s (%s)\n", st.CertValidUntil.Format(time.DateOnly), renewal)
	}
	if sc := st.Scrub; sc != nil {
		last := "no full pass yet"
		if sc.LastFinished != nil {
			last = "last pass finished " + sc.LastFinished.Format(time.DateTime)
		}
		fmt.Fprintf(w, "  Scrub:      %d chunks verified, %d damaged copies set aside (%s)\n", sc.Checked, sc.Corrupt, last)
	}
	if r := st.Repair; r != nil && r.Pass > 0 {
		state := "idle"
		if r.Running {
			state = "running"
		}
		fmt.Fprintf(w, "  Repair:     %s (leader %s); pass %d: %d of %d copies made, %d of %d extra copies removed, %d failed\n",
			state, r.Leader, r.Pass, r.Copied, r.ToCopy, r.Deleted, r.ToDelete, r.Failed)
	}
	if c := st.Chunks; c != nil {
		fmt.Fprintf(w, "  Chunks:     %d: %d with their copies, %d with more, %d with fewer (%d with none on a node that is up)\n",
			c.Chunks, c.On, c.Above, c.Below, c.Missing)
		if c.Error != "" {
			fmt.Fprintf(w, "              count incomplete: %s\n", c.Error)
		}
	}
	if len(st.Nodes) == 0 {
		return
	}
	fmt.Fprintf(w, "\nNodes (this one is %s):\n", st.Node)
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  ID\tSTATE\tADDRESS\tETCD\tZONE\tTIER\tFREE\tCAPACITY")
	for _, n := range st.Nodes {
		free, capacity := "-", "-"
		if n.State == "alive" {
			free, capacity = bytesHuman(n.FreeBytes), bytesHuman(n.CapacityBytes)
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", n.ID, strings.ToUpper(n.State), n.Advertise, n.Etcd,
			dash(n.Zone), dash(n.Tier), free, capacity)
	}
	tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// bytesHuman prints a byte count in binary units.
func bytesHuman(b uint64) string {
	const unit = 1024
	if b < unit {
		return fmt.Sprintf("%d B", b)
	}
	div, exp := uint64(unit), 0
	for n := b / unit; n >= unit; n /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(b)/float64(div), "KMGTPE"[exp])
}
