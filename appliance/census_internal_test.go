package appliance

import (
	"testing"

	"github.com/rs/zerolog"

	"github.com/wormhole-fs/wormhole/chunker/census"
	"github.com/wormhole-fs/wormhole/chunker/chunk"
	"github.com/wormhole-fs/wormhole/etcdmeta"
	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
)

// TestUnreferenced: of the chunks a census could not find on any node,
// those no file refers to any more (replaced while the census listed the
// nodes) are told apart from those still referenced, which are missing.
func TestUnreferenced(t *testing.T) {
	ctx := t.Context()
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	e, err := etcdmeta.StartEmbedded(ctx, etcdmeta.EmbedConfig{Dir: t.TempDir(), UnsafeNoFsync: true}, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Close() })
	ns, err := etcdmeta.New(ctx, e.Client(), "test", log)
	if err != nil {
		t.Fatal(err)
	}
	f, err := ns.Create(ctx, meta.RootIno, "f", meta.CreateArgs{Type: meta.TypeRegular, Mode: 0o644})
	if err != nil {
		t.Fatal(err)
	}
	kept, replaced := chunk.NewID(), chunk.NewID()
	for _, id := range []chunk.ID{replaced, kept} { // kept replaces replaced
		if _, _, err := ns.CommitWrite(ctx, f.Ino, []chunk.Ref{{Index: 0, ID: id, Len: 10}}, nil, 10); err != nil {
			t.Fatal(err)
		}
	}
	n := &Node{ns: ns}
	never := chunk.NewID()
	gone, err := n.unreferenced(ctx, []census.Chunk{{ID: kept, Want: 2}, {ID: replaced, Want: 2}, {ID: never, Want: 1}, {ID: never, Want: 1}})
	if err != nil {
		t.Fatal(err)
	}
	if len(gone) != 2 || !gone[replaced] || !gone[never] || gone[kept] {
		t.Errorf("unreferenced = %v, want the replaced chunk and the one never referenced", gone)
	}
}
