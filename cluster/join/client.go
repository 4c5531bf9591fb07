package join

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/wormhole-fs/wormhole/cluster/pki"
)

// Timeouts of Join.
const (
	// DialTimeout bounds connecting to the seed.
	DialTimeout = 10 * time.Second
	// Timeout bounds a whole join, when the caller's context does not end
	// sooner. The seed may take a while: adding an etcd learner waits for
	// the cluster to be ready for it.
	Timeout = 2 * time.Minute
)

// Join asks seed (host:port, its join port) to admit this node with
// token. It dials seed with pki.JoinClientTLS(token), checks the seed
// with pki.JoinedRoots (so the token is sent only to a node of the
// cluster whose CA the token pins), sends req with req.Token set to the
// token, and returns the seed's response after verifying it: the CA in
// the response must be the pinned CA, and the node certificate must be
// issued by it, name req.NodeID (pki.NodeIDFromCert) and hold
// req.PublicKey. It checks req before dialing.
//
// Errors are meant for the operator and wrap, with %w:
// pki.ErrTokenInvalid, pki.ErrTokenExpired or pki.ErrTokenMalformed when
// the seed refused the token; pki.ErrCAPinMismatch when seed is not a node
// of the token's cluster; ErrNodeIDTaken; ErrBadRequest for an invalid
// request; ErrSeedUnreachable when no connection could be made;
// ErrSeedFailed when the seed could not admit the node; ErrBadResponse
// for an answer that fails verification; and ctx's error when it ended.
func Join(ctx context.Context, seed string, token pki.Token, req Request) (Response, error) {
	host, port, err := net.SplitHostPort(seed)
	if err != nil || host == "" || port == "" {
		return Response{}, fmt.Errorf("join: seed address %q: want host:port, the address and join port of a node of the cluster", seed)
	}
	if _, err := req.validate(); err != nil {
		return Response{}, fmt.Errorf("join: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, Timeout)
	defer cancel()

	conn, roots, err := dial(ctx, seed, token)
	if err != nil {
		return Response{}, err
	}
	defer func() { _ = conn.Close() }()
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	req.Token = token.String()
	body, err := json.Marshal(req)
	if err != nil {
		return Response{}, fmt.Errorf("join: encode request: %w", err)
	}
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+seed+Path, bytes.NewReader(body))
	if err != nil {
		return Response{}, fmt.Errorf("join: %w", err)
	}
	hreq.Header.Set("Content-Type", "application/json")
	hreq.Close = true
	bw := bufio.NewWriter(conn)
	if err := hreq.Write(bw); err == nil {
		err = bw.Flush()
	}
	if err != nil {
		return Response{}, ioError(ctx, seed, "send request", err)
	}
	hresp, err := http.ReadResponse(bufio.NewReader(conn), hreq)
	if err != nil {
		return Response{}, ioError(ctx, seed, "read answer", err)
	}
	defer func() { _ = hresp.Body.Close() }()
	data, err := io.ReadAll(io.LimitReader(hresp.Body, MaxResponseBytes+1))
	if err != nil {
		return Response{}, ioError(ctx, seed, "read answer", err)
	}
	if len(data) > MaxResponseBytes {
		return Response{}, fmt.Errorf("join via seed %s: %w: answer over %d bytes", seed, ErrBadResponse, MaxResponseBytes)
	}

	if hresp.StatusCode != http.StatusOK {
		var we wireError
		if json.Unmarshal(data, &we) != nil {
			we = wireError{Message: string(data)}
		}
		return Response{}, fmt.Errorf("join via seed %s: %w", seed, newRemoteError(hresp.StatusCode, we))
	}
	var resp Response
	if err := json.Unmarshal(data, &resp); err != nil {
		return Response{}, fmt.Errorf("join via seed %s: %w: %w", seed, ErrBadResponse, err)
	}
	if err := verifyResponse(&resp, roots, &req, time.Now()); err != nil {
		return Response{}, fmt.Errorf("join via seed %s: %w", seed, err)
	}
	return resp, nil
}

// dial connects to seed and completes the TLS handshake, in which
// pki.JoinClientTLS checks the CA pin; it returns the cluster's Roots.
func dial(ctx context.Context, seed string, token pki.Token) (*tls.Conn, *pki.Roots, error) {
	host, port, _ := net.SplitHostPort(seed)
	d := net.Dialer{Timeout: DialTimeout}
	raw, err := d.DialContext(ctx, "tcp", seed)
	if err != nil {
		if ctx.Err() != nil {
			return nil, nil, fmt.Errorf("join via seed %s: connect: %w", seed, ctx.Err())
		}
		return nil, nil, fmt.Errorf("join via seed %s: %w: %w; check that the node at %s is up and that %s is its join port (and that no firewall blocks it)",
			seed, ErrSeedUnreachable, err, host, port)
	}
	conn := tls.Client(raw, pki.JoinClientTLS(token))
	if err := conn.HandshakeContext(ctx); err != nil {
		_ = conn.Close()
		switch {
		case errors.Is(err, pki.ErrCAPinMismatch):
			return nil, nil, fmt.Errorf("join via seed %s: %w", seed, err)
		case ctx.Err() != nil:
			return nil, nil, fmt.Errorf("join via seed %s: TLS handshake: %w", seed, ctx.Err())
		default:
			return nil, nil, fmt.Errorf("join via seed %s: TLS handshake: %w; check that %s is the join port of a node of the cluster", seed, err, port)
		}
	}
	roots, err := pki.JoinedRoots(conn.ConnectionState(), token, time.Now())
	if err != nil {
		_ = conn.Close()
		return nil, nil, fmt.Errorf("join via seed %s: %w", seed, err)
	}
	return conn, roots, nil
}

// ioError describes a failure to exchange the request once connected.
func ioError(ctx context.Context, seed, what string, err error) error {
	if ctx.Err() != nil {
		err = ctx.Err()
	}
	return fmt.Errorf("join via seed %s: %s: %w (if the seed got the request, it may have admitted the node: check the cluster's members before retrying with another node id)", seed, what, err)
}

// verifyResponse checks the seed's answer to req against the cluster's
// roots from the handshake.
func verifyResponse(resp *Response, roots *pki.Roots, req *Request, now time.Time) error {
	ca, err := pki.LoadRoots(resp.CACertPEM)
	if err != nil {
		return fmt.Errorf("%w: CA certificate: %w", ErrBadResponse, err)
	}
	if ca.Fingerprint() != roots.Fingerprint() {
		return fmt.Errorf("%w: the seed answered with a CA certificate other than the one the token pins", pki.ErrCAPinMismatch)
	}
	if resp.ClusterID != roots.ClusterID() {
		return fmt.Errorf("%w: cluster id %q, but the CA is of cluster %q", ErrBadResponse, resp.ClusterID, roots.ClusterID())
	}
	certs, err := parseCerts(resp.NodeCertPEM)
	if err != nil {
		return fmt.Errorf("%w: node certificate: %w", ErrBadResponse, err)
	}
	leaf, inter := certs[0], x509.NewCertPool()
	hasCA := false
	for _, c := range certs[1:] {
		inter.AddCert(c)
		hasCA = hasCA || bytes.Equal(c.Raw, roots.Certificate().Raw)
	}
	if !hasCA {
		return fmt.Errorf("%w: node certificate chain lacks the CA certificate", ErrBadResponse)
	}
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		_, err := leaf.Verify(x509.VerifyOptions{
			Roots: roots.Pool(), Intermediates: inter, CurrentTime: now,
			KeyUsages: []x509.ExtKeyUsage{usage},
		})
		if err != nil {
			return fmt.Errorf("%w: node certificate: %w", ErrBadResponse, err)
		}
	}
	id, err := pki.NodeIDFromCert(leaf, roots.ClusterID())
	if err != nil {
		return fmt.Errorf("%w: node certificate: %w", ErrBadResponse, err)
	}
	if id != req.NodeID {
		return fmt.Errorf("%w: node certificate names node %q, not %q", ErrBadResponse, id, req.NodeID)
	}
	want, err := x509.ParsePKIXPublicKey(req.PublicKey)
	if err != nil {
		return fmt.Errorf("join: public key: %w", err)
	}
	if k, ok := leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); !ok || !k.Equal(want) {
		return fmt.Errorf("%w: node certificate holds another public key than the node's", ErrBadResponse)
	}
	return checkAdmission(resp)
}

// parseCerts reads one or more PEM certificates and nothing else.
func parseCerts(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("PEM block %q, want CERTIFICATE", b.Type)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, err
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 || len(bytes.TrimSpace(data)) != 0 {
		return nil, errors.New("want PEM certificates only")
	}
	return certs, nil
}
