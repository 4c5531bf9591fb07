package bench

import "context"

// handle names a file or directory on the target: an NFS file handle's
// bytes, or a path for a local directory.
type handle string

// attr is the subset of attributes the workloads check.
type attr struct {
	Dir  bool
	Size int64
}

// dirEntry is one listed entry with its attributes, as `ls -l` needs it.
type dirEntry struct {
	Name    string
	Attr    attr
	HasAttr bool
}

// conn is one stream's session with the filesystem under test: one TCP
// connection for NFS. Its methods each issue one request (one RPC for NFS)
// except listDir, which pages through a whole directory. A conn is used by
// one goroutine at a time.
type conn interface {
	root() handle
	mkdir(ctx context.Context, dir handle, name string) (handle, error)
	create(ctx context.Context, dir handle, name string) (handle, error)
	lookup(ctx context.Context, dir handle, name string) (handle, attr, error)
	getattr(ctx context.Context, h handle) (attr, error)
	// writeAt writes all of p at off, stably (FILE_SYNC or O_DSYNC).
	writeAt(ctx context.Context, h handle, p []byte, off int64) error
	// writeBackAt writes all of p at off, UNSTABLE when the run asks for
	// it (Options.Unstable), else as writeAt.
	writeBackAt(ctx context.Context, h handle, p []byte, off int64) error
	// commit makes the writeBackAt writes to h durable (COMMIT, checking
	// the write verifier did not change).
	commit(ctx context.Context, h handle) error
	// readAt fills p from off; a short read is an error.
	readAt(ctx context.Context, h handle, p []byte, off int64) error
	listDir(ctx context.Context, dir handle) ([]dirEntry, error)
	remove(ctx context.Context, dir handle, name string) error
	rmdir(ctx context.Context, dir handle, name string) error
	close() error
}

// dialer opens a new conn (a new connection for NFS).
type dialer func(ctx context.Context) (conn, error)
