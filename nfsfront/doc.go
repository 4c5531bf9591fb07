// Package nfsfront is everything an NFS client speaks to: the RPC layer,
// the portmapper and MOUNT, NFSv3 procedures, file handles, permission
// checks and the one mapping from internal errors to NFS status.
//
// # Shape
//
// Each client connection is owned by rpcConn (rpcconn.go): it reads whole
// RPC records (fragments joined, sizes checked before allocating), parses
// the call header and AUTH_SYS credentials (rpc.go), and dispatches
// (dispatch.go). Nearly every NFSv3 procedure is served by our own
// handlers (procs.go for the namespace, data.go for READ, WRITE, COMMIT
// and FSINFO, readdir.go for listings), with the caller's credentials and
// real atime, mtime and ctime. MOUNT (mount.go) and the portmapper
// (portmap.go) are ours too, over TCP and UDP (udp.go). The few remaining
// procedures (READLINK, FSSTAT, PATHCONF, MKNOD, NULL) are handed to a
// go-nfs server bound to that one connection, through goNFSConn, whose
// replies are forwarded as whole records; fsys.go and handler.go are the
// billy filesystem and go-nfs Handler it needs.
//
// A connection serves up to maxInFlight calls at once and answers each
// when it is done, in any order; the records handed to go-nfs are served
// one at a time. Quick calls (GETATTR, LOOKUP, ACCESS, small READs) that
// arrive alone are served on the connection's reader goroutine while they
// stay fast (quick.go).
//
// # Writes
//
// FILE_SYNC and DATA_SYNC writes are durable before the reply. When the
// data layer implements WriteBack, UNSTABLE writes are kept in its memory
// (bounded) and answered UNSTABLE; COMMIT makes them durable. The write
// verifier is random per start, so after a restart clients see it change
// and send their uncommitted writes again. Attributes served by this node
// include its uncommitted writes (size, mtime); other nodes see them after
// COMMIT.
//
// # Postures
//
// An optional Gate (gate.go), set by the composition root from the
// cluster's crisis posture, is asked before each NFSv3 call but NULL runs,
// ours or go-nfs's: refused changes get NFS3ERR_ROFS (ErrWritesRefused),
// and everything gets NFS3ERR_JUKEBOX under freeze (ErrFrozen). MOUNT and
// the portmapper are always answered.
//
// # Locks
//
// NLM v4 (nlm.go) and NSM (nsm.go) are served on the NFS port and
// registered with our portmapper. The lock table is behind the LockTable
// interface (locks.go): in memory on a single node (nlm_mem.go), in etcd
// on a cluster. A blocking LOCK that conflicts is answered BLOCKED and
// remembered (nlm_granted.go): when the lock frees up, the node takes it
// for the client and calls the client's lockd back with NLM_GRANTED; a
// client it cannot reach gets the lock at its own retry. SM_NOTIFY from a
// rebooted client, and FREE_ALL, release its locks.
//
// # File handles
//
// A handle is version, export, inode, generation and a MAC keyed by the
// cluster secret (handle.go): stateless, so any node answers any handle,
// valid across restarts and renames, stale once the inode is removed.
//
// # Errors
//
// Lower layers return wrapped sentinels (meta.Err*, chunk.Err*); errnoOf,
// statusOf and mountStatusOf in errors.go are the only places that turn
// them into errno and NFS or MOUNT status codes.
//
// # Imports
//
// nfsfront depends on etcdmeta/meta and chunker/chunk (types and
// sentinels) and declares the Namespace and Data interfaces it needs;
// it never imports etcd, memberlist, cluster, or the etcdmeta and chunker
// implementations.
package nfsfront
