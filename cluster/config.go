package cluster

import (
	"crypto/hkdf"
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/hashicorp/memberlist"
)

// Gossip profiles, selecting memberlist's timing defaults.
const (
	// ProfileLAN is memberlist.DefaultLANConfig: the production default.
	ProfileLAN = "lan"
	// ProfileLocal is memberlist.DefaultLocalConfig: fast failure
	// detection on loopback, for tests.
	ProfileLocal = "local"
)

// MinSecretLen is the shortest cluster secret accepted, in bytes.
const MinSecretLen = 32

// gossipKeyInfo is the HKDF info string that derives the gossip key from
// the cluster secret. Changing it changes the key: bump the version.
const gossipKeyInfo = "wormhole gossip v1"

// Config configures a Membership.
type Config struct {
	// NodeID is this node's stable name in the cluster (at most
	// MaxNodeIDLen bytes). Two live nodes must not share it.
	NodeID string
	// BindAddr is the IP:port gossip listens on, for both UDP and TCP. Port
	// 0 picks a free port; Self().Addr reports the one in use. An empty
	// host means all interfaces.
	BindAddr string
	// AdvertiseAddr is the IP:port other nodes reach this one at, when it
	// differs from BindAddr (NAT, or binding all interfaces). Optional.
	AdvertiseAddr string
	// SecretKey is the cluster secret, at least MinSecretLen bytes. Gossip
	// is encrypted and authenticated with AES-GCM under a 32-byte key
	// derived from it with HKDF-SHA256 (info "wormhole gossip v1"); nodes
	// with another secret can neither join nor be understood.
	SecretKey []byte
	// Seeds are host:port addresses of existing members to join. Empty
	// starts a new cluster of one.
	Seeds []string
	// Profile is ProfileLAN (the default when empty) or ProfileLocal.
	Profile string
	// Meta returns this node's current facts. ID, Addr and State of its
	// result are ignored. It is called by Start and UpdateFacts, never
	// concurrently with itself. Nil means no facts beyond ID and Addr.
	Meta func() Node
	// UpdateTimeout bounds how long UpdateFacts waits for the new facts to
	// be handed to the gossip layer.
	UpdateTimeout time.Duration
	// EventBuffer is the channel capacity of each Subscribe.
	EventBuffer int
}

// DefaultConfig returns a Config with every field that has a sensible
// default set; NodeID and SecretKey are left for the caller.
func DefaultConfig() Config {
	return Config{
		BindAddr:      "0.0.0.0:7946",
		Profile:       ProfileLAN,
		UpdateTimeout: 5 * time.Second,
		EventBuffer:   128,
	}
}

// Validate reports the first invalid field, naming it.
func (c Config) Validate() error {
	switch {
	case c.NodeID == "":
		return errors.New("cluster config: NodeID is empty")
	case len(c.NodeID) > MaxNodeIDLen:
		return fmt.Errorf("cluster config: NodeID is %d bytes, limit %d", len(c.NodeID), MaxNodeIDLen)
	case !utf8.ValidString(c.NodeID):
		return errors.New("cluster config: NodeID is not valid UTF-8")
	}
	if _, _, err := splitIPPort(c.BindAddr, true); err != nil {
		return fmt.Errorf("cluster config: BindAddr: %w", err)
	}
	if c.AdvertiseAddr != "" {
		if _, _, err := splitIPPort(c.AdvertiseAddr, false); err != nil {
			return fmt.Errorf("cluster config: AdvertiseAddr: %w", err)
		}
	}
	if len(c.SecretKey) < MinSecretLen {
		return fmt.Errorf("cluster config: SecretKey is %d bytes, want at least %d", len(c.SecretKey), MinSecretLen)
	}
	for _, s := range c.Seeds {
		if _, _, err := net.SplitHostPort(s); err != nil {
			return fmt.Errorf("cluster config: seed %q: %w", s, err)
		}
	}
	switch c.Profile {
	case "", ProfileLAN, ProfileLocal:
	default:
		return fmt.Errorf("cluster config: Profile %q, want %q or %q", c.Profile, ProfileLAN, ProfileLocal)
	}
	if c.UpdateTimeout <= 0 {
		return fmt.Errorf("cluster config: UpdateTimeout %v, want > 0", c.UpdateTimeout)
	}
	if c.EventBuffer <= 0 {
		return fmt.Errorf("cluster config: EventBuffer %d, want > 0", c.EventBuffer)
	}
	return nil
}

// splitIPPort parses "IP:port". An empty host is allowed when emptyHost is
// set and comes back as "0.0.0.0"; port 0 is allowed too.
func splitIPPort(addr string, emptyHost bool) (string, int, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.ParseUint(p, 10, 16)
	if err != nil {
		return "", 0, fmt.Errorf("port %q: %w", p, err)
	}
	if host == "" {
		if !emptyHost {
			return "", 0, fmt.Errorf("%q has no host", addr)
		}
		host = "0.0.0.0"
	}
	if net.ParseIP(host) == nil {
		return "", 0, fmt.Errorf("host %q is not an IP address", host)
	}
	return host, int(port), nil
}

// gossipKey derives the 32-byte AES key memberlist encrypts with.
func gossipKey(secret []byte) ([]byte, error) {
	k, err := hkdf.Key(sha256.New, secret, nil, gossipKeyInfo, 32)
	if err != nil {
		return nil, fmt.Errorf("derive gossip key: %w", err)
	}
	return k, nil
}

// memberlistConfig builds memberlist's configuration from c (which must be
// valid). The caller sets the delegates and the logger.
func (c Config) memberlistConfig() (*memberlist.Config, error) {
	var mc *memberlist.Config
	if c.Profile == ProfileLocal {
		mc = memberlist.DefaultLocalConfig()
	} else {
		mc = memberlist.DefaultLANConfig()
	}
	mc.Name = c.NodeID
	host, port, err := splitIPPort(c.BindAddr, true)
	if err != nil {
		return nil, err
	}
	mc.BindAddr, mc.BindPort = host, port
	mc.AdvertiseAddr, mc.AdvertisePort = "", port
	if c.AdvertiseAddr != "" {
		if mc.AdvertiseAddr, mc.AdvertisePort, err = splitIPPort(c.AdvertiseAddr, false); err != nil {
			return nil, err
		}
	}
	if mc.SecretKey, err = gossipKey(c.SecretKey); err != nil {
		return nil, err
	}
	mc.GossipVerifyIncoming = true
	mc.GossipVerifyOutgoing = true
	return mc, nil
}
