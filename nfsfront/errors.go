package nfsfront

import (
	"context"
	"errors"
	"io/fs"
	"syscall"

	nfs "github.com/willscott/go-nfs"

	"github.com/wormhole-fs/wormhole/chunker/chunk"
	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
)

// This file is the one place where internal errors become NFS status codes.
// Everything else returns wrapped sentinels (meta.Err*, chunk.Err*) and lets
// errnoOf and statusOf decide.

// errnoOf maps an internal error to the POSIX errno a local filesystem would
// return for it. Unknown errors are EIO: the client sees an I/O error rather
// than a wrong answer.
func errnoOf(err error) syscall.Errno {
	var errno syscall.Errno
	switch {
	case err == nil:
		return 0
	case errors.As(err, &errno):
		return errno
	case errors.Is(err, meta.ErrNotFound):
		return syscall.ENOENT
	case errors.Is(err, meta.ErrStale):
		return syscall.ESTALE
	case errors.Is(err, meta.ErrExists):
		return syscall.EEXIST
	case errors.Is(err, meta.ErrNotDir):
		return syscall.ENOTDIR
	case errors.Is(err, meta.ErrIsDir):
		return syscall.EISDIR
	case errors.Is(err, meta.ErrNotEmpty):
		return syscall.ENOTEMPTY
	case errors.Is(err, meta.ErrInvalid):
		return syscall.EINVAL
	case errors.Is(err, meta.ErrNameTooLong):
		return syscall.ENAMETOOLONG
	case errors.Is(err, meta.ErrTooManyLink):
		return syscall.EMLINK
	case errors.Is(err, chunk.ErrCorrupt):
		return syscall.EIO // before the rest: a corrupt copy is never "not found"
	case errors.Is(err, meta.ErrNoSpace), errors.Is(err, chunk.ErrNoSpace):
		return syscall.ENOSPC
	case errors.Is(err, errReadOnly), errors.Is(err, ErrWritesRefused):
		return syscall.EROFS
	case errors.Is(err, ErrFrozen):
		// JUKEBOX: clients wait and retry until the posture lifts (see
		// ErrFrozen).
		return syscall.EAGAIN
	case errors.Is(err, errPerm):
		return syscall.EPERM
	case errors.Is(err, errAccess):
		return syscall.EACCES
	case errors.Is(err, errFileTooBig):
		return syscall.EFBIG
	case errors.Is(err, errXDev):
		return syscall.EXDEV
	case errors.Is(err, errNotSupported):
		return syscall.ENOTSUP
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, chunk.ErrUnavailable), errors.Is(err, meta.ErrUnavailable):
		// Transient: the metadata store or chunk holders did not answer
		// in time, or etcd has no leader or quorum now. EAGAIN becomes NFS3ERR_JUKEBOX, which clients retry
		// after a delay instead of failing the application's call.
		return syscall.EAGAIN
	}
	return syscall.EIO // anything unexpected
}

// Errors of the front itself.
var (
	errReadOnly     = errors.New("read-only export")
	errPerm         = errors.New("operation not permitted")
	errAccess       = errors.New("permission denied")
	errNotSupported = errors.New("operation not supported")
	errBadHandle    = errors.New("bad file handle")
	errFileTooBig   = errors.New("file too large")
	errXDev         = errors.New("handles of different exports")
)

// toPathError returns err in the form go-nfs understands: a *fs.PathError
// holding a syscall.Errno, so that its os.IsNotExist / os.IsPermission checks
// (which do not follow %w chains) pick the right status.
func toPathError(op, path string, err error) error {
	if err == nil {
		return nil
	}
	return &fs.PathError{Op: op, Path: path, Err: errnoOf(err)}
}

// statusOf maps an error to the NFSv3 status our own procedure handlers send.
func statusOf(err error) nfs.NFSStatus {
	switch {
	case errors.Is(err, errBadHandle):
		return nfs.NFSStatusBadHandle
	case errors.Is(err, errNotSync):
		return nfs.NFSStatusNotSync
	case errors.Is(err, errTooSmall):
		return nfs.NFSStatusTooSmall
	}
	switch errnoOf(err) {
	case 0:
		return nfs.NFSStatusOk
	case syscall.EPERM:
		return nfs.NFSStatusPerm
	case syscall.ENOENT:
		return nfs.NFSStatusNoEnt
	case syscall.EACCES:
		return nfs.NFSStatusAccess
	case syscall.EEXIST:
		return nfs.NFSStatusExist
	case syscall.EXDEV:
		return nfs.NFSStatusXDev
	case syscall.ENOTDIR:
		return nfs.NFSStatusNotDir
	case syscall.EISDIR:
		return nfs.NFSStatusIsDir
	case syscall.EINVAL:
		return nfs.NFSStatusInval
	case syscall.EFBIG:
		return nfs.NFSStatusFBig
	case syscall.ENOSPC:
		return nfs.NFSStatusNoSPC
	case syscall.EDQUOT:
		return nfs.NFSStatusDQuot
	case syscall.EROFS:
		return nfs.NFSStatusROFS
	case syscall.EMLINK:
		return nfs.NFSStatusMlink
	case syscall.ENAMETOOLONG:
		return nfs.NFSStatusNameTooLong
	case syscall.ENOTEMPTY:
		return nfs.NFSStatusNotEmpty
	case syscall.ESTALE:
		return nfs.NFSStatusStale
	case syscall.ENOTSUP:
		return nfs.NFSStatusNotSupp
	case syscall.EAGAIN:
		return nfs.NFSStatusJukebox
	}
	return nfs.NFSStatusIO
}

// MOUNT v3 status codes (RFC 1813 section 5.1.5, mountstat3).
const (
	mnt3OK             = 0
	mnt3ErrPerm        = 1
	mnt3ErrNoEnt       = 2
	mnt3ErrIO          = 5
	mnt3ErrAccess      = 13
	mnt3ErrNotDir      = 20
	mnt3ErrInval       = 22
	mnt3ErrNameTooLong = 63
	mnt3ErrNotSupp     = 10004
	mnt3ErrServerFault = 10006
)

// mountStatusOf maps an error to the mountstat3 of a MNT reply.
func mountStatusOf(err error) uint32 {
	switch errnoOf(err) {
	case 0:
		return mnt3OK
	case syscall.EPERM:
		return mnt3ErrPerm
	case syscall.ENOENT:
		return mnt3ErrNoEnt
	case syscall.EACCES:
		return mnt3ErrAccess
	case syscall.ENOTDIR:
		return mnt3ErrNotDir
	case syscall.EINVAL:
		return mnt3ErrInval
	case syscall.ENAMETOOLONG:
		return mnt3ErrNameTooLong
	case syscall.ENOTSUP:
		return mnt3ErrNotSupp
	case syscall.EIO:
		return mnt3ErrIO
	}
	return mnt3ErrServerFault
}

// rejectionOf returns the MSG_DENIED reply for a call that parseCall
// refused, or nil when the record gets no reply at all (not a call, or
// too short to hold a call header).
func rejectionOf(xid uint32, err error) []byte {
	switch {
	case errors.Is(err, errRPCVersion):
		return rpcMismatchReply(xid)
	case errors.Is(err, errBadCred):
		return authErrorReply(xid, authBadCred)
	}
	return nil
}
