// Package cluster tells a Wormhole node who else is alive, and what they
// offer. It wraps HashiCorp memberlist (SWIM gossip over UDP and TCP) and
// gives the other layers a small surface: Self, Members and Subscribe, plus
// the lifecycle New, Start, UpdateFacts, Leave and Close that only the
// composition root calls.
//
// cluster imports no other Wormhole package; it depends on memberlist and
// zerolog only. Turning membership into etcd member changes or replica
// placement is the job of its consumers.
//
// # What is gossiped
//
// Each node is a memberlist member named by its NodeID, reachable at its
// gossip address. Its other facts (NFS and data addresses, zone, tier,
// capacity, free bytes, software version) travel as memberlist node
// metadata, which is limited to 512 bytes. The encoding is compact binary
// whose first byte is a format version (1 today):
//
//	version, then uvarint length + bytes of NFSAddr, DataAddr, Zone, Tier, Version,
//	then uvarint Capacity, uvarint Free
//
// Decoding rejects unknown versions, truncated input, non-minimal varints
// and trailing bytes, and never panics. A node whose metadata does not
// decode (a newer format, say) is still listed, with ID and Addr only, and a
// warning is logged; so a format change needs every node to read the new
// version before any node writes it. Facts that do not fit are refused by
// Start and UpdateFacts (ErrMetaTooLarge), never truncated.
//
// Facts change when the node calls UpdateFacts, which reads Config.Meta
// again and gossips the result; peers see an EventUpdate.
//
// # Events and liveness
//
// Subscribers get EventJoin, EventUpdate, EventLeave (the node called
// Leave) and EventFail (failure detection declared it dead). Events are
// delivered from memberlist's goroutines without ever blocking them: a
// subscriber whose buffer is full loses events (a warning is logged) and
// should resynchronize with Members.
//
// memberlist v0.7.0 does not tell its event delegate whether a departed node
// left or failed: the State field of the Node it passes is never set.
// Leave therefore first sends every member a small "leaving" message and
// waits for their acknowledgements (up to half its timeout) before
// memberlist's own leave; members that got it report EventLeave, the
// others EventFail.
//
// Members lists the nodes memberlist considers alive or suspect. Both are
// reported with StateAlive: memberlist offers no notification of suspicion,
// and reading its node table directly races with its updates.
//
// # Security
//
// All gossip is encrypted and authenticated with AES-256-GCM (memberlist's
// keyring, with GossipVerifyIncoming and GossipVerifyOutgoing). The key is
// derived from the cluster secret with HKDF-SHA256, info "wormhole gossip
// v1", so the gossip key is never the secret itself. A node with another
// secret cannot join: Start fails with ErrJoin, and the seed ignores it.
//
// # Logging and metrics
//
// memberlist's log lines ("[LEVEL] memberlist: ...") go to the zerolog
// logger given to New at the matching level. Routine traffic is debug; info
// and above mean something failed, so a healthy cluster is quiet.
//
// memberlist v0.7.0 emits metrics to go-metrics' process-wide sink; its
// Config has MetricLabels but no per-instance sink. cluster installs no
// sink, so those metrics go to go-metrics' default blackhole unless the
// process installs a global one.
package cluster
