package nfsfront

import (
	"context"
	"net"
)

// services is the set of RPC programs a socket answers.
type services uint8

const (
	svcNFS services = 1 << iota
	svcMount
	svcPortmap
	svcLock // NLM and NSM, when Config.Locks is set
)

// The NFS version served, and its highest procedure (COMMIT, RFC 1813).
const (
	nfsVers    = 3
	maxNFSProc = 21
)

// endpoints are the addresses the front serves on, as the portmapper
// reports them. It is fixed when Serve starts.
type endpoints struct {
	nfsIP       net.IP // nil when the NFS listener is a wildcard
	nfsPort     int    // NFS and MOUNT, TCP and UDP
	portmapIP   net.IP // the portmapper's own listener (or the NFS one)
	portmapPort int
	locks       bool // NLM and NSM are served on the NFS port
}

// origin is where a call came from: the socket's services and transport,
// and the addresses of both ends.
type origin struct {
	svc    services
	udp    bool
	local  net.Addr
	remote net.Addr
	ep     *endpoints
}

// call is one parsed call and where it came from.
type call struct {
	rpcCallHeader
	origin
}

// svcProc serves one procedure of MOUNT or the portmapper: it decodes its
// arguments from d and encodes its results into e. A decode error makes
// the reply GARBAGE_ARGS.
type svcProc func(s *Server, ctx context.Context, c call, d *xdrDecoder, e *xdrEncoder)

// program is the read-only table of one RPC program: procedures by
// version.
type program struct {
	low, high uint32
	versions  map[uint32]map[uint32]svcProc
}

// dispatch answers one call record. It returns the whole reply record; or
// forward, when go-nfs is to serve the record; or neither, when the record
// gets no reply (it is no call, or too short to answer).
func (s *Server) dispatch(ctx context.Context, rec []byte, o origin) (reply []byte, forward bool) {
	h, err := parseCall(rec)
	if err != nil {
		s.log.Debug().Err(err).Str("client", addrString(o.remote)).Msg("malformed RPC call")
		return rejectionOf(h.xid, err), false
	}
	switch {
	case h.prog == progNFS && o.svc&svcNFS != 0:
		switch proc, own := ownProcs[h.proc]; {
		case h.vers != nfsVers:
			return progMismatchReply(h.xid, nfsVers, nfsVers), false
		case own:
			return s.handleOwn(ctx, call{h, o}, proc), false
		case h.proc > maxNFSProc:
			return acceptedReply(h.xid, acceptProcUnavail), false
		case h.proc != 0:
			// go-nfs checks no export and allocates whatever length a
			// handle claims: only a valid handle of an export admitting
			// this client gets through.
			if c := s.callerCreds(call{h, o}); c.denied || c.badHandle {
				return authErrorReply(h.xid, authTooWeak), false
			}
			// go-nfs knows nothing of postures: gate here, by
			// procedure number (COMMIT, MKNOD, READLINK, FSSTAT,
			// PATHCONF).
			if refusal := s.gateCall(h); refusal != nil {
				return refusal, false
			}
		}
		return nil, true
	case h.prog == progMount && o.svc&svcMount != 0:
		return s.serveProgram(ctx, &mountProgram, call{h, o}), false
	case h.prog == progPortmap && o.svc&svcPortmap != 0:
		return s.serveProgram(ctx, &portmapProgram, call{h, o}), false
	case (h.prog == progNLM || h.prog == progNSM) && o.svc&svcLock != 0:
		return s.serveLocks(ctx, call{h, o}), false
	}
	return acceptedReply(h.xid, acceptProgUnavail), false
}

// releaseReply takes back a reply returned by dispatch once it is written
// and nothing refers to it any more: a large READ reply's buffer is used
// again for a later one.
func (s *Server) releaseReply(reply []byte) { s.replyBufs.put(reply) }

// serveProgram runs a call of MOUNT or the portmapper.
func (s *Server) serveProgram(ctx context.Context, p *program, c call) []byte {
	procs, ok := p.versions[c.vers]
	if !ok {
		return progMismatchReply(c.xid, p.low, p.high)
	}
	proc, ok := procs[c.proc]
	if !ok {
		return acceptedReply(c.xid, acceptProcUnavail)
	}
	return s.runProc(ctx, c.rpcCallHeader, func(ctx context.Context, d *xdrDecoder, e *xdrEncoder) {
		proc(s, ctx, c, d, e)
	})
}

// runProc runs body under the per-request timeout and returns the whole
// reply record: SUCCESS with what body encoded, or GARBAGE_ARGS when the
// arguments did not decode.
func (s *Server) runProc(ctx context.Context, h rpcCallHeader, body func(context.Context, *xdrDecoder, *xdrEncoder)) []byte {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.OpTimeout)
	defer cancel()
	e := &xdrEncoder{b: make([]byte, 0, 256)}
	acceptedHeader(e, h.xid, acceptSuccess)
	statusAt := len(e.b) - 4
	d := &xdrDecoder{b: h.args}
	body(ctx, d, e)
	if d.err != nil {
		s.log.Debug().Err(d.err).Uint32("prog", h.prog).Uint32("proc", h.proc).Msg("garbage arguments")
		e.b = e.b[:statusAt]
		e.u32(acceptGarbage)
	}
	return e.b
}

// addrString is an address for logs.
func addrString(a net.Addr) string {
	if a == nil {
		return ""
	}
	return a.String()
}

// hostOf is the IP of an address, or nil.
// portOf returns the port of a TCP or UDP address, or 65536 (never a
// privileged port) for anything else.
func portOf(a net.Addr) int {
	switch a := a.(type) {
	case *net.TCPAddr:
		return a.Port
	case *net.UDPAddr:
		return a.Port
	}
	return 1 << 16
}

func hostOf(a net.Addr) net.IP {
	switch a := a.(type) {
	case *net.TCPAddr:
		return a.IP
	case *net.UDPAddr:
		return a.IP
	}
	return nil
}
