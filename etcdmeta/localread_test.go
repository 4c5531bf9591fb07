package etcdmeta

import (
	"context"
	"fmt"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
	"github.com/wormhole-fs/wormhole/etcdmeta/metatest"
)

// The namespace contract holds with serializable reads and no cache (a
// single node with etcd.cache_entries 0).
func TestConformanceSoleMember(t *testing.T) {
	metatest.Run(t, func(t *testing.T) meta.Store {
		s, err := New(t.Context(), shared.Client(), fmt.Sprintf("test-%d", clusterSeq.Add(1)), testLog(t), WithSoleMember())
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

// opsKV records the operations that reach etcd.
type opsKV struct {
	clientv3.KV
	gets []clientv3.Op // Get calls, as ops
	txns [][]clientv3.Op
}

func (kv *opsKV) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	kv.gets = append(kv.gets, clientv3.OpGet(key, opts...))
	return kv.KV.Get(ctx, key, opts...)
}

func (kv *opsKV) Txn(ctx context.Context) clientv3.Txn {
	return &opsTxn{Txn: kv.KV.Txn(ctx), kv: kv}
}

type opsTxn struct {
	clientv3.Txn
	kv  *opsKV
	ops []clientv3.Op
}

func (t *opsTxn) If(cs ...clientv3.Cmp) clientv3.Txn {
	t.Txn = t.Txn.If(cs...)
	return t
}

func (t *opsTxn) Else(ops ...clientv3.Op) clientv3.Txn {
	t.Txn = t.Txn.Else(ops...)
	return t
}

func (t *opsTxn) Then(ops ...clientv3.Op) clientv3.Txn {
	t.ops = append(t.ops, ops...)
	t.Txn = t.Txn.Then(ops...)
	return t
}

func (t *opsTxn) Commit() (*clientv3.TxnResponse, error) {
	t.kv.txns = append(t.kv.txns, t.ops)
	return t.Txn.Commit()
}

// Current reads become serializable: plain and filtered Gets, and the
// point reads of a read-only transaction. Reads at a revision keep their
// options, and a transaction with a condition or a write is sent as it
// was built; every answer is etcd's.
func TestSoleMemberReads(t *testing.T) {
	ctx := t.Context()
	rec := &opsKV{KV: shared.Client().KV}
	kv := localReadKV{KV: rec}
	prefix := fmt.Sprintf("/localread-%d/", clusterSeq.Add(1))
	put, err := kv.Txn(ctx).Then(clientv3.OpPut(prefix+"a", "1"), clientv3.OpPut(prefix+"b", "2")).Commit()
	if err != nil {
		t.Fatal(err)
	}
	rev := put.Header.Revision

	if r, err := kv.Get(ctx, prefix+"a"); err != nil || len(r.Kvs) != 1 || string(r.Kvs[0].Value) != "1" {
		t.Fatalf("Get: %v, %v", r, err)
	}
	if r, err := kv.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly()); err != nil || r.Count != 2 {
		t.Fatalf("Get count: %v, %v", r, err)
	}
	if _, err := kv.Get(ctx, prefix+"a", clientv3.WithRev(rev)); err != nil {
		t.Fatal(err)
	}
	for i, want := range []bool{true, true, false} {
		if got := rec.gets[i].IsSerializable(); got != want {
			t.Errorf("Get %d: serializable %v, want %v", i, got, want)
		}
	}
	if rec.gets[1].IsCountOnly() != true || len(rec.gets[1].RangeBytes()) == 0 {
		t.Error("the count read lost its options")
	}

	r, err := kv.Txn(ctx).Then(clientv3.OpGet(prefix+"a"), clientv3.OpGet(prefix+"b")).Commit()
	if err != nil || len(r.Responses) != 2 || string(r.Responses[1].GetResponseRange().Kvs[0].Value) != "2" {
		t.Fatalf("read-only Txn: %v, %v", r, err)
	}
	for _, op := range rec.txns[len(rec.txns)-1] {
		if !op.IsSerializable() || string(op.KeyBytes()) == "" {
			t.Errorf("read-only Txn: sent %q not serializable", op.KeyBytes())
		}
	}
	r, err = kv.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(prefix+"a"), "=", rev)).
		Then(clientv3.OpGet(prefix + "a")).Commit()
	if err != nil || !r.Succeeded {
		t.Fatalf("conditional Txn: %v, %v", r, err)
	}
	if rec.txns[len(rec.txns)-1][0].IsSerializable() {
		t.Error("a conditional Txn's read was made serializable")
	}
	if _, err := kv.Txn(ctx).Then(clientv3.OpGet(prefix+"a"), clientv3.OpPut(prefix+"c", "3")).Commit(); err != nil {
		t.Fatal(err)
	}
	if rec.txns[len(rec.txns)-1][0].IsSerializable() {
		t.Error("a Txn with a write had its read made serializable")
	}
}
