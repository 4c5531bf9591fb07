package etcdmeta

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/wormhole-fs/wormhole/chunker/chunk"
	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
)

// maxNlink is the most links an inode (or subdirectories a directory) may
// have.
const maxNlink = math.MaxUint32 - 1

// Store is the namespace kept in etcd. It implements meta.Store; it is safe
// for concurrent use and holds no goroutines, so it needs no Close (the
// client belongs to the caller).
type Store struct {
	cli *clientv3.Client
	// kv is what every namespace read and write goes through: cli's KV,
	// a cachedKV over it (see WithExclusiveCache), or on a cluster a
	// floorKV that raises floor.
	kv    clientv3.KV
	floor *atomic.Int64 // the newest revision an answer carried; nil but on a cluster
	cache *attrCache    // nil without WithExclusiveCache
	// cacheEntries and soleMember are the options that shape kv
	// (WithExclusiveCache, WithSoleMember).
	cacheEntries int
	soleMember   bool
	keys         keys
	alloc        *allocator
	// creates and unlinks queue concurrent changes per directory
	// (dirbatch.go).
	creates dirQueues[createReq]
	unlinks dirQueues[unlinkReq]
	log     zerolog.Logger
	now     func() time.Time
}

var _ meta.Store = (*Store)(nil)

// New returns the Store of cluster clusterID over cli, creating the root
// directory (inode 1, mode 0755, owner 0:0) if the namespace is new.
// clusterID must be non-empty and contain no '/'.
func New(ctx context.Context, cli *clientv3.Client, clusterID string, log zerolog.Logger, opts ...Option) (*Store, error) {
	if clusterID == "" {
		return nil, fmt.Errorf("etcdmeta: empty cluster id: %w", meta.ErrInvalid)
	}
	for i := 0; i < len(clusterID); i++ {
		if clusterID[i] == '/' || clusterID[i] == 0 {
			return nil, fmt.Errorf("etcdmeta: cluster id %q: %w", clusterID, meta.ErrInvalid)
		}
	}
	k := newKeys(clusterID)
	s := &Store{
		cli:   cli,
		kv:    cli.KV,
		keys:  k,
		alloc: &allocator{cli: cli, key: k.nextIno()},
		log:   log,
		now:   time.Now,
	}
	for _, o := range opts {
		o(s)
	}
	// Serializable reads go under the cache, which tells current reads by
	// their options.
	if s.soleMember {
		s.kv = localReadKV{KV: s.kv}
	}
	if s.cacheEntries > 0 {
		s.cache = newAttrCache(s.cacheEntries, k.inoPrefix(), k.prefix+"ent/", k.chunkRoot())
		s.kv = &cachedKV{KV: s.kv, c: s.cache}
	}
	if !s.soleMember && s.cache == nil {
		s.floor = new(atomic.Int64)
		s.kv = floorKV{KV: s.kv, floor: s.floor}
	}
	if err := s.bootstrap(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// bootstrap creates the root directory if it is missing.
func (s *Store) bootstrap(ctx context.Context) error {
	now := s.now().UnixNano()
	root := meta.Attr{
		Ino: meta.RootIno, Type: meta.TypeDir, Mode: 0o755, Nlink: 2,
		Atime: now, Mtime: now, Ctime: now, Gen: 1, Parent: meta.RootIno,
	}
	k := s.keys.ino(meta.RootIno)
	resp, err := s.kv.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(k), "=", 0)).
		Then(clientv3.OpPut(k, string(encodeInode(root))), clientv3.OpPut(s.keys.layout(), layoutVersion)).
		Commit()
	if err != nil {
		return etcdErr("bootstrap root directory", err)
	}
	if resp.Succeeded {
		s.log.Info().Str("prefix", s.keys.prefix).Msg("created root directory of a new namespace")
		return nil
	}
	return s.migrateEntries(ctx)
}

// ErrChunkSizeMismatch means a namespace was created with another chunk
// size than the one configured. Chunk maps index file bytes by chunk size,
// so reading with another size would return wrong bytes.
var ErrChunkSizeMismatch = errors.New("chunk size differs from the namespace's")

// ChunkSize returns the chunk size the namespace was created with,
// recording want on first use. A namespace created with another size
// gives an error wrapping ErrChunkSizeMismatch that names both.
func (s *Store) ChunkSize(ctx context.Context, want uint64) (uint64, error) {
	k := s.keys.chunkSize()
	v := strconv.FormatUint(want, 10)
	resp, err := s.kv.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(k), "=", 0)).
		Then(clientv3.OpPut(k, v)).
		Else(clientv3.OpGet(k)).
		Commit()
	if err != nil {
		return 0, etcdErr("chunk size", err)
	}
	if resp.Succeeded {
		return want, nil
	}
	kvs := resp.Responses[0].GetResponseRange().GetKvs()
	if len(kvs) != 1 {
		return 0, fmt.Errorf("chunk size record: %w", errMalformed)
	}
	have, err := strconv.ParseUint(string(kvs[0].Value), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("chunk size record %q: %w", kvs[0].Value, errMalformed)
	}
	if have != want {
		return have, fmt.Errorf("configured %d bytes, but this namespace was created with %d: %w", want, have, ErrChunkSizeMismatch)
	}
	return have, nil
}

func (s *Store) nowNs() int64 { return s.now().UnixNano() }

// dirAttr loads dir and checks that it is a directory.
func (t *tx) dirAttr(ctx context.Context, dir meta.Ino) (*meta.Attr, error) {
	a, ok, err := t.inode(ctx, dir)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("directory %d: %w", dir, meta.ErrNotFound)
	}
	if a.Type != meta.TypeDir {
		return nil, fmt.Errorf("inode %d: %w", dir, meta.ErrNotDir)
	}
	return a, nil
}

// GetAttr returns the attributes of ino, or an error wrapping
// meta.ErrNotFound if it does not exist (callers that hold a handle treat
// that as stale).
func (s *Store) GetAttr(ctx context.Context, ino meta.Ino) (meta.Attr, error) {
	k := s.keys.ino(ino)
	if s.cache != nil {
		// A single node's cache answers without an etcd request built.
		if es, _, ok := s.cache.find([]string{k}, 0); ok {
			return attrOf(ino, es[0].val)
		}
	}
	resp, err := s.kv.Get(ctx, k)
	if err != nil {
		return meta.Attr{}, etcdErr(fmt.Sprintf("getattr %d", ino), err)
	}
	var val []byte
	if len(resp.Kvs) > 0 {
		val = resp.Kvs[0].Value
	}
	return attrOf(ino, val)
}

// attrOf decodes the inode record val of ino for GetAttr; nil: there is
// none.
func attrOf(ino meta.Ino, val []byte) (meta.Attr, error) {
	if val == nil {
		return meta.Attr{}, fmt.Errorf("getattr %d: %w", ino, meta.ErrNotFound)
	}
	a, err := decodeInode(ino, val)
	if err != nil {
		return meta.Attr{}, fmt.Errorf("getattr %d: %w", ino, err)
	}
	return a, nil
}

// GetAttrs returns the attributes of each of inos in order, a zero Attr
// for a missing one. Each batch of up to getAttrsBatch inodes is one etcd
// transaction of point reads: one round trip at one revision.
func (s *Store) GetAttrs(ctx context.Context, inos []meta.Ino) ([]meta.Attr, error) {
	out := make([]meta.Attr, 0, len(inos))
	for len(inos) > 0 {
		batch := inos[:min(len(inos), getAttrsBatch)]
		inos = inos[len(batch):]
		ops := make([]clientv3.Op, len(batch))
		for i, ino := range batch {
			ops[i] = clientv3.OpGet(s.keys.ino(ino))
		}
		resp, err := s.kv.Txn(ctx).Then(ops...).Commit()
		if err != nil {
			return nil, etcdErr(fmt.Sprintf("getattrs of %d inodes", len(batch)), err)
		}
		for i, r := range resp.Responses {
			kvs := r.GetResponseRange().GetKvs()
			if len(kvs) == 0 {
				out = append(out, meta.Attr{})
				continue
			}
			a, err := decodeInode(batch[i], kvs[0].Value)
			if err != nil {
				return nil, fmt.Errorf("getattrs %d: %w", batch[i], err)
			}
			out = append(out, a)
		}
	}
	return out, nil
}

// getAttrsBatch bounds one GetAttrs transaction, well under the smallest
// max-txn-ops an external etcd is likely to run with (128).
const getAttrsBatch = 100

// Lookup resolves name in directory dir. Besides real names it resolves
// "." to dir and ".." to dir's parent (the root is its own parent).
func (s *Store) Lookup(ctx context.Context, dir meta.Ino, name string) (meta.Attr, error) {
	op := fmt.Sprintf("lookup %q in %d", name, dir)
	if name != "." && name != ".." {
		if err := validName(name); err != nil {
			return meta.Attr{}, fmt.Errorf("%s: %w", op, err)
		}
	}
	var out meta.Attr
	err := s.run(ctx, op, func(t *tx) error {
		var err error
		out, err = t.lookup(ctx, dir, name)
		return err
	})
	return out, err
}

func (t *tx) lookup(ctx context.Context, dir meta.Ino, name string) (meta.Attr, error) {
	if name != "." && name != ".." {
		if err := t.load(ctx, t.s.keys.ino(dir), t.s.keys.dentry(dir, name)); err != nil {
			return meta.Attr{}, err
		}
	}
	d, err := t.dirAttr(ctx, dir)
	if err != nil {
		return meta.Attr{}, err
	}
	var child meta.Ino
	switch name {
	case ".":
		return *d, nil
	case "..":
		child = d.Parent
	default:
		e, ok, err := t.dentry(ctx, dir, name)
		if err != nil {
			return meta.Attr{}, err
		}
		if !ok {
			return meta.Attr{}, meta.ErrNotFound
		}
		child = e.Ino
	}
	a, ok, err := t.inode(ctx, child)
	if err != nil {
		return meta.Attr{}, err
	}
	if !ok {
		// Entries and inodes change together, and all reads are at one
		// revision: a dangling entry is corruption.
		return meta.Attr{}, fmt.Errorf("entry points to missing inode %d: %w", child, errMalformed)
	}
	return *a, nil
}

// Create makes a regular file, directory or symlink named name in dir. The
// new inode's times are now, its Parent is dir and its Copies is dir's
// (read in the same transaction, so a concurrent SetCopies of dir either
// precedes the create or sees the new inode). A directory starts with
// nlink 2 and raises dir's nlink by one.
func (s *Store) Create(ctx context.Context, dir meta.Ino, name string, args meta.CreateArgs) (meta.Attr, error) {
	op := fmt.Sprintf("create %q in %d", name, dir)
	if err := validName(name); err != nil {
		return meta.Attr{}, fmt.Errorf("%s: %w", op, err)
	}
	if err := validCreate(args); err != nil {
		return meta.Attr{}, fmt.Errorf("%s: %w", op, err)
	}
	ino, gen, err := s.alloc.alloc(ctx)
	if err != nil {
		return meta.Attr{}, fmt.Errorf("%s: %w", op, err)
	}
	r := &createReq{name: name, args: args, ino: ino, gen: gen}
	err = s.creates.do(ctx, dir, r, func(ctx context.Context, batch []*createReq) error {
		return s.createBatch(ctx, dir, batch)
	})
	if err == nil {
		err = r.err
	}
	if err != nil {
		return meta.Attr{}, wrapOnce(op, err)
	}
	return r.out, nil
}

// wrapOnce adds op to err unless err names it already (the transaction
// of a request committed alone does).
func wrapOnce(op string, err error) error {
	if strings.HasPrefix(err.Error(), op+": ") {
		return err
	}
	return fmt.Errorf("%s: %w", op, err)
}

func validCreate(args meta.CreateArgs) error {
	if args.Mode&^0o7777 != 0 {
		return fmt.Errorf("mode %o has bits outside 07777: %w", args.Mode, meta.ErrInvalid)
	}
	switch args.Type {
	case meta.TypeRegular, meta.TypeDir:
		if args.Target != "" {
			return fmt.Errorf("symlink target for a %v: %w", args.Type, meta.ErrInvalid)
		}
	case meta.TypeSymlink:
		if args.Target == "" {
			return fmt.Errorf("empty symlink target: %w", meta.ErrInvalid)
		}
		if len(args.Target) > meta.MaxSymlinkLen {
			return fmt.Errorf("symlink target of %d bytes: %w", len(args.Target), meta.ErrNameTooLong)
		}
	default:
		return fmt.Errorf("type %d: %w", args.Type, meta.ErrInvalid)
	}
	return nil
}

// Link adds the name name in dir for the non-directory ino, raising its
// nlink. An inode's Parent stays the directory it was created in (or last
// renamed into): for files and symlinks it is informational only, and may
// name a directory that no longer holds a link to it. For directories,
// which cannot be hard-linked, Parent is always exact.
func (s *Store) Link(ctx context.Context, ino meta.Ino, dir meta.Ino, name string) (meta.Attr, error) {
	op := fmt.Sprintf("link %d as %q in %d", ino, name, dir)
	if err := validName(name); err != nil {
		return meta.Attr{}, fmt.Errorf("%s: %w", op, err)
	}
	var out meta.Attr
	err := s.runWrite(ctx, op, func(t *tx) error {
		if err := t.load(ctx, s.keys.ino(ino), s.keys.ino(dir), s.keys.dentry(dir, name)); err != nil {
			return err
		}
		a, ok, err := t.inode(ctx, ino)
		if err != nil {
			return err
		}
		if !ok {
			return meta.ErrNotFound
		}
		if a.Type == meta.TypeDir {
			return meta.ErrIsDir
		}
		d, err := t.dirAttr(ctx, dir)
		if err != nil {
			return err
		}
		if _, exists, err := t.dentry(ctx, dir, name); err != nil {
			return err
		} else if exists {
			return meta.ErrExists
		}
		if a.Nlink >= maxNlink {
			return meta.ErrTooManyLink
		}
		now := s.nowNs()
		a.Nlink++
		a.Ctime = now
		d.Mtime, d.Ctime = now, now
		t.put(a)
		t.put(d)
		t.then(clientv3.OpPut(s.keys.dentry(dir, name), string(encodeDentry(dentry{Ino: ino, Type: a.Type}))))
		out = *a
		return nil
	})
	return out, err
}

// dropLink removes one link of the non-directory a inside t: it lowers
// nlink, or deletes the inode and its chunk map when it was the last link
// and returns the chunk references that were freed.
func (t *tx) dropLink(ctx context.Context, a *meta.Attr, now int64) (meta.Freed, error) {
	if a.Nlink > 1 {
		a.Nlink--
		a.Ctime = now
		t.put(a)
		return nil, nil
	}
	refs, err := t.chunkRefs(ctx, a.Ino, 0, math.MaxUint64)
	if err != nil {
		return nil, err
	}
	t.remove(a)
	return meta.Freed(refs), nil
}

// Unlink removes the non-directory name from dir. When its last link goes,
// the inode and its chunk map are deleted in the same transaction and the
// chunk references returned.
func (s *Store) Unlink(ctx context.Context, dir meta.Ino, name string) (meta.Freed, error) {
	op := fmt.Sprintf("unlink %q in %d", name, dir)
	if err := validName(name); err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	r := &unlinkReq{name: name}
	err := s.unlinks.do(ctx, dir, r, func(ctx context.Context, batch []*unlinkReq) error {
		return s.unlinkBatch(ctx, dir, batch)
	})
	if err == nil {
		err = r.err
	}
	if err != nil {
		return nil, wrapOnce(op, err)
	}
	return r.freed, nil
}

// Rmdir removes the empty directory name from dir, lowering dir's nlink.
func (s *Store) Rmdir(ctx context.Context, dir meta.Ino, name string) error {
	op := fmt.Sprintf("rmdir %q in %d", name, dir)
	if err := validName(name); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	return s.runWrite(ctx, op, func(t *tx) error {
		if err := t.load(ctx, s.keys.ino(dir), s.keys.dentry(dir, name)); err != nil {
			return err
		}
		d, err := t.dirAttr(ctx, dir)
		if err != nil {
			return err
		}
		e, ok, err := t.dentry(ctx, dir, name)
		if err != nil {
			return err
		}
		if !ok {
			return meta.ErrNotFound
		}
		if e.Type != meta.TypeDir {
			return meta.ErrNotDir
		}
		c, err := t.entryInode(ctx, e)
		if err != nil {
			return err
		}
		// Every change of c's entries rewrites c's record, so the compare
		// on c guards this emptiness check.
		empty, err := t.isEmptyDir(ctx, c.Ino)
		if err != nil {
			return err
		}
		if !empty {
			return meta.ErrNotEmpty
		}
		now := s.nowNs()
		d.Nlink--
		d.Mtime, d.Ctime = now, now
		t.put(d)
		t.remove(c)
		t.then(clientv3.OpDelete(s.keys.dentry(dir, name)))
		return nil
	})
}

// Rename moves fromName in fromDir to toName in toDir, following rename(2):
// a file may replace a file (whose chunks are returned if that was its last
// link), a directory may replace an empty directory, a directory is never
// moved into its own subtree (ErrInvalid), and renaming a name onto itself
// or onto another link of the same inode does nothing.
func (s *Store) Rename(ctx context.Context, fromDir meta.Ino, fromName string, toDir meta.Ino, toName string) (meta.Freed, error) {
	op := fmt.Sprintf("rename %q in %d to %q in %d", fromName, fromDir, toName, toDir)
	if err := validName(fromName); err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	if err := validName(toName); err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	var freed meta.Freed
	err := s.runWrite(ctx, op, func(t *tx) error {
		freed = nil
		var err error
		freed, err = t.rename(ctx, fromDir, fromName, toDir, toName)
		return err
	})
	if err != nil {
		return nil, err
	}
	return freed, nil
}

func (t *tx) rename(ctx context.Context, fromDir meta.Ino, fromName string, toDir meta.Ino, toName string) (meta.Freed, error) {
	k := t.s.keys
	if err := t.load(ctx, k.ino(fromDir), k.ino(toDir), k.dentry(fromDir, fromName), k.dentry(toDir, toName)); err != nil {
		return nil, err
	}
	fd, err := t.dirAttr(ctx, fromDir)
	if err != nil {
		return nil, err
	}
	td, err := t.dirAttr(ctx, toDir)
	if err != nil {
		return nil, err
	}
	src, ok, err := t.dentry(ctx, fromDir, fromName)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, meta.ErrNotFound
	}
	dst, dstExists, err := t.dentry(ctx, toDir, toName)
	if err != nil {
		return nil, err
	}
	if fromDir == toDir && fromName == toName {
		return nil, nil
	}
	if dstExists && dst.Ino == src.Ino {
		return nil, nil // two links of one file: POSIX says do nothing
	}
	inos := []meta.Ino{src.Ino}
	if dstExists {
		inos = append(inos, dst.Ino)
	}
	if err := t.loadInodes(ctx, inos...); err != nil {
		return nil, err
	}
	sa, err := t.entryInode(ctx, src)
	if err != nil {
		return nil, err
	}
	var da *meta.Attr
	if dstExists {
		if da, err = t.entryInode(ctx, dst); err != nil {
			return nil, err
		}
	}
	srcDir := sa.Type == meta.TypeDir
	if srcDir {
		if da != nil {
			if da.Type != meta.TypeDir {
				return nil, meta.ErrNotDir
			}
			empty, err := t.isEmptyDir(ctx, da.Ino) // guarded by da's compare
			if err != nil {
				return nil, err
			}
			if !empty {
				return nil, meta.ErrNotEmpty
			}
		}
		if fromDir != toDir {
			if err := t.checkNotAncestor(ctx, sa.Ino, toDir); err != nil {
				return nil, err
			}
			if td.Nlink >= maxNlink {
				return nil, meta.ErrTooManyLink
			}
		}
	} else if da != nil && da.Type == meta.TypeDir {
		return nil, meta.ErrIsDir
	}

	now := t.s.nowNs()
	var freed meta.Freed
	if da != nil {
		if da.Type == meta.TypeDir {
			td.Nlink-- // the replaced directory's ".." goes
			t.remove(da)
		} else if freed, err = t.dropLink(ctx, da, now); err != nil {
			return nil, err
		}
	}
	if srcDir && fromDir != toDir {
		fd.Nlink--
		td.Nlink++
	}
	sa.Parent = toDir
	sa.Ctime = now
	fd.Mtime, fd.Ctime = now, now
	td.Mtime, td.Ctime = now, now
	t.put(sa)
	t.put(fd)
	t.put(td)
	t.then(
		clientv3.OpDelete(k.dentry(fromDir, fromName)),
		clientv3.OpPut(k.dentry(toDir, toName), string(encodeDentry(dentry{Ino: sa.Ino, Type: sa.Type}))),
	)
	return freed, nil
}

// checkNotAncestor fails with ErrInvalid if dir is moved into its own
// subtree, that is if dir is target or one of target's ancestors. Every
// inode on the way is read at the snapshot revision and compared at
// commit, so a concurrent rename that would form a cycle makes one of the
// two transactions retry.
func (t *tx) checkNotAncestor(ctx context.Context, dir, target meta.Ino) error {
	cur := target
	for depth := 0; ; depth++ {
		if cur == dir {
			return fmt.Errorf("directory %d into its own subtree: %w", dir, meta.ErrInvalid)
		}
		if cur == meta.RootIno {
			return nil
		}
		if depth > 1<<16 {
			return fmt.Errorf("parent chain of %d does not reach the root: %w", target, errMalformed)
		}
		a, ok, err := t.inode(ctx, cur)
		if err != nil {
			return err
		}
		if !ok || a.Type != meta.TypeDir {
			return fmt.Errorf("parent chain of %d broken at %d: %w", target, cur, errMalformed)
		}
		cur = a.Parent
	}
}

// SetAttr changes mode, owner and times of ino and sets its ctime to now.
func (s *Store) SetAttr(ctx context.Context, ino meta.Ino, args meta.SetAttrArgs) (meta.Attr, error) {
	op := fmt.Sprintf("setattr %d", ino)
	if args.Mode != nil && *args.Mode&^0o7777 != 0 {
		return meta.Attr{}, fmt.Errorf("%s: mode %o: %w", op, *args.Mode, meta.ErrInvalid)
	}
	var out meta.Attr
	err := s.runWrite(ctx, op, func(t *tx) error {
		a, ok, err := t.inode(ctx, ino)
		if err != nil {
			return err
		}
		if !ok {
			return meta.ErrNotFound
		}
		if args.Mode != nil {
			a.Mode = *args.Mode
		}
		if args.UID != nil {
			a.UID = *args.UID
		}
		if args.GID != nil {
			a.GID = *args.GID
		}
		if args.Atime != nil {
			a.Atime = *args.Atime
		}
		if args.Mtime != nil {
			a.Mtime = *args.Mtime
		}
		a.Ctime = s.nowNs()
		t.put(a)
		out = *a
		return nil
	})
	return out, err
}

// ReadDir returns up to limit entries of dir whose cookies are greater
// than cookie, in cookie order (see meta.Store), and more than limit only
// to end on a whole group of entries sharing a cookie. It costs one range
// read from the cookie's key, so listing a directory page by page is O(n)
// in total, and any node can resume a listing another began.
func (s *Store) ReadDir(ctx context.Context, dir meta.Ino, cookie uint64, limit int) ([]meta.Entry, error) {
	op := fmt.Sprintf("readdir %d after cookie %d", dir, cookie)
	if limit <= 0 {
		return nil, fmt.Errorf("%s: limit %d: %w", op, limit, meta.ErrInvalid)
	}
	var out []meta.Entry
	err := s.run(ctx, op, func(t *tx) error {
		out = nil
		if _, err := t.dirAttr(ctx, dir); err != nil {
			return err
		}
		p := s.keys.dirPrefix(dir)
		from := p
		if cookie >= meta.MinCookie && cookie < 1<<63-1 {
			from = p + hex16(cookie+1)
		} else if cookie >= 1<<63-1 {
			return nil // past every cookie
		}
		add := func(key string, val []byte) error {
			c, name, err := entryName(p, key)
			if err != nil {
				return err
			}
			e, err := decodeDentry(val)
			if err != nil {
				return fmt.Errorf("entry %q: %w", key, err)
			}
			out = append(out, meta.Entry{Name: name, Ino: e.Ino, Type: e.Type, Cookie: c})
			return nil
		}
		if err := t.rangeRead(ctx, from, prefixEnd(p), limit, add); err != nil || len(out) < limit {
			return err
		}
		// A full page ends with a whole group of entries sharing a
		// cookie, so that resuming from that cookie skips none of them.
		last := out[len(out)-1]
		return t.rangeRead(ctx, s.keys.dentry(dir, last.Name)+"\x00", p+hex16(last.Cookie+1), 0, add)
	})
	return out, err
}

// fileAttr loads ino for a data operation: it must exist (ErrStale) and be
// a regular file.
func (t *tx) fileAttr(ctx context.Context, ino meta.Ino) (*meta.Attr, error) {
	a, ok, err := t.inode(ctx, ino)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("inode %d: %w", ino, meta.ErrStale)
	}
	switch a.Type {
	case meta.TypeRegular:
		return a, nil
	case meta.TypeDir:
		return nil, fmt.Errorf("inode %d: %w", ino, meta.ErrIsDir)
	default:
		return nil, fmt.Errorf("inode %d is a %v: %w", ino, a.Type, meta.ErrInvalid)
	}
}

// Chunks returns ino's chunk references with first <= Index <= last, in
// index order, read at one revision. A missing inode is ErrStale.
//
// On a cluster it first reads the local member's applied state
// (serializable: no read-index round trip through the leader) and keeps
// what it read if that state is at least as new as the newest revision
// any answer to this store carried (floor): a READ's chunk map is then at
// least as new as the attributes read just before it, as a current read
// would be. Otherwise, or when ctx asks for current reads, or the read
// ends in an error, it reads again through the leader.
func (s *Store) Chunks(ctx context.Context, ino meta.Ino, first, last uint64) ([]chunk.Ref, error) {
	op := fmt.Sprintf("chunks %d [%d,%d]", ino, first, last)
	var out []chunk.Ref
	point := last >= first && last-first < pointChunkReads
	attempt := func(t *tx) error {
		if point {
			// The inode and the references in one round trip.
			if err := t.load(ctx, append(s.chunkKeys(ino, first, last), s.keys.ino(ino))...); err != nil {
				return err
			}
		}
		if _, err := t.fileAttr(ctx, ino); err != nil {
			return err
		}
		var err error
		if point {
			out, err = t.chunkRefsAt(ctx, ino, first, last)
		} else {
			out, err = t.chunkRefs(ctx, ino, first, last)
		}
		return err
	}
	if s.floor != nil && !meta.CurrentReads(ctx) {
		floor := s.floor.Load()
		t := s.newTx()
		t.optimistic = true
		if err := attempt(t); err == nil && t.rev >= floor {
			return out, nil
		}
	}
	err := s.run(ctx, op, attempt)
	return out, err
}

// pointChunkReads is the most chunk references Chunks reads by key (in
// one round trip, or from the exclusive cache) rather than by range: a
// READ spans one chunk or two.
const pointChunkReads = 4

// chunkKeys returns the chunk map keys of ino's indexes first to last.
func (s *Store) chunkKeys(ino meta.Ino, first, last uint64) []string {
	keys := make([]string, 0, last-first+2)    // room for the inode's key
	for d := uint64(0); d <= last-first; d++ { // no i++ past MaxUint64
		keys = append(keys, s.keys.chunk(ino, first+d))
	}
	return keys
}

// chunkRefsAt is chunkRefs read key by key, for a few indexes.
func (t *tx) chunkRefsAt(ctx context.Context, ino meta.Ino, first, last uint64) ([]chunk.Ref, error) {
	keys := t.s.chunkKeys(ino, first, last)
	if err := t.load(ctx, keys...); err != nil {
		return nil, err
	}
	var refs []chunk.Ref
	for i, k := range keys {
		v := t.read[k]
		if v.modRev == 0 {
			continue // a hole
		}
		r, err := decodeChunkRef(first+uint64(i), v.val)
		if err != nil {
			return nil, fmt.Errorf("inode %d: %w", ino, err)
		}
		refs = append(refs, r)
	}
	return refs, nil
}

// CommitWrite records refs in ino's chunk map, replacing references with the
// same Index, raises the size to at least size and sets mtime and ctime to
// now, in one transaction. It returns the replaced references (a reference
// replaced by one with the same chunk ID is not freed). Indexes in refs
// must be distinct. refs must fit one etcd request (at most MaxTxnOps-1
// references, well under 1.5 MiB: about 10,000 refs).
func (s *Store) CommitWrite(ctx context.Context, ino meta.Ino, refs []chunk.Ref, expect []meta.Expect, size uint64) (meta.Attr, meta.Freed, error) {
	op := fmt.Sprintf("commit write to %d", ino)
	seen := make(map[uint64]struct{}, len(refs))
	ks := make([]string, 0, len(refs)+1)
	ks = append(ks, s.keys.ino(ino))
	for _, r := range refs {
		if _, dup := seen[r.Index]; dup {
			return meta.Attr{}, nil, fmt.Errorf("%s: chunk index %d given twice: %w", op, r.Index, meta.ErrInvalid)
		}
		seen[r.Index] = struct{}{}
		ks = append(ks, s.keys.chunk(ino, r.Index))
	}
	ks = append(ks, s.expectKeys(ino, expect)...)
	var out meta.Attr
	var freed meta.Freed
	err := s.runWrite(ctx, op, func(t *tx) error {
		freed = nil
		t.assumeExpectedAbsent(ino, expect)
		if err := t.load(ctx, ks...); err != nil {
			return err
		}
		a, err := t.fileAttr(ctx, ino)
		if err != nil {
			return err
		}
		if err := t.checkExpect(ino, expect); err != nil {
			return err
		}
		for _, r := range refs {
			k := s.keys.chunk(ino, r.Index)
			if v := t.read[k]; v.modRev != 0 {
				old, err := decodeChunkRef(r.Index, v.val)
				if err != nil {
					return err
				}
				if old.ID != r.ID {
					freed = append(freed, old)
				}
			}
			t.then(clientv3.OpPut(k, string(encodeChunkRef(r))))
		}
		now := s.nowNs()
		a.Size = max(a.Size, size)
		a.Mtime, a.Ctime = now, now
		t.put(a)
		out = *a
		return nil
	})
	if err != nil {
		return meta.Attr{}, nil, err
	}
	return out, freed, nil
}

// Truncate sets ino's size and its mtime and ctime to now. References of
// chunks wholly past the new end (Index*chunkSize >= size) are removed and
// returned. tail, when non-nil, must be the chunk holding the new last byte
// (tail.Index == (size-1)/chunkSize); it replaces that chunk's reference,
// and the reference it replaced is returned too.
func (s *Store) Truncate(ctx context.Context, ino meta.Ino, size uint64, chunkSize uint64, tail *chunk.Ref, expect []meta.Expect) (meta.Attr, meta.Freed, error) {
	op := fmt.Sprintf("truncate %d to %d", ino, size)
	if chunkSize == 0 {
		return meta.Attr{}, nil, fmt.Errorf("%s: chunk size 0: %w", op, meta.ErrInvalid)
	}
	// first chunk index wholly past the end: ceil(size/chunkSize)
	firstGone := size / chunkSize
	if size%chunkSize != 0 {
		firstGone++
	}
	if tail != nil && (size == 0 || tail.Index != (size-1)/chunkSize) {
		return meta.Attr{}, nil, fmt.Errorf("%s: tail chunk index %d does not hold the end: %w", op, tail.Index, meta.ErrInvalid)
	}
	var out meta.Attr
	var freed meta.Freed
	err := s.runWrite(ctx, op, func(t *tx) error {
		freed = nil
		ks := []string{s.keys.ino(ino)}
		if tail != nil {
			ks = append(ks, s.keys.chunk(ino, tail.Index))
		}
		ks = append(ks, s.expectKeys(ino, expect)...)
		if err := t.load(ctx, ks...); err != nil {
			return err
		}
		a, err := t.fileAttr(ctx, ino)
		if err != nil {
			return err
		}
		if err := t.checkExpect(ino, expect); err != nil {
			return err
		}
		gone, err := t.chunkRefs(ctx, ino, firstGone, math.MaxUint64)
		if err != nil {
			return err
		}
		freed = append(freed, gone...)
		if len(gone) > 0 {
			t.then(clientv3.OpDelete(s.keys.chunk(ino, firstGone), clientv3.WithRange(prefixEnd(s.keys.chunkPrefix(ino)))))
		}
		if tail != nil {
			k := s.keys.chunk(ino, tail.Index)
			if v := t.read[k]; v.modRev != 0 {
				old, err := decodeChunkRef(tail.Index, v.val)
				if err != nil {
					return err
				}
				if old.ID != tail.ID {
					freed = append(freed, old)
				}
			}
			t.then(clientv3.OpPut(k, string(encodeChunkRef(*tail))))
		}
		now := s.nowNs()
		a.Size = size
		a.Mtime, a.Ctime = now, now
		t.put(a)
		out = *a
		return nil
	})
	if err != nil {
		return meta.Attr{}, nil, err
	}
	return out, freed, nil
}

// expectKeys are the chunk keys expect pins, to load with the rest.
func (s *Store) expectKeys(ino meta.Ino, expect []meta.Expect) []string {
	ks := make([]string, len(expect))
	for i, e := range expect {
		ks[i] = s.keys.chunk(ino, e.Index)
	}
	return ks
}

// assumeExpectedAbsent assumes (tx.assumeAbsent) the chunk entries that
// expect says are absent: a write past the end of a file expects no chunk
// there, and is then committed without reading the entries first. If one
// exists after all, the commit fails, the next attempt reads it, and
// checkExpect says ErrConflict, as it would have at once.
func (t *tx) assumeExpectedAbsent(ino meta.Ino, expect []meta.Expect) {
	for _, e := range expect {
		if e.ID == (chunk.ID{}) {
			t.assumeAbsent(t.s.keys.chunk(ino, e.Index))
		}
	}
}

// checkExpect fails with meta.ErrConflict unless every pinned chunk entry
// (loaded at the transaction's revision) still holds the expected chunk.
// The transaction compares the inode record, which every chunk map change
// rewrites, so what it checked cannot change before it commits.
func (t *tx) checkExpect(ino meta.Ino, expect []meta.Expect) error {
	for _, e := range expect {
		var cur chunk.ID
		if v := t.read[t.s.keys.chunk(ino, e.Index)]; v.modRev != 0 {
			old, err := decodeChunkRef(e.Index, v.val)
			if err != nil {
				return err
			}
			cur = old.ID
		}
		if cur != e.ID {
			return fmt.Errorf("chunk %d of inode %d is %s, the change was made from %s: %w", e.Index, ino, cur, e.ID, meta.ErrConflict)
		}
	}
	return nil
}

// StatFS reports the number of inodes in use. It counts the inode keys on
// the server (no data is transferred), which costs O(inodes) there.
func (s *Store) StatFS(ctx context.Context) (uint64, error) {
	p := s.keys.inoPrefix()
	resp, err := s.kv.Get(ctx, p, clientv3.WithRange(prefixEnd(p)), clientv3.WithCountOnly())
	if err != nil {
		return 0, etcdErr("statfs", err)
	}
	return uint64(resp.Count), nil
}
