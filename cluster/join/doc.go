// Package join is the network protocol of `wormhole join SEED --token T`:
// a joining node proves it holds a join token, and a seed (a node holding
// the cluster CA) answers with everything the node needs to become a
// member: a node certificate for its own key, the CA certificate, the
// cluster secret, and where to find etcd and the gossip ring.
//
// Join is the joining side, Server the seed side. The seed's policy
// (which tokens exist, which role the node gets, adding it to etcd) is the
// Admitter, implemented by the appliance. The package imports only
// cluster/pki from Wormhole.
//
// # Trust
//
// The joining node trusts nothing but its token (see cluster/pki): it
// dials the seed with pki.JoinClientTLS, whose handshake fails with
// pki.ErrCAPinMismatch unless the seed presents the CA the token pins, and
// only then sends the token. The seed verifies the token against its
// record (pki.VerifyToken); a token can be used any number of times until
// it expires. The joining node checks the answer again: the CA must be
// the pinned one, and the certificate must chain to it, name the node and
// hold the node's public key. The node's private key never leaves it.
//
// # Wire protocol (version 1)
//
// One request over TLS 1.3, HTTP/1.1:
//
//	POST /v1/join
//	Content-Type: application/json
//
//	{"token": "whj1.…", "node_id": "n2", "public_key": "<base64 PKIX DER>",
//	 "hosts": ["10.0.0.2"], "advertise": "10.0.0.2",
//	 "etcd_peer_port": 2380, "gossip_port": 7946, "data_port": 7947, "nfs_port": 2049}
//
// The body is at most MaxRequestBytes; unknown fields are ignored. On
// success the seed answers 200 with a Response in JSON (byte slices in
// base64). On failure it answers a status and an error body
//
//	{"code": "token_invalid", "message": "token 0123…: join token not recognized …"}
//
// whose code the joining side maps back to a sentinel error; the message
// is for the operator. Codes and statuses:
//
//	400 bad_request      malformed JSON or invalid field (ErrBadRequest)
//	401 token_malformed  the token string does not parse (pki.ErrTokenMalformed)
//	401 token_invalid    no such token, or wrong secret (pki.ErrTokenInvalid)
//	401 token_expired    the token has expired (pki.ErrTokenExpired)
//	404 not_found        another path (ErrBadRequest)
//	405 bad_method       another method (ErrBadRequest)
//	409 node_id_taken    the node id belongs to a member (ErrNodeIDTaken)
//	413 too_large        body over MaxRequestBytes (ErrBadRequest)
//	500 internal         the seed failed (ErrSeedFailed)
//	503 unavailable      the seed is shutting down or timed out (ErrSeedFailed)
//
// The seed checks, in order: the JSON, the token (unknown and wrong tokens
// get the same answer, so guessing reveals nothing), the other fields
// (including signing the certificate, which checks the node id and key
// type), and only then calls Admitter.Admit, the one step with side
// effects. Before the token is verified, internal errors are not
// described to the client.
//
// The token is a secret: neither side logs it, and Admit sees it redacted.
package join
