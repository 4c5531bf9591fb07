package pki

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

func mustToken(t testing.TB, ca *CA, ttl time.Duration) Token {
	t.Helper()
	tok, err := NewJoinToken(ca, ttl, t0)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestTokenRoundTrip(t *testing.T) {
	ca := mustCA(t, "c1", t0)
	tok := mustToken(t, ca, time.Hour)
	s := tok.String()
	if len(s) != 109 || !strings.HasPrefix(s, "whj1.") || strings.Count(s, ".") != 3 {
		t.Fatalf("token string %q (%d bytes)", s, len(s))
	}
	parsed, err := ParseToken("  " + s + "\n")
	if err != nil {
		t.Fatal(err)
	}
	if parsed.String() != s || parsed.ID() != tok.ID() || parsed.CAFingerprint() != ca.Roots().Fingerprint() {
		t.Fatalf("parsed %v, want %v", parsed.Redacted(), tok.Redacted())
	}
	if !parsed.Expires().IsZero() || !tok.Expires().Equal(t0.Add(time.Hour)) {
		t.Errorf("Expires: parsed %v, made %v", parsed.Expires(), tok.Expires())
	}
	rec := tok.Record()
	if rec.ID != tok.ID() || len(tok.ID()) != 16 || !rec.Expires.Equal(t0.Add(time.Hour)) {
		t.Errorf("record %+v", rec)
	}
	if err := VerifyToken(rec, parsed, t0.Add(59*time.Minute)); err != nil {
		t.Fatalf("VerifyToken: %v", err)
	}
	if err := VerifyToken(rec, parsed, t0.Add(time.Hour-time.Nanosecond)); err != nil {
		t.Fatalf("VerifyToken just before expiry: %v", err)
	}

	// Two tokens differ.
	if other := mustToken(t, ca, time.Hour); other.ID() == tok.ID() || other.String() == s {
		t.Error("two tokens are equal")
	}
}

func TestTokenSecretNotLeaked(t *testing.T) {
	tok := mustToken(t, mustCA(t, "c1", t0), time.Hour)
	secret := strings.Split(tok.String(), ".")[2]
	for _, s := range []string{tok.Redacted(), fmt.Sprintf("%#v", tok)} {
		if strings.Contains(s, secret) {
			t.Errorf("%q shows the secret", s)
		}
	}
	if !strings.Contains(tok.Redacted(), tok.ID()) {
		t.Errorf("Redacted %q lacks the id", tok.Redacted())
	}
	rec := fmt.Sprintf("%+v %x", tok.Record(), tok.Record().SecretHash)
	if strings.Contains(rec, secret) || bytes.Contains(tok.Record().SecretHash, tok.secret[:]) {
		t.Errorf("record shows the secret: %s", rec)
	}
}

// withPart replaces dot-separated part i of a token string.
func withPart(s string, i int, v string) string {
	p := strings.Split(s, ".")
	p[i] = v
	return strings.Join(p, ".")
}

func TestVerifyToken(t *testing.T) {
	ca := mustCA(t, "c1", t0)
	tok := mustToken(t, ca, time.Hour)
	rec := tok.Record()
	other := mustToken(t, ca, time.Hour)
	parse := func(s string) Token {
		t.Helper()
		p, err := ParseToken(s)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	wrongSecret := parse(withPart(tok.String(), 2, strings.Split(other.String(), ".")[2]))
	wrongID := parse(withPart(tok.String(), 1, other.ID()))

	tests := []struct {
		name string
		rec  TokenRecord
		tok  Token
		now  time.Time
		want error
	}{
		{"wrong secret", rec, wrongSecret, t0, ErrTokenInvalid},
		{"wrong id", rec, wrongID, t0, ErrTokenInvalid},
		{"other token", rec, other, t0, ErrTokenInvalid},
		{"expired at expiry", rec, tok, t0.Add(time.Hour), ErrTokenExpired},
		{"expired later", rec, tok, t0.Add(48 * time.Hour), ErrTokenExpired},
		{"wrong secret and expired", rec, wrongSecret, t0.Add(48 * time.Hour), ErrTokenInvalid},
		{"empty record", TokenRecord{}, tok, t0, ErrTokenInvalid},
		{"zero token", rec, Token{}, t0, ErrTokenInvalid},
		{"record without expiry", parse(tok.String()).Record(), tok, t0, ErrTokenExpired},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := VerifyToken(tc.rec, tc.tok, tc.now)
			if !errors.Is(err, tc.want) {
				t.Fatalf("VerifyToken = %v, want %v", err, tc.want)
			}
			if !strings.Contains(err.Error(), "wormhole token create") {
				t.Errorf("error %q does not say what to do", err)
			}
		})
	}
}

func TestNewJoinTokenErrors(t *testing.T) {
	ca := mustCA(t, "c1", t0)
	if _, err := NewJoinToken(ca, 0, t0); err == nil {
		t.Error("ttl 0 accepted")
	}
	if _, err := NewJoinToken(ca, -time.Second, t0); err == nil {
		t.Error("negative ttl accepted")
	}
	if _, err := NewJoinToken(nil, time.Hour, t0); err == nil {
		t.Error("nil CA accepted")
	}
}

func TestParseTokenMalformed(t *testing.T) {
	good := mustToken(t, mustCA(t, "c1", t0), time.Hour).String()
	p := strings.Split(good, ".")
	secret, pin := p[2], p[3]
	// lastFlip changes the last base64 character so that its unused low
	// bits are set: decodable, but not canonical.
	lastFlip := func(s string) string {
		const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
		i := strings.IndexByte(alphabet, s[len(s)-1])
		return s[:len(s)-1] + string(alphabet[i^1])
	}
	tests := []struct {
		name, in, want string
	}{
		{"empty", "", `does not start with "whj1."`},
		{"spaces", "   ", `does not start with "whj1."`},
		{"other text", "hello world", `does not start with "whj1."`},
		{"kubeadm token", "abcdef.0123456789abcdef", `does not start with "whj1."`},
		{"newer version", withPart(good, 0, "whj2"), `version "whj2" is not supported`},
		{"prefix only", "whj1", "1 dot-separated parts, want 4"},
		{"three parts", strings.Join(p[:3], "."), "3 dot-separated parts, want 4"},
		{"five parts", good + ".x", "5 dot-separated parts, want 4"},
		{"too long", good + strings.Repeat("A", 300), "bytes long, a token has 109"},
		{"short id", withPart(good, 1, p[1][:15]), "its id: 15 characters, want 16 hex digits"},
		{"uppercase id", withPart(good, 1, "ABCDEF0123456789"), "its id: want lowercase hex"},
		{"non-hex id", withPart(good, 1, "0123456789abcdeg"), "its id: not hex digits"},
		{"short secret", withPart(good, 2, secret[:42]), "its secret: 42 characters, want 43"},
		{"padded secret", withPart(good, 2, secret+"="), "its secret: 44 characters"},
		{"std base64 secret", withPart(good, 2, "+"+secret[1:]), "its secret: not canonical unpadded base64url"},
		{"non-canonical secret", withPart(good, 2, lastFlip(secret)), "its secret: not canonical"},
		{"space in secret", withPart(good, 2, " "+secret[1:]), "its secret: not canonical"},
		{"short pin", withPart(good, 3, pin[:40]), "its CA hash: 40 characters, want 43"},
		{"non-canonical pin", withPart(good, 3, lastFlip(pin)), "its CA hash: not canonical"},
		{"empty parts", "whj1...", "its id: 0 characters"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseToken(tc.in)
			if !errors.Is(err, ErrTokenMalformed) {
				t.Fatalf("ParseToken(%q) = %v, want ErrTokenMalformed", tc.in, err)
			}
			msg := err.Error()
			if !strings.Contains(msg, tc.want) {
				t.Errorf("error %q does not say %q", msg, tc.want)
			}
			if !strings.Contains(msg, "wormhole token create") {
				t.Errorf("error %q does not say what to do", msg)
			}
			if len(tc.in) > 200 && strings.Contains(msg, tc.in) {
				t.Errorf("error repeats the long input")
			}
		})
	}
}

func FuzzParseToken(f *testing.F) {
	ca, err := NewCA("c1", t0)
	if err != nil {
		f.Fatal(err)
	}
	good := mustToken(f, ca, time.Hour).String()
	for _, s := range []string{good, " " + good + "\n", "", "whj1...", "whj1.0123456789abcdef.x.y",
		withPart(good, 0, "whj2"), strings.ToUpper(good), good + "."} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tok, err := ParseToken(s)
		if err != nil {
			if !errors.Is(err, ErrTokenMalformed) {
				t.Fatalf("ParseToken(%q) error %v does not wrap ErrTokenMalformed", s, err)
			}
			return
		}
		if got := tok.String(); got != strings.TrimSpace(s) {
			t.Fatalf("ParseToken(%q).String() = %q", s, got)
		}
		again, err := ParseToken(tok.String())
		if err != nil || again != tok {
			t.Fatalf("re-parse of %q: %v, %v", tok.String(), again.Redacted(), err)
		}
		if err := VerifyToken(tok.Record(), tok, t0); !errors.Is(err, ErrTokenExpired) {
			t.Fatalf("parsed token's own record: %v, want ErrTokenExpired (no expiry known)", err)
		}
	})
}
