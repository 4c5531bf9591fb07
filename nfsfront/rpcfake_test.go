package nfsfront

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/wormhole-fs/wormhole/chunker/chunk"
	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
)

// rootOnlyNS is a namespace holding just an empty root directory. Every
// change is refused, so tests of the RPC layer (and the fuzz target) can
// run any procedure against it.
type rootOnlyNS struct{}

var rootAttr = meta.Attr{Ino: meta.RootIno, Type: meta.TypeDir, Mode: 0o755, Nlink: 2, Gen: 1, Parent: meta.RootIno}

func (rootOnlyNS) GetAttr(_ context.Context, ino meta.Ino) (meta.Attr, error) {
	if ino == meta.RootIno {
		return rootAttr, nil
	}
	return meta.Attr{}, meta.ErrNotFound
}

func (n rootOnlyNS) GetAttrs(ctx context.Context, inos []meta.Ino) ([]meta.Attr, error) {
	out := make([]meta.Attr, 0, len(inos))
	for _, ino := range inos {
		a, err := n.GetAttr(ctx, ino)
		if err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, nil
}

func (rootOnlyNS) Lookup(context.Context, meta.Ino, string) (meta.Attr, error) {
	return meta.Attr{}, meta.ErrNotFound
}

func (rootOnlyNS) Create(context.Context, meta.Ino, string, meta.CreateArgs) (meta.Attr, error) {
	return meta.Attr{}, meta.ErrNoSpace
}

func (rootOnlyNS) Link(context.Context, meta.Ino, meta.Ino, string) (meta.Attr, error) {
	return meta.Attr{}, meta.ErrNoSpace
}

func (rootOnlyNS) Unlink(context.Context, meta.Ino, string) (meta.Freed, error) {
	return nil, meta.ErrNotFound
}

func (rootOnlyNS) Rmdir(context.Context, meta.Ino, string) error { return meta.ErrNotFound }

func (rootOnlyNS) Rename(context.Context, meta.Ino, string, meta.Ino, string) (meta.Freed, error) {
	return nil, meta.ErrNotFound
}

func (rootOnlyNS) SetAttr(context.Context, meta.Ino, meta.SetAttrArgs) (meta.Attr, error) {
	return meta.Attr{}, meta.ErrNotFound
}

func (rootOnlyNS) ReadDir(context.Context, meta.Ino, uint64, int) ([]meta.Entry, error) {
	return nil, nil
}

func (rootOnlyNS) StatFS(context.Context) (uint64, error) { return 1, nil }

// nopData is a data layer with nothing stored.
type nopData struct{}

func (nopData) ReadAt(context.Context, meta.Ino, uint64, []byte, int64) (int, error) {
	return 0, nil
}

func (nopData) WriteAt(context.Context, meta.Ino, []byte, int64) (meta.Attr, error) {
	return meta.Attr{}, chunk.ErrNoSpace
}

func (nopData) Truncate(context.Context, meta.Ino, uint64, uint64) (meta.Attr, error) {
	return meta.Attr{}, chunk.ErrNoSpace
}

func (nopData) Release(context.Context, []chunk.Ref) {}

func (nopData) Usage() (uint64, uint64, error) { return 1 << 30, 1 << 29, nil }

// newRPCTestServer is a Server over rootOnlyNS and nopData.
func newRPCTestServer(t testing.TB) *Server {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Exports[0].Clients = append(cfg.Exports[0].Clients, netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/8"))
	s, err := New(cfg, rootOnlyNS{}, nopData{}, []byte(strings.Repeat("k", 32)), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// testEndpoints are wildcard listeners on the usual ports.
func testEndpoints() *endpoints {
	return &endpoints{nfsPort: 2049, portmapPort: 111}
}

// tcpOrigin is a call over TCP from 10.1.2.3 to 192.168.1.5 on socket
// serving svc.
func tcpOrigin(svc services, ep *endpoints) origin {
	return origin{
		svc:    svc,
		local:  &net.TCPAddr{IP: net.IPv4(192, 168, 1, 5), Port: 2049},
		remote: &net.TCPAddr{IP: net.IPv4(10, 1, 2, 3), Port: 700},
		ep:     ep,
	}
}

const allServices = svcNFS | svcMount | svcPortmap

// callRecord builds an RPC call record with AUTH_NONE credentials.
func callRecord(xid, prog, vers, proc uint32, args []byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, xid)
	for _, v := range []uint32{rpcCall, rpcVersion, prog, vers, proc, authNone, 0, authNone, 0} {
		b = binary.BigEndian.AppendUint32(b, v)
	}
	return append(b, args...)
}

// unhex decodes hex written with spaces and newlines for readability.
func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.Join(strings.Fields(s), ""))
	if err != nil {
		t.Fatalf("bad golden hex: %v", err)
	}
	return b
}

// successHeader is the golden accepted-SUCCESS reply header for xid.
func successHeader(xid string) string {
	return xid + " 00000001 00000000 00000000 00000000 00000000"
}

// wantBytes fails unless got equals want, showing both in hex.
func wantBytes(t *testing.T, what string, got, want []byte) {
	t.Helper()
	if string(got) != string(want) {
		t.Errorf("%s:\n got %x\nwant %x", what, got, want)
	}
}
