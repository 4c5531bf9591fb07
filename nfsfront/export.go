package nfsfront

import (
	"fmt"
	"net"
	"net/netip"
)

// Squash says which callers are mapped to the anonymous user.
type Squash int

// Squash modes, as exports(5) names them.
const (
	// SquashRoot maps uid 0 and gid 0 to the anonymous user (root_squash).
	SquashRoot Squash = iota
	// SquashNone trusts every uid the client sends (no_root_squash).
	SquashNone
	// SquashAll maps every caller to the anonymous user (all_squash).
	SquashAll
)

// ParseSquash reads "root", "none" or "all".
func ParseSquash(s string) (Squash, error) {
	switch s {
	case "root", "":
		return SquashRoot, nil
	case "none":
		return SquashNone, nil
	case "all":
		return SquashAll, nil
	}
	return 0, fmt.Errorf("squash %q: want root, none or all", s)
}

// Export is one rule saying who may mount the namespace and how.
// Exports are tried in order; the first whose Clients hold the caller's
// address applies. A handle names the export it was issued under, and is
// honoured only for callers that export admits, so a client cannot use a
// handle obtained through a more generous export.
type Export struct {
	// Path is what clients mount. Only "/" (the whole namespace) is
	// supported so far.
	Path string
	// Clients are the networks admitted. Empty admits nobody.
	Clients []netip.Prefix
	// ReadOnly refuses every change with NFS3ERR_ROFS.
	ReadOnly bool
	// Squash maps callers to AnonUID and AnonGID.
	Squash           Squash
	AnonUID, AnonGID uint32
	// Secure admits only requests from ports below 1024, which only root
	// can bind on the client (knfsd's "secure"): an ordinary user of an
	// admitted machine cannot forge AUTH_SYS credentials with a tool of
	// their own. Off by default: libnfs clients use ordinary ports.
	Secure bool
}

// LoopbackExport admits this machine only, without squashing root: a
// local trial node.
func LoopbackExport() Export {
	return Export{
		Path:    "/",
		Clients: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")},
		Squash:  SquashNone,
		AnonUID: anonymousID, AnonGID: anonymousID,
	}
}

// Validate reports an export the front cannot honour.
func (x Export) Validate() error {
	if x.Path != "/" {
		return fmt.Errorf("export %q: only \"/\" can be exported so far", x.Path)
	}
	if len(x.Clients) == 0 {
		return fmt.Errorf("export %q admits no clients: list networks such as 192.168.1.0/24", x.Path)
	}
	return nil
}

// admits reports whether the export admits a caller at remote.
func (x Export) admits(remote net.Addr) bool {
	if x.Secure && portOf(remote) >= 1024 {
		return false
	}
	addr, ok := netip.AddrFromSlice(hostOf(remote))
	if !ok {
		return false
	}
	addr = addr.Unmap()
	for _, p := range x.Clients {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// exportFor returns the index of the first export admitting a caller at
// remote, or false.
func (s *Server) exportFor(remote net.Addr) (uint8, bool) {
	for i, x := range s.cfg.Exports {
		if x.admits(remote) {
			return uint8(i), true
		}
	}
	return 0, false
}

// callerCreds applies the export of the call's first file handle (every
// NFSv3 procedure's arguments start with one) to the caller's
// credentials: squashing, read-only, and refusal of callers the export
// does not admit. The handle must name the export this client mounts
// through (the first admitting it), so a handle issued under a more
// generous export is refused. An undecodable handle leaves the
// credentials as they are with badHandle set; our procedures then fail on
// the handle itself.
func (s *Server) callerCreds(cl call) creds {
	c := cl.cred
	d := xdrDecoder{b: cl.args}
	hd, err := s.handler.codec.Decode(d.opaque(maxFHSize))
	if err != nil {
		c.badHandle = true
		return c
	}
	c.export = hd.Export
	if idx, ok := s.exportFor(cl.remote); !ok || idx != hd.Export {
		c.denied = true
		return c
	}
	x := s.cfg.Exports[hd.Export]
	c.readOnly = x.ReadOnly
	if c.anon || x.Squash == SquashAll || (x.Squash == SquashRoot && c.uid == 0) {
		c.uid, c.gid, c.gids = x.AnonUID, x.AnonGID, nil
		return c
	}
	if x.Squash == SquashRoot {
		// root_squash maps group 0 too, in the primary and the
		// supplementary groups, as knfsd does.
		if c.gid == 0 {
			c.gid = x.AnonGID
		}
		gids := make([]uint32, len(c.gids))
		for i, g := range c.gids {
			if g == 0 {
				g = x.AnonGID
			}
			gids[i] = g
		}
		c.gids = gids
	}
	return c
}
