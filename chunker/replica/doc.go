// Package replica keeps several copies of every chunk on distinct nodes. Its
// Store implements chunker.Blobs over this node's own chunk store (Local)
// and the other nodes' stores (Remote, reached through a Dialer; peer.Client
// is one), so chunker.Files writes through it unchanged.
//
// It imports chunker/chunk and chunker/placement from Wormhole, nothing
// else: the cluster view comes in through the small Membership interface
// (the appliance adapts cluster.Membership to it) and the transport through
// Dialer. It keeps no global state and starts no goroutines of its own;
// each call runs its per-node operations concurrently and waits for them.
//
// # Placement
//
// The copies of chunk id belong on the first Config.Copies nodes of
// placement.Place(id, n, candidates) over the alive nodes with free space
// (Weight > 0): capacity-weighted rendezvous hashing spread over zones.
// Every node computes the same list from the same membership, so no
// location is stored; Holders returns it (for `wormhole where`).
//
// # Redundancy per file
//
// Config.Copies is the cluster's default. A directory subtree may ask for
// another count (meta.Attr.Copies, inherited by the inodes created in it);
// the file layer passes an inode's count with chunk.WithCopies in the
// context of each Put, Get and ReadRange, and Holders takes it as an
// argument. With a count n from the context, Put stores n copies and
// needs at least n when the configuration requires every copy (MinCopies
// == Copies, the default), else at least min(MinCopies, n). Without one,
// Config.Copies applies.
//
// # Writes: quorum and failover
//
// Put writes the copies in parallel, this node's through Local. When a
// target fails, the next node of the full ranking takes its place, so a
// down node costs a failover, not a copy. Put returns only after every
// write it started has finished, and succeeds once Copies copies are
// durable (invariant 1 of the architecture: an acknowledged write is on as
// many nodes as the policy asks). When the ranking runs out first:
//
//   - at least Config.MinCopies copies stored: Put succeeds and emits a
//     ReasonUnderReplicated report, so the repair worker adds the missing
//     copies when nodes return;
//   - fewer: Put deletes the copies it stored (best effort; a node that
//     cannot be reached keeps an orphan, found by the scrubber) and fails
//     with an error wrapping ErrNotEnoughNodes.
//
// MinCopies defaults to Copies. So, by default, a cluster with fewer alive
// nodes (with free space) than Copies refuses new writes, failing fast
// without writing anything, and the NFS front answers them with an error
// status, while reads, deletes and metadata operations continue. Running
// with fewer copies is the explicit choice of configuring MinCopies below
// Copies. When all the nodes that refused a write were full, the error also
// wraps chunk.ErrNoSpace, so the client sees "no space".
//
// # Reads: verification and failover
//
// Get reads this node's copy first when it has one, then asks the other
// alive nodes one at a time in ranking order: first the placement targets,
// then the rest of the ranking, because copies also live on failover nodes
// and on nodes that were targets before other nodes joined or free space
// shifted the ranking. The search is bounded by the node count. Every copy
// is verified by the store that returns it (LocalStore checks the chunk
// file's checksum; peer.Client checks the data against the sum the peer
// sent), so corrupt bytes are never returned (invariant 2). A corrupt copy
// or a placement target without a copy is skipped and reported.
//
// When no copy verifies, the error wraps chunk.ErrCorrupt if some copy
// was corrupt, else chunk.ErrNotFound; when in addition some node that might
// hold the chunk was down or did not answer, it also wraps ErrNotEnoughNodes.
// Callers mapping errors should test chunk.ErrCorrupt, then
// ErrNotEnoughNodes (try again later), then chunk.ErrNotFound.
//
// # Repair reports
//
// Reports delivers a RepairReport for each chunk found below its policy:
// a corrupt copy, a missing copy on a placement target, or a Put that
// stored fewer than Copies copies. Each names the bad node (if any) and the
// nodes known to hold a good copy. The channel is bounded; when it is full,
// reports are dropped and counted (DroppedReports) rather than delay I/O.
// The repair worker that consumes them (copying from a good holder to the
// current placement targets, then deleting copies no longer placed there)
// is not part of this package.
//
// # Deletes
//
// Delete removes the chunk from this node and every alive node, in
// parallel, since after failovers and membership changes a copy may sit on
// any of them. A missing chunk is not an error. Nodes that are down keep
// their copies as orphans until the scrubber removes them.
package replica
