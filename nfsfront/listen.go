package nfsfront

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"syscall"
)

// Listeners are the sockets the front serves on:
//
//   - the NFS address over TCP: NFS version 3, MOUNT and the portmapper;
//   - the same port number over UDP: MOUNT and the portmapper (the Linux
//     mount command may ask MOUNT over UDP);
//   - optionally a portmapper address over TCP and UDP (port 111), so
//     clients find NFS and MOUNT without port options.
type Listeners struct {
	tcp        net.Listener
	udp        net.PacketConn
	portmapTCP net.Listener   // nil when disabled
	portmapUDP net.PacketConn // nil when disabled
}

// Listen binds the front's sockets: TCP and UDP on nfsAddr's port and,
// unless portmapAddr is empty, TCP and UDP on portmapAddr. A port of 0
// picks a port free on both TCP and UDP. Errors say what holds a taken
// port and how to free it.
func Listen(nfsAddr, portmapAddr string) (*Listeners, error) {
	ls := &Listeners{}
	var err error
	ls.tcp, ls.udp, err = listenPair(nfsAddr, "nfs address", "stop it or choose another port with --nfs-addr")
	if err != nil {
		return nil, err
	}
	if portmapAddr != "" {
		ls.portmapTCP, ls.portmapUDP, err = listenPair(portmapAddr, "portmapper address (nfs.portmap_addr)",
			"it is most likely rpcbind: stop it with `systemctl disable --now rpcbind.socket rpcbind.service` (Wormhole answers portmapper queries itself), or set nfs.portmap_addr to \"\" and mount with -o port=P,mountport=P")
		if err != nil {
			ls.Close()
			return nil, err
		}
	}
	return ls, nil
}

// maxPortAttempts bounds the retries of a port-0 bind whose TCP port is
// taken on UDP.
const maxPortAttempts = 16

// listenPair binds addr on TCP, then the same port on UDP.
func listenPair(addr, what, inUse string) (net.Listener, net.PacketConn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, nil, fmt.Errorf("%s %s: %w", what, addr, err)
	}
	for attempt := 1; ; attempt++ {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, nil, bindError(what, "tcp", addr, inUse, err)
		}
		udpAddr := net.JoinHostPort(host, strconv.Itoa(l.Addr().(*net.TCPAddr).Port))
		pc, err := net.ListenPacket("udp", udpAddr)
		if err == nil {
			return l, pc, nil
		}
		l.Close()
		if port != "0" || attempt == maxPortAttempts || !errors.Is(err, syscall.EADDRINUSE) {
			return nil, nil, bindError(what, "udp", udpAddr, inUse, err)
		}
	}
}

func bindError(what, network, addr, inUse string, err error) error {
	switch {
	case errors.Is(err, syscall.EADDRINUSE):
		return fmt.Errorf("%s %s (%s) is already in use by another program: %s: %w", what, addr, network, inUse, err)
	case errors.Is(err, syscall.EACCES):
		return fmt.Errorf("%s %s (%s): permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE): %w", what, addr, network, err)
	}
	return fmt.Errorf("%s %s (%s): %w", what, addr, network, err)
}

// Addr is the NFS address (TCP).
func (ls *Listeners) Addr() net.Addr { return ls.tcp.Addr() }

// PortmapAddr is the portmapper's own address (TCP), or nil when disabled.
func (ls *Listeners) PortmapAddr() net.Addr {
	if ls.portmapTCP == nil {
		return nil
	}
	return ls.portmapTCP.Addr()
}

// Close closes every socket. Closing twice is harmless (it reports
// net.ErrClosed).
func (ls *Listeners) Close() error {
	errs := []error{ls.tcp.Close(), ls.udp.Close()}
	if ls.portmapTCP != nil {
		errs = append(errs, ls.portmapTCP.Close(), ls.portmapUDP.Close())
	}
	return errors.Join(errs...)
}

// endpoints are what the portmapper reports for these listeners.
func (ls *Listeners) endpoints() *endpoints {
	nfs := ls.tcp.Addr().(*net.TCPAddr)
	ep := &endpoints{nfsIP: specified(nfs.IP), nfsPort: nfs.Port, portmapIP: specified(nfs.IP), portmapPort: nfs.Port}
	if ls.portmapTCP != nil {
		pm := ls.portmapTCP.Addr().(*net.TCPAddr)
		ep.portmapIP, ep.portmapPort = specified(pm.IP), pm.Port
	}
	return ep
}

// specified is ip, or nil for a wildcard.
func specified(ip net.IP) net.IP {
	if ip.IsUnspecified() {
		return nil
	}
	return ip
}
