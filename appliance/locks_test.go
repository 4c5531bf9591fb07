package appliance

import (
	"context"
	"testing"

	"github.com/rs/zerolog"

	"github.com/wormhole-fs/wormhole/etcdmeta"
	"github.com/wormhole-fs/wormhole/nfsfront"
)

// TestEtcdLocksAcrossNodes: two nodes' lock tables over one etcd grant and
// refuse the same locks, and releasing a client frees its locks for all.
func TestEtcdLocksAcrossNodes(t *testing.T) {
	ctx := context.Background()
	e, err := etcdmeta.StartEmbedded(ctx, etcdmeta.EmbedConfig{Dir: t.TempDir()}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	var tables [2]etcdLocks
	for i := range tables {
		ns, err := etcdmeta.New(ctx, e.Client(), "locks", zerolog.Nop())
		if err != nil {
			t.Fatal(err)
		}
		tables[i] = etcdLocks{ns}
	}
	a := nfsfront.LockOwner{Host: "10.0.0.1", Caller: "a", Svid: 1}
	b := nfsfront.LockOwner{Host: "10.0.0.2", Caller: "b", Svid: 7}
	lock := func(o nfsfront.LockOwner, excl bool, start, end uint64) nfsfront.Lock {
		return nfsfront.Lock{Owner: o, Exclusive: excl, Start: start, End: end}
	}
	const file = 42
	if c, err := tables[0].Lock(ctx, file, lock(a, true, 0, 99)); err != nil || c != nil {
		t.Fatalf("a locks [0,99] on node 0: conflict %v, %v", c, err)
	}
	if c, err := tables[1].Lock(ctx, file, lock(b, false, 50, 60)); err != nil || c == nil || c.Owner != a {
		t.Fatalf("b locks [50,60] on node 1 over a's lock: conflict %v, %v", c, err)
	}
	if c, err := tables[1].Lock(ctx, file, lock(b, true, 100, nfsfront.ToEOF)); err != nil || c != nil {
		t.Fatalf("b locks past a's range: conflict %v, %v", c, err)
	}
	if c, err := tables[0].Test(ctx, file, lock(a, true, 200, 300)); err != nil || c == nil || c.Owner != b {
		t.Fatalf("a tests b's range on node 0: conflict %v, %v", c, err)
	}
	// a unlocks part of its range: b may take that part, not the rest.
	if err := tables[0].Unlock(ctx, file, lock(a, false, 50, 60)); err != nil {
		t.Fatal(err)
	}
	if c, err := tables[1].Lock(ctx, file, lock(b, true, 50, 60)); err != nil || c != nil {
		t.Fatalf("b locks the range a released: conflict %v, %v", c, err)
	}
	if c, _ := tables[1].Test(ctx, file, lock(b, true, 40, 40)); c == nil {
		t.Fatal("a's remaining range [0,49] is not held any more")
	}
	// a's client reboots (SM_NOTIFY): all its locks go, on every node.
	if err := tables[1].ReleaseClient(ctx, nfsfront.ClientID{Host: "10.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	if c, err := tables[1].Lock(ctx, file, lock(b, true, 0, 49)); err != nil || c != nil {
		t.Fatalf("after a's release, b locks [0,49]: conflict %v, %v", c, err)
	}
	// Releasing b empties the record.
	if err := tables[0].ReleaseClient(ctx, nfsfront.ClientID{Caller: "b"}); err != nil {
		t.Fatal(err)
	}
	if files, err := tables[0].ns.LockedFiles(ctx); err != nil || len(files) != 0 {
		t.Fatalf("files with locks after releasing everyone: %v, %v", files, err)
	}
}
