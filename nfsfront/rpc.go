package nfsfront

import (
	"errors"
	"fmt"
)

// ONC RPC (RFC 5531) message layer: call header parsing and the reply
// headers we write ourselves. go-nfs v0.0.4 numbers accept_stat without
// PROG_MISMATCH, so every status it sends after PROG_UNAVAIL is one too low
// on the wire (its PROC_UNAVAIL arrives as a PROG_MISMATCH without the
// mismatch_info body, which libnfs cannot decode). Every RPC-level reply is
// therefore built here, and goNFSConn renumbers go-nfs's own (goNFSStat).

// RPC message constants (RFC 5531 section 9).
const (
	rpcVersion = 2

	rpcCall  = 0
	rpcReply = 1

	msgAccepted = 0
	msgDenied   = 1

	// accept_stat
	acceptSuccess      = 0
	acceptProgUnavail  = 1
	acceptProgMismatch = 2
	acceptProcUnavail  = 3
	acceptGarbage      = 4
	acceptSystemErr    = 5

	// reject_stat
	rejectRPCMismatch = 0
	rejectAuthError   = 1

	// auth_stat
	authBadCred = 1
	authTooWeak = 5 // AUTH_TOOWEAK: the export does not admit this client

	lastFragment = 1 << 31
)

// Programs served on the NFS port (and the portmapper's own).
const (
	progPortmap = 100000
	progNFS     = 100003
	progMount   = 100005
)

// Authentication flavors.
const (
	authNone       = 0
	authSys        = 1
	maxAuthBody    = 400
	anonymousID    = 65534
	maxAuthSysGids = 16
)

// Errors of parseCall. errRPCVersion and errBadCred get a MSG_DENIED
// reply (rejectionOf); any other parse error drops the record.
var (
	errNotCall    = errors.New("rpc message is not a call")
	errRPCVersion = errors.New("rpc version is not 2")
	errBadCred    = errors.New("malformed credentials")
)

// rpcCallHeader is a parsed RPC call.
type rpcCallHeader struct {
	xid  uint32
	prog uint32
	vers uint32
	proc uint32
	cred creds
	args []byte
}

// creds are the caller's AUTH_SYS credentials (AUTH_NULL maps to the
// anonymous user).
type creds struct {
	uid, gid uint32
	gids     []uint32
	// Set by callerCreds from the export of the call's file handle.
	export    uint8
	readOnly  bool // the export refuses changes
	denied    bool // the export does not admit this client
	badHandle bool // the first handle did not decode
	anon      bool // no AUTH_SYS credentials: the export's anonymous user
}

// parseCall decodes the RPC call header of a record. On error the xid is
// set whenever the record held one, so a rejection can answer it.
func parseCall(rec []byte) (rpcCallHeader, error) {
	d := xdrDecoder{b: rec}
	var h rpcCallHeader
	h.xid = d.u32()
	mt := d.u32()
	if d.err != nil {
		return h, fmt.Errorf("rpc header: %w", d.err)
	}
	if mt != rpcCall {
		return h, fmt.Errorf("message type %d: %w", mt, errNotCall)
	}
	if v := d.u32(); v != rpcVersion && d.err == nil {
		return h, fmt.Errorf("rpc version %d: %w", v, errRPCVersion)
	}
	h.prog, h.vers, h.proc = d.u32(), d.u32(), d.u32()
	if d.err != nil {
		return h, fmt.Errorf("rpc call header: %w", d.err)
	}
	flavor := d.u32()
	body := d.opaque(maxAuthBody)
	_ = d.u32()               // verifier flavor
	_ = d.opaque(maxAuthBody) // verifier body
	if d.err != nil {
		return h, fmt.Errorf("rpc call auth: %w: %w", errBadCred, d.err)
	}
	if flavor != authNone && flavor != authSys {
		// RPCSEC_GSS, AUTH_DH, ...: refused rather than served as the
		// anonymous user, which a client asking for Kerberos does not
		// expect (and would not notice).
		return h, fmt.Errorf("auth flavor %d (only AUTH_NONE and AUTH_SYS are served): %w", flavor, errBadCred)
	}
	h.cred = creds{uid: anonymousID, gid: anonymousID, anon: true}
	if flavor == authSys {
		ad := xdrDecoder{b: body}
		_ = ad.u32()       // stamp
		_ = ad.opaque(255) // machine name
		uid, gid := ad.u32(), ad.u32()
		n := ad.u32()
		if n > maxAuthSysGids {
			return h, fmt.Errorf("AUTH_SYS with %d groups: %w", n, errBadCred)
		}
		gids := make([]uint32, 0, n)
		for range n {
			gids = append(gids, ad.u32())
		}
		if ad.err != nil {
			return h, fmt.Errorf("AUTH_SYS credentials: %w: %w", errBadCred, ad.err)
		}
		h.cred = creds{uid: uid, gid: gid, gids: gids}
	}
	h.args = d.b[d.off:]
	return h, nil
}

// acceptedHeader starts an accepted reply: xid, REPLY, MSG_ACCEPTED, an
// AUTH_NONE verifier and the accept_stat.
func acceptedHeader(e *xdrEncoder, xid, stat uint32) {
	e.u32(xid)
	e.u32(rpcReply)
	e.u32(msgAccepted)
	e.u32(authNone)
	e.u32(0)
	e.u32(stat)
}

// acceptedReply is a whole accepted reply without results: PROG_UNAVAIL,
// PROC_UNAVAIL, GARBAGE_ARGS or SYSTEM_ERR (or SUCCESS of a void
// procedure).
func acceptedReply(xid, stat uint32) []byte {
	e := &xdrEncoder{b: make([]byte, 0, 24)}
	acceptedHeader(e, xid, stat)
	return e.b
}

// progMismatchReply tells the caller which versions of the program exist.
func progMismatchReply(xid, low, high uint32) []byte {
	e := &xdrEncoder{b: make([]byte, 0, 32)}
	acceptedHeader(e, xid, acceptProgMismatch)
	e.u32(low)
	e.u32(high)
	return e.b
}

// rpcMismatchReply refuses a call of an RPC version other than 2.
func rpcMismatchReply(xid uint32) []byte {
	e := &xdrEncoder{b: make([]byte, 0, 24)}
	e.u32(xid)
	e.u32(rpcReply)
	e.u32(msgDenied)
	e.u32(rejectRPCMismatch)
	e.u32(rpcVersion)
	e.u32(rpcVersion)
	return e.b
}

// authErrorReply refuses a call for its credentials.
func authErrorReply(xid, stat uint32) []byte {
	e := &xdrEncoder{b: make([]byte, 0, 20)}
	e.u32(xid)
	e.u32(rpcReply)
	e.u32(msgDenied)
	e.u32(rejectAuthError)
	e.u32(stat)
	return e.b
}

// go-nfs v0.0.4's ResponseCode values, as it writes them on the wire.
const (
	goNFSProcUnavail = 2
	goNFSGarbage     = 3
	goNFSSystemErr   = 4
	goNFSRPCMismatch = 5
	goNFSAuthError   = 6
)

// fixGoNFSReply rewrites, in place, the status of a reply record written by
// go-nfs to RFC 5531 numbering: accepted PROC_UNAVAIL, GARBAGE_ARGS and
// SYSTEM_ERR, and rejected RPC_MISMATCH and AUTH_ERROR (whose bodies go-nfs
// writes little-endian). A SUCCESS reply, the common case, is untouched.
func fixGoNFSReply(rec []byte) {
	d := xdrDecoder{b: rec}
	_ = d.u32() // xid
	if d.u32() != rpcReply || d.err != nil {
		return
	}
	switch d.u32() {
	case msgAccepted:
		_ = d.u32()          // verifier flavor
		_ = d.opaque(1 << 9) // verifier body
		at := d.off
		stat := d.u32()
		if d.err != nil {
			return
		}
		switch stat {
		case goNFSProcUnavail:
			putU32(rec[at:], acceptProcUnavail)
		case goNFSGarbage:
			putU32(rec[at:], acceptGarbage)
		case goNFSSystemErr:
			putU32(rec[at:], acceptSystemErr)
		}
	case msgDenied:
		at := d.off
		stat := d.u32()
		if d.err != nil {
			return
		}
		switch stat {
		case goNFSRPCMismatch:
			putU32(rec[at:], rejectRPCMismatch)
		case goNFSAuthError:
			putU32(rec[at:], rejectAuthError)
		default:
			return
		}
		for body := rec[at+4:]; len(body) >= 4; body = body[4:] {
			body[0], body[1], body[2], body[3] = body[3], body[2], body[1], body[0]
		}
	}
}
