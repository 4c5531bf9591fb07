package nfsfront

import (
	"bytes"
	"errors"
	"testing"

	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
)

func testCodec(t testing.TB, key string) *handleCodec {
	t.Helper()
	c, err := newHandleCodec([]byte(key))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestHandleRoundTrip(t *testing.T) {
	c := testCodec(t, "0123456789abcdef0123456789abcdef")
	for _, h := range []Handle{
		{Export: 0, Ino: meta.RootIno, Gen: 1},
		{Export: 3, Ino: 1 << 40, Gen: 1<<64 - 1},
	} {
		b := c.Encode(h)
		if len(b) > 64 {
			t.Fatalf("handle of %d bytes exceeds NFSv3's 64", len(b))
		}
		got, err := c.Decode(b)
		if err != nil || got != h {
			t.Fatalf("Decode(Encode(%+v)) = %+v, %v", h, got, err)
		}
	}
}

func TestHandleRefusesForgery(t *testing.T) {
	c := testCodec(t, "0123456789abcdef0123456789abcdef")
	other := testCodec(t, "another secret, another cluster!")
	good := c.Encode(Handle{Ino: 42, Gen: 7})

	cases := map[string][]byte{
		"empty":         nil,
		"short":         good[:10],
		"long":          append(append([]byte(nil), good...), 0),
		"other cluster": other.Encode(Handle{Ino: 42, Gen: 7}),
		"zero inode":    nil,
	}
	for i := range good {
		flipped := append([]byte(nil), good...)
		flipped[i] ^= 0x01
		cases["bit flip at "+string(rune('A'+i))] = flipped
	}
	for name, b := range cases {
		if _, err := c.Decode(b); !errors.Is(err, errBadHandle) {
			t.Errorf("%s: Decode = %v, want errBadHandle", name, err)
		}
	}
}

func FuzzHandleDecode(f *testing.F) {
	c := testCodec(f, "0123456789abcdef0123456789abcdef")
	f.Add(c.Encode(Handle{Ino: 1, Gen: 1}))
	f.Add([]byte{1, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := c.Decode(b)
		if err != nil {
			return
		}
		// Only a handle we issued decodes, and it re-encodes to itself.
		if !bytes.Equal(c.Encode(h), b) {
			t.Fatalf("decoded %x to %+v, which encodes differently", b, h)
		}
	})
}
