// Package bench measures an NFSv3 server, or a local directory, with
// fixed workloads and verifies every byte and entry it reads back.
//
// The same client code drives every NFSv3 server: the XDR codec and RPC
// and NFSv3 types of github.com/willscott/go-nfs-client, with procedures
// issued here by file handle over a small record-marking transport
// (nfsconn.go). That avoids its high-level API's path walks, directory
// caches and mtime-retry listing, and its rpc.Client, whose calls take no
// deadline and retransmit for minutes. Each call here has a deadline (and
// follows ctx); when it passes, the connection is closed and the workload
// fails with the server's address named. MOUNT and NFS are reached on
// explicit ports, so no portmapper is needed.
//
// Workloads (see Run): sequential write and read of a large file in 1 MiB
// requests, 4 KiB random reads and writes on it, empty-file creates, stats
// (LOOKUP and GETATTR) of those files, a READDIRPLUS listing of a large
// directory (what `ls -l` asks for) and 4 KiB small files written and read
// back. Content is derived from a seed and the offset (pattern.go), so any
// read is checked against what must be there; a mismatch is ErrMismatch.
//
// Writes are FILE_SYNC (stable) over NFS and O_DSYNC on a local directory,
// so both references promise the same durability per acknowledged write.
//
// cmd/compare runs the workloads against a Wormhole node and nfs-ganesha
// alternately on one machine, plus the local disk, and prints the ratios.
//
// Imports: go-nfs-client only; it never imports Wormhole's own packages
// (its tests start a node through appliance).
package bench
