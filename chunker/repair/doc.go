// Package repair is the self-healing worker: one per cluster, it makes the
// copies of every chunk converge to the nodes placement assigns them to.
// One loop covers four cases, which differ only in why the copies and the
// targets disagree:
//
//   - repair: a node has been down longer than Config.Grace; the chunks it
//     held are below target and are copied from survivors to their new
//     placement targets, the chunks with the fewest copies first;
//   - rebalance: a node joined or capacities changed; chunks are copied to
//     their new targets, and only then deleted from the nodes they left;
//   - redundancy changes of a file or directory (meta.Attr.Copies): up adds
//     copies, down deletes the extra ones;
//   - drain: a draining node is no placement target (and the worker ignores
//     it as one even if Placement returned it); its chunks are copied to
//     their targets, then deleted from it.
//
// It imports chunker/chunk, chunker/census and etcdmeta/meta from Wormhole.
// The namespace, placement and the nodes' stores come in through the small
// interfaces Chunks, Placement and Cluster, which the appliance implements
// (over etcdmeta.Store, replica.Store.Holders, cluster membership, peer.Client
// and the node's chunker.LocalStore). It also takes the etcd client, for
// leader election and fencing only: see Leadership below.
//
// # A pass
//
// A pass is a pure function of what it observes, so it is idempotent: running
// it again, after a crash, a leader change or a failure, redoes nothing that is
// done and finishes what is not. Resuming after a failover is simply the new
// leader's first pass. A pass:
//
//  1. takes the membership (Cluster.Nodes) and lists the chunks of every alive
//     node, draining ones included (census.Gather). A node whose list fails
//     makes the inventory partial.
//  2. streams every chunk reference of the namespace (Chunks.ForEachChunk).
//     For each chunk: want is the inode's count (Chunks.Copies), or
//     Config.Copies for 0; targets are Placement.Targets(id, want) less any
//     node that is not alive or is draining; holders are the nodes whose list
//     holds it. Targets without a copy are missing; holders that are no
//     targets are extra. A chunk that needs a copy or a deletion becomes a
//     work item.
//  3. runs the work items in order of urgency, Config.Parallel at a time:
//     fewest kept copies first (a kept copy is one on an alive, non-draining
//     node), so the chunks closest to being lost are repaired first; pure
//     rebalancing and deletions come last.
//
// For one item the worker reads the chunk from a holder (this node first,
// then the targets, then other holders, draining nodes last), checks the bytes
// against the checksum the namespace recorded (chunk.Ref.Sum) besides the
// store's own verification, so a corrupt copy is never a source, and writes
// it to each missing target, throttled to Config.Bandwidth bytes per second.
// A target whose copy turns out corrupt when read is written again.
//
// # Deletions: copy first, delete after
//
// Extra copies are deleted only after every target holds a verified copy:
// targets that already held one are verified again just before (through
// the store's Has when it has one, else a Get), targets written in this item
// were verified by the write. There must also be at least want targets,
// so a cluster with too few eligible nodes keeps its extra copies (a drain then
// cannot finish: it never lowers redundancy). Hence a deletion never takes a
// chunk below want verified copies, and never deletes its last copy.
// A pass makes no deletions at all when
//
//   - the inventory is partial (a node's list failed): its copies are unknown;
//   - some node is down but not yet for Grace: it may come back with its copies,
//     and counting on it is the point of the grace period;
//   - reading the namespace failed part way.
//
// # Grace
//
// While some node has been down for less than Config.Grace, the pass cannot
// tell which chunks it held. It then copies a chunk only if, even counting
// every such node as a holder, the chunk is below want (kept + recently down <
// want), and deletes nothing; rebalancing and drains wait too. So a node that
// reboots costs no copying, and a chunk that is below target for another reason
// (an under-replicated write) is still repaired. Once the grace ends (the next
// pass is scheduled for then) the node's chunks are repaired like any other.
// A node down with no DownSince counts from when this worker first saw it
// down, so a new leader restarts that clock: late rather than wasteful.
//
// # Leadership and fencing
//
// Every node runs a Worker; only the leader acts. Run campaigns with an etcd
// election (concurrency.Election under keyPrefix+"repair/leader", on a
// session lease of Config.SessionTTL). The leader holds its election key,
// whose create revision names its term, and fences every effect that could
// conflict with another leader:
//
//   - the progress record (keyPrefix+"repair/state", JSON of Progress) is
//     written only in a transaction that compares the key's create revision
//     with the term's, at pass start, every Config.ProgressEvery and at pass
//     end;
//   - each deletion is preceded by the same comparison (a linearizable
//     read-only transaction: it gives the same guarantee as an "intent"
//     write, without a raft entry and a new etcd revision per deleted copy,
//     which a drain of millions of chunks would pay).
//
// A failed comparison, or the end of the session, means another worker may
// be leader: the pass stops at once (its context is cancelled), no further
// deletion starts, and the worker campaigns again. A copy in flight may
// still finish; copies are idempotent, so that is harmless. The remaining
// window (a deletion whose check succeeded just before the term ended) is
// bounded by one deletion per parallel slot, and that deletion was safe when
// checked: its targets held verified copies.
//
// Only this package touches the election keys; it reads and writes no other
// key. It takes a *clientv3.Client rather than a method of etcdmeta because
// the election and its fencing compare are etcd primitives that etcdmeta
// does not wrap.
//
// # Memory
//
// The inventory costs what census documents (30 to 45 bytes per chunk held
// anywhere). Work items cost about 170 bytes each (ID, checksum, node
// indexes, the map entry that keeps one item per chunk); at most
// Config.MaxQueue of them (default 1 Mi, so about 180 MB) are kept, the most
// urgent ones. When more chunks need work, the pass does
// the most urgent and the next pass starts at once.
//
// # Races with writers
//
// The pass reads a moving namespace. A chunk written after the inventory was
// taken looks missing everywhere (counted as Unavailable, not acted upon); a
// chunk freed while the pass copies it may be written again to a target and
// stays there as an orphan, for the orphan collection below. Deletions verify their targets
// when they run, not when the pass planned them. Chunk IDs are written once
// and referenced once; should two references name one chunk, the queued item
// keeps the larger count.
//
// # Orphans
//
// A chunk no file refers to (an orphan: left by a write that failed after
// storing it, a delete that missed a node that was down, a copy racing a
// delete) would stay on disk forever. Each pass marks, while it reads the
// references, the chunks of its inventory they name; the others are
// unreferenced. The worker remembers when a pass first found each one so,
// and deletes it from every node that lists it once a pass whose listing
// ended at least Config.OrphanGrace later still finds it unreferenced, after
// a complete read of the references, each deletion fenced like the others.
// Chunk IDs are never reused and a chunk is stored before the reference to
// it is committed; the references are read after the listing, by
// linearizable reads (Chunks.ForEachChunk). So a chunk is deleted only when
// no reference to it was committed within OrphanGrace of its writing, which
// no write in progress takes. Progress.Orphans and OrphansDeleted count
// them.
package repair
