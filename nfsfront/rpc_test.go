package nfsfront

import (
	"context"
	"encoding/binary"
	"errors"
	"testing"
)

// Golden replies, written field by field from RFC 5531 section 9:
// xid | REPLY(1) | reply_stat | [verifier flavor, length] | stat | body.
func TestRPCReplyGolden(t *testing.T) {
	cases := []struct {
		name string
		got  []byte
		want string
	}{
		{"PROG_MISMATCH 3..3", progMismatchReply(0xdeadbeef, 3, 3),
			"deadbeef 00000001 00000000 00000000 00000000 00000002 00000003 00000003"},
		{"PROG_UNAVAIL", acceptedReply(1, acceptProgUnavail),
			"00000001 00000001 00000000 00000000 00000000 00000001"},
		{"PROC_UNAVAIL", acceptedReply(2, acceptProcUnavail),
			"00000002 00000001 00000000 00000000 00000000 00000003"},
		{"GARBAGE_ARGS", acceptedReply(3, acceptGarbage),
			"00000003 00000001 00000000 00000000 00000000 00000004"},
		{"SYSTEM_ERR", acceptedReply(4, acceptSystemErr),
			"00000004 00000001 00000000 00000000 00000000 00000005"},
		{"MSG_DENIED RPC_MISMATCH 2..2", rpcMismatchReply(5),
			"00000005 00000001 00000001 00000000 00000002 00000002"},
		{"MSG_DENIED AUTH_ERROR AUTH_BADCRED", authErrorReply(6, authBadCred),
			"00000006 00000001 00000001 00000001 00000001"},
	}
	for _, c := range cases {
		wantBytes(t, c.name, c.got, unhex(t, c.want))
	}
}

// go-nfs v0.0.4 numbers accept_stat without PROG_MISMATCH and writes
// rejection bodies little-endian; fixGoNFSReply renumbers them.
func TestFixGoNFSReply(t *testing.T) {
	cases := []struct {
		name, in, want string
	}{
		// The reply go-nfs sent libnfs for MOUNT EXPORT (captured on the
		// wire): its PROC_UNAVAIL (2) reads as PROG_MISMATCH without body.
		{"proc unavail",
			"00000007 00000001 00000000 00000000 00000000 00000002",
			"00000007 00000001 00000000 00000000 00000000 00000003"},
		{"garbage args",
			"00000007 00000001 00000000 00000000 00000000 00000003",
			"00000007 00000001 00000000 00000000 00000000 00000004"},
		{"system err",
			"00000007 00000001 00000000 00000000 00000000 00000004",
			"00000007 00000001 00000000 00000000 00000000 00000005"},
		{"success untouched",
			"00000007 00000001 00000000 00000000 00000000 00000000 00000002",
			"00000007 00000001 00000000 00000000 00000000 00000000 00000002"},
		{"prog unavail untouched",
			"00000007 00000001 00000000 00000000 00000000 00000001",
			"00000007 00000001 00000000 00000000 00000000 00000001"},
		{"rpc mismatch",
			"00000007 00000001 00000001 00000005 02000000 02000000",
			"00000007 00000001 00000001 00000000 00000002 00000002"},
		{"auth error",
			"00000007 00000001 00000001 00000006 01000000",
			"00000007 00000001 00000001 00000001 00000001"},
		{"truncated", "00000007 00000001 00000000", "00000007 00000001 00000000"},
	}
	for _, c := range cases {
		rec := unhex(t, c.in)
		fixGoNFSReply(rec)
		wantBytes(t, c.name, rec, unhex(t, c.want))
	}
}

func TestParseCall(t *testing.T) {
	// AUTH_SYS: stamp, machine "ab", uid 1000, gid 100, gids [4, 27].
	authSysBody := unhex(t, "00000001 00000002 61620000 000003e8 00000064 00000002 00000004 0000001b")
	rec := unhex(t, "00000009 00000000 00000002 000186a3 00000003 00000001")
	rec = binary.BigEndian.AppendUint32(rec, authSys)
	rec = binary.BigEndian.AppendUint32(rec, uint32(len(authSysBody)))
	rec = append(rec, authSysBody...)
	rec = append(rec, unhex(t, "00000000 00000000 cafe")...)
	h, err := parseCall(rec)
	if err != nil {
		t.Fatal(err)
	}
	if h.xid != 9 || h.prog != progNFS || h.vers != 3 || h.proc != 1 {
		t.Errorf("header %+v", h)
	}
	if h.cred.uid != 1000 || h.cred.gid != 100 || len(h.cred.gids) != 2 || h.cred.gids[1] != 27 {
		t.Errorf("creds %+v", h.cred)
	}
	wantBytes(t, "args", h.args, []byte{0xca, 0xfe})

	for _, c := range []struct {
		name string
		rec  string
		want error
	}{
		{"reply, not call", "00000001 00000001 00000000", errNotCall},
		{"rpc version 3", "00000001 00000000 00000003 000186a3 00000003 00000000", errRPCVersion},
		{"credential over 400 bytes", "00000001 00000000 00000002 000186a3 00000003 00000000 00000001 00000191", errBadCred},
		{"RPCSEC_GSS (flavor 6)", "00000001 00000000 00000002 000186a3 00000003 00000000 00000006 00000000 00000000 00000000", errBadCred},
		{"AUTH_DH (flavor 3)", "00000001 00000000 00000002 000186a3 00000003 00000000 00000003 00000000 00000000 00000000", errBadCred},
		{"AUTH_SYS with 17 groups", "00000001 00000000 00000002 000186a3 00000003 00000000 00000001 00000014 00000000 00000000 00000000 00000000 00000011 00000000 00000000", errBadCred},
	} {
		if _, err := parseCall(unhex(t, c.rec)); !errors.Is(err, c.want) {
			t.Errorf("%s: err %v, want %v", c.name, err, c.want)
		}
	}
	if _, err := parseCall([]byte{1, 2, 3}); err == nil {
		t.Error("3-byte record parsed")
	}
}

// RPC-level answers the front writes itself, before any procedure runs.
func TestDispatchRPCLevel(t *testing.T) {
	s := newRPCTestServer(t)
	ctx := context.Background()
	o := tcpOrigin(allServices, testEndpoints())
	cases := []struct {
		name    string
		rec     []byte
		o       origin
		want    string // golden reply; "" means no reply
		forward bool
	}{
		{"NFSv4 probe gets PROG_MISMATCH 3..3", callRecord(0x10, progNFS, 4, 0, nil), o,
			"00000010 00000001 00000000 00000000 00000000 00000002 00000003 00000003", false},
		{"NFSv2 gets PROG_MISMATCH 3..3", callRecord(0x11, progNFS, 2, 0, nil), o,
			"00000011 00000001 00000000 00000000 00000000 00000002 00000003 00000003", false},
		{"NFSv3 procedure 22 gets PROC_UNAVAIL", callRecord(0x12, progNFS, 3, 22, nil), o,
			"00000012 00000001 00000000 00000000 00000000 00000003", false},
		{"NFSv3 NULL goes to go-nfs", callRecord(0x13, progNFS, 3, 0, nil), o, "", true},
		{"NLM gets PROG_UNAVAIL", callRecord(0x14, 100021, 4, 0, nil), o,
			"00000014 00000001 00000000 00000000 00000000 00000001", false},
		{"NFS on a portmapper-only socket gets PROG_UNAVAIL", callRecord(0x15, progNFS, 3, 0, nil), tcpOrigin(svcPortmap, testEndpoints()),
			"00000015 00000001 00000000 00000000 00000000 00000001", false},
		{"MOUNT on a portmapper-only socket gets PROG_UNAVAIL", callRecord(0x16, progMount, 3, 0, nil), tcpOrigin(svcPortmap, testEndpoints()),
			"00000016 00000001 00000000 00000000 00000000 00000001", false},
		{"RPC version 3 is denied", unhex(t, "00000017 00000000 00000003 000186a3 00000003 00000000"), o,
			"00000017 00000001 00000001 00000000 00000002 00000002", false},
		{"bad credentials are denied", unhex(t, "00000018 00000000 00000002 000186a3 00000003 00000000 00000001 00000191"), o,
			"00000018 00000001 00000001 00000001 00000001", false},
		{"a reply record is dropped", unhex(t, "00000019 00000001 00000000"), o, "", false},
		{"a short record is dropped", []byte{0, 0}, o, "", false},
	}
	for _, c := range cases {
		reply, forward := s.dispatch(ctx, c.rec, c.o)
		if forward != c.forward {
			t.Errorf("%s: forward %v", c.name, forward)
		}
		var want []byte
		if c.want != "" {
			want = unhex(t, c.want)
		}
		wantBytes(t, c.name, reply, want)
	}
}
