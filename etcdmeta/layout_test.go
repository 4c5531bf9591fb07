package etcdmeta

import (
	"strings"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
)

// TestMigrateEntriesFromNameLayout opens a namespace whose entries are in
// the first layout (keyed by name, no layout record): New moves them, and
// lookups and listings find every entry.
func TestMigrateEntriesFromNameLayout(t *testing.T) {
	s := newTestStore(t)
	ctx := t.Context()
	d := must(s.Create(ctx, meta.RootIno, "d", meta.CreateArgs{Type: meta.TypeDir, Mode: 0o755, Exclusive: true}))(t)
	a := must(s.Create(ctx, d.Ino, "a", meta.CreateArgs{Type: meta.TypeRegular, Mode: 0o644, Exclusive: true}))(t)
	for i := range 150 { // more than one migration batch
		must(s.Create(ctx, meta.RootIno, strings.Repeat("x", i+1), meta.CreateArgs{Type: meta.TypeRegular, Mode: 0o644, Exclusive: true}))(t)
	}

	// Rewrite every entry as the first layout wrote it.
	ent := s.keys.prefix + "ent/"
	resp := must(s.cli.Get(ctx, ent, clientv3.WithPrefix()))(t)
	for _, kv := range resp.Kvs {
		key := string(kv.Key)
		dir := key[len(ent) : len(ent)+16]
		_, name, err := entryName(ent+dir+"/", key)
		if err != nil {
			t.Fatal(err)
		}
		must(s.cli.Txn(ctx).Then(clientv3.OpDelete(key), clientv3.OpPut(s.keys.oldDirRoot()+dir+"/"+name, string(kv.Value))).Commit())(t)
	}
	must(s.cli.Delete(ctx, s.keys.layout()))(t)

	s2 := must(New(ctx, s.cli, strings.TrimSuffix(strings.TrimPrefix(s.keys.prefix, "/wh/"), "/"), testLog(t)))(t)
	if got := must(s2.Lookup(ctx, d.Ino, "a"))(t); got.Ino != a.Ino {
		t.Errorf("lookup d/a after migration: inode %d, want %d", got.Ino, a.Ino)
	}
	if n := len(must(s2.ReadDir(ctx, meta.RootIno, 0, 1000))(t)); n != 151 {
		t.Errorf("root lists %d entries after migration, want 151", n)
	}
	if left := must(s.cli.Get(ctx, s.keys.oldDirRoot(), clientv3.WithPrefix(), clientv3.WithCountOnly()))(t); left.Count != 0 {
		t.Errorf("%d entries left in the first layout", left.Count)
	}
	if v := must(s.cli.Get(ctx, s.keys.layout()))(t); len(v.Kvs) != 1 || string(v.Kvs[0].Value) != layoutVersion {
		t.Errorf("layout record after migration: %v", v.Kvs)
	}
	// A layout this binary does not know is refused, not misread.
	must(s.cli.Put(ctx, s.keys.layout(), "99"))(t)
	if _, err := New(ctx, s.cli, strings.TrimSuffix(strings.TrimPrefix(s.keys.prefix, "/wh/"), "/"), testLog(t)); err == nil || !strings.Contains(err.Error(), "newer wormhole") {
		t.Errorf("unknown layout: %v", err)
	}
}

// must fails the test on an error and returns the value.
func must[T any](v T, err error) func(*testing.T) T {
	return func(t *testing.T) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}
