package pki

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Join token layout. See the package documentation.
const (
	tokenPrefix    = "whj1"
	tokenIDLen     = 8  // bytes, hex-encoded in the token
	tokenSecretLen = 32 // bytes, base64url-encoded in the token
	// tokenMaxLen bounds what ParseToken looks at, so a pasted file does
	// not end up in an error message.
	tokenMaxLen = 256
	// secretHashDomain separates the stored secret hash from any other
	// use of SHA-256 over the same bytes.
	secretHashDomain = "wormhole join token secret v1\x00"
)

// b64 is unpadded base64url that refuses non-canonical encodings, so
// every accepted token string is the one String produces.
var b64 = base64.RawURLEncoding.Strict()

// newTokenHint ends every error that means the token cannot be used.
const newTokenHint = "ask the cluster for a new token with `wormhole token create`"

// Sentinel errors of join tokens. The messages are meant for the person
// running `wormhole join`.
var (
	// ErrTokenMalformed: the string is not a join token. The wrapping
	// error says which part is wrong and what to do.
	ErrTokenMalformed = errors.New("malformed join token")
	// ErrTokenInvalid: no such token, or a wrong secret.
	ErrTokenInvalid = errors.New("join token not recognized (wrong id or secret): " + newTokenHint)
	// ErrTokenExpired: the token was right but has expired.
	ErrTokenExpired = errors.New("join token has expired: " + newTokenHint)
)

// Token is a join token: a bearer secret that lets a new node ask a seed
// for a certificate, plus the fingerprint of the cluster CA that lets the
// new node authenticate the seed. The zero Token is not valid.
//
// A Token's String is a secret: do not log it (use Redacted).
type Token struct {
	id      [tokenIDLen]byte
	secret  [tokenSecretLen]byte
	caPin   [sha256.Size]byte
	expires time.Time // known only to the creator; zero once parsed
}

// TokenRecord is what the seed stores about a token: never the secret
// itself, only SHA-256 over a domain tag, the id and the secret, so a
// copy of the store does not reveal usable tokens.
type TokenRecord struct {
	ID         string // hex, as in the token string
	SecretHash []byte
	Expires    time.Time
}

// NewJoinToken makes a token for joining the cluster of ca, valid until
// now+ttl. Store its Record on the seed; hand its String to the operator.
func NewJoinToken(ca *CA, ttl time.Duration, now time.Time) (Token, error) {
	if ca == nil {
		return Token{}, errors.New("new join token: nil CA")
	}
	if ttl <= 0 {
		return Token{}, fmt.Errorf("new join token: ttl %v, want > 0", ttl)
	}
	var t Token
	rand.Read(t.id[:]) // never fails (Go 1.24+)
	rand.Read(t.secret[:])
	t.caPin = ca.roots.fingerprint
	t.expires = now.Add(ttl)
	return t, nil
}

// ParseToken reads a token string, ignoring surrounding white space.
// Errors wrap ErrTokenMalformed and say which part is wrong.
func ParseToken(s string) (Token, error) {
	s = strings.TrimSpace(s)
	if len(s) > tokenMaxLen {
		return Token{}, malformed("it is %d bytes long, a token has %d", len(s), len(tokenPrefix)+3+2*tokenIDLen+2*b64.EncodedLen(tokenSecretLen))
	}
	parts := strings.Split(s, ".")
	if parts[0] != tokenPrefix {
		if strings.HasPrefix(parts[0], "whj") && len(parts) == 4 {
			return Token{}, malformed("version %q is not supported by this wormhole, which reads %q", parts[0], tokenPrefix)
		}
		return Token{}, malformed("it does not start with %q", tokenPrefix+".")
	}
	if len(parts) != 4 {
		return Token{}, malformed("it has %d dot-separated parts, want 4: %s.<id>.<secret>.<ca-hash>", len(parts), tokenPrefix)
	}
	var t Token
	if err := decodeHex(t.id[:], parts[1]); err != nil {
		return Token{}, malformed("its id: %v", err)
	}
	if err := decodeB64(t.secret[:], parts[2]); err != nil {
		return Token{}, malformed("its secret: %v", err)
	}
	if err := decodeB64(t.caPin[:], parts[3]); err != nil {
		return Token{}, malformed("its CA hash: %v", err)
	}
	return t, nil
}

// malformed wraps ErrTokenMalformed after a description of the fault.
func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: %s; check it was copied whole, or %s", ErrTokenMalformed, fmt.Sprintf(format, args...), newTokenHint)
}

// decodeHex fills dst from exactly 2*len(dst) lowercase hex digits.
func decodeHex(dst []byte, s string) error {
	if len(s) != hex.EncodedLen(len(dst)) {
		return fmt.Errorf("%d characters, want %d hex digits", len(s), hex.EncodedLen(len(dst)))
	}
	if strings.ToLower(s) != s {
		return errors.New("want lowercase hex digits")
	}
	if _, err := hex.Decode(dst, []byte(s)); err != nil {
		return errors.New("not hex digits")
	}
	return nil
}

// decodeB64 fills dst from exactly its canonical unpadded base64url form.
func decodeB64(dst []byte, s string) error {
	if len(s) != b64.EncodedLen(len(dst)) {
		return fmt.Errorf("%d characters, want %d base64url characters", len(s), b64.EncodedLen(len(dst)))
	}
	n, err := b64.Decode(dst, []byte(s))
	if err != nil || n != len(dst) {
		return errors.New("not canonical unpadded base64url")
	}
	return nil
}

// String returns the token as the operator types it:
// "whj1.<id>.<secret>.<ca-hash>". It contains the secret.
func (t Token) String() string {
	return tokenPrefix + "." + hex.EncodeToString(t.id[:]) + "." +
		b64.EncodeToString(t.secret[:]) + "." + b64.EncodeToString(t.caPin[:])
}

// Redacted returns the token with its secret replaced by "…", for logs.
func (t Token) Redacted() string {
	return tokenPrefix + "." + hex.EncodeToString(t.id[:]) + ".…." + b64.EncodeToString(t.caPin[:])
}

// GoString keeps the secret out of %#v output.
func (t Token) GoString() string { return "pki.Token(" + t.Redacted() + ")" }

// ID returns the token id, in hex. It is not secret.
func (t Token) ID() string { return hex.EncodeToString(t.id[:]) }

// CAFingerprint returns the SHA-256 of the cluster CA certificate the
// token pins.
func (t Token) CAFingerprint() [sha256.Size]byte { return t.caPin }

// Expires returns when the token stops being accepted. It is zero for a
// parsed token: expiry is known only to the seed.
func (t Token) Expires() time.Time { return t.expires }

// Record returns what the seed stores to check the token later.
func (t Token) Record() TokenRecord {
	return TokenRecord{ID: t.ID(), SecretHash: secretHash(t.id, t.secret), Expires: t.expires}
}

func secretHash(id [tokenIDLen]byte, secret [tokenSecretLen]byte) []byte {
	h := sha256.New()
	h.Write([]byte(secretHashDomain))
	h.Write(id[:])
	h.Write(secret[:])
	return h.Sum(nil)
}

// VerifyToken checks a presented token against the seed's record of it.
// The id and secret are compared in constant time; only a token with the
// right id and secret is then checked for expiry, so guessing reveals
// nothing about which tokens exist. The token is valid while now is
// before rec.Expires (a zero Expires never is). Errors wrap
// ErrTokenInvalid or ErrTokenExpired.
//
// Tokens may be used until they expire; to make one single-use, delete its
// record after the join it allowed succeeds.
func VerifyToken(rec TokenRecord, presented Token, now time.Time) error {
	idOK := subtle.ConstantTimeCompare([]byte(rec.ID), []byte(presented.ID()))
	secretOK := subtle.ConstantTimeCompare(rec.SecretHash, secretHash(presented.id, presented.secret))
	if idOK&secretOK != 1 {
		return fmt.Errorf("token %s: %w", presented.ID(), ErrTokenInvalid)
	}
	if !now.Before(rec.Expires) {
		return fmt.Errorf("token %s expired at %s: %w", presented.ID(), rec.Expires.UTC().Format(time.RFC3339), ErrTokenExpired)
	}
	return nil
}
