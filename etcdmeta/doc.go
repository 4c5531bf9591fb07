// Package etcdmeta is Wormhole's namespace (inodes, directory entries and
// chunk maps) kept as transactions on etcd, and the lifecycle of the etcd
// server embedded in every node.
//
// Only this package talks to etcd: other packages use the meta.Store
// interface (package etcdmeta/meta) that Store implements, and the
// composition root starts the server with StartEmbedded (or connects with
// DialExternal) and hands the client to New. etcdmeta imports
// etcdmeta/meta and chunker/chunk from Wormhole, nothing else.
//
// # Cluster lifecycle
//
// Every node uses etcd; the first nodes also run a member of it. VoterTarget
// says how many of n nodes run a voting member: 1 (one or two nodes), 3
// (three or four) or 5 (five or more), always odd, because a majority of an
// even count tolerates no more failures than one of a member fewer. Other
// nodes are clients: they connect to the members' client URLs with
// DialExternal, and so does every node when the configuration names an
// external etcd cluster instead (DialExternal checks with a linearizable
// member list that a quorum answers, and names the endpoints if none does).
//
//   - Bootstrap: the first node starts a single-member cluster
//     (StartEmbedded without Join). If the cluster may grow it needs a real
//     PeerURL (a fixed port other nodes can dial) and a TCP ClientURL from
//     the start.
//   - Join: any node with a client (member or not) calls AddLearner with the
//     new member's name and PeerURL, which returns the member ID and the
//     InitialCluster string; the new node starts its member with
//     Join{InitialCluster}; then PromoteWhenReady makes it a voter as soon
//     as its log has caught up (about 0.1 s after it started on an idle
//     cluster). A learner does not count towards quorum, so the cluster
//     keeps serving throughout; adding a voter directly stalls it for
//     seconds until the new member has started and caught up. etcd refuses
//     a further membership change until the member asked has been
//     connected to every voter for 5 s, so growing 1 to 3 takes about 5 s
//     (AddLearner waits it out). If the new member cannot be started, remove
//     it again with RemoveMember.
//   - Layouts: PromoteWhenReady refuses more than MaxVoters voters, or an
//     even count of four or more unless another learner waits to follow
//     (3 to 5 goes through 4; embedded members allow two learners at once).
//     2 voters are allowed on the way from 1 to 3, the only way there.
//   - Failure: a cluster of 3 keeps serving with one member down, 5 with
//     two. Without a quorum, requests fail when their ctx is done (they
//     never hang past it), and Embedded.HasLeader turns false within about
//     a second.
//   - Restart: a member restarts on its data directory without Join; its
//     log records the cluster. It becomes ready once it reaches a quorum.
//   - Replacement: remove the failed member (RemoveMember), then add the
//     replacement as a learner and promote it. Never start a former member
//     on an emptied directory without Join: it would form a cluster alone.
//   - Membership changes are not serialized here: the appliance makes them
//     from one place at a time.
//
// Each member's own Client is in process. It still sees the whole cluster:
// the member forwards writes to the leader through raft and serves
// linearizable reads (the default) only after confirming with the leader.
// A learner serves serializable reads only.
//
// Production members use mutual TLS (EmbedConfig.TLS: node certificate and
// key, cluster CA) on peer and client URLs, and clients present a node
// certificate (DialExternal's tls.Config). Plain http is for tests on
// loopback or private test networks.
//
// # Transactions
//
// Every mutating operation is one etcd transaction. An attempt reads the
// records it depends on at one revision, decides, and commits with a
// compare on the mod revision of every record it read; if another writer
// got there first the attempt starts over (bounded retries with a short
// random backoff). Ranges (directory entries, chunk references) are not
// compared key by key: each change of a directory's entries rewrites the
// directory's inode (mtime, ctime, nlink), and each change of a file's chunk
// map rewrites the file's inode, so the compare on that inode guards the
// range. A consequence is that writers in one directory serialize on its
// inode, which the retry loop absorbs.
//
// On a cluster, a change's first attempt reads the local member's state
// (serializable); its commit compares every key it read, so a lagging
// member only costs a second attempt (runWrite). Reads that answer a
// client (GetAttr, Lookup, ReadDir) are linearizable. Chunks, the chunk
// map a READ or a write reads after those, is read from the local member
// too and kept when the member's revision is at least the newest revision
// any answer to the store carried (floorKV), else read through the
// leader; a context marked meta.WithCurrentReads always reads through
// the leader.
//
// # Key layout
//
// All keys of one namespace live under "/wh/<cluster-id>/". Inode numbers
// and chunk indexes are written as 16 lowercase hex digits, so byte order is
// numeric order.
//
//	ino/<ino>                 inode record
//	dir/<parent>/<name>       directory entry: child inode and type
//	chunk/<ino>/<index>       chunk reference: chunk ID, length, checksum
//	next-ino                  first inode number not yet reserved (8 bytes, big-endian)
//
// A directory listing is a range scan of dir/<parent>/ that continues after
// the last name returned, so listing a directory of n entries page by page
// costs O(n) in total. Dropping a file's chunk map is one range delete.
//
// # Record encoding
//
// Values are compact binary records whose first byte is a format version;
// decoders reject unknown versions, truncated or trailing bytes and
// out-of-range fields with an error and never panic.
//
//	inode:  version (1 or 2), type byte, uvarints mode uid gid nlink size,
//	        varints atime mtime ctime (Unix ns), uvarints gen parent,
//	        uvarint length + symlink target; version 2 adds a copies byte
//	entry:  version, type byte, uvarint child inode
//	chunk:  version, uvarint length, 16-byte chunk ID, 32-byte BLAKE3 sum
//
// An inode with the cluster's default redundancy (Copies 0) is written as
// version 1, one with its own as version 2: binaries that know only
// version 1 keep reading every record until a subtree gets its own
// redundancy (Store.SetCopies), which is therefore a step to take once
// every node runs a binary that knows version 2.
//
// # Redundancy per subtree
//
// Each inode records how many copies its chunks get (meta.Attr.Copies, 0
// for the cluster default). Create gives a new inode its directory's
// value in the same transaction that reads the directory; SetCopies changes
// one inode or a whole subtree.
//
// # Inode numbers and generations
//
// Numbers come from the next-ino counter in batches of 1024 reserved with a
// compare-and-swap, so nodes never hand out the same number and numbers are
// never reused (a batch cut short by a restart is skipped). Each inode's
// generation is the etcd revision at which its batch was reserved: nonzero
// and fresh, which is all a file handle needs given that numbers never
// repeat.
//
// # Limits and sizing
//
// Measured on etcd v3.7.3: a file with two chunk references costs about
// 580 bytes of database after compaction and defragmentation (about 840
// bytes before compaction), so the default 2 GiB quota holds roughly 2.5
// to 3.5 million such files; each further chunk reference adds an estimated
// 150 bytes. Raise QuotaBytes (etcd suggests at most 8 GiB) for more. History
// is compacted automatically (CompactionRetention); bbolt reuses freed
// pages but only returns them to the file system on Embedded.Defragment.
//
// The embedded server allows 10,000 operations per transaction; a
// CommitWrite records at most MaxTxnOps-1 references (well under etcd's
// 1.5 MiB request limit). An external etcd must be started with a matching
// --max-txn-ops.
package etcdmeta
