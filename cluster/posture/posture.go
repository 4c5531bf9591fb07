// Package posture decides how a Wormhole cluster serves clients when its
// data is not where the policy wants it. It is pure logic: Assess turns a
// few facts about the cluster (nodes up, the chunk census, free space,
// metadata quorum) into a Situation, the Posture the owner declared for
// it, and plain words saying what is at risk and what to do. It performs
// no I/O, starts nothing and keeps no state, so callers may run it as
// often as they gather facts; a posture lifts by itself as soon as an
// assessment of better facts says so.
//
// # Situations
//
//   - Healthy: no chunk is below its target copies. Always served.
//   - Favourable: some chunks are below target, none has lost its last
//     copy, and there are enough nodes up and enough free space to
//     restore every target: repair will get there on its own.
//   - Mixed: no chunk has lost its last copy, but repair cannot restore
//     every target: fewer nodes are up than the declared copies, or the
//     free space is less than restoring needs.
//   - Critical: some chunk has no live copy (its data is unreadable), or
//     the metadata store has lost its quorum.
//
// # Postures
//
//   - Serve: every operation runs.
//   - RefuseWrites: reads run, and so do removals (REMOVE, RMDIR), which
//     only free space: the owner told to "free space" can. Everything else
//     that changes data or the namespace is refused.
//   - ReadOnly: reads run; every change is refused.
//   - Freeze: nothing runs (clients are told to retry later).
//
// Whatever the posture, a read of data that has no live copy fails with
// an I/O error and never returns other bytes: that is the data path's
// rule, not a posture.
//
// # Imports
//
// posture imports nothing but the standard library. The NFS front
// declares its own Gate interface; the composition root implements it
// with the current Posture and Posture.Allows.
package posture

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Situation is the state of the cluster's redundancy, as Assess judges it.
type Situation string

// The situations, from best to worst.
const (
	Healthy    Situation = "healthy"
	Favourable Situation = "favourable"
	Mixed      Situation = "mixed"
	Critical   Situation = "critical"
)

// Posture is how the cluster serves clients in a situation.
type Posture string

// The postures, from most to least permissive. The strings are the
// configuration values.
const (
	Serve        Posture = "serve"
	RefuseWrites Posture = "refuse-writes"
	ReadOnly     Posture = "read-only"
	Freeze       Posture = "freeze"
)

// postures lists the valid postures in order of permissiveness.
var postures = []Posture{Serve, RefuseWrites, ReadOnly, Freeze}

// ParsePosture returns the posture named s (exactly one of "serve",
// "refuse-writes", "read-only", "freeze").
func ParsePosture(s string) (Posture, error) {
	p := Posture(s)
	if !slices.Contains(postures, p) {
		return "", fmt.Errorf("posture %q: want one of serve, refuse-writes, read-only, freeze", s)
	}
	return p, nil
}

// Op is a kind of client operation, as far as postures tell them apart.
type Op int

const (
	// Read looks at data or the namespace and changes nothing.
	Read Op = iota
	// Write adds or changes data or the namespace.
	Write
	// Remove removes a name (REMOVE, RMDIR): it changes the namespace but
	// only frees space.
	Remove
)

// Allows reports whether p lets an operation of kind op run. An unknown
// posture (such as the zero value) allows reads only: it fails safe
// without cutting clients off.
func (p Posture) Allows(op Op) bool {
	switch p {
	case Serve:
		return true
	case RefuseWrites:
		return op == Read || op == Remove
	case Freeze:
		return false
	}
	return op == Read
}

// Meaning says in plain words what p does to clients.
func (p Posture) Meaning() string {
	switch p {
	case Serve:
		return "every operation is served"
	case RefuseWrites:
		return "reads and deletions are served; other changes are refused as on a read-only filesystem"
	case ReadOnly:
		return "reads are served; every change is refused as on a read-only filesystem"
	case Freeze:
		return "nothing is served; clients wait and retry until the posture lifts"
	}
	return "unknown posture: reads only"
}

// Policy is the posture the owner declares for each situation short of
// healthy (a healthy cluster always serves).
type Policy struct {
	Favourable Posture
	Mixed      Posture
	Critical   Posture
}

// DefaultPolicy returns serve, serve, read-only:
//
//   - Favourable: serve. Repair restores every target by itself; refusing
//     anything would turn a routine node loss into an outage.
//   - Mixed: serve. Every chunk still has a live copy, so every read is
//     right; the shortfall is nodes or space, which the owner fixes while
//     clients keep working (new data may be stored with fewer copies, and
//     a full disk refuses writes with NOSPC anyway). Owners who would
//     rather stop new data than store it under target choose
//     refuse-writes.
//   - Critical: read-only. Some data is unreadable, or the namespace has
//     no quorum: changes then either fail anyway or build on data that
//     cannot be read (a partial overwrite of a lost chunk, say), while
//     reads of everything intact stay correct and let people copy it off.
//     Freeze would throw that away.
func DefaultPolicy() Policy {
	return Policy{Favourable: Serve, Mixed: Serve, Critical: ReadOnly}
}

// Validate reports a posture that is not one of the four.
func (p Policy) Validate() error {
	for _, c := range []struct {
		name string
		p    Posture
	}{{"favourable", p.Favourable}, {"mixed", p.Mixed}, {"critical", p.Critical}} {
		if _, err := ParsePosture(string(c.p)); err != nil {
			return fmt.Errorf("posture for the %s situation: %w", c.name, err)
		}
	}
	return nil
}

// For returns the posture p declares for s. Healthy (and any unknown
// situation) serves.
func (p Policy) For(s Situation) Posture {
	switch s {
	case Favourable:
		return p.Favourable
	case Mixed:
		return p.Mixed
	case Critical:
		return p.Critical
	}
	return Serve
}

// Facts are what Assess needs to know about the cluster.
type Facts struct {
	// NodesUp are the nodes alive now, NodesKnown all the cluster's
	// members (alive or not).
	NodesUp, NodesKnown int
	// Down names the known nodes that are not up, for the advice ("bring
	// n3 back"). Optional; in the order to print them.
	Down []string
	// Copies is the declared default number of copies of each chunk.
	Copies int
	// ChunksBelow counts the chunks with fewer live copies than their
	// target, ChunksMissing those with none at all (they are counted in
	// ChunksBelow too, as census.Counts does).
	ChunksBelow, ChunksMissing int
	// CensusPartial says some node did not answer the census: copies on
	// it were not seen, so ChunksBelow and ChunksMissing are upper bounds.
	CensusPartial bool
	// FreeBytes is the free space on the nodes up; NeededBytes an
	// estimate of the bytes that restoring every target would write.
	FreeBytes, NeededBytes uint64
	// MetaQuorum says the metadata store (etcd) answers.
	MetaQuorum bool
}

// Assessment is the verdict on a set of Facts under a Policy.
type Assessment struct {
	Situation Situation
	Posture   Posture // the posture in force
	// AtRisk says in plain words what is at risk, Advice what to do about
	// it. Both are full phrases without a final period.
	AtRisk string
	Advice string
}

// Assess judges f and applies p. Critical wins over everything: missing
// chunks or a lost metadata quorum. Otherwise, nothing below target is
// healthy; below target but restorable (enough nodes up for the declared
// copies and enough free space) is favourable; the rest is mixed.
//
// A partial census still counts: chunks whose only copies sit on a node
// that did not answer are taken as missing, since the cluster cannot show
// they are readable. The words say that the counts are upper bounds.
func Assess(p Policy, f Facts) Assessment {
	s := situationOf(f)
	a := Assessment{Situation: s, Posture: p.For(s)}
	switch s {
	case Healthy:
		a.AtRisk, a.Advice = healthyWords(f)
	case Favourable:
		a.AtRisk = fmt.Sprintf("%s below %s but %s a live copy", count(f.ChunksBelow, "chunk is", "chunks are"),
			target(f, f.ChunksBelow), pick(f.ChunksBelow, "still has", "each still has"))
		a.Advice = "nothing to do: repair is restoring the copies"
		if len(f.Down) > 0 {
			a.Advice += "; bringing " + names(f.Down) + " back would speed it up"
		}
	case Mixed:
		a.AtRisk, a.Advice = mixedWords(f)
	case Critical:
		a.AtRisk, a.Advice = criticalWords(f)
	}
	if f.CensusPartial && s != Healthy && f.ChunksBelow > 0 {
		a.AtRisk += " (some node did not answer the census: the counts are upper bounds)"
	}
	return a
}

func situationOf(f Facts) Situation {
	switch {
	case f.ChunksMissing > 0 || !f.MetaQuorum:
		return Critical
	case f.ChunksBelow <= 0:
		return Healthy
	case shortOfNodes(f) || shortOfSpace(f):
		return Mixed
	}
	return Favourable
}

func shortOfNodes(f Facts) bool { return f.NodesUp < f.Copies }
func shortOfSpace(f Facts) bool { return f.FreeBytes < f.NeededBytes }

func healthyWords(f Facts) (atRisk, advice string) {
	if shortOfNodes(f) {
		atRisk = fmt.Sprintf("no chunk is below target, but new data cannot get %s with %s",
			count(f.Copies, "copy", "copies"), nodesUp(f))
		return atRisk, actions(nodeActions(f))
	}
	return "nothing: every chunk has its target copies", "nothing to do"
}

func mixedWords(f Facts) (atRisk, advice string) {
	var why, do []string
	if shortOfNodes(f) {
		why = append(why, fmt.Sprintf("%s need %s, with %s", count(f.Copies, "copy", "copies"),
			count(f.Copies, "node", "nodes"), nodesUp(f)))
		do = append(do, nodeActions(f)...)
	}
	if shortOfSpace(f) {
		why = append(why, fmt.Sprintf("restoring needs about %s but only %s free",
			bytesText(f.NeededBytes), bytesText(f.FreeBytes)))
		do = append(do, "free space", "add a node")
	}
	atRisk = fmt.Sprintf("%s below %s and %s: %s", count(f.ChunksBelow, "chunk is", "chunks are"),
		target(f, f.ChunksBelow), pick(f.ChunksBelow, "cannot be restored", "cannot all be restored"), strings.Join(why, "; "))
	return atRisk, actions(do)
}

func criticalWords(f Facts) (atRisk, advice string) {
	var risk, do []string
	if !f.MetaQuorum {
		risk = append(risk, "the whole namespace: the metadata store has lost its quorum, so no file can be looked up or changed")
		do = append(do, "bring metadata nodes back until a majority of them is up")
	}
	if f.ChunksMissing > 0 {
		r := fmt.Sprintf("%s no live copy: reads of %s data fail with an I/O error",
			count(f.ChunksMissing, "chunk has", "chunks have"), pick(f.ChunksMissing, "its", "their"))
		if rest := f.ChunksBelow - f.ChunksMissing; rest > 0 {
			r += fmt.Sprintf(", and %s below %s", count(rest, "more is", "more are"), target(f, rest))
		}
		risk = append(risk, r)
		switch {
		case len(f.Down) > 0:
			do = append(do, "bring "+names(f.Down)+" back: the lost copies may be there")
		case f.CensusPartial:
			do = append(do, "find out why some node did not answer the census")
		default:
			do = append(do, "no node holds "+pick(f.ChunksMissing, "it", "them")+": restore the affected files from a backup")
		}
	}
	return strings.Join(risk, "; "), strings.Join(do, "; ") // each is needed
}

// nodeActions is what to do when fewer nodes are up than copies.
func nodeActions(f Facts) []string {
	if len(f.Down) > 0 {
		return []string{"bring " + names(f.Down) + " back", "add a node"}
	}
	return []string{"add a node"}
}

// actions joins distinct actions: "a", "a or b", "a, b or c".
func actions(do []string) string {
	var uniq []string
	for _, d := range do {
		if !slices.Contains(uniq, d) {
			uniq = append(uniq, d)
		}
	}
	return list(uniq, "or")
}

// list joins words with commas and a final conjunction.
func list(words []string, conj string) string {
	switch len(words) {
	case 0:
		return ""
	case 1:
		return words[0]
	}
	return strings.Join(words[:len(words)-1], ", ") + " " + conj + " " + words[len(words)-1]
}

// maxNames is how many node names the words list before "and N more".
const maxNames = 3

// names lists node names: "n3", "n3 and n4", "n3, n4, n5 and 2 more".
func names(ns []string) string {
	if len(ns) > maxNames {
		return strings.Join(ns[:maxNames], ", ") + " and " + strconv.Itoa(len(ns)-maxNames) + " more"
	}
	return list(ns, "and")
}

// count is "1 chunk is" or "12 chunks are".
func count(n int, one, many string) string {
	return strconv.Itoa(n) + " " + pick(n, one, many)
}

// pick is one when n is 1, else many.
func pick(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// target is "their target of 3 copies" ("its" for n 1), or "their target
// copies" when the declared number is unknown.
func target(f Facts, n int) string {
	t := pick(n, "its target", "their target")
	if f.Copies <= 0 {
		return t + " copies"
	}
	return t + " of " + count(f.Copies, "copy", "copies")
}

// nodesUp is "only 2 of 4 nodes up", or "only 2 nodes up" when no
// other node is known.
func nodesUp(f Facts) string {
	if f.NodesKnown > f.NodesUp {
		return fmt.Sprintf("only %d of %d nodes up", f.NodesUp, f.NodesKnown)
	}
	return "only " + count(f.NodesUp, "node", "nodes") + " up"
}

// bytesText is a byte count for people: "512 B", "1.5 GiB", "40 GiB".
func bytesText(n uint64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatUint(n, 10) + " B"
	}
	v, i := float64(n), -1
	for v >= unit && i < 5 {
		v /= unit
		i++
	}
	s := strconv.FormatFloat(v, 'f', 0, 64)
	if v < 10 {
		s = strings.TrimSuffix(strconv.FormatFloat(v, 'f', 1, 64), ".0")
	}
	return s + " " + []string{"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}[i]
}
