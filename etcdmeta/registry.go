package etcdmeta

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/wormhole-fs/wormhole/chunker/chunk"
	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
)

// The cluster's own records live next to the namespace, under
// /wh/<cluster>/cluster/: the CA (so any node can admit a new one), the
// join tokens' records (never their secrets), and one record per node.
func (k keys) caCert() string         { return k.prefix + "cluster/ca.pem" }
func (k keys) caKey() string          { return k.prefix + "cluster/ca-key.pem" }
func (k keys) tokenPrefix() string    { return k.prefix + "cluster/tokens/" }
func (k keys) token(id string) string { return k.tokenPrefix() + id }
func (k keys) nodePrefix() string     { return k.prefix + "cluster/nodes/" }
func (k keys) node(id string) string  { return k.nodePrefix() + id }
func (k keys) chunkRoot() string      { return k.prefix + "chunk/" }
func (k keys) chunkOwner(key string) string {
	rest := strings.TrimPrefix(key, k.chunkRoot())
	owner, _, _ := strings.Cut(rest, "/")
	return owner
}

// ErrNoRecord means a cluster record asked for does not exist.
var ErrNoRecord = errors.New("no such cluster record")

// NodeRecord is what the cluster remembers of a node between its runs:
// where to reach it and what it runs. Liveness is gossip's business.
type NodeRecord struct {
	ID        string `json:"id"`
	Advertise string `json:"advertise"`
	NFSAddr   string `json:"nfs_addr"`
	Gossip    string `json:"gossip"`
	Data      string `json:"data"`
	Join      string `json:"join"`
	// Etcd is "voter" (an embedded member), "client" or "external".
	Etcd    string `json:"etcd"`
	Zone    string `json:"zone,omitempty"`
	Tier    string `json:"tier,omitempty"`
	Version string `json:"version,omitempty"`
	// Draining is set by `wormhole drain`: the node takes no new chunks
	// and the repair worker moves its chunks elsewhere.
	Draining bool `json:"draining,omitempty"`
	// DrainingSince is when the drain was asked for.
	DrainingSince time.Time `json:"draining_since,omitzero"`
}

// PutCA records the cluster CA unless one is recorded already, and
// returns the recorded one: a second `wormhole init` against the same
// etcd keeps the first CA.
func (s *Store) PutCA(ctx context.Context, certPEM, keyPEM []byte) (cert, key []byte, err error) {
	resp, err := s.kv.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(s.keys.caCert()), "=", 0)).
		Then(clientv3.OpPut(s.keys.caCert(), string(certPEM)), clientv3.OpPut(s.keys.caKey(), string(keyPEM))).
		Commit()
	if err != nil {
		return nil, nil, etcdErr("record cluster CA", err)
	}
	if resp.Succeeded {
		return certPEM, keyPEM, nil
	}
	return s.CA(ctx)
}

// CA returns the recorded cluster CA certificate and key.
func (s *Store) CA(ctx context.Context) (cert, key []byte, err error) {
	resp, err := s.kv.Txn(ctx).Then(clientv3.OpGet(s.keys.caCert()), clientv3.OpGet(s.keys.caKey())).Commit()
	if err != nil {
		return nil, nil, etcdErr("read cluster CA", err)
	}
	c, k := resp.Responses[0].GetResponseRange().Kvs, resp.Responses[1].GetResponseRange().Kvs
	if len(c) == 0 || len(k) == 0 {
		return nil, nil, fmt.Errorf("cluster CA: %w", ErrNoRecord)
	}
	return c[0].Value, k[0].Value, nil
}

// PutRecord stores v (JSON) as the token record or node record named id.
func (s *Store) putJSON(ctx context.Context, key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if _, err := s.kv.Put(ctx, key, string(b)); err != nil {
		return etcdErr("write "+key, err)
	}
	return nil
}

func (s *Store) getJSON(ctx context.Context, key string, v any) error {
	resp, err := s.kv.Get(ctx, key)
	if err != nil {
		return etcdErr("read "+key, err)
	}
	if len(resp.Kvs) == 0 {
		return fmt.Errorf("%s: %w", key, ErrNoRecord)
	}
	if err := json.Unmarshal(resp.Kvs[0].Value, v); err != nil {
		return fmt.Errorf("%s: %w", key, errMalformed)
	}
	return nil
}

// PutToken stores a join token's record (v is the pki.TokenRecord; this
// package does not import pki) under its id.
func (s *Store) PutToken(ctx context.Context, id string, v any) error {
	return s.putJSON(ctx, s.keys.token(id), v)
}

// Token reads the record of join token id into v; an unknown id is an
// error wrapping ErrNoRecord.
func (s *Store) Token(ctx context.Context, id string, v any) error {
	if id == "" || strings.ContainsRune(id, '/') {
		return fmt.Errorf("token %q: %w", id, ErrNoRecord)
	}
	return s.getJSON(ctx, s.keys.token(id), v)
}

// PutNode records (or updates) a node.
func (s *Store) PutNode(ctx context.Context, n NodeRecord) error {
	if n.ID == "" || strings.ContainsRune(n.ID, '/') {
		return fmt.Errorf("node record %q: %w", n.ID, meta.ErrInvalid)
	}
	return s.putJSON(ctx, s.keys.node(n.ID), n)
}

// SetDraining marks node id as draining or not. It fails with an error
// wrapping ErrNoRecord for an unknown node.
func (s *Store) SetDraining(ctx context.Context, id string, draining bool) error {
	for {
		resp, err := s.kv.Get(ctx, s.keys.node(id))
		if err != nil {
			return etcdErr("read node "+id, err)
		}
		if len(resp.Kvs) == 0 {
			return fmt.Errorf("node %s: %w", id, ErrNoRecord)
		}
		var n NodeRecord
		if err := json.Unmarshal(resp.Kvs[0].Value, &n); err != nil {
			return fmt.Errorf("node %s: %w", id, errMalformed)
		}
		if draining && !n.Draining {
			n.DrainingSince = time.Now()
		}
		n.Draining = draining
		b, err := json.Marshal(n)
		if err != nil {
			return err
		}
		kv := resp.Kvs[0]
		tr, err := s.kv.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(string(kv.Key)), "=", kv.ModRevision)).
			Then(clientv3.OpPut(string(kv.Key), string(b))).Commit()
		if err != nil {
			return etcdErr("write node "+id, err)
		}
		if tr.Succeeded {
			return nil
		}
	}
}

// DeleteNode forgets node id.
func (s *Store) DeleteNode(ctx context.Context, id string) error {
	if _, err := s.kv.Delete(ctx, s.keys.node(id)); err != nil {
		return etcdErr("delete node "+id, err)
	}
	return nil
}

// Nodes returns every recorded node, sorted by id.
func (s *Store) Nodes(ctx context.Context) ([]NodeRecord, error) {
	resp, err := s.kv.Get(ctx, s.keys.nodePrefix(), clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	if err != nil {
		return nil, etcdErr("list nodes", err)
	}
	out := make([]NodeRecord, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var n NodeRecord
		if err := json.Unmarshal(kv.Value, &n); err != nil {
			s.log.Warn().Str("key", string(kv.Key)).Msg("skipping malformed node record")
			continue
		}
		out = append(out, n)
	}
	return out, nil
}

// ChunkRefPage is how many chunk references ForEachChunk reads per range
// request.
const ChunkRefPage = 1000

// ForEachChunk calls fn with every chunk reference of every file, file by
// file in inode order, reading them a page at a time. It reflects no
// single moment: files changed meanwhile may be seen before or after.
func (s *Store) ForEachChunk(ctx context.Context, fn func(ino meta.Ino, ref chunk.Ref) error) error {
	return s.scanChunks(ctx, fn, clientv3.WithSerializable())
}

// scanChunks calls fn with every chunk reference, page by page, each page
// read with opts.
func (s *Store) scanChunks(ctx context.Context, fn func(ino meta.Ino, ref chunk.Ref) error, opts ...clientv3.OpOption) error {
	start, end := s.keys.chunkRoot(), prefixEnd(s.keys.chunkRoot())
	for {
		resp, err := s.kv.Get(ctx, start, append([]clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(ChunkRefPage),
			clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend)}, opts...)...)
		if err != nil {
			return etcdErr("scan chunk references", err)
		}
		for _, kv := range resp.Kvs {
			key := string(kv.Key)
			v, err := strconv.ParseUint(s.keys.chunkOwner(key), 16, 64)
			if err != nil {
				return fmt.Errorf("chunk key %q: %w", key, errMalformed)
			}
			ino := meta.Ino(v)
			idx, err := s.keys.chunkIndex(ino, key)
			if err != nil {
				return err
			}
			ref, err := decodeChunkRef(idx, kv.Value)
			if err != nil {
				return err
			}
			if err := fn(ino, ref); err != nil {
				return err
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return nil
		}
		start = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// Client returns the etcd client the Store uses, for the etcd membership
// changes of the composition root.
func (s *Store) Client() *clientv3.Client { return s.cli }
