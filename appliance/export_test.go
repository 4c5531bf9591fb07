package appliance

import (
	"context"
	"time"
)

// SetPostureInterval sets the pause between n's posture assessments; call
// it before Serve.
func SetPostureInterval(n *Node, d time.Duration) {
	if n.gate != nil {
		n.gate.every = d
	}
}

// SetCertRenewal makes n look at its certificate every every and issue
// renewed ones valid for validity; call it before Serve.
func SetCertRenewal(n *Node, every, validity time.Duration) {
	n.cl.renewal = certRenewal{every: every, validity: validity}
}

// RenewCert renews n's certificate now, due or not.
func RenewCert(ctx context.Context, n *Node) error {
	_, err := n.renewCert(ctx, time.Now(), true)
	return err
}

// CertNotAfter is when n's certificate in use expires.
func CertNotAfter(n *Node) time.Time { return n.certNotAfter() }
