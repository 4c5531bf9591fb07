package etcdmeta

import "testing"

// FirstNamespace names the namespace an etcd holds, or none.
func TestFirstNamespace(t *testing.T) {
	ctx := t.Context()
	e, err := StartEmbedded(ctx, EmbedConfig{Dir: t.TempDir()}, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	cli := e.Client()
	if id, ok, err := FirstNamespace(ctx, cli); err != nil || ok {
		t.Fatalf("empty etcd: %q, %v, %v; want none", id, ok, err)
	}
	for _, want := range []string{"zeta", "alpha"} {
		if _, err := New(ctx, cli, want, testLog(t)); err != nil {
			t.Fatal(err)
		}
		if id, ok, err := FirstNamespace(ctx, cli); err != nil || !ok || id != want {
			t.Fatalf("after creating namespace %s: %q, %v, %v", want, id, ok, err)
		}
	}
}
