// Package peer moves chunks between nodes: a Server exposes a node's chunk
// store to its peers and a Client stores, fetches, checks, deletes and
// lists chunks on one remote node, over HTTPS with a caller-supplied
// tls.Config (mutual TLS in production: the caller's server config
// requires and verifies client certificates, the client config carries
// one).
//
// It imports only chunker/chunk from Wormhole, so the chunker root (the
// replicator) can import it; the Store interface is declared here, on the
// consumer side, and chunker.LocalStore satisfies it (and Lister). The
// Client satisfies Store, Lister and chunker.Blobs.
//
// # Wire protocol (version 1)
//
// One resource per chunk, named by its 32-digit lowercase hex ID:
//
//	PUT    /v1/chunks/<id>   store the request body as the chunk
//	GET    /v1/chunks/<id>   fetch the chunk's data
//	HEAD   /v1/chunks/<id>   does the node hold a good copy?
//	DELETE /v1/chunks/<id>   remove the chunk (idempotent)
//
// and one for the collection:
//
//	GET    /v1/chunks        list the IDs of the chunks the node holds
//
// The header X-Wormhole-Sum carries the lowercase hex BLAKE3-256 checksum
// of the chunk's data (64 digits).
//
// PUT: the sender computes the sum and sends it with the data and a
// Content-Length (the client also sends "Expect: 100-continue", so a
// refused request costs no body transfer). The server refuses a body
// larger than its MaxChunk before reading it (413), reads the body, checks
// its sum against the header (422 on mismatch; nothing is stored), stores
// the chunk durably and only then answers 201 Created with the sum in
// X-Wormhole-Sum. A store that can (chunker.LocalStore.PutFrom) writes
// the body to a temporary file as it arrives and hashes it on the way, so
// that receiving and writing overlap; the file is put in place only once
// the whole body has the sum. Putting an ID again replaces the chunk (IDs are never
// reused for different bytes), so a retried PUT is safe.
//
// GET: 200 with the data, its Content-Length and X-Wormhole-Sum. The server
// store verifies the chunk on read; the client verifies the data against
// the sum again and reports a mismatch as chunk.ErrCorrupt, never returning
// the bytes.
//
// GET with "Range: bytes=first-last" (one range, both ends given): 206
// with the bytes of the range, fewer where the chunk ends first (none
// past its end), its Content-Length and a Content-Range; no sum. The
// server store reads and verifies only the blocks holding the range
// (chunker.LocalStore.ReadRange), as a read of the node's own copy would;
// the bytes travel under TLS's integrity protection. A corrupt block in
// the range gives 409, as a corrupt chunk does. A server whose store
// cannot read ranges, or a Range header of another form, gets the whole
// chunk (200, as above), which the client verifies and cuts.
//
// HEAD: 200 (with X-Wormhole-Sum and Content-Length) when the node holds a
// verified copy, 404 when it holds none, 409 when its copy is corrupt.
//
// DELETE: 204 No Content, also when the chunk did not exist.
//
// GET /v1/chunks: served only when the server's Store also implements
// Lister (else 501). 200 with an application/octet-stream body streamed
// as the store lists: each chunk ID as its 16 raw bytes, in no particular
// order, then the end record: 16 zero bytes (the zero ID names no chunk)
// and the number of IDs sent as a little-endian uint64. Nothing follows.
// A list of n chunks is 16n+24 bytes. The server writes 4096 IDs at a
// time and gives each write RequestTimeout, so a long list is not cut off
// by the per-request limit; it holds one request slot while it lists. If
// listing fails after the 200 is sent, the server ends the body without
// the end record; a client treats a body without a correct end record as
// a truncated list (a retryable transport error), never as complete.
// Client.List bounds each wait for more data by its Timeout instead of
// the whole list. A server without this request answers 400 (unknown
// path).
//
// Errors: a failed request gets a status code and a short text/plain
// message. Each side maps them in one place, both in errors.go: statusOf
// (error to status) on the server, sentinelOf (status to error) on the
// client:
//
//	400 Bad Request            malformed ID or sum header
//	404 Not Found              chunk.ErrNotFound
//	405 Method Not Allowed     other methods
//	409 Conflict               chunk.ErrCorrupt: the holder's copy is bad
//	413 Content Too Large      body over MaxChunk (ErrTooLarge)
//	422 Unprocessable Content  body does not match X-Wormhole-Sum (ErrSumMismatch)
//	500 Internal Server Error  any other store failure
//	501 Not Implemented        GET /v1/chunks on a store that cannot list (errors.ErrUnsupported)
//	503 Service Unavailable    the request was cancelled while waiting or serving
//	507 Insufficient Storage   chunk.ErrNoSpace
//
// IsRetryable classifies a Client error: timeouts, connection failures and
// 5xx other than 501 and 507 are worth retrying (on this node or
// another); 4xx, 501, 507, corrupt data and TLS authentication failures
// are not.
package peer
