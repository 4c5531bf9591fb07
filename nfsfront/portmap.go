package nfsfront

import (
	"context"
	"fmt"
	"maps"
	"net"
	"time"
)

// The portmapper (program 100000): version 2 (RFC 1833 section 3,
// "PMAP") and versions 3 and 4 ("RPCBIND", RFC 1833 section 2), over TCP
// and UDP, on its own address (nfs.portmap_addr, usually port 111) and on
// the NFS port. It answers from a fixed table: NFS version 3 over TCP, and
// MOUNT versions 1 to 3 over TCP and UDP, on the NFS port; SET and UNSET
// are refused, so no other program can register with it.
//
// Lookups for another version of a registered program return its port
// (as rpcbind does), so a client asking for NFSv4 reaches the server and
// learns from PROG_MISMATCH that only version 3 exists.

// Portmapper procedures. Versions 3 and 4 share numbers 0 to 8.
const (
	pmapProcNull    = 0
	pmapProcSet     = 1
	pmapProcUnset   = 2
	pmapProcGetport = 3 // version 2; GETADDR in 3 and 4
	pmapProcDump    = 4
	rpcbProcGetTime = 6
	rpcbProcVersAdr = 9 // GETVERSADDR, version 4
)

// IP protocol numbers in version 2 mappings.
const (
	ipProtoTCP = 6
	ipProtoUDP = 17
)

// Bounds for the strings of an rpcb argument.
const (
	maxNetID = 64
	maxUaddr = 128
	maxOwner = 255
)

// rpcbOwner is the r_owner of our entries.
const rpcbOwner = "wormhole"

var pmapV2 = map[uint32]svcProc{
	pmapProcNull:    (*Server).pmapNull,
	pmapProcSet:     (*Server).pmapRefuse,
	pmapProcUnset:   (*Server).pmapRefuse,
	pmapProcGetport: (*Server).pmapGetport,
	pmapProcDump:    (*Server).pmapDump,
}

var rpcbV3 = map[uint32]svcProc{
	pmapProcNull:    (*Server).pmapNull,
	pmapProcSet:     (*Server).rpcbRefuse,
	pmapProcUnset:   (*Server).rpcbRefuse,
	pmapProcGetport: (*Server).rpcbGetaddr,
	pmapProcDump:    (*Server).rpcbDump,
	rpcbProcGetTime: (*Server).rpcbGetTime,
}

// rpcbV4 is version 3 plus GETVERSADDR.
var rpcbV4 = func() map[uint32]svcProc {
	m := maps.Clone(rpcbV3)
	m[rpcbProcVersAdr] = (*Server).rpcbGetversaddr
	return m
}()

// Portmapper versions served.
const (
	pmapVersLow  = 2
	pmapVersHigh = 4
)

// portmapProgram is the portmapper's read-only procedure table.
var portmapProgram = program{
	low: pmapVersLow, high: pmapVersHigh,
	versions: map[uint32]map[uint32]svcProc{2: pmapV2, 3: rpcbV3, 4: rpcbV4},
}

// registration is one (program, version, protocol) the portmapper reports.
type registration struct {
	prog, vers uint32
	proto      uint32 // ipProtoTCP or ipProtoUDP
	port       int
	ip         net.IP // the listener's IP, nil for a wildcard
}

// registrations lists what the front serves, in rpcinfo's usual order.
func (ep *endpoints) registrations() []registration {
	var regs []registration
	add := func(prog uint32, low, high uint32, udp bool, port int, ip net.IP) {
		for _, proto := range []uint32{ipProtoTCP, ipProtoUDP} {
			if proto == ipProtoUDP && !udp {
				continue
			}
			for v := int64(high); v >= int64(low); v-- {
				regs = append(regs, registration{prog: prog, vers: uint32(v), proto: proto, port: port, ip: ip})
			}
		}
	}
	add(progPortmap, pmapVersLow, pmapVersHigh, true, ep.portmapPort, ep.portmapIP)
	add(progNFS, nfsVers, nfsVers, false, ep.nfsPort, ep.nfsIP)
	add(progMount, mountVersLow, mountVersHigh, true, ep.nfsPort, ep.nfsIP)
	if ep.locks {
		add(progNLM, nlmVers, nlmVers, true, ep.nfsPort, ep.nfsIP)
		add(progNSM, nsmVers, nsmVers, true, ep.nfsPort, ep.nfsIP)
	}
	return regs
}

// lookup finds the registration of prog over proto: version vers if
// registered, else (unless exact) any version of prog.
func (ep *endpoints) lookup(prog, vers, proto uint32, exact bool) (registration, bool) {
	var other registration
	found := false
	for _, r := range ep.registrations() {
		if r.prog != prog || r.proto != proto {
			continue
		}
		if r.vers == vers {
			return r, true
		}
		if !exact && !found {
			other, found = r, true
		}
	}
	return other, found
}

func (s *Server) pmapNull(context.Context, call, *xdrDecoder, *xdrEncoder) {}

// mapping is a version 2 portmapper mapping.
type mapping struct {
	prog, vers, prot, port uint32
}

func decodeMapping(d *xdrDecoder) mapping {
	return mapping{prog: d.u32(), vers: d.u32(), prot: d.u32(), port: d.u32()}
}

// pmapRefuse answers SET and UNSET: false, nothing registers with us.
func (s *Server) pmapRefuse(_ context.Context, _ call, d *xdrDecoder, e *xdrEncoder) {
	_ = decodeMapping(d)
	if d.err == nil {
		e.bool(false)
	}
}

// pmapGetport answers the port of a program, 0 when not registered.
func (s *Server) pmapGetport(_ context.Context, c call, d *xdrDecoder, e *xdrEncoder) {
	m := decodeMapping(d)
	if d.err != nil {
		return
	}
	var port uint32
	if r, ok := c.ep.lookup(m.prog, m.vers, m.prot, false); ok {
		port = uint32(r.port)
	}
	e.u32(port)
}

// pmapDump lists every mapping (pmaplist).
func (s *Server) pmapDump(_ context.Context, c call, _ *xdrDecoder, e *xdrEncoder) {
	for _, r := range c.ep.registrations() {
		e.bool(true)
		e.u32(r.prog)
		e.u32(r.vers)
		e.u32(r.proto)
		e.u32(uint32(r.port))
	}
	e.bool(false)
}

// rpcb is the argument of RPCBIND versions 3 and 4.
type rpcb struct {
	prog, vers uint32
	netid      string
	addr       string
	owner      string
}

func decodeRpcb(d *xdrDecoder) rpcb {
	return rpcb{
		prog:  d.u32(),
		vers:  d.u32(),
		netid: string(d.opaque(maxNetID)),
		addr:  string(d.opaque(maxUaddr)),
		owner: string(d.opaque(maxOwner)),
	}
}

// rpcbRefuse answers SET and UNSET: false.
func (s *Server) rpcbRefuse(_ context.Context, _ call, d *xdrDecoder, e *xdrEncoder) {
	_ = decodeRpcb(d)
	if d.err == nil {
		e.bool(false)
	}
}

func (s *Server) rpcbGetaddr(ctx context.Context, c call, d *xdrDecoder, e *xdrEncoder) {
	s.rpcbAddr(ctx, c, d, e, false)
}

func (s *Server) rpcbGetversaddr(ctx context.Context, c call, d *xdrDecoder, e *xdrEncoder) {
	s.rpcbAddr(ctx, c, d, e, true)
}

// rpcbAddr answers GETADDR and GETVERSADDR: the universal address of the
// program for the asked netid, or "" when it is not registered.
func (s *Server) rpcbAddr(_ context.Context, c call, d *xdrDecoder, e *xdrEncoder, exact bool) {
	a := decodeRpcb(d)
	if d.err != nil {
		return
	}
	uaddr := ""
	if proto, v6, ok := parseNetID(a.netid); ok {
		if r, ok := c.ep.lookup(a.prog, a.vers, proto, exact); ok {
			if ip := replyIP(c, r.ip, v6); ip != nil {
				uaddr = universalAddr(ip, r.port)
			}
		}
	}
	e.str(uaddr)
}

// rpcbDump lists every registration for every netid it is reachable on
// (rpcblist).
func (s *Server) rpcbDump(_ context.Context, c call, _ *xdrDecoder, e *xdrEncoder) {
	for _, v6 := range []bool{false, true} {
		for _, r := range c.ep.registrations() {
			ip := replyIP(c, r.ip, v6)
			if ip == nil {
				continue
			}
			e.bool(true)
			e.u32(r.prog)
			e.u32(r.vers)
			e.str(netID(r.proto, v6))
			e.str(universalAddr(ip, r.port))
			e.str(rpcbOwner)
		}
	}
	e.bool(false)
}

func (s *Server) rpcbGetTime(_ context.Context, _ call, _ *xdrDecoder, e *xdrEncoder) {
	e.u32(uint32(time.Now().Unix()))
}

// parseNetID maps a netid to its protocol and address family.
func parseNetID(id string) (proto uint32, v6, ok bool) {
	switch id {
	case "tcp":
		return ipProtoTCP, false, true
	case "udp":
		return ipProtoUDP, false, true
	case "tcp6":
		return ipProtoTCP, true, true
	case "udp6":
		return ipProtoUDP, true, true
	}
	return 0, false, false
}

func netID(proto uint32, v6 bool) string {
	id := "tcp"
	if proto == ipProtoUDP {
		id = "udp"
	}
	if v6 {
		id += "6"
	}
	return id
}

// replyIP is the IP to report for a service listening on ip (nil for a
// wildcard) to the client of c, in the family v6 asks for, or nil when
// there is none. For a wildcard listener it is the address the client
// reached us on: the connection's local address over TCP, the source
// address of the route back to the client over UDP (a wildcard UDP
// socket does not know the address a datagram arrived on).
func replyIP(c call, ip net.IP, v6 bool) net.IP {
	if ip == nil || ip.IsUnspecified() {
		ip = hostOf(c.local)
		if (ip == nil || ip.IsUnspecified()) && c.remote != nil {
			ip = routeSource(c.remote)
		}
	}
	if ip == nil || ip.IsUnspecified() || (ip.To4() == nil) != v6 {
		return nil
	}
	return ip
}

// routeSource returns the local address the kernel would send from to
// reach remote. Connecting a UDP socket sends nothing.
func routeSource(remote net.Addr) net.IP {
	ip := hostOf(remote)
	if ip == nil {
		return nil
	}
	conn, err := net.DialUDP("udp", nil, &net.UDPAddr{IP: ip, Port: 9})
	if err != nil {
		return nil
	}
	defer conn.Close()
	return hostOf(conn.LocalAddr())
}

// universalAddr formats an RPCBIND universal address: the IP, then the
// port's high and low byte, dot-separated (RFC 5665 section 5.2.3).
func universalAddr(ip net.IP, port int) string {
	if v4 := ip.To4(); v4 != nil {
		ip = v4
	}
	return fmt.Sprintf("%s.%d.%d", ip, port>>8, port&0xff)
}
