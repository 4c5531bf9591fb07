package nfsfront

import (
	"context"
	"fmt"
	"os"
	"syscall"
	"testing"

	nfs "github.com/willscott/go-nfs"

	"github.com/wormhole-fs/wormhole/chunker/chunk"
	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
)

func TestErrorMapping(t *testing.T) {
	cases := []struct {
		err    error
		errno  syscall.Errno
		status nfs.NFSStatus
	}{
		{meta.ErrNotFound, syscall.ENOENT, nfs.NFSStatusNoEnt},
		{meta.ErrStale, syscall.ESTALE, nfs.NFSStatusStale},
		{meta.ErrExists, syscall.EEXIST, nfs.NFSStatusExist},
		{meta.ErrNotDir, syscall.ENOTDIR, nfs.NFSStatusNotDir},
		{meta.ErrIsDir, syscall.EISDIR, nfs.NFSStatusIsDir},
		{meta.ErrNotEmpty, syscall.ENOTEMPTY, nfs.NFSStatusNotEmpty},
		{meta.ErrInvalid, syscall.EINVAL, nfs.NFSStatusInval},
		{meta.ErrNameTooLong, syscall.ENAMETOOLONG, nfs.NFSStatusNameTooLong},
		{meta.ErrNoSpace, syscall.ENOSPC, nfs.NFSStatusNoSPC},
		{chunk.ErrNoSpace, syscall.ENOSPC, nfs.NFSStatusNoSPC},
		{chunk.ErrCorrupt, syscall.EIO, nfs.NFSStatusIO},
		{chunk.ErrUnavailable, syscall.EAGAIN, nfs.NFSStatusJukebox},
		{context.DeadlineExceeded, syscall.EAGAIN, nfs.NFSStatusJukebox},
		{errAccess, syscall.EACCES, nfs.NFSStatusAccess},
		{errPerm, syscall.EPERM, nfs.NFSStatusPerm},
		{errReadOnly, syscall.EROFS, nfs.NFSStatusROFS},
		{errBadHandle, syscall.EIO, nfs.NFSStatusBadHandle},
		{errNotSync, syscall.EIO, nfs.NFSStatusNotSync},
		{errFileTooBig, syscall.EFBIG, nfs.NFSStatusFBig},
		{errTooSmall, syscall.EIO, nfs.NFSStatusTooSmall},
		{fmt.Errorf("surprise"), syscall.EIO, nfs.NFSStatusIO},
	}
	for _, c := range cases {
		wrapped := fmt.Errorf("op on inode 7: %w", fmt.Errorf("inner: %w", c.err))
		if got := errnoOf(wrapped); got != c.errno {
			t.Errorf("errnoOf(%v) = %v, want %v", c.err, got, c.errno)
		}
		if got := statusOf(wrapped); got != c.status {
			t.Errorf("statusOf(%v) = %v, want %v", c.err, got, c.status)
		}
	}
	// go-nfs decides with os.IsNotExist / os.IsPermission, which do not
	// follow %w: the path error must carry the errno directly.
	if !os.IsNotExist(toPathError("lstat", "/x", fmt.Errorf("a: %w", meta.ErrNotFound))) {
		t.Error("toPathError(ErrNotFound) is not os.IsNotExist")
	}
	if !os.IsPermission(toPathError("open", "/x", fmt.Errorf("a: %w", errAccess))) {
		t.Error("toPathError(errAccess) is not os.IsPermission")
	}
	if toPathError("x", "y", nil) != nil {
		t.Error("toPathError(nil) is not nil")
	}
}
