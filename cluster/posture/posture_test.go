package posture

import (
	"strings"
	"testing"

	"github.com/wormhole-fs/wormhole/internal/importcheck"
)

// Facts of each situation: 3 copies declared, 4 nodes known.
var (
	healthyFacts = Facts{NodesUp: 4, NodesKnown: 4, Copies: 3, MetaQuorum: true,
		FreeBytes: 1 << 40}
	favourableFacts = Facts{NodesUp: 3, NodesKnown: 4, Down: []string{"n4"}, Copies: 3,
		ChunksBelow: 12, FreeBytes: 100 << 30, NeededBytes: 3 << 30, MetaQuorum: true}
	mixedNodesFacts = Facts{NodesUp: 2, NodesKnown: 4, Down: []string{"n3", "n4"}, Copies: 3,
		ChunksBelow: 12, FreeBytes: 100 << 30, NeededBytes: 3 << 30, MetaQuorum: true}
	mixedSpaceFacts = Facts{NodesUp: 4, NodesKnown: 4, Copies: 3,
		ChunksBelow: 1, FreeBytes: 40 << 30, NeededBytes: 120 << 30, MetaQuorum: true}
	criticalMissingFacts = Facts{NodesUp: 3, NodesKnown: 4, Down: []string{"n2"}, Copies: 3,
		ChunksBelow: 17, ChunksMissing: 5, FreeBytes: 1 << 40, NeededBytes: 1 << 30, MetaQuorum: true}
	criticalQuorumFacts = Facts{NodesUp: 1, NodesKnown: 3, Down: []string{"n2", "n3"}, Copies: 2}
)

func TestSituationAndPosture(t *testing.T) {
	cases := []struct {
		name string
		f    Facts
		want Situation
	}{
		{"healthy", healthyFacts, Healthy},
		{"healthy with fewer nodes than copies", Facts{NodesUp: 1, NodesKnown: 1, Copies: 2, MetaQuorum: true}, Healthy},
		{"favourable", favourableFacts, Favourable},
		{"favourable, space just enough", Facts{NodesUp: 3, Copies: 3, ChunksBelow: 1, FreeBytes: 10, NeededBytes: 10, MetaQuorum: true}, Favourable},
		{"mixed: too few nodes", mixedNodesFacts, Mixed},
		{"mixed: too little space", mixedSpaceFacts, Mixed},
		{"critical: chunks missing", criticalMissingFacts, Critical},
		{"critical: no metadata quorum", criticalQuorumFacts, Critical},
		{"critical: no quorum though nothing below", Facts{NodesUp: 3, Copies: 3}, Critical},
		{"critical: missing with a partial census", Facts{NodesUp: 3, Copies: 3, ChunksBelow: 2, ChunksMissing: 2, CensusPartial: true, MetaQuorum: true}, Critical},
	}
	for _, c := range cases {
		for _, p := range postures {
			policy := Policy{Favourable: p, Mixed: p, Critical: p}
			got := Assess(policy, c.f)
			if got.Situation != c.want {
				t.Errorf("%s: situation %q, want %q", c.name, got.Situation, c.want)
			}
			want := p
			if c.want == Healthy {
				want = Serve // a healthy cluster always serves
			}
			if got.Posture != want {
				t.Errorf("%s under %q everywhere: posture %q, want %q", c.name, p, got.Posture, want)
			}
			if got.AtRisk == "" || got.Advice == "" {
				t.Errorf("%s: no words: %+v", c.name, got)
			}
		}
	}
}

// Each situation gets its own posture from the policy.
func TestPolicyPicksBySituation(t *testing.T) {
	p := Policy{Favourable: RefuseWrites, Mixed: ReadOnly, Critical: Freeze}
	for f, want := range map[*Facts]Posture{
		&healthyFacts:         Serve,
		&favourableFacts:      RefuseWrites,
		&mixedNodesFacts:      ReadOnly,
		&criticalMissingFacts: Freeze,
	} {
		if got := Assess(p, *f).Posture; got != want {
			t.Errorf("%+v: posture %q, want %q", *f, got, want)
		}
	}
	d := DefaultPolicy()
	if d.Favourable != Serve || d.Mixed != Serve || d.Critical != ReadOnly {
		t.Errorf("default policy %+v", d)
	}
	if err := d.Validate(); err != nil {
		t.Errorf("default policy: %v", err)
	}
}

func TestWords(t *testing.T) {
	cases := []struct {
		name           string
		f              Facts
		atRisk, advice string
	}{
		{"healthy", healthyFacts,
			"nothing: every chunk has its target copies",
			"nothing to do"},
		{"healthy, one node of two copies", Facts{NodesUp: 1, NodesKnown: 1, Copies: 2, MetaQuorum: true},
			"no chunk is below target, but new data cannot get 2 copies with only 1 node up",
			"add a node"},
		{"favourable", favourableFacts,
			"12 chunks are below their target of 3 copies but each still has a live copy",
			"nothing to do: repair is restoring the copies; bringing n4 back would speed it up"},
		{"mixed: nodes", mixedNodesFacts,
			"12 chunks are below their target of 3 copies and cannot all be restored: 3 copies need 3 nodes, with only 2 of 4 nodes up",
			"bring n3 and n4 back or add a node"},
		{"mixed: space", mixedSpaceFacts,
			"1 chunk is below its target of 3 copies and cannot be restored: restoring needs about 120 GiB but only 40 GiB free",
			"free space or add a node"},
		{"mixed: both", Facts{NodesUp: 1, NodesKnown: 2, Down: []string{"n2"}, Copies: 2, ChunksBelow: 3, FreeBytes: 1536, NeededBytes: 3 << 20, MetaQuorum: true},
			"3 chunks are below their target of 2 copies and cannot all be restored: 2 copies need 2 nodes, with only 1 of 2 nodes up; restoring needs about 3 MiB but only 1.5 KiB free",
			"bring n2 back, add a node or free space"},
		{"critical: missing", criticalMissingFacts,
			"5 chunks have no live copy: reads of their data fail with an I/O error, and 12 more are below their target of 3 copies",
			"bring n2 back: the lost copies may be there"},
		{"critical: missing, nobody down", Facts{NodesUp: 3, NodesKnown: 3, Copies: 3, ChunksBelow: 1, ChunksMissing: 1, MetaQuorum: true},
			"1 chunk has no live copy: reads of its data fail with an I/O error",
			"no node holds it: restore the affected files from a backup"},
		{"critical: missing, partial census", Facts{NodesUp: 3, NodesKnown: 3, Copies: 3, ChunksBelow: 2, ChunksMissing: 2, CensusPartial: true, MetaQuorum: true},
			"2 chunks have no live copy: reads of their data fail with an I/O error (some node did not answer the census: the counts are upper bounds)",
			"find out why some node did not answer the census"},
		{"critical: quorum", criticalQuorumFacts,
			"the whole namespace: the metadata store has lost its quorum, so no file can be looked up or changed",
			"bring metadata nodes back until a majority of them is up"},
		{"critical: quorum and missing", Facts{NodesUp: 2, NodesKnown: 6, Down: []string{"n1", "n2", "n3", "n4", "n5"}, Copies: 2, ChunksBelow: 4, ChunksMissing: 4},
			"the whole namespace: the metadata store has lost its quorum, so no file can be looked up or changed; 4 chunks have no live copy: reads of their data fail with an I/O error",
			"bring metadata nodes back until a majority of them is up; bring n1, n2, n3 and 2 more back: the lost copies may be there"},
	}
	for _, c := range cases {
		got := Assess(DefaultPolicy(), c.f)
		if got.AtRisk != c.atRisk {
			t.Errorf("%s: at risk\n got %q\nwant %q", c.name, got.AtRisk, c.atRisk)
		}
		if got.Advice != c.advice {
			t.Errorf("%s: advice\n got %q\nwant %q", c.name, got.Advice, c.advice)
		}
	}
}

func TestAllows(t *testing.T) {
	cases := []struct {
		p                   Posture
		read, write, remove bool
	}{
		{Serve, true, true, true},
		{RefuseWrites, true, false, true},
		{ReadOnly, true, false, false},
		{Freeze, false, false, false},
		{"", true, false, false}, // unknown: reads only
	}
	for _, c := range cases {
		for op, want := range map[Op]bool{Read: c.read, Write: c.write, Remove: c.remove} {
			if got := c.p.Allows(op); got != want {
				t.Errorf("%q.Allows(%d) = %v, want %v", c.p, op, got, want)
			}
		}
		if c.p.Meaning() == "" {
			t.Errorf("%q has no meaning", c.p)
		}
	}
}

func TestParsePosture(t *testing.T) {
	for _, p := range postures {
		got, err := ParsePosture(string(p))
		if err != nil || got != p {
			t.Errorf("ParsePosture(%q) = %q, %v", p, got, err)
		}
	}
	for _, s := range []string{"", "Serve", "readonly", "read_only", "frozen", " serve"} {
		if _, err := ParsePosture(s); err == nil {
			t.Errorf("ParsePosture(%q) accepted", s)
		}
	}
	bad := DefaultPolicy()
	bad.Mixed = "relax"
	if err := bad.Validate(); err == nil || !strings.Contains(err.Error(), "mixed") {
		t.Errorf("Validate of a bad mixed posture: %v", err)
	}
}

func TestBytesText(t *testing.T) {
	for n, want := range map[uint64]string{
		0: "0 B", 1023: "1023 B", 1024: "1 KiB", 1536: "1.5 KiB", 10239: "10 KiB",
		40 << 30: "40 GiB", 1<<40 + 1<<39: "1.5 TiB", 1<<64 - 1: "16 EiB",
	} {
		if got := bytesText(n); got != want {
			t.Errorf("bytesText(%d) = %q, want %q", n, got, want)
		}
	}
}

// TestImportsStandardLibraryOnly keeps posture pure: no Wormhole package,
// nothing outside the standard library.
func TestImportsStandardLibraryOnly(t *testing.T) { importcheck.Check(t, importcheck.StandardLibrary) }
