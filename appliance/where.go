package appliance

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path"
	"slices"
	"strings"
	"sync"

	"github.com/wormhole-fs/wormhole/chunker/chunk"
	"github.com/wormhole-fs/wormhole/cluster"
	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
)

// Where is what `wormhole where PATH` reports: which nodes hold each
// chunk of a file.
type Where struct {
	Path   string       `json:"path"`
	Ino    uint64       `json:"ino"`
	Size   uint64       `json:"size"`
	Copies int          `json:"copies"`
	Chunks []ChunkWhere `json:"chunks"`
	// Unreachable are nodes that are up but did not answer; their copies
	// are not counted.
	Unreachable []string `json:"unreachable,omitempty"`
}

// ChunkWhere is one chunk of a file: the nodes placement puts it on and
// the nodes that hold a copy.
type ChunkWhere struct {
	Index   uint64   `json:"index"`
	ID      string   `json:"id"`
	Bytes   uint32   `json:"bytes"`
	Targets []string `json:"targets"`
	Holders []string `json:"holders"`
}

// ErrNotClustered means a cluster-only request reached a single node.
var ErrNotClustered = errors.New("this node is a single node, not part of a cluster")

// whereParallel bounds the presence checks in flight.
const whereParallel = 16

// Where finds the nodes holding the chunks of the file at p (a path in
// the namespace, starting at /).
func (n *Node) Where(ctx context.Context, p string) (Where, error) {
	if n.cl == nil {
		return Where{}, fmt.Errorf("%w: every chunk is on this node", ErrNotClustered)
	}
	p = path.Clean("/" + p)
	attr, err := n.resolve(ctx, p)
	if err != nil {
		return Where{}, err
	}
	w := Where{Path: p, Ino: uint64(attr.Ino), Size: attr.Size, Copies: n.cl.replica.Config().Copies}
	if attr.Copies > 0 {
		w.Copies = int(attr.Copies)
	}
	if attr.Type != meta.TypeRegular {
		return w, fmt.Errorf("%s is not a regular file", p)
	}
	refs, err := n.ns.Chunks(ctx, attr.Ino, 0, math.MaxUint64)
	if err != nil {
		return w, err
	}
	var alive []cluster.Node
	for _, m := range n.cl.members.Members() {
		if m.State == cluster.StateAlive {
			alive = append(alive, m)
		}
	}
	w.Chunks = make([]ChunkWhere, len(refs))
	var (
		mu          sync.Mutex
		wg          sync.WaitGroup
		unreachable = map[string]bool{}
		sem         = make(chan struct{}, whereParallel)
	)
	for i, ref := range refs {
		w.Chunks[i] = ChunkWhere{Index: ref.Index, ID: ref.ID.String(), Bytes: ref.Len, Targets: n.cl.replica.Holders(ref.ID, w.Copies)}
		for _, m := range alive {
			wg.Go(func() {
				sem <- struct{}{}
				defer func() { <-sem }()
				has, err := n.holds(ctx, m.ID, ref.ID)
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err != nil:
					unreachable[m.ID] = true
				case has:
					w.Chunks[i].Holders = append(w.Chunks[i].Holders, m.ID)
				}
			})
		}
	}
	wg.Wait()
	for i := range w.Chunks {
		slices.Sort(w.Chunks[i].Holders)
	}
	for id := range unreachable {
		w.Unreachable = append(w.Unreachable, id)
	}
	slices.Sort(w.Unreachable)
	return w, ctx.Err()
}

// holds reports whether node holds a good copy of id.
func (n *Node) holds(ctx context.Context, node string, id chunk.ID) (bool, error) {
	if node == n.cl.st.NodeID {
		_, err := os.Stat(n.store.Path(id))
		if errors.Is(err, os.ErrNotExist) {
			return false, nil
		}
		return err == nil, err
	}
	r, err := n.cl.dialer.Remote(node)
	if err != nil {
		return false, err
	}
	has, err := r.Has(ctx, id)
	if errors.Is(err, chunk.ErrCorrupt) {
		return false, nil
	}
	return has, err
}

// resolve looks up p from the root.
func (n *Node) resolve(ctx context.Context, p string) (meta.Attr, error) {
	attr, err := n.ns.GetAttr(ctx, meta.RootIno)
	if err != nil {
		return attr, err
	}
	for _, name := range strings.Split(strings.Trim(p, "/"), "/") {
		if name == "" {
			continue
		}
		if attr, err = n.ns.Lookup(ctx, attr.Ino, name); err != nil {
			return attr, fmt.Errorf("%s: %w", p, err)
		}
	}
	return attr, nil
}

// SetRedundancy sets the number of copies of the file or directory at p
// and, for a directory, of everything below it; new files created below
// inherit it. It returns how many inodes changed. Chunks written before
// keep the copies they have until they are rewritten.
func (n *Node) SetRedundancy(ctx context.Context, p string, copies int) (int, error) {
	if n.cl == nil {
		return 0, fmt.Errorf("%w: a single node keeps one copy of everything", ErrNotClustered)
	}
	if copies < 1 || copies > meta.MaxCopies {
		return 0, fmt.Errorf("copies %d: want 1 to %d: %w", copies, meta.MaxCopies, meta.ErrInvalid)
	}
	attr, err := n.resolve(ctx, path.Clean("/"+p))
	if err != nil {
		return 0, err
	}
	changed, err := n.ns.SetCopies(ctx, attr.Ino, uint8(copies), true)
	if err != nil {
		return changed, err
	}
	n.log.Info().Str("path", p).Int("copies", copies).Int("changed", changed).Msg("redundancy set")
	return changed, nil
}
