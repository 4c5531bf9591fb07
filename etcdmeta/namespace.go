package etcdmeta

import (
	"context"
	"fmt"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// FirstNamespace returns the cluster ID of the namespace whose keys come
// first in etcd (ok is false when etcd holds none). A single node's etcd
// holds one namespace, so this names it.
func FirstNamespace(ctx context.Context, cli *clientv3.Client) (clusterID string, ok bool, err error) {
	resp, err := cli.Get(ctx, nsRoot, clientv3.WithRange(prefixEnd(nsRoot)), clientv3.WithKeysOnly(), clientv3.WithLimit(1))
	if err != nil {
		return "", false, etcdErr("find the namespace", err)
	}
	if len(resp.Kvs) == 0 {
		return "", false, nil
	}
	id, _, found := strings.Cut(strings.TrimPrefix(string(resp.Kvs[0].Key), nsRoot), "/")
	if !found || id == "" {
		return "", false, fmt.Errorf("find the namespace: key %q is outside any namespace: %w", resp.Kvs[0].Key, errMalformed)
	}
	return id, true, nil
}
