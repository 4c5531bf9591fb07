package etcdmeta

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// MaxVoters is the most voting members an etcd cluster run by Wormhole
// has. More voters make every write wait for more acknowledgements without
// tolerating a failure the appliance is designed for.
const MaxVoters = 5

// ErrVoterLayout is returned (wrapped) by PromoteWhenReady when promoting
// the learner would leave the cluster with a voter count Wormhole does not
// run: an even count of four or more with no learner waiting to make it
// odd again, or more than MaxVoters.
var ErrVoterLayout = errors.New("voter layout refused")

// ErrNotMember is returned (wrapped) by PromoteWhenReady and RemoveMember
// for a member ID the cluster does not know.
var ErrNotMember = errors.New("no such etcd member")

// Member is one member of the etcd cluster as the cluster records it.
type Member struct {
	// ID is etcd's member ID.
	ID uint64
	// Name is the member name; empty for a member that was added but has
	// not started yet.
	Name string
	// PeerURLs are where the member serves raft peers.
	PeerURLs []string
	// ClientURLs are where the member serves clients; empty for a member
	// not started yet or one serving clients in process only.
	ClientURLs []string
	// IsLearner is true for a non-voting member.
	IsLearner bool
}

// VoterTarget returns how many of n nodes should run a voting etcd member:
// 1 for one or two nodes, 3 for three or four, 5 for five or more. The
// count is always odd: a majority of an even count is no more tolerant of
// failures than a majority of one fewer (2 of 2 survives no failure, like
// 1 of 1; 3 of 4 survives one, like 2 of 3) while every write waits for one
// more acknowledgement and one more machine can take quorum away.
func VoterTarget(n int) int {
	switch {
	case n >= 5:
		return 5
	case n >= 3:
		return 3
	default:
		return 1
	}
}

// Members lists the cluster's members with a linearizable request, so the
// answer includes every membership change committed before the call; it
// therefore fails when the cluster has no quorum.
func Members(ctx context.Context, cli *clientv3.Client) ([]Member, error) {
	resp, err := cli.MemberList(ctx)
	if err != nil {
		return nil, fmt.Errorf("list etcd members: %w", err)
	}
	out := make([]Member, 0, len(resp.Members))
	for _, m := range resp.Members {
		out = append(out, Member{
			ID:         m.ID,
			Name:       m.Name,
			PeerURLs:   append([]string(nil), m.PeerURLs...),
			ClientURLs: append([]string(nil), m.ClientURLs...),
			IsLearner:  m.IsLearner,
		})
	}
	return out, nil
}

// AddLearner adds a non-voting member called name that will serve raft
// peers at peerURL, and returns its member ID and the InitialCluster string
// the new member must be started with (JoinSpec.InitialCluster). cli may
// talk to any member of the cluster; the calling node need not be one.
//
// A learner receives the log but does not count towards quorum, so adding
// one never stalls the cluster (adding a voter directly does, for seconds,
// until the new member has started and caught up). Start the new member
// next, then call PromoteWhenReady; if it cannot be started, remove it
// again with RemoveMember. etcd allows at most two learners at once in a
// cluster of embedded members (one with etcd's defaults).
//
// etcd refuses membership changes until the member cli reaches has been
// connected to every voter for 5 s (as just after a member started or was
// promoted); AddLearner retries until then, with backoff, within ctx.
//
// AddLearner refuses to add a member while any existing member advertises
// a peer URL others cannot dial (port 0, as the single-node default does):
// such a member must first be restarted with a real PeerURL.
func AddLearner(ctx context.Context, cli *clientv3.Client, name, peerURL string) (memberID uint64, initialCluster string, err error) {
	if name == "" {
		return 0, "", errors.New("add etcd learner: empty member name")
	}
	if err := checkPeerURL(peerURL); err != nil {
		return 0, "", fmt.Errorf("add etcd learner %s: %w", name, err)
	}
	members, err := Members(ctx, cli)
	if err != nil {
		return 0, "", fmt.Errorf("add etcd learner %s: %w", name, err)
	}
	for _, m := range members {
		if m.Name == name {
			return 0, "", fmt.Errorf("add etcd learner %s: a member with that name exists (id %x)", name, m.ID)
		}
		for _, u := range m.PeerURLs {
			if err := checkPeerURL(u); err != nil {
				return 0, "", fmt.Errorf("add etcd learner %s: existing member %q (id %x): %w; restart it with a real PeerURL first", name, m.Name, m.ID, err)
			}
		}
	}
	var resp *clientv3.MemberAddResponse
	b := newRetryWait()
	for {
		resp, err = cli.MemberAddAsLearner(ctx, []string{peerURL})
		// etcd refuses a membership change (ErrUnhealthy, before
		// proposing it) until the member asked has been connected to
		// every voter for 5 s, as after a member has just started or
		// been promoted: wait that out.
		if err == nil || !errors.Is(err, rpctypes.ErrUnhealthy) {
			break
		}
		if werr := b.wait(ctx); werr != nil {
			return 0, "", fmt.Errorf("add etcd learner %s at %s: gave up after %d attempts (last: %w): %w", name, peerURL, b.attempts, err, werr)
		}
	}
	if err != nil {
		return 0, "", fmt.Errorf("add etcd learner %s at %s: %w", name, peerURL, err)
	}
	id := resp.Member.ID
	return id, formatInitialCluster(resp.Members, id, name), nil
}

// formatInitialCluster formats members as etcdctl member add prints them: every
// member's name=peerURL, member id under the name it will start with.
func formatInitialCluster(members []*etcdserverpb.Member, id uint64, name string) string {
	var parts []string
	for _, m := range members {
		n := m.Name
		if m.ID == id {
			n = name
		}
		for _, u := range m.PeerURLs {
			parts = append(parts, n+"="+u)
		}
	}
	return strings.Join(parts, ",")
}

// InitialCluster returns the member list learner memberID, added by
// AddLearner but not started yet, must start with under name, as the
// cluster knows it now: members added or started since AddLearner
// returned are in it, which the list AddLearner returned lacks.
func InitialCluster(ctx context.Context, cli *clientv3.Client, memberID uint64, name string) (string, error) {
	resp, err := cli.MemberList(ctx)
	if err != nil {
		return "", fmt.Errorf("etcd member list: %w", err)
	}
	for _, m := range resp.Members {
		if m.ID == memberID {
			return formatInitialCluster(resp.Members, memberID, name), nil
		}
	}
	return "", fmt.Errorf("etcd member %x (%s): %w: it was removed; join again", memberID, name, ErrNotMember)
}

// PromoteWhenReady makes the learner memberID a voting member as soon as
// etcd allows it: etcd refuses a promotion until the learner's log has
// caught up with the leader's, so PromoteWhenReady retries with
// exponential backoff (25 ms doubling to 1 s, with jitter) until then or
// until ctx is done. It returns nil at once if the member already votes,
// which makes it safe to call again after an uncertain outcome.
//
// It refuses (ErrVoterLayout) a promotion that would give the cluster more
// than MaxVoters voters, or an even count of four or more unless another
// learner is waiting to be promoted right after (the way from 3 to 5
// voters passes through 4). Promoting a second voter next to a single one
// is allowed: a single voter tolerates no failure either, and there is no
// other way to grow from 1 to 3. The check is made against the membership
// at the time of the call; the appliance serializes membership changes.
func PromoteWhenReady(ctx context.Context, cli *clientv3.Client, memberID uint64) error {
	members, err := Members(ctx, cli)
	if err != nil {
		return fmt.Errorf("promote etcd member %x: %w", memberID, err)
	}
	voters, learners, found, isLearner := 0, 0, false, false
	for _, m := range members {
		if m.IsLearner {
			learners++
		} else {
			voters++
		}
		if m.ID == memberID {
			found, isLearner = true, m.IsLearner
		}
	}
	switch {
	case !found:
		return fmt.Errorf("promote etcd member %x: %w", memberID, ErrNotMember)
	case !isLearner:
		return nil
	}
	if err := checkPromotion(voters, learners-1); err != nil {
		return fmt.Errorf("promote etcd member %x: %w", memberID, err)
	}

	b := newRetryWait()
	var last error
	for {
		_, err := cli.MemberPromote(ctx, memberID)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, rpctypes.ErrMemberNotLearner):
			return nil // an earlier attempt went through
		case errors.Is(err, rpctypes.ErrMemberNotFound):
			return fmt.Errorf("promote etcd member %x: %w: %w", memberID, ErrNotMember, err)
		case ctx.Err() != nil && last != nil:
			return fmt.Errorf("promote etcd member %x: gave up after %d attempts (last: %w): %w", memberID, b.attempts+1, last, ctx.Err())
		case !retryablePromote(err):
			return fmt.Errorf("promote etcd member %x: %w", memberID, err)
		}
		last = err
		if werr := b.wait(ctx); werr != nil {
			return fmt.Errorf("promote etcd member %x: gave up after %d attempts (last: %w): %w", memberID, b.attempts, last, werr)
		}
	}
}

// retryWait is an exponential backoff with jitter: 25 ms doubling to 1 s.
type retryWait struct {
	next     time.Duration
	attempts int
}

func newRetryWait() *retryWait { return &retryWait{next: 25 * time.Millisecond} }

// wait sleeps for the next interval, or returns ctx's error when ctx is
// done first.
func (b *retryWait) wait(ctx context.Context) error {
	b.attempts++
	t := time.NewTimer(b.next/2 + rand.N(b.next/2+1))
	defer t.Stop()
	b.next = min(2*b.next, time.Second)
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// checkPromotion reports whether a cluster of voters voting members may
// gain one more while otherLearners further learners wait.
func checkPromotion(voters, otherLearners int) error {
	n := voters + 1
	switch {
	case n > MaxVoters:
		return fmt.Errorf("%w: would make %d voters, at most %d", ErrVoterLayout, n, MaxVoters)
	case n%2 == 0 && n >= 4 && otherLearners == 0:
		return fmt.Errorf("%w: would leave %d voters, an even count no more failure-tolerant than %d; add the next learner first", ErrVoterLayout, n, n-1)
	}
	return nil
}

// retryablePromote reports whether a MemberPromote error may go away by
// itself: the learner is catching up, or the cluster is between leaders.
func retryablePromote(err error) bool {
	for _, e := range []error{
		rpctypes.ErrMemberLearnerNotReady,
		rpctypes.ErrNoLeader,
		rpctypes.ErrLeaderChanged,
		rpctypes.ErrNotCapable,
		rpctypes.ErrTimeout,
		rpctypes.ErrTimeoutDueToLeaderFail,
		rpctypes.ErrTimeoutDueToConnectionLost,
		rpctypes.ErrUnhealthy,
	} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// RemoveMember removes memberID (voter or learner) from the cluster. It
// refuses to remove the last voter. Removing a voter may leave an even
// count; that is the right first step to replace a failed member (remove
// it, then add its replacement as a learner and promote it), since a dead
// voter still counts towards the majority until removed. etcd itself
// refuses a removal that would lose quorum given the members it can reach.
func RemoveMember(ctx context.Context, cli *clientv3.Client, memberID uint64) error {
	members, err := Members(ctx, cli)
	if err != nil {
		return fmt.Errorf("remove etcd member %x: %w", memberID, err)
	}
	voters, found, isLearner := 0, false, false
	for _, m := range members {
		if !m.IsLearner {
			voters++
		}
		if m.ID == memberID {
			found, isLearner = true, m.IsLearner
		}
	}
	switch {
	case !found:
		return fmt.Errorf("remove etcd member %x: %w", memberID, ErrNotMember)
	case !isLearner && voters == 1:
		return fmt.Errorf("remove etcd member %x: it is the last voter", memberID)
	}
	if _, err := cli.MemberRemove(ctx, memberID); err != nil {
		return fmt.Errorf("remove etcd member %x: %w", memberID, err)
	}
	return nil
}

// SetPeerURL makes memberID advertise peerURL to the other members (etcd's
// member update). A single node's member advertises a loopback URL with
// port 0; it must advertise a real one before a cluster can grow from it.
func SetPeerURL(ctx context.Context, cli *clientv3.Client, memberID uint64, peerURL string) error {
	if err := checkPeerURL(peerURL); err != nil {
		return fmt.Errorf("update etcd member %x: %w", memberID, err)
	}
	if _, err := cli.MemberUpdate(ctx, memberID, []string{peerURL}); err != nil {
		return fmt.Errorf("update etcd member %x to peer URL %s: %w", memberID, peerURL, err)
	}
	return nil
}

// checkPeerURL reports whether u is a peer URL other members can dial.
func checkPeerURL(u string) error {
	pu, err := url.Parse(u)
	if err != nil {
		return fmt.Errorf("peer URL %q: %w", u, err)
	}
	if pu.Scheme != "http" && pu.Scheme != "https" {
		return fmt.Errorf("peer URL %q: scheme must be http or https", u)
	}
	if pu.Hostname() == "" || pu.Port() == "" || pu.Port() == "0" {
		return fmt.Errorf("peer URL %q: need a host and a fixed port", u)
	}
	return nil
}

// DialExternal connects to an etcd cluster Wormhole does not run (or to
// the members of its own cluster from a node that runs none) and checks
// that it answers: a linearizable member list, which needs a leader and a
// quorum. endpoints are client URLs ("https://10.0.0.1:2379") or
// host:port pairs; tlsCfg, when not nil, is used for every endpoint and
// should carry a client certificate if the cluster requires one. etcd's
// client logs go to log at warning level and above.
//
// If no endpoint answers before ctx is done, DialExternal returns an error
// naming the endpoints and closes the client again. The caller closes the
// returned client.
func DialExternal(ctx context.Context, endpoints []string, tlsCfg *tls.Config, log zerolog.Logger) (*clientv3.Client, error) {
	if len(endpoints) == 0 {
		return nil, errors.New("dial etcd: no endpoints")
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:            endpoints,
		TLS:                  tlsCfg,
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
		Logger:               zap.New(&zerologCore{log: log, level: zapcore.WarnLevel, closing: new(atomic.Bool)}),
	})
	if err != nil {
		return nil, fmt.Errorf("dial etcd %s: %w", strings.Join(endpoints, ","), err)
	}
	if _, err := cli.MemberList(ctx); err != nil {
		_ = cli.Close()
		return nil, fmt.Errorf("etcd at %s did not answer: %w", strings.Join(endpoints, ","), err)
	}
	return cli, nil
}
