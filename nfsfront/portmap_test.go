package nfsfront

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/willscott/go-nfs-client/nfs/rpc"
)

// pmapArgs is a version 2 mapping argument.
func pmapArgs(prog, vers, prot uint32) []byte {
	var b []byte
	for _, v := range []uint32{prog, vers, prot, 0} {
		b = binary.BigEndian.AppendUint32(b, v)
	}
	return b
}

// rpcbArgs is an RPCBIND version 3/4 argument.
func rpcbArgs(t *testing.T, prog, vers uint32, netid string) []byte {
	return unhex(t, fmt.Sprintf("%08x %08x %s %s %s", prog, vers, xdrString(netid), xdrString(""), xdrString("")))
}

func TestPortmapV2Golden(t *testing.T) {
	s := newRPCTestServer(t)
	ctx := context.Background()
	o := tcpOrigin(svcPortmap, testEndpoints())
	getport := func(prog, vers, prot uint32) []byte {
		reply, _ := s.dispatch(ctx, callRecord(1, progPortmap, 2, pmapProcGetport, pmapArgs(prog, vers, prot)), o)
		return reply
	}
	port := func(p uint32) []byte { return unhex(t, successHeader("00000001")+fmt.Sprintf(" %08x", p)) }
	wantBytes(t, "GETPORT NFS v3 tcp", getport(progNFS, 3, ipProtoTCP), port(2049))
	wantBytes(t, "GETPORT NFS v4 tcp (any version, as rpcbind)", getport(progNFS, 4, ipProtoTCP), port(2049))
	wantBytes(t, "GETPORT NFS v3 udp", getport(progNFS, 3, ipProtoUDP), port(0))
	wantBytes(t, "GETPORT MOUNT v3 udp", getport(progMount, 3, ipProtoUDP), port(2049))
	wantBytes(t, "GETPORT MOUNT v1 tcp", getport(progMount, 1, ipProtoTCP), port(2049))
	wantBytes(t, "GETPORT portmapper", getport(progPortmap, 2, ipProtoUDP), port(111))
	wantBytes(t, "GETPORT NLM", getport(100021, 4, ipProtoUDP), port(0))

	set, _ := s.dispatch(ctx, callRecord(2, progPortmap, 2, pmapProcSet, pmapArgs(100021, 4, ipProtoUDP)), o)
	wantBytes(t, "SET refused", set, unhex(t, successHeader("00000002")+" 00000000"))
	unset, _ := s.dispatch(ctx, callRecord(3, progPortmap, 2, pmapProcUnset, pmapArgs(progNFS, 3, ipProtoTCP)), o)
	wantBytes(t, "UNSET refused", unset, unhex(t, successHeader("00000003")+" 00000000"))

	// pmaplist: portmapper 4,3,2 on tcp then udp; NFS 3 on tcp; MOUNT
	// 3,2,1 on tcp then udp.
	want := successHeader("00000004")
	entry := func(prog, vers, prot, port uint32) {
		want += fmt.Sprintf(" 00000001 %08x %08x %08x %08x", prog, vers, prot, port)
	}
	for _, prot := range []uint32{6, 17} {
		for v := uint32(4); v >= 2; v-- {
			entry(100000, v, prot, 111)
		}
	}
	entry(100003, 3, 6, 2049)
	for _, prot := range []uint32{6, 17} {
		for v := uint32(3); v >= 1; v-- {
			entry(100005, v, prot, 2049)
		}
	}
	want += " 00000000"
	dump, _ := s.dispatch(ctx, callRecord(4, progPortmap, 2, pmapProcDump, nil), o)
	wantBytes(t, "DUMP", dump, unhex(t, want))

	null, _ := s.dispatch(ctx, callRecord(5, progPortmap, 2, pmapProcNull, nil), o)
	wantBytes(t, "NULL", null, unhex(t, successHeader("00000005")))
	callit, _ := s.dispatch(ctx, callRecord(6, progPortmap, 2, 5, nil), o)
	wantBytes(t, "CALLIT", callit, unhex(t, "00000006 00000001 00000000 00000000 00000000 00000003"))
	v5, _ := s.dispatch(ctx, callRecord(7, progPortmap, 5, pmapProcNull, nil), o)
	wantBytes(t, "version 5", v5, unhex(t, "00000007 00000001 00000000 00000000 00000000 00000002 00000002 00000004"))
	short, _ := s.dispatch(ctx, callRecord(8, progPortmap, 2, pmapProcGetport, []byte{0, 0, 0}), o)
	wantBytes(t, "GETPORT short args", short, unhex(t, "00000008 00000001 00000000 00000000 00000000 00000004"))
}

func TestRpcbindGolden(t *testing.T) {
	s := newRPCTestServer(t)
	ctx := context.Background()
	o := tcpOrigin(svcPortmap, testEndpoints())
	getaddr := func(vers, proc, prog, pvers uint32, netid string) []byte {
		reply, _ := s.dispatch(ctx, callRecord(1, progPortmap, vers, proc, rpcbArgs(t, prog, pvers, netid)), o)
		return reply
	}
	uaddr := func(a string) []byte { return unhex(t, successHeader("00000001")+" "+xdrString(a)) }
	// 2049 = 8*256 + 1; the wildcard listener reports the address the
	// client reached us on.
	for _, vers := range []uint32{3, 4} {
		wantBytes(t, "GETADDR NFS tcp", getaddr(vers, pmapProcGetport, progNFS, 3, "tcp"), uaddr("192.168.1.5.8.1"))
		wantBytes(t, "GETADDR MOUNT udp", getaddr(vers, pmapProcGetport, progMount, 3, "udp"), uaddr("192.168.1.5.8.1"))
		wantBytes(t, "GETADDR NFS udp", getaddr(vers, pmapProcGetport, progNFS, 3, "udp"), uaddr(""))
		wantBytes(t, "GETADDR NFS tcp6 over IPv4", getaddr(vers, pmapProcGetport, progNFS, 3, "tcp6"), uaddr(""))
		wantBytes(t, "GETADDR NFS rdma", getaddr(vers, pmapProcGetport, progNFS, 3, "rdma"), uaddr(""))
		wantBytes(t, "GETADDR NFS v4", getaddr(vers, pmapProcGetport, progNFS, 4, "tcp"), uaddr("192.168.1.5.8.1"))
		wantBytes(t, "GETADDR portmapper", getaddr(vers, pmapProcGetport, progPortmap, 4, "udp"), uaddr("192.168.1.5.0.111"))
	}
	wantBytes(t, "GETVERSADDR NFS v4", getaddr(4, rpcbProcVersAdr, progNFS, 4, "tcp"), uaddr(""))
	wantBytes(t, "GETVERSADDR NFS v3", getaddr(4, rpcbProcVersAdr, progNFS, 3, "tcp"), uaddr("192.168.1.5.8.1"))
	wantBytes(t, "GETVERSADDR in v3", getaddr(3, rpcbProcVersAdr, progNFS, 3, "tcp"),
		unhex(t, "00000001 00000001 00000000 00000000 00000000 00000003"))

	set, _ := s.dispatch(ctx, callRecord(2, progPortmap, 4, pmapProcSet, rpcbArgs(t, 100021, 4, "udp")), o)
	wantBytes(t, "SET refused", set, unhex(t, successHeader("00000002")+" 00000000"))

	// A listener on a given address reports that address.
	ep := testEndpoints()
	ep.nfsIP = net.IPv4(10, 0, 0, 7)
	reply, _ := s.dispatch(ctx, callRecord(1, progPortmap, 4, pmapProcGetport, rpcbArgs(t, progNFS, 3, "tcp")), tcpOrigin(svcPortmap, ep))
	wantBytes(t, "GETADDR fixed listener", reply, uaddr("10.0.0.7.8.1"))

	// rpcblist: the first entry is the portmapper v4 on tcp.
	dump, _ := s.dispatch(ctx, callRecord(3, progPortmap, 4, pmapProcDump, nil), o)
	first := successHeader("00000003") + " 00000001 000186a0 00000004 " + xdrString("tcp") + " " + xdrString("192.168.1.5.0.111") + " " + xdrString("wormhole")
	if !strings.HasPrefix(string(dump), string(unhex(t, first))) {
		t.Errorf("DUMP v4 starts %x\nwant %s", dump[:min(len(dump), 80)], first)
	}
	if n := strings.Count(string(dump), "wormhole"); n != 13 {
		t.Errorf("DUMP v4 has %d entries, want 13", n)
	}
}

func TestUniversalAddr(t *testing.T) {
	cases := []struct {
		ip   net.IP
		port int
		want string
	}{
		{net.IPv4(127, 0, 0, 1), 2049, "127.0.0.1.8.1"},
		{net.IPv4(10, 0, 0, 1), 111, "10.0.0.1.0.111"},
		{net.ParseIP("::1"), 65535, "::1.255.255"},
	}
	for _, c := range cases {
		if got := universalAddr(c.ip, c.port); got != c.want {
			t.Errorf("universalAddr(%v, %d) = %q, want %q", c.ip, c.port, got, c.want)
		}
	}
}

// A wildcard UDP socket does not know the address a datagram came to;
// the reply names the source address of the route back to the client.
func TestReplyIPWildcardUDP(t *testing.T) {
	c := call{origin: origin{udp: true, local: &net.UDPAddr{IP: net.IPv6unspecified, Port: 111},
		remote: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 900}}}
	if ip := replyIP(c, nil, false); !ip.Equal(net.IPv4(127, 0, 0, 1)) {
		t.Errorf("replyIP = %v", ip)
	}
	if ip := replyIP(c, nil, true); ip != nil {
		t.Errorf("replyIP v6 = %v", ip)
	}
}

// startServing serves s on fresh loopback listeners with a portmapper
// until the test ends, and checks that Serve returns once stopped.
func startServing(t *testing.T, s *Server) (*Listeners, func()) {
	t.Helper()
	ls, err := Listen("127.0.0.1:0", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ls) }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return after its context ended")
		}
	}
	t.Cleanup(stop)
	return ls, stop
}

// withTimeout runs f, failing the test if it takes longer than d
// (go-nfs-client calls have no deadline of their own).
func withTimeout(t *testing.T, d time.Duration, f func() error) {
	t.Helper()
	errc := make(chan error, 1)
	go func() { errc <- f() }()
	select {
	case err := <-errc:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(d):
		t.Fatal("timed out")
	}
}

func TestPortmapperLive(t *testing.T) {
	s := newRPCTestServer(t)
	ls, stop := startServing(t, s)
	nfsPort := ls.Addr().(*net.TCPAddr).Port

	// go-nfs-client's portmapper client, against both the portmapper
	// address and the NFS port (which answers portmapper calls too).
	for _, addr := range []string{ls.PortmapAddr().String(), ls.Addr().String()} {
		withTimeout(t, 10*time.Second, func() error {
			// go-nfs-client picks its local port at random; retry
			// when it picks one that is taken.
			c, err := rpc.DialTCP("tcp", addr, false)
			for i := 0; i < 20 && errors.Is(err, syscall.EADDRINUSE); i++ {
				c, err = rpc.DialTCP("tcp", addr, false)
			}
			if err != nil {
				return err
			}
			defer c.Close()
			pm := &rpc.Portmapper{Client: c}
			for _, m := range []rpc.Mapping{
				{Prog: progNFS, Vers: 3, Prot: rpc.IPProtoTCP},
				{Prog: progMount, Vers: 3, Prot: rpc.IPProtoTCP},
				{Prog: progMount, Vers: 3, Prot: rpc.IPProtoUDP},
			} {
				port, err := pm.Getport(m)
				if err != nil {
					return fmt.Errorf("getport %+v via %s: %w", m, addr, err)
				}
				if port != nfsPort {
					return fmt.Errorf("getport %+v via %s = %d, want %d", m, addr, port, nfsPort)
				}
			}
			return nil
		})
	}

	// Over UDP: GETPORT on the portmapper, MNT on the NFS port.
	udpCall := func(addr string, rec []byte) []byte {
		t.Helper()
		conn, err := net.Dial("udp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := conn.Write(rec); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 64<<10)
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("udp call to %s: %v", addr, err)
		}
		return buf[:n]
	}
	wantBytes(t, "UDP GETPORT MOUNT",
		udpCall(ls.PortmapAddr().String(), callRecord(0x21, progPortmap, 2, pmapProcGetport, pmapArgs(progMount, 3, ipProtoUDP))),
		unhex(t, successHeader("00000021")+fmt.Sprintf(" %08x", nfsPort)))
	wantBytes(t, "UDP GETADDR NFS",
		udpCall(ls.PortmapAddr().String(), callRecord(0x22, progPortmap, 3, pmapProcGetport, rpcbArgs(t, progNFS, 3, "tcp"))),
		unhex(t, successHeader("00000022")+" "+xdrString(universalAddr(net.IPv4(127, 0, 0, 1), nfsPort))))
	mnt := udpCall(ls.Addr().String(), callRecord(0x23, progMount, 3, mountProcMnt, unhex(t, xdrString("/"))))
	if len(mnt) < 28 || binary.BigEndian.Uint32(mnt[20:]) != mnt3OK {
		t.Errorf("UDP MNT reply %x", mnt)
	}
	nfsOverUDP := udpCall(ls.Addr().String(), callRecord(0x24, progNFS, 3, 0, nil))
	wantBytes(t, "NFS over UDP", nfsOverUDP, unhex(t, "00000024 00000001 00000000 00000000 00000000 00000001"))

	// NFSv4 probe over TCP on the NFS port.
	conn := dialRPC(t, ls.Addr().String())
	wantBytes(t, "NFSv4 NULL", conn.call(t, callRecord(0x25, progNFS, 4, 0, nil)),
		unhex(t, "00000025 00000001 00000000 00000000 00000000 00000002 00000003 00000003"))
	// NFSv3 NULL through go-nfs on the same connection.
	wantBytes(t, "NFSv3 NULL", conn.call(t, callRecord(0x26, progNFS, 3, 0, nil)), unhex(t, successHeader("00000026")))
	conn.Close()

	stop()
	if _, err := net.DialTimeout("tcp", ls.PortmapAddr().String(), time.Second); err == nil {
		t.Error("portmapper still accepting after stop")
	}
}

func TestListenErrors(t *testing.T) {
	ls, err := Listen("127.0.0.1:0", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ls.Close()
	if _, err := Listen(ls.Addr().String(), ""); !errors.Is(err, syscall.EADDRINUSE) || !strings.Contains(err.Error(), "--nfs-addr") {
		t.Errorf("NFS port taken: %v", err)
	}
	_, err = Listen("127.0.0.1:0", ls.PortmapAddr().String())
	if !errors.Is(err, syscall.EADDRINUSE) || !strings.Contains(err.Error(), "rpcbind") {
		t.Errorf("portmapper port taken: %v", err)
	}
	// UDP taken while TCP is free: a fixed port fails and says so. The
	// TCP twin of a free UDP port may be taken by someone else: then try
	// another port.
	for attempt := 0; ; attempt++ {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		_, err = Listen(pc.LocalAddr().String(), "")
		pc.Close()
		if err != nil && strings.Contains(err.Error(), "(tcp)") && attempt < 20 {
			continue
		}
		if err == nil || !strings.Contains(err.Error(), "(udp)") {
			t.Errorf("UDP port taken: %v", err)
		}
		break
	}
}

// rpcConnTest is a raw RPC-over-TCP client for tests.
type rpcConnTest struct {
	net.Conn
}

func dialRPC(t *testing.T, addr string) *rpcConnTest {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return &rpcConnTest{c}
}

// send writes rec as one record.
func (c *rpcConnTest) send(t *testing.T, rec []byte) {
	t.Helper()
	framed := binary.BigEndian.AppendUint32(nil, uint32(len(rec))|lastFragment)
	if _, err := c.Write(append(framed, rec...)); err != nil {
		t.Fatal(err)
	}
}

// recv reads one reply record, or returns an error.
func (c *rpcConnTest) recv() ([]byte, error) {
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	return readRecord(c.Conn, 1<<20)
}

func (c *rpcConnTest) call(t *testing.T, rec []byte) []byte {
	t.Helper()
	c.send(t, rec)
	reply, err := c.recv()
	if err != nil {
		t.Fatalf("reply: %v", err)
	}
	return reply
}
