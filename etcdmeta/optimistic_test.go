package etcdmeta

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/wormhole-fs/wormhole/chunker/chunk"
	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// laggingKV serves every current serializable read as of revision rev,
// as a member that has not applied the writes since would: what an
// optimistic attempt reads on a follower that lags.
type laggingKV struct {
	clientv3.KV
	rev    int64
	served atomic.Int64 // reads served as of rev
}

func (kv *laggingKV) lag(op clientv3.Op) (clientv3.Op, bool) {
	if !op.IsGet() || !op.IsSerializable() || op.Rev() != 0 {
		return op, false
	}
	opts := []clientv3.OpOption{clientv3.WithRev(kv.rev), clientv3.WithSerializable()}
	if len(op.RangeBytes()) > 0 {
		opts = append(opts, clientv3.WithRange(string(op.RangeBytes())))
	}
	if op.IsCountOnly() {
		opts = append(opts, clientv3.WithCountOnly())
	}
	return clientv3.OpGet(string(op.KeyBytes()), opts...), true
}

func (kv *laggingKV) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	op, lagged := kv.lag(clientv3.OpGet(key, opts...))
	resp, err := kv.KV.Do(ctx, op)
	if err != nil {
		return nil, err
	}
	get := resp.Get()
	if lagged {
		kv.served.Add(1)
		get.Header.Revision = kv.rev // the member's own revision
	}
	return get, nil
}

func (kv *laggingKV) Txn(ctx context.Context) clientv3.Txn {
	return &laggingTxn{kv: kv, ctx: ctx}
}

// laggingTxn lags a read-only transaction's reads (what load sends).
type laggingTxn struct {
	kv   *laggingKV
	ctx  context.Context
	cmps []clientv3.Cmp
	then []clientv3.Op
	els  []clientv3.Op
}

func (t *laggingTxn) If(cs ...clientv3.Cmp) clientv3.Txn {
	t.cmps = append(t.cmps, cs...)
	return t
}
func (t *laggingTxn) Then(ops ...clientv3.Op) clientv3.Txn {
	t.then = append(t.then, ops...)
	return t
}
func (t *laggingTxn) Else(ops ...clientv3.Op) clientv3.Txn {
	t.els = append(t.els, ops...)
	return t
}

func (t *laggingTxn) Commit() (*clientv3.TxnResponse, error) {
	lagged := false
	if len(t.cmps) == 0 && len(t.els) == 0 {
		for i, op := range t.then {
			var l bool
			t.then[i], l = t.kv.lag(op)
			lagged = lagged || l
		}
	}
	resp, err := t.kv.KV.Txn(t.ctx).If(t.cmps...).Then(t.then...).Else(t.els...).Commit()
	if err == nil && lagged {
		t.kv.served.Add(1)
		resp.Header.Revision = t.kv.rev
	}
	return resp, err
}

// TestOptimisticWritesOnALaggingMember: on a cluster, changes first read
// the local member's state, which may lag; whatever such a read got
// wrong is caught and redone with current reads, so every answer is the
// one current reads give: an exclusive create of a name made since is
// refused, of a name removed since succeeds, an unlink of a name made
// since succeeds, a write to a file made since is committed.
func TestOptimisticWritesOnALaggingMember(t *testing.T) {
	ctx := t.Context()
	id := fmt.Sprintf("test-%d", clusterSeq.Add(1))
	now, err := New(ctx, shared.Client(), id, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	file := meta.CreateArgs{Type: meta.TypeRegular, Mode: 0o644, Exclusive: true}
	if _, err := now.Create(ctx, meta.RootIno, "old", file); err != nil {
		t.Fatal(err)
	}
	resp, err := shared.Client().Get(ctx, "any")
	if err != nil {
		t.Fatal(err)
	}
	before := resp.Header.Revision
	late, err := now.Create(ctx, meta.RootIno, "late", file)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := now.Create(ctx, meta.RootIno, "late2", file); err != nil {
		t.Fatal(err)
	}
	if _, err := now.Unlink(ctx, meta.RootIno, "old"); err != nil {
		t.Fatal(err)
	}

	lagging := &laggingKV{KV: shared.Client().KV, rev: before}
	s, err := New(ctx, shared.Client(), id, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	s.kv = lagging

	if _, err := s.Create(ctx, meta.RootIno, "late", file); !errors.Is(err, meta.ErrExists) {
		t.Errorf("exclusive create of a name made since the lag: %v, want ErrExists", err)
	}
	if _, err := s.Create(ctx, meta.RootIno, "old", file); err != nil {
		t.Errorf("exclusive create of a name removed since the lag: %v", err)
	}
	if _, err := s.Unlink(ctx, meta.RootIno, "late2"); err != nil {
		t.Errorf("unlink of a name made since the lag: %v", err)
	}
	ref := chunk.Ref{Index: 0, ID: chunk.NewID(), Len: 10}
	if a, _, err := s.CommitWrite(ctx, late.Ino, []chunk.Ref{ref}, nil, 10); err != nil || a.Size != 10 {
		t.Errorf("write to a file made since the lag: size %d, %v", a.Size, err)
	}
	if lagging.served.Load() == 0 {
		t.Fatal("no read was served as of the lagging revision: the test tested nothing")
	}
	for name, want := range map[string]error{"late": nil, "old": nil, "late2": meta.ErrNotFound} {
		if _, err := now.Lookup(ctx, meta.RootIno, name); !errors.Is(err, want) && (want != nil || err != nil) {
			t.Errorf("lookup %q after: %v, want %v", name, err, want)
		}
	}
}

// TestUnavailableIsTransient: etcd's "not now" errors (no leader, a
// proposal that timed out) are meta.ErrUnavailable, which clients are
// told to retry; other errors are not.
func TestUnavailableIsTransient(t *testing.T) {
	for _, err := range []error{rpctypes.ErrGRPCTimeout, rpctypes.ErrTimeout, rpctypes.ErrGRPCNoLeader, rpctypes.ErrLeaderChanged} {
		if got := etcdErr("op", err); !errors.Is(got, meta.ErrUnavailable) {
			t.Errorf("%v: %v, want meta.ErrUnavailable", err, got)
		}
	}
	for _, err := range []error{rpctypes.ErrGRPCNoSpace, rpctypes.ErrGRPCPermissionDenied, errors.New("other")} {
		if got := etcdErr("op", err); errors.Is(got, meta.ErrUnavailable) {
			t.Errorf("%v: %v, not transient", err, got)
		}
	}
}

// TestChunksOneRoundTrip: a READ's chunk map read (one chunk or two) on a
// cluster is one etcd request, the inode and the references at one
// revision, and gives what was committed.
func TestChunksOneRoundTrip(t *testing.T) {
	ctx := t.Context()
	id := fmt.Sprintf("test-%d", clusterSeq.Add(1))
	s, err := New(ctx, shared.Client(), id, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	f, err := s.Create(ctx, meta.RootIno, "f", meta.CreateArgs{Type: meta.TypeRegular, Mode: 0o644})
	if err != nil {
		t.Fatal(err)
	}
	refs := []chunk.Ref{{Index: 0, ID: chunk.NewID(), Len: 100}, {Index: 1, ID: chunk.NewID(), Len: 50}}
	if _, _, err := s.CommitWrite(ctx, f.Ino, refs, nil, 150); err != nil {
		t.Fatal(err)
	}
	rec := &opsKV{KV: shared.Client().KV}
	s.kv = rec
	got, err := s.Chunks(ctx, f.Ino, 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].ID != refs[0].ID || got[1].ID != refs[1].ID || got[1].Len != 50 {
		t.Errorf("Chunks: %+v, want %+v", got, refs)
	}
	if n := len(rec.gets) + len(rec.txns); n != 1 {
		t.Errorf("Chunks of two indexes made %d etcd requests (%d gets, %d txns), want 1", n, len(rec.gets), len(rec.txns))
	}
}

// TestChunksOnALaggingMember: on a cluster a chunk map read is served by
// the local member when its state is as new as the newest revision the
// store has been answered at, and read again through the leader when it
// is older (a READ's chunk map is never older than the attributes read
// before it) or when the caller asks for current reads.
func TestChunksOnALaggingMember(t *testing.T) {
	ctx := t.Context()
	id := fmt.Sprintf("test-%d", clusterSeq.Add(1))
	now, err := New(ctx, shared.Client(), id, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	f, err := now.Create(ctx, meta.RootIno, "f", meta.CreateArgs{Type: meta.TypeRegular, Mode: 0o644})
	if err != nil {
		t.Fatal(err)
	}
	old := chunk.Ref{Index: 0, ID: chunk.NewID(), Len: 10}
	if _, _, err := now.CommitWrite(ctx, f.Ino, []chunk.Ref{old}, nil, 10); err != nil {
		t.Fatal(err)
	}
	resp, err := shared.Client().Get(ctx, "any")
	if err != nil {
		t.Fatal(err)
	}
	before := resp.Header.Revision
	cur := chunk.Ref{Index: 0, ID: chunk.NewID(), Len: 10}
	if _, _, err := now.CommitWrite(ctx, f.Ino, []chunk.Ref{cur}, []meta.Expect{{Index: 0, ID: old.ID}}, 10); err != nil {
		t.Fatal(err)
	}

	// chunksVia reads f's map through a store over a member lagging at
	// rev, after reading f's attributes, and says how many reads the
	// member served and how many transactions were sent.
	chunksVia := func(ctx context.Context, rev int64) (ref chunk.Ref, served int64, txns int) {
		t.Helper()
		s, err := New(t.Context(), shared.Client(), id, testLog(t))
		if err != nil {
			t.Fatal(err)
		}
		rec := &opsKV{KV: shared.Client().KV}
		lagging := &laggingKV{KV: rec, rev: rev}
		s.kv = floorKV{KV: lagging, floor: s.floor}
		if _, err := s.GetAttr(ctx, f.Ino); err != nil {
			t.Fatal(err)
		}
		rec.txns = nil
		refs, err := s.Chunks(ctx, f.Ino, 0, 0)
		if err != nil || len(refs) != 1 {
			t.Fatalf("Chunks: %v, %v", refs, err)
		}
		return refs[0], lagging.served.Load(), len(rec.txns)
	}

	if ref, served, txns := chunksVia(ctx, before); ref.ID != cur.ID || served != 1 || txns != 2 {
		t.Errorf("member behind the attributes: chunk %s (current %s, old %s), %d reads served by the member, %d transactions; want the current chunk, 1, 2",
			ref.ID, cur.ID, old.ID, served, txns)
	}
	resp, err = shared.Client().Get(ctx, "any")
	if err != nil {
		t.Fatal(err)
	}
	if ref, served, txns := chunksVia(ctx, resp.Header.Revision); ref.ID != cur.ID || served != 1 || txns != 1 {
		t.Errorf("member up to date: chunk %s (current %s), %d reads served by the member, %d transactions; want the current chunk, 1, 1",
			ref.ID, cur.ID, served, txns)
	}
	if ref, served, _ := chunksVia(meta.WithCurrentReads(ctx), before); ref.ID != cur.ID || served != 0 {
		t.Errorf("current reads asked for: chunk %s (current %s), %d reads served by the lagging member; want the current chunk, 0",
			ref.ID, cur.ID, served)
	}
}
