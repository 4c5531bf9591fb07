package nfsfront

import (
	"context"
	"encoding/binary"
	"net"
	"testing"
)

// fuzzSeeds are valid calls of every program the front answers, plus the
// root handle so NFS procedures get past handle checks.
func fuzzSeeds(t testing.TB, s *Server) [][]byte {
	fh := s.handleFor(creds{}, rootAttr)
	fhArg := binary.BigEndian.AppendUint32(nil, uint32(len(fh)))
	fhArg = append(fhArg, fh...)
	fhArg = append(fhArg, 0, 0)
	seeds := [][]byte{
		callRecord(1, progNFS, 3, 0, nil),
		callRecord(2, progNFS, 4, 0, nil),
		callRecord(3, progNFS, 3, procGetattr, fhArg),
		callRecord(4, progNFS, 3, procAccess, append(fhArg, 0, 0, 0, 0x1f)),
		callRecord(5, progNFS, 3, procLookup, append(fhArg, 0, 0, 0, 1, 'a', 0, 0, 0)),
		callRecord(6, progMount, 3, mountProcMnt, unhex(t, xdrString("/"))),
		callRecord(7, progMount, 1, mountProcExport, nil),
		callRecord(8, progMount, 3, mountProcDump, nil),
		callRecord(9, progPortmap, 2, pmapProcGetport, pmapArgs(progNFS, 3, ipProtoTCP)),
		callRecord(10, progPortmap, 4, pmapProcGetport, unhex(t, "000186a3 00000003 00000003 74637000 00000000 00000000")),
		callRecord(11, progPortmap, 3, pmapProcDump, nil),
		unhex(t, "00000001 00000000 00000002 000186a3 00000003 00000001 00000001 00000014 00000000 00000000 00000000 00000000 00000000 00000000 00000000"),
		{0xff, 0xff, 0xff, 0xff},
	}
	return seeds
}

// FuzzParseCall feeds arbitrary records to parseCall and dispatch, as they
// arrive over TCP and UDP. Nothing may panic, and every reply must be a
// reply to the record's xid.
func FuzzParseCall(f *testing.F) {
	s := newRPCTestServer(f)
	for _, seed := range fuzzSeeds(f, s) {
		f.Add(seed, false)
	}
	ep := testEndpoints()
	tcp := tcpOrigin(allServices, ep)
	udp := origin{svc: svcMount | svcPortmap, udp: true, local: &net.UDPAddr{IP: net.IPv4zero, Port: 2049},
		remote: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 700}, ep: ep}
	f.Fuzz(func(t *testing.T, rec []byte, overUDP bool) {
		h, perr := parseCall(rec)
		if perr == nil && len(rec) < 40 {
			t.Fatalf("parsed a %d-byte record: a call header has 40", len(rec))
		}
		o := tcp
		if overUDP {
			o = udp
		}
		reply, forward := s.dispatch(context.Background(), rec, o)
		if forward && (perr != nil || overUDP) {
			t.Fatalf("forwarded to go-nfs (parse error %v, udp %v)", perr, overUDP)
		}
		if reply == nil {
			return
		}
		if len(reply) < 20 || binary.BigEndian.Uint32(reply) != h.xid || binary.BigEndian.Uint32(reply[4:]) != rpcReply {
			t.Fatalf("reply %x to record %x", reply, rec)
		}
	})
}

// After a garbage record the server still answers: on the same connection
// when the record was framed correctly, on a fresh one in any case.
func TestGarbageThenNull(t *testing.T) {
	s := newRPCTestServer(t)
	ls, _ := startServing(t, s)
	addr := ls.Addr().String()
	garbage := [][]byte{
		{},
		{1, 2, 3},
		unhex(t, "00000001 00000001 00000000 00000000 00000000 00000000"), // a reply
		unhex(t, "00000002 00000000 00000002 000186a3 00000003"),          // truncated header
		unhex(t, "00000003 00000000 00000002 000186a3 00000003 00000001 00000001 7fffffff"),
		callRecord(4, progNFS, 3, procGetattr, unhex(t, "ffffffff")),
		callRecord(5, progMount, 3, mountProcMnt, unhex(t, "ffffffff")),
		callRecord(6, progPortmap, 4, pmapProcGetport, unhex(t, "00000001")),
	}
	null := callRecord(0x77, progNFS, 3, 0, nil)
	for i, g := range garbage {
		c := dialRPC(t, addr)
		c.send(t, g)
		c.send(t, null)
		for {
			reply, err := c.recv()
			if err != nil {
				t.Errorf("garbage %d: connection lost: %v", i, err)
				break
			}
			if binary.BigEndian.Uint32(reply) == 0x77 {
				wantBytes(t, "NULL after garbage", reply, unhex(t, successHeader("00000077")))
				break
			}
		}
		c.Close()
	}

	// A record mark past MaxRecord closes the connection before any
	// allocation; a fresh connection is served.
	c := dialRPC(t, addr)
	if _, err := c.Write([]byte{0xff, 0xff, 0xff, 0xff}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.recv(); err == nil {
		t.Error("oversized record answered")
	}
	c.Close()
	c = dialRPC(t, addr)
	defer c.Close()
	wantBytes(t, "NULL on a fresh connection", c.call(t, null), unhex(t, successHeader("00000077")))
}
