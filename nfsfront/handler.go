package nfsfront

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"

	billy "github.com/go-git/go-billy/v5"
	"github.com/rs/zerolog"
	nfs "github.com/willscott/go-nfs"

	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
)

// handler is the go-nfs Handler behind the procedures go-nfs still serves.
// It decodes our stateless handles (never go-nfs's CachingHandler, whose
// random in-memory ids are unknown to other nodes and die on restart).
type handler struct {
	fs     *fsys
	codec  *handleCodec
	log    zerolog.Logger
	export uint8
}

var _ nfs.Handler = (*handler)(nil)

// Mount is never reached: MOUNT is served by mount.go and no MOUNT call is
// forwarded to go-nfs. It stays for go-nfs's Handler interface, with the
// same answer: the one export is the namespace root.
func (h *handler) Mount(_ context.Context, _ net.Conn, req nfs.MountRequest) (nfs.MountStatus, billy.Filesystem, []nfs.AuthFlavor) {
	if p := string(req.Dirpath); p != "/" && p != "" {
		h.log.Info().Str("path", p).Msg("mount refused: only / is exported")
		return nfs.MountStatusErrNoEnt, nil, nil
	}
	return nfs.MountStatusOk, h.fs, []nfs.AuthFlavor{nfs.AuthFlavorUnix, nfs.AuthFlavorNull}
}

// Change is nil: attribute changes go through our own SETATTR.
func (h *handler) Change(billy.Filesystem) billy.Change { return nil }

// FSStat reports the chunk store's real capacity and the inode count.
func (h *handler) FSStat(ctx context.Context, _ billy.Filesystem, s *nfs.FSStat) error {
	ctx, cancel := context.WithTimeout(ctx, h.fs.opTimeout)
	defer cancel()
	total, free, err := h.fs.data.Usage()
	if err != nil {
		return fmt.Errorf("fsstat: %w", err)
	}
	inodes, err := h.fs.ns.StatFS(ctx)
	if err != nil {
		return fmt.Errorf("fsstat: %w", err)
	}
	s.TotalSize, s.FreeSize, s.AvailableSize = total, free, free
	// Inodes are bounded by the metadata quota, not a table: report a
	// large pool with the used ones taken out.
	const pool = 1 << 32
	s.TotalFiles = pool
	s.FreeFiles, s.AvailableFiles = pool-min(inodes, pool), pool-min(inodes, pool)
	return nil
}

// ToHandle returns the handle of the object at a go-nfs path.
func (h *handler) ToHandle(_ billy.Filesystem, path []string) []byte {
	ctx, cancel := h.fs.opCtx()
	defer cancel()
	a, err := h.fs.resolve(ctx, h.fs.Join(path...))
	if err != nil {
		h.log.Debug().Err(err).Msg("handle for vanished path")
		return nil
	}
	return h.codec.Encode(Handle{Export: h.export, Ino: a.Ino, Gen: a.Gen})
}

// FromHandle decodes a handle to the path go-nfs works with.
func (h *handler) FromHandle(fh []byte) (billy.Filesystem, []string, error) {
	ctx, cancel := h.fs.opCtx()
	defer cancel()
	a, _, err := h.attrOf(ctx, fh)
	if err != nil {
		return nil, nil, toPathError("handle", "", err)
	}
	return h.fs, h.fs.pathFor(a), nil
}

// attrOf decodes and checks a handle and returns the inode's attributes
// and the decoded handle. A handle of a removed inode, or of an older
// generation, is stale. Export admission is the caller's business
// (Server.attrFor, and dispatch for records go-nfs serves).
func (h *handler) attrOf(ctx context.Context, fh []byte) (meta.Attr, Handle, error) {
	hd, err := h.codec.Decode(fh)
	if err != nil {
		return meta.Attr{}, hd, err
	}
	a, err := h.fs.ns.GetAttr(ctx, hd.Ino)
	if errors.Is(err, meta.ErrNotFound) {
		return meta.Attr{}, hd, fmt.Errorf("inode %d: %w", hd.Ino, meta.ErrStale)
	}
	if err != nil {
		// Not stale: a client told ESTALE drops the file for good, while
		// an unreachable metadata store is a reason to retry.
		return meta.Attr{}, hd, fmt.Errorf("inode %d: %w", hd.Ino, err)
	}
	if a.Gen != hd.Gen {
		return meta.Attr{}, hd, fmt.Errorf("inode %d generation %d, handle has %d: %w", hd.Ino, a.Gen, hd.Gen, meta.ErrStale)
	}
	return withPending(h.fs.data, a), hd, nil
}

// InvalidateHandle is a no-op: handles are stateless.
func (h *handler) InvalidateHandle(billy.Filesystem, []byte) error { return nil }

// HandleLimit is go-nfs's READDIR entry bound; READDIR is ours.
func (h *handler) HandleLimit() int { return math.MaxInt32 }
