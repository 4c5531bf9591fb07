package nfsfront

import (
	"context"
	"fmt"
	"net"
	"path"
	"slices"
	"sync"

	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
)

// The MOUNT protocol (program 100005; RFC 1813 appendix I for version 3,
// RFC 1094 appendix A for versions 1 and 2), served on the NFS port over
// TCP and UDP. There is one export, "/", the namespace root.
//
// NULL, DUMP, UMNT, UMNTALL and EXPORT encode the same in every version,
// and showmount(8) asks them in version 1, so versions 1 to 3 all answer
// them. MNT exists only in version 3: a version 1 or 2 MNT wants a 32-byte
// NFSv2 handle for NFSv2, which we do not serve, and gets PROC_UNAVAIL.

// MOUNT procedures.
const (
	mountProcNull    = 0
	mountProcMnt     = 1
	mountProcDump    = 2
	mountProcUmnt    = 3
	mountProcUmntAll = 4
	mountProcExport  = 5
)

// MOUNT limits (MNTPATHLEN, MNTNAMLEN).
const (
	mntPathLen = 1024
	mntNameLen = 255
)

// exportPath is the one export.
const exportPath = "/"

var mountV1 = map[uint32]svcProc{
	mountProcNull:    (*Server).mountNull,
	mountProcDump:    (*Server).mountDump,
	mountProcUmnt:    (*Server).mountUmnt,
	mountProcUmntAll: (*Server).mountUmntAll,
	mountProcExport:  (*Server).mountExport,
}

var mountV3 = map[uint32]svcProc{
	mountProcNull:    (*Server).mountNull,
	mountProcMnt:     (*Server).mountMnt,
	mountProcDump:    (*Server).mountDump,
	mountProcUmnt:    (*Server).mountUmnt,
	mountProcUmntAll: (*Server).mountUmntAll,
	mountProcExport:  (*Server).mountExport,
}

// MOUNT versions served.
const (
	mountVersLow  = 1
	mountVersHigh = 3
)

// mountProgram is MOUNT's read-only procedure table.
var mountProgram = program{
	low: mountVersLow, high: mountVersHigh,
	versions: map[uint32]map[uint32]svcProc{1: mountV1, 2: mountV1, 3: mountV3},
}

// mountAuthFlavors are the flavors a MNT reply offers, preferred first.
var mountAuthFlavors = [...]uint32{authSys, authNone}

func (s *Server) mountNull(context.Context, call, *xdrDecoder, *xdrEncoder) {}

// mountMnt answers MNT with the root's handle (mountres3).
func (s *Server) mountMnt(ctx context.Context, c call, d *xdrDecoder, e *xdrEncoder) {
	dir := string(d.opaque(mntPathLen))
	if d.err != nil {
		return
	}
	var fh []byte
	err := checkExport(dir)
	if err == nil {
		idx, ok := s.exportFor(c.remote)
		if !ok {
			err = fmt.Errorf("client %s is in no export's client list: %w", addrString(c.remote), errAccess)
		} else {
			var root meta.Attr
			root, err = s.handler.fs.ns.GetAttr(ctx, meta.RootIno)
			if err == nil {
				fh = s.handleFor(creds{export: idx}, root)
			}
		}
	}
	e.u32(mountStatusOf(err))
	if err != nil {
		s.log.Info().Err(err).Str("client", addrString(c.remote)).Str("path", dir).Msg("mount refused")
		return
	}
	s.mounts.add(clientName(c.remote))
	e.opaque(fh)
	e.u32(uint32(len(mountAuthFlavors)))
	for _, f := range mountAuthFlavors {
		e.u32(f)
	}
}

// checkExport accepts the export's path in any spelling path.Clean
// reduces to "/" (and the empty path some clients send for it).
func checkExport(dir string) error {
	if dir == "" || (dir[0] == '/' && path.Clean(dir) == exportPath) {
		return nil
	}
	return fmt.Errorf("export %q (only %q is exported): %w", dir, exportPath, meta.ErrNotFound)
}

// mountDump lists the clients that mounted and have not unmounted
// (mountlist).
func (s *Server) mountDump(_ context.Context, _ call, _ *xdrDecoder, e *xdrEncoder) {
	for _, host := range s.mounts.list() {
		e.bool(true)
		e.str(host)
		e.str(exportPath)
	}
	e.bool(false)
}

func (s *Server) mountUmnt(_ context.Context, c call, d *xdrDecoder, _ *xdrEncoder) {
	dir := string(d.opaque(mntPathLen))
	if d.err != nil {
		return
	}
	if checkExport(dir) == nil {
		s.mounts.remove(clientName(c.remote))
	}
}

func (s *Server) mountUmntAll(_ context.Context, c call, _ *xdrDecoder, _ *xdrEncoder) {
	s.mounts.remove(clientName(c.remote))
}

// mountExport lists each export with the networks it admits as its
// groups (what `showmount -e` prints).
func (s *Server) mountExport(_ context.Context, _ call, _ *xdrDecoder, e *xdrEncoder) {
	for _, x := range s.cfg.Exports {
		e.bool(true) // an exportnode follows
		e.str(x.Path)
		for _, p := range x.Clients {
			e.bool(true) // a group follows
			e.str(p.String())
		}
		e.bool(false) // no more groups
	}
	e.bool(false) // no more exports
}

// clientName is the host a mount is recorded under: the client's IP.
func clientName(a net.Addr) string {
	if ip := hostOf(a); ip != nil {
		return ip.String()
	}
	return addrString(a)
}

// maxMountRecords bounds the mount list; it keeps a DUMP reply well inside
// one UDP datagram.
const maxMountRecords = 256

// mountTable remembers which clients have the export mounted, for DUMP
// (showmount). It is advisory, as in every NFSv3 server: clients that
// vanish without UMNT stay listed until the table is full and they age out.
type mountTable struct {
	mu    sync.Mutex
	hosts []string // oldest first, no duplicates
}

func (t *mountTable) add(host string) {
	if len(host) > mntNameLen {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if i := slices.Index(t.hosts, host); i >= 0 {
		t.hosts = slices.Delete(t.hosts, i, i+1)
	}
	if len(t.hosts) >= maxMountRecords {
		t.hosts = slices.Delete(t.hosts, 0, 1)
	}
	t.hosts = append(t.hosts, host)
}

func (t *mountTable) remove(host string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if i := slices.Index(t.hosts, host); i >= 0 {
		t.hosts = slices.Delete(t.hosts, i, i+1)
	}
}

func (t *mountTable) list() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return slices.Sorted(slices.Values(t.hosts))
}
