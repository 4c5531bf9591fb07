package etcdmeta

import (
	"context"
	"sync/atomic"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// floorKV records in floor the newest revision any answer through it
// carried: a read served later by a member whose state is at least that
// new reflects everything this store has been told (see Store.Chunks).
type floorKV struct {
	clientv3.KV
	floor *atomic.Int64
}

// raise lifts the floor to h's revision.
func raise(floor *atomic.Int64, h *etcdserverpb.ResponseHeader) {
	if h == nil {
		return
	}
	for {
		cur := floor.Load()
		if h.Revision <= cur || floor.CompareAndSwap(cur, h.Revision) {
			return
		}
	}
}

func (kv floorKV) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	resp, err := kv.KV.Get(ctx, key, opts...)
	if err == nil {
		raise(kv.floor, resp.Header)
	}
	return resp, err
}

func (kv floorKV) Put(ctx context.Context, key, val string, opts ...clientv3.OpOption) (*clientv3.PutResponse, error) {
	resp, err := kv.KV.Put(ctx, key, val, opts...)
	if err == nil {
		raise(kv.floor, resp.Header)
	}
	return resp, err
}

func (kv floorKV) Delete(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.DeleteResponse, error) {
	resp, err := kv.KV.Delete(ctx, key, opts...)
	if err == nil {
		raise(kv.floor, resp.Header)
	}
	return resp, err
}

func (kv floorKV) Txn(ctx context.Context) clientv3.Txn {
	return &floorTxn{Txn: kv.KV.Txn(ctx), floor: kv.floor}
}

// floorTxn is a transaction whose answer raises the floor.
type floorTxn struct {
	clientv3.Txn
	floor *atomic.Int64
}

func (t *floorTxn) If(cs ...clientv3.Cmp) clientv3.Txn {
	t.Txn = t.Txn.If(cs...)
	return t
}

func (t *floorTxn) Then(ops ...clientv3.Op) clientv3.Txn {
	t.Txn = t.Txn.Then(ops...)
	return t
}

func (t *floorTxn) Else(ops ...clientv3.Op) clientv3.Txn {
	t.Txn = t.Txn.Else(ops...)
	return t
}

func (t *floorTxn) Commit() (*clientv3.TxnResponse, error) {
	resp, err := t.Txn.Commit()
	if err == nil {
		raise(t.floor, resp.Header)
	}
	return resp, err
}
