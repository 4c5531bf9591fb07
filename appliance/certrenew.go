package appliance

import (
	"context"
	"crypto"
	"crypto/tls"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/wormhole-fs/wormhole/cluster/pki"
)

// Node certificates (one year by default) are renewed by their node, from
// the cluster CA that etcd keeps, once less than a third of their
// validity is left: about four months before a one-year certificate
// expires, so a node can be down for that long and still come back. The
// new certificate, for the same key and names, goes to the data dir
// (used at the next start), to the embedded etcd member's TLS file (etcd
// reads it at every handshake) and into the node's TLS configurations,
// so every new connection presents it; connections open stay as they are.

// certCheckInterval is how often a node looks at its certificate's
// expiry.
const certCheckInterval = time.Hour

// certRenewal is when a node renews its certificate, and how often it
// looks; tests shorten both.
type certRenewal struct {
	every time.Duration
	// validity is the validity of renewed certificates.
	validity time.Duration
}

// renewCertLoop renews the node's certificate when due, until ctx ends.
func (n *Node) renewCertLoop(ctx context.Context) {
	t := time.NewTicker(n.cl.renewal.every)
	defer t.Stop()
	for {
		_, err := n.renewCert(ctx, time.Now(), false)
		switch {
		case err == nil:
			n.cl.renewErr.Store(nil) // renewed, or not due
		case ctx.Err() == nil:
			msg := err.Error()
			n.cl.renewErr.Store(&msg)
			n.log.Error().Err(err).Time("valid_until", n.certNotAfter()).
				Msg("node certificate not renewed; the next check tries again")
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// certNotAfter is when the node's certificate in use expires.
func (n *Node) certNotAfter() time.Time {
	if leaf := n.cl.id.cert.Current().Leaf; leaf != nil {
		return leaf.NotAfter
	}
	return time.Time{}
}

// renewCert renews the node's certificate if less than a third of its
// validity is left at now (or always, with force), and reports whether
// it did.
func (n *Node) renewCert(ctx context.Context, now time.Time, force bool) (bool, error) {
	c := n.cl
	cur := c.id.cert.Current()
	leaf := cur.Leaf
	if leaf == nil {
		return false, errors.New("node certificate not parsed")
	}
	life := leaf.NotAfter.Sub(leaf.NotBefore) - pki.Backdate
	if !force && leaf.NotAfter.Sub(now) > life/3 {
		return false, nil
	}
	signer, ok := cur.PrivateKey.(crypto.Signer)
	if !ok {
		return false, fmt.Errorf("node key of type %T cannot sign", cur.PrivateKey)
	}
	caCert, caKey, err := n.ns.CA(ctx)
	if err != nil {
		return false, fmt.Errorf("renew node certificate: cluster CA: %w", err)
	}
	ca, err := pki.LoadCA(caCert, caKey)
	if err == nil {
		ca, err = ca.WithNodeValidity(c.renewal.validity)
	}
	if err != nil {
		return false, fmt.Errorf("renew node certificate: cluster CA: %w", err)
	}
	// The same names as now: the ones the node joined with.
	hosts := slices.Clone(leaf.DNSNames) // appended to: not the leaf's own
	for _, ip := range leaf.IPAddresses {
		hosts = append(hosts, ip.String())
	}
	certPEM, err := ca.IssueNode(c.st.NodeID, hosts, signer.Public(), now)
	if err != nil {
		return false, fmt.Errorf("renew node certificate: %w", err)
	}
	pair, err := tls.X509KeyPair(certPEM, c.id.keyPEM)
	if err != nil {
		return false, fmt.Errorf("renew node certificate: %w", err)
	}
	// On disk first: what the next start uses. A crash in between leaves
	// the old certificate in use until then, still valid.
	if err := writeAtomic(nodeCertPath(n.cfg.DataDir), certPEM); err != nil {
		return false, fmt.Errorf("renew node certificate: %w", err)
	}
	if n.etcd != nil {
		if err := n.etcd.ReplaceCert(certPEM); err != nil {
			return false, fmt.Errorf("renew node certificate: %w", err)
		}
	}
	c.id.cert.Replace(pair)
	n.log.Info().Time("was_valid_until", leaf.NotAfter).Time("valid_until", pair.Leaf.NotAfter).
		Msg("node certificate renewed")
	return true, nil
}
