package etcdmeta

import (
	"context"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// WithSoleMember says that the etcd behind the Store is a single member
// (a single node's embedded etcd): then the Store's current reads are
// served by that member without confirming its leadership first
// (serializable reads), which for one member is as current: etcd answers
// a write only once it has applied it, so the member's state holds every
// write answered. A linearizable read instead goes through raft's read
// index and, under a stream of writes, waits for the log write (fsync) in
// progress; under concurrent creates in one directory that was one wait
// per create. Reads at a past revision, and transactions with writes or
// conditions, are unchanged. Never use it with more than one member: a
// follower's serializable read may miss a write already answered.
func WithSoleMember() Option {
	return func(s *Store) { s.soleMember = true }
}

// localReadKV makes current reads serializable (see WithSoleMember).
type localReadKV struct {
	clientv3.KV
}

// Get reads key from the member's applied state when the read is current.
func (kv localReadKV) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	if op := clientv3.OpGet(key, opts...); op.Rev() == 0 && !op.IsSerializable() {
		opts = append(opts[:len(opts):len(opts)], clientv3.WithSerializable())
	}
	return kv.KV.Get(ctx, key, opts...)
}

// Txn returns a transaction whose current point reads are made
// serializable when it is read-only (no conditions, no writes).
func (kv localReadKV) Txn(ctx context.Context) clientv3.Txn {
	return &localReadTxn{kv: kv.KV, ctx: ctx}
}

// localReadTxn collects a transaction and sends it at Commit.
type localReadTxn struct {
	kv        clientv3.KV
	ctx       context.Context
	cmps      []clientv3.Cmp
	then, els []clientv3.Op
}

func (t *localReadTxn) If(cs ...clientv3.Cmp) clientv3.Txn {
	t.cmps = append(t.cmps, cs...)
	return t
}

func (t *localReadTxn) Then(ops ...clientv3.Op) clientv3.Txn {
	t.then = append(t.then, ops...)
	return t
}

func (t *localReadTxn) Else(ops ...clientv3.Op) clientv3.Txn {
	t.els = append(t.els, ops...)
	return t
}

func (t *localReadTxn) Commit() (*clientv3.TxnResponse, error) {
	then := t.then
	if len(t.cmps) == 0 && len(t.els) == 0 && allPointReads(then) {
		then = make([]clientv3.Op, len(t.then))
		for i, op := range t.then {
			then[i] = clientv3.OpGet(string(op.KeyBytes()), clientv3.WithSerializable())
		}
	}
	return t.kv.Txn(t.ctx).If(t.cmps...).Then(then...).Else(t.els...).Commit()
}

// allPointReads reports whether ops are all plain current reads of one
// key each (no range, revision, filter or projection), which OpGet with
// the key alone rebuilds exactly.
func allPointReads(ops []clientv3.Op) bool {
	for _, op := range ops {
		if !plainGet(op) || op.Rev() != 0 || op.IsSerializable() {
			return false
		}
	}
	return len(ops) > 0
}
