package cluster

import (
	"encoding/binary"
	"time"

	"github.com/hashicorp/memberlist"
)

// delegate is the memberlist.Delegate of a Membership: it serves our node
// metadata and carries the leave handshake.
type delegate Membership

// eventDelegate is the memberlist.EventDelegate of a Membership: it keeps
// the view Members returns and publishes events.
type eventDelegate Membership

var (
	_ memberlist.Delegate      = (*delegate)(nil)
	_ memberlist.EventDelegate = (*eventDelegate)(nil)
)

// Leave handshake. memberlist v0.7.0 never sets Node.State on the nodes it
// passes to EventDelegate (its nodeState.State field shadows it), so
// NotifyLeave cannot tell a graceful leave from a failure by itself.
// Before memberlist's own leave, Leave therefore sends msgLeaving to every
// member and waits (up to half its timeout) for their msgLeavingAck; a
// member that got it reports the node's departure as EventLeave.
const (
	msgLeaving byte = iota + 1
	msgLeavingAck
)

// leaveMemory is how long a leave announcement stays valid: a node that
// announced one and is still alive after this long fails as usual.
const leaveMemory = time.Minute

func encodeMsg(kind byte, node string) []byte {
	b := []byte{kind}
	b = binary.AppendUvarint(b, uint64(len(node)))
	return append(b, node...)
}

func decodeMsg(b []byte) (kind byte, node string, ok bool) {
	if len(b) < 2 {
		return 0, "", false
	}
	l, n := binary.Uvarint(b[1:])
	if n <= 0 || l != uint64(len(b)-1-n) || l > MaxNodeIDLen {
		return 0, "", false
	}
	return b[0], string(b[1+n:]), true
}

// NodeMeta implements memberlist.Delegate.
func (d *delegate) NodeMeta(limit int) []byte {
	m := (*Membership)(d)
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.meta) > limit { // encodeMeta keeps it within MaxMetaSize
		return nil
	}
	return append([]byte(nil), m.meta...)
}

// NotifyMsg implements memberlist.Delegate; it runs on memberlist's packet
// and stream handlers and must not block.
func (d *delegate) NotifyMsg(b []byte) {
	m := (*Membership)(d)
	kind, node, ok := decodeMsg(b)
	if !ok || node == m.cfg.NodeID {
		m.log.Debug().Int("len", len(b)).Msg("ignoring unknown cluster message")
		return
	}
	m.mu.Lock()
	ml := m.ml
	switch kind {
	case msgLeaving:
		m.leaving[node] = time.Now()
		n, known := m.view[node]
		m.mu.Unlock()
		if ml != nil && known {
			// UDP: a lost ack makes the leaver send again.
			err := ml.SendToAddress(memberlist.Address{Addr: n.Addr, Name: node}, encodeMsg(msgLeavingAck, m.cfg.NodeID))
			if err != nil {
				m.log.Debug().Err(err).Str("node", node).Msg("ack leave")
			}
		}
		return
	case msgLeavingAck:
		if m.acks != nil {
			select {
			case m.acks <- node:
			default:
			}
		}
	}
	m.mu.Unlock()
}

// GetBroadcasts implements memberlist.Delegate; we broadcast nothing.
func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }

// LocalState implements memberlist.Delegate; we have no state to exchange.
func (d *delegate) LocalState(join bool) []byte { return nil }

// MergeRemoteState implements memberlist.Delegate.
func (d *delegate) MergeRemoteState(buf []byte, join bool) {}

// announceLeave sends msgLeaving to every other member until each has
// acknowledged or wait has passed.
func (m *Membership) announceLeave(ml *memberlist.Memberlist, wait time.Duration) {
	acks := make(chan string, 64)
	m.mu.Lock()
	pending := make(map[string]string) // node ID → address
	for id, n := range m.view {
		if id != m.cfg.NodeID {
			pending[id] = n.Addr
		}
	}
	m.acks = acks
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		m.acks = nil
		m.mu.Unlock()
	}()

	msg := encodeMsg(msgLeaving, m.cfg.NodeID)
	timeout := time.NewTimer(wait)
	defer timeout.Stop()
	resend := time.NewTicker(100 * time.Millisecond)
	defer resend.Stop()
	for len(pending) > 0 {
		for id, addr := range pending {
			if err := ml.SendToAddress(memberlist.Address{Addr: addr, Name: id}, msg); err != nil {
				m.log.Debug().Err(err).Str("node", id).Msg("announce leave")
			}
		}
	wait:
		for {
			select {
			case id := <-acks:
				delete(pending, id)
				if len(pending) == 0 {
					return
				}
			case <-resend.C:
				break wait
			case <-timeout.C:
				m.log.Warn().Int("unacknowledged", len(pending)).Msg("leave announcement not acknowledged by every member; they will report a failure")
				return
			}
		}
	}
}

// toNode converts a memberlist node; called with memberlist's lock held,
// so n may be read but not kept.
func (e *eventDelegate) toNode(n *memberlist.Node, state State) Node {
	m := (*Membership)(e)
	node, err := decodeMeta(n.Meta)
	if err != nil {
		m.log.Warn().Err(err).Str("node", n.Name).Msg("node facts unreadable; listing it without them")
		node = Node{}
	}
	node.ID, node.Addr, node.State = n.Name, n.Address(), state
	return node
}

// The Notify methods hold m.mu and ignore what memberlist reports once
// the Membership is closed: its suspicion timers can still fire after
// Shutdown, and nothing must be logged or published then.

// NotifyJoin implements memberlist.EventDelegate.
func (e *eventDelegate) NotifyJoin(n *memberlist.Node) {
	m := (*Membership)(e)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return
	}
	node := e.toNode(n, StateAlive)
	ev := m.log.Info()
	if node.ID == m.cfg.NodeID {
		ev = m.log.Debug()
	}
	ev.Str("node", node.ID).Str("addr", node.Addr).Msg("node joined")
	delete(m.leaving, node.ID)
	m.view[node.ID] = node
	m.publish(Event{Kind: EventJoin, Node: node})
}

// NotifyUpdate implements memberlist.EventDelegate.
func (e *eventDelegate) NotifyUpdate(n *memberlist.Node) {
	m := (*Membership)(e)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return
	}
	node := e.toNode(n, StateAlive)
	m.log.Debug().Str("node", node.ID).Msg("node updated")
	m.view[node.ID] = node
	m.publish(Event{Kind: EventUpdate, Node: node})
}

// NotifyLeave implements memberlist.EventDelegate. memberlist calls it for
// both a graceful leave and a failure; see the leave handshake above.
func (e *eventDelegate) NotifyLeave(n *memberlist.Node) {
	m := (*Membership)(e)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return
	}
	at, announced := m.leaving[n.Name]
	delete(m.leaving, n.Name)
	kind, state := EventFail, StateDead
	if n.State == memberlist.StateLeft || (announced && time.Since(at) < leaveMemory) {
		kind, state = EventLeave, StateLeft
	}
	node := e.toNode(n, state)
	delete(m.view, node.ID)
	if kind == EventFail {
		m.log.Warn().Str("node", node.ID).Str("addr", node.Addr).Msg("node failed")
	} else {
		m.log.Info().Str("node", node.ID).Str("addr", node.Addr).Msg("node left")
	}
	m.publish(Event{Kind: kind, Node: node})
}
