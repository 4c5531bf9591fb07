package appliance

import "time"

// SetPostureInterval sets the pause between n's posture assessments; call
// it before Serve.
func SetPostureInterval(n *Node, d time.Duration) {
	if n.gate != nil {
		n.gate.every = d
	}
}
