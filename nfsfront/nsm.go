package nfsfront

import (
	"context"
	"net"
)

// The Network Status Monitor (program 100024, version 1; X/Open XNFS
// chapter 11), as far as a client needs it from a server: SM_NOTIFY, sent
// by a client's statd (sm-notify) when the client restarts, releases the
// locks the client held. SM_MON and SM_UNMON are accepted and change
// nothing: this server does not watch its clients (a client that dies and
// never comes back keeps its locks until FREE_ALL or an operator releases
// them).

// NSM procedures.
const (
	nsmProcNull      = 0
	nsmProcStat      = 1
	nsmProcMon       = 2
	nsmProcUnmon     = 3
	nsmProcUnmonAll  = 4
	nsmProcSimuCrash = 5
	nsmProcNotify    = 6
)

// smMaxStrLen is SM_MAXSTRLEN.
const smMaxStrLen = 1024

// res_stat.
const nsmStatSucc = 0

var nsmV1 = map[uint32]svcProc{
	nsmProcNull:      (*Server).nsmNull,
	nsmProcStat:      (*Server).nsmStat,
	nsmProcMon:       (*Server).nsmMon,
	nsmProcUnmon:     (*Server).nsmUnmon,
	nsmProcUnmonAll:  (*Server).nsmUnmonAll,
	nsmProcSimuCrash: (*Server).nsmNull,
	nsmProcNotify:    (*Server).nsmNotify,
}

// nsmProgram is NSM's read-only procedure table.
var nsmProgram = program{
	low: nsmVers, high: nsmVers,
	versions: map[uint32]map[uint32]svcProc{nsmVers: nsmV1},
}

func (s *Server) nsmNull(context.Context, call, *xdrDecoder, *xdrEncoder) {}

// nsmStat answers SM_STAT (sm_name → sm_stat_res).
func (s *Server) nsmStat(_ context.Context, _ call, d *xdrDecoder, e *xdrEncoder) {
	_ = d.opaque(smMaxStrLen)
	if d.err != nil {
		return
	}
	e.u32(nsmStatSucc)
	e.u32(s.nsm.get())
}

// decodeMyID reads a my_id: my_name, my_prog, my_vers, my_proc.
func decodeMyID(d *xdrDecoder) {
	_ = d.opaque(smMaxStrLen)
	_ = d.u32()
	_ = d.u32()
	_ = d.u32()
}

// nsmMon answers SM_MON (mon → sm_stat_res).
func (s *Server) nsmMon(_ context.Context, _ call, d *xdrDecoder, e *xdrEncoder) {
	_ = d.opaque(smMaxStrLen) // mon_name
	decodeMyID(d)
	_ = d.fixed(16) // priv
	if d.err != nil {
		return
	}
	e.u32(nsmStatSucc)
	e.u32(s.nsm.get())
}

// nsmUnmon answers SM_UNMON (mon_id → sm_stat).
func (s *Server) nsmUnmon(_ context.Context, _ call, d *xdrDecoder, e *xdrEncoder) {
	_ = d.opaque(smMaxStrLen)
	decodeMyID(d)
	if d.err != nil {
		return
	}
	e.u32(s.nsm.get())
}

// nsmUnmonAll answers SM_UNMON_ALL (my_id → sm_stat).
func (s *Server) nsmUnmonAll(_ context.Context, _ call, d *xdrDecoder, e *xdrEncoder) {
	decodeMyID(d)
	if d.err != nil {
		return
	}
	e.u32(s.nsm.get())
}

// nsmNotify answers SM_NOTIFY (stat_chge → void): the host mon_name
// restarted, so it holds no locks any more. A mon_name that is an IP
// address names the client by address; a host name matches the
// caller_name its locks were taken under, from any address (as knfsd
// does: a client's notification may leave from another interface).
func (s *Server) nsmNotify(ctx context.Context, c call, d *xdrDecoder, _ *xdrEncoder) {
	name := string(d.opaque(smMaxStrLen))
	_ = d.u32() // state
	if d.err != nil || name == "" {
		return
	}
	id := ClientID{Caller: name}
	if ip := net.ParseIP(name); ip != nil {
		id = ClientID{Host: ip.String()}
	}
	s.releaseClient(ctx, c, id, "SM_NOTIFY")
}
