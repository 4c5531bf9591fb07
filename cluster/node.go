package cluster

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Node is what a node tells the cluster about itself, plus its state as
// this node's memberlist sees it. ID and Addr come from memberlist (the
// node name and the address it gossips from); the other facts travel as
// memberlist node metadata (see the package doc for the encoding).
type Node struct {
	ID       string // stable node id, at most MaxNodeIDLen bytes
	Addr     string // gossip host:port
	NFSAddr  string // where it serves NFS
	DataAddr string // where it serves chunks to peers
	Zone     string
	Tier     string // "ssd", "hdd", ...
	Capacity uint64 // bytes
	Free     uint64 // bytes
	Version  string
	State    State
}

// State is a node's liveness as seen by the local memberlist.
type State int

// Node states. StateUnknown is the zero value.
const (
	StateUnknown State = iota
	StateAlive
	StateSuspect
	StateDead
	StateLeft
)

func (s State) String() string {
	switch s {
	case StateAlive:
		return "alive"
	case StateSuspect:
		return "suspect"
	case StateDead:
		return "dead"
	case StateLeft:
		return "left"
	default:
		return fmt.Sprintf("State(%d)", int(s))
	}
}

// EventKind says what happened to a node.
type EventKind int

// Event kinds. EventLeave is a graceful leave (the node called Leave);
// EventFail is a node declared dead by failure detection.
const (
	EventJoin EventKind = iota + 1
	EventUpdate
	EventLeave
	EventFail
)

func (k EventKind) String() string {
	switch k {
	case EventJoin:
		return "join"
	case EventUpdate:
		return "update"
	case EventLeave:
		return "leave"
	case EventFail:
		return "fail"
	default:
		return fmt.Sprintf("EventKind(%d)", int(k))
	}
}

// Event is a change in membership. Node holds the facts last gossiped by the
// node and, for EventLeave and EventFail, State StateLeft or StateDead.
type Event struct {
	Kind EventKind
	Node Node
}

const (
	// MaxNodeIDLen is the longest node ID accepted, in bytes.
	MaxNodeIDLen = 64
	// MaxMetaSize is the largest encoded node metadata memberlist accepts
	// (memberlist.MetaMaxSize).
	MaxMetaSize = 512

	metaVersion = 1
)

// ErrMetaTooLarge is returned when a node's facts do not fit in
// MaxMetaSize bytes once encoded.
var ErrMetaTooLarge = errors.New("node facts too large for gossip metadata")

// errBadMeta is wrapped by every metadata decoding error.
var errBadMeta = errors.New("bad node metadata")

// encodeMeta encodes the gossiped facts of n (all but ID, Addr and State).
func encodeMeta(n Node) ([]byte, error) {
	b := make([]byte, 0, 64+len(n.NFSAddr)+len(n.DataAddr)+len(n.Zone)+len(n.Tier)+len(n.Version))
	b = append(b, metaVersion)
	for _, s := range [...]string{n.NFSAddr, n.DataAddr, n.Zone, n.Tier, n.Version} {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	b = binary.AppendUvarint(b, n.Capacity)
	b = binary.AppendUvarint(b, n.Free)
	if len(b) > MaxMetaSize {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrMetaTooLarge, len(b), MaxMetaSize)
	}
	return b, nil
}

// decodeMeta decodes what encodeMeta produced. It rejects unknown versions,
// truncated input, non-minimal varints and trailing bytes, and never panics;
// a successful decode re-encodes to the same bytes.
func decodeMeta(b []byte) (Node, error) {
	var n Node
	if len(b) == 0 {
		return n, fmt.Errorf("%w: empty", errBadMeta)
	}
	if len(b) > MaxMetaSize {
		return n, fmt.Errorf("%w: %d bytes, limit %d", errBadMeta, len(b), MaxMetaSize)
	}
	if b[0] != metaVersion {
		return n, fmt.Errorf("%w: unknown version %d", errBadMeta, b[0])
	}
	d := metaDecoder{b: b[1:]}
	for _, s := range [...]*string{&n.NFSAddr, &n.DataAddr, &n.Zone, &n.Tier, &n.Version} {
		*s = d.str()
	}
	n.Capacity = d.uvarint()
	n.Free = d.uvarint()
	if d.err != nil {
		return Node{}, d.err
	}
	if len(d.b) != 0 {
		return Node{}, fmt.Errorf("%w: %d trailing bytes", errBadMeta, len(d.b))
	}
	return n, nil
}

type metaDecoder struct {
	b   []byte
	err error
}

func (d *metaDecoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = fmt.Errorf("%w: truncated or overflowing varint", errBadMeta)
		return 0
	}
	if n != uvarintLen(v) {
		d.err = fmt.Errorf("%w: non-minimal varint", errBadMeta)
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *metaDecoder) str() string {
	l := d.uvarint()
	if d.err != nil {
		return ""
	}
	if l > uint64(len(d.b)) {
		d.err = fmt.Errorf("%w: string of %d bytes, %d left", errBadMeta, l, len(d.b))
		return ""
	}
	s := string(d.b[:l])
	d.b = d.b[l:]
	return s
}

func uvarintLen(v uint64) int {
	var buf [binary.MaxVarintLen64]byte
	return binary.PutUvarint(buf[:], v)
}
