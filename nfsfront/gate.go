package nfsfront

import (
	"errors"
	"fmt"
)

// Gate decides which client operations may run, so the cluster's crisis
// posture (cluster/posture) is enforced in one place: dispatch asks it
// once per NFSv3 call, by procedure, before the call touches the
// namespace or the data, for our own procedures and for those forwarded
// to go-nfs alike. NULL, MOUNT and the portmapper are never gated.
//
// Allow is called on the request path of every connection concurrently:
// it must be safe for concurrent use, must not block, and should be as
// cheap as loading an atomic value.
type Gate interface {
	// Allow returns nil if an operation of class op may run now, else
	// ErrWritesRefused or ErrFrozen (wrapped or not). Any other error
	// refuses the call with NFS3ERR_IO.
	Allow(op OpClass) error
}

// OpClass is what a procedure does, as far as a Gate cares.
type OpClass int

const (
	// OpRead changes nothing: GETATTR, LOOKUP, ACCESS, READLINK, READ,
	// READDIR, READDIRPLUS, FSSTAT, FSINFO, PATHCONF.
	OpRead OpClass = iota
	// OpWrite changes data or the namespace: SETATTR, WRITE, CREATE,
	// MKDIR, SYMLINK, MKNOD, RENAME, LINK, COMMIT.
	OpWrite
	// OpRemove removes a name and only frees space: REMOVE, RMDIR. A gate
	// that refuses new data may still allow it, so that an owner told to
	// free space can; a gate that knows only reads and writes should
	// treat it as OpWrite.
	OpRemove
)

// String names the class for logs.
func (o OpClass) String() string {
	switch o {
	case OpRead:
		return "read"
	case OpWrite:
		return "write"
	case OpRemove:
		return "remove"
	}
	return fmt.Sprintf("OpClass(%d)", int(o))
}

// The errors a Gate refuses with; errors.go maps them to NFS status.
var (
	// ErrWritesRefused refuses a change under the refuse-writes and
	// read-only postures. Clients get NFS3ERR_ROFS (EROFS): an immediate,
	// honest error that applications and people know. NOSPC was
	// considered and rejected: it would be wrong whenever the cause is
	// not space (missing chunks, a lost metadata quorum) and tempts people
	// into deleting data. JUKEBOX too: a hard-mounted client retries it
	// for ever, so writers would hang (and dirty pages pile up in client
	// memory) for as long as the crisis lasts, with nothing to tell them
	// why. ACCESS also stops granting modify, extend and delete rights,
	// as for a read-only export, so most writers fail at open(2).
	ErrWritesRefused = errors.New("writes refused by the cluster's posture")
	// ErrFrozen refuses every call under the freeze posture. Clients get
	// NFS3ERR_JUKEBOX ("try again later"): the Linux client, and most
	// others, wait and retry, so applications block instead of failing
	// and carry on by themselves when the posture lifts, which is what an
	// owner freezing the cluster wants. NFS3ERR_IO would fail every
	// application at once, half-way through whatever it was writing.
	// (Processes blocked this way can still be killed.)
	ErrFrozen = errors.New("all I/O frozen by the cluster's posture")
)

// procGate is what gating needs to know of one NFSv3 procedure: its class
// and the shape of its failure result, as the number of 32-bit FALSE
// words after the status (an empty post_op_attr is one, an empty
// wcc_data two; RFC 1813 section 3.3).
type procGate struct {
	class OpClass
	fail  int
}

// procGates covers every NFSv3 procedure but NULL (0), which is never
// gated.
var procGates = [maxNFSProc + 1]procGate{
	procGetattr:     {OpRead, 0},   // GETATTR3resfail: void
	procSetattr:     {OpWrite, 2},  // wcc_data
	procLookup:      {OpRead, 1},   // post_op_attr of the directory
	procAccess:      {OpRead, 1},   // post_op_attr
	procReadlink:    {OpRead, 1},   // post_op_attr
	procRead:        {OpRead, 1},   // post_op_attr
	procWrite:       {OpWrite, 2},  // wcc_data
	procCreate:      {OpWrite, 2},  // wcc_data of the directory
	procMkdir:       {OpWrite, 2},  // wcc_data of the directory
	procSymlink:     {OpWrite, 2},  // wcc_data of the directory
	procMknod:       {OpWrite, 2},  // wcc_data of the directory
	procRemove:      {OpRemove, 2}, // wcc_data of the directory
	procRmdir:       {OpRemove, 2}, // wcc_data of the directory
	procRename:      {OpWrite, 4},  // wcc_data of both directories
	procLink:        {OpWrite, 3},  // post_op_attr, wcc_data
	procReadDir:     {OpRead, 1},   // post_op_attr
	procReadDirPlus: {OpRead, 1},   // post_op_attr
	procFSStat:      {OpRead, 1},   // post_op_attr
	procFSInfo:      {OpRead, 1},   // post_op_attr
	procPathconf:    {OpRead, 1},   // post_op_attr
	procCommit:      {OpWrite, 2},  // wcc_data
}

// gateCall returns the whole refusal reply to an NFSv3 call the gate
// refuses, or nil when the call may run (or is NULL, or out of range).
func (s *Server) gateCall(h rpcCallHeader) []byte {
	if s.cfg.Gate == nil || h.proc == 0 || h.proc > maxNFSProc {
		return nil
	}
	pg := procGates[h.proc]
	err := s.cfg.Gate.Allow(pg.class)
	if err == nil {
		return nil
	}
	s.log.Debug().Err(err).Uint32("proc", h.proc).Stringer("class", pg.class).Msg("call refused by posture")
	e := &xdrEncoder{b: make([]byte, 0, 24+4+4*pg.fail)}
	acceptedHeader(e, h.xid, acceptSuccess)
	e.u32(uint32(statusOf(err)))
	for range pg.fail {
		e.bool(false)
	}
	return e.b
}

// permits reports whether the gate lets operations of class op run now.
func (s *Server) permits(op OpClass) bool {
	return s.cfg.Gate == nil || s.cfg.Gate.Allow(op) == nil
}
