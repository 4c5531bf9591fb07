package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// localConn runs the workloads on a local directory with plain os calls:
// the physical reference for the same machine. Handles are paths. Writes
// use O_DSYNC, the local equivalent of a FILE_SYNC WRITE.
type localConn struct {
	dir string
	// The last file opened, kept open across requests to it (as an NFS
	// server keeps a descriptor cache).
	path string
	f    *os.File
}

func dialLocal(dir string) dialer {
	return func(context.Context) (conn, error) {
		st, err := os.Stat(dir)
		if err != nil {
			return nil, fmt.Errorf("local directory: %w", err)
		}
		if !st.IsDir() {
			return nil, fmt.Errorf("local directory %s: not a directory", dir)
		}
		return &localConn{dir: dir}, nil
	}
}

func (c *localConn) root() handle { return handle(c.dir) }

func (c *localConn) mkdir(_ context.Context, dir handle, name string) (handle, error) {
	p := filepath.Join(string(dir), name)
	return handle(p), os.Mkdir(p, 0o755)
}

func (c *localConn) create(_ context.Context, dir handle, name string) (handle, error) {
	p := filepath.Join(string(dir), name)
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return "", err
	}
	return handle(p), f.Close()
}

func (c *localConn) lookup(_ context.Context, dir handle, name string) (handle, attr, error) {
	p := filepath.Join(string(dir), name)
	st, err := os.Lstat(p)
	if err != nil {
		return "", attr{}, err
	}
	return handle(p), attr{Dir: st.IsDir(), Size: st.Size()}, nil
}

func (c *localConn) getattr(_ context.Context, h handle) (attr, error) {
	st, err := os.Lstat(string(h))
	if err != nil {
		return attr{}, err
	}
	return attr{Dir: st.IsDir(), Size: st.Size()}, nil
}

func (c *localConn) open(h handle) (*os.File, error) {
	if c.f != nil && c.path == string(h) {
		return c.f, nil
	}
	if c.f != nil {
		if err := c.f.Close(); err != nil {
			return nil, err
		}
		c.f = nil
	}
	f, err := os.OpenFile(string(h), os.O_RDWR|syscall.O_DSYNC, 0)
	if err != nil {
		return nil, err
	}
	c.path, c.f = string(h), f
	return f, nil
}

func (c *localConn) writeAt(_ context.Context, h handle, p []byte, off int64) error {
	f, err := c.open(h)
	if err != nil {
		return err
	}
	_, err = f.WriteAt(p, off)
	return err
}

func (c *localConn) writeBackAt(ctx context.Context, h handle, p []byte, off int64) error {
	return c.writeAt(ctx, h, p, off)
}

// commit has nothing to do: local writes are O_DSYNC.
func (c *localConn) commit(context.Context, handle) error { return nil }

func (c *localConn) readAt(_ context.Context, h handle, p []byte, off int64) error {
	f, err := c.open(h)
	if err != nil {
		return err
	}
	_, err = f.ReadAt(p, off)
	return err
}

func (c *localConn) listDir(_ context.Context, dir handle) ([]dirEntry, error) {
	des, err := os.ReadDir(string(dir))
	if err != nil {
		return nil, err
	}
	out := make([]dirEntry, 0, len(des))
	for _, de := range des {
		info, err := de.Info() // lstat, as ls -l does
		if err != nil {
			return nil, err
		}
		out = append(out, dirEntry{Name: de.Name(), Attr: attr{Dir: info.IsDir(), Size: info.Size()}, HasAttr: true})
	}
	return out, nil
}

func (c *localConn) remove(_ context.Context, dir handle, name string) error {
	p := filepath.Join(string(dir), name)
	if c.f != nil && c.path == p {
		c.f.Close()
		c.f = nil
	}
	return os.Remove(p)
}

func (c *localConn) rmdir(_ context.Context, dir handle, name string) error {
	return os.Remove(filepath.Join(string(dir), name))
}

func (c *localConn) close() error {
	if c.f == nil {
		return nil
	}
	err := c.f.Close()
	c.f = nil
	return err
}
