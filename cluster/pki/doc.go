// Package pki holds a Wormhole cluster's trust: its certificate authority,
// the certificates of its nodes, the TLS configurations nodes talk to each
// other with, and the join tokens that admit new nodes. It is the
// groundwork of `wormhole init` and `wormhole join ADDR --token T`.
//
// pki uses the Go standard library only and imports no other Wormhole
// package. It keeps no global state and reads no clock: every function
// that depends on the time takes it. Errors wrap the package's sentinels
// (ErrNotCA, ErrTokenExpired, ErrCAPinMismatch, ...) with %w.
//
// # Trust model
//
// Each cluster has one CA, made by NewCA at `wormhole init`: an ECDSA
// P-256 key and a self-signed certificate, valid ten years, with
// CommonName "wormhole CA <cluster-id>" and URI SAN
// "wormhole://<cluster-id>", that may sign only end-entity certificates.
// Its certificate (Roots) is on every node; its key only on the nodes that
// admit others.
//
// A node makes its own key (NewNodeKey), which never leaves it, and gets
// from the CA a certificate (IssueNode, one year by default) for both
// server and client authentication. Its identity is the URI SAN
// "wormhole://<cluster-id>/node/<node-id>": nodes are dialed by IP
// address, so peers are recognized by node id (NodeIDFromCert,
// PeerNodeID), not by host name. No certificate signing request is
// needed: the joining node sends its public key over the join connection.
// The configurations below take the certificate as a NodeCert, which the
// node replaces when it renews it: each handshake presents the current
// one.
//
// Node-to-node traffic is mutual TLS 1.3: ServerTLS requires and verifies
// a client certificate from the cluster CA; ClientTLS verifies the server
// against the CA and, when given, the node id it meant to reach. A
// certificate from another CA, from another cluster, or none at all is
// refused during the handshake, with an error that says why.
//
// # Joining
//
// A join token is a bearer secret plus a pin of the CA, like kubeadm's
// bootstrap token with its discovery-token-ca-cert-hash. Its string form
// is
//
//	whj1.<id>.<secret>.<ca-hash>
//
// where "whj1" is the format version, <id> is 8 random bytes as 16
// lowercase hex digits, <secret> is 32 random bytes and <ca-hash> the
// SHA-256 of the CA certificate's DER encoding, both as unpadded base64url
// (43 characters). The string is 109 bytes long and a secret.
//
// The joining node dials the seed with JoinClientTLS, which trusts no
// system roots, only a CA whose fingerprint equals the pin: the seed sends
// its certificate chain (JoinServerTLS, with the chain IssueNode returns),
// and the handshake fails with ErrCAPinMismatch unless the chain ends in
// the pinned CA and the seed's certificate verifies against it. Only then
// does the joining node send the token and its public key; the seed
// checks the token (VerifyToken) and answers with a node certificate and
// the CA certificate. So a wrong address or an impostor learns nothing,
// and the joining node needs nothing but the token.
//
// # What is stored where
//
//   - The seed (any node holding the CA key): the CA key and certificate,
//     and a TokenRecord per outstanding token: the token id, a SHA-256 of
//     a domain tag, the id and the secret, and the expiry. Never the
//     secret, so a copy of the store does not yield usable tokens.
//   - Every node: its private key, its certificate chain, the CA
//     certificate.
//   - The operator: the token string, until the join.
//
// A token can be used any number of times until it expires; the seed
// makes it single-use by deleting its record after a successful join.
// VerifyToken compares in constant time and reports an expired token only
// to someone who knows its secret. Certificate revocation and CA rotation
// are not handled yet.
package pki
