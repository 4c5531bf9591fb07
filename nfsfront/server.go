package nfsfront

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	nfs "github.com/willscott/go-nfs"

	"github.com/wormhole-fs/wormhole/chunker/chunk"
	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
)

// Namespace is what the front needs from the metadata layer.
type Namespace interface {
	GetAttr(ctx context.Context, ino meta.Ino) (meta.Attr, error)
	Lookup(ctx context.Context, dir meta.Ino, name string) (meta.Attr, error)
	Create(ctx context.Context, dir meta.Ino, name string, args meta.CreateArgs) (meta.Attr, error)
	Link(ctx context.Context, ino meta.Ino, dir meta.Ino, name string) (meta.Attr, error)
	Unlink(ctx context.Context, dir meta.Ino, name string) (meta.Freed, error)
	Rmdir(ctx context.Context, dir meta.Ino, name string) error
	Rename(ctx context.Context, fromDir meta.Ino, fromName string, toDir meta.Ino, toName string) (meta.Freed, error)
	SetAttr(ctx context.Context, ino meta.Ino, args meta.SetAttrArgs) (meta.Attr, error)
	ReadDir(ctx context.Context, dir meta.Ino, after string, limit int) ([]meta.Entry, error)
	StatFS(ctx context.Context) (uint64, error)
}

// Data is what the front needs from the data layer.
type Data interface {
	// ReadAt reads file bytes; size is the file size from its attributes.
	ReadAt(ctx context.Context, ino meta.Ino, size uint64, p []byte, off int64) (int, error)
	// WriteAt writes file bytes durably and returns the new attributes.
	WriteAt(ctx context.Context, ino meta.Ino, p []byte, off int64) (meta.Attr, error)
	// Truncate changes a file's size, zeroing what an extension exposes.
	Truncate(ctx context.Context, ino meta.Ino, oldSize, newSize uint64) (meta.Attr, error)
	// Release deletes chunks the namespace no longer references.
	Release(ctx context.Context, freed []chunk.Ref)
	// Usage reports the bytes of capacity and free space.
	Usage() (total, free uint64, err error)
}

// Config configures the NFS front.
type Config struct {
	// OpTimeout bounds each metadata or data call made for one request.
	OpTimeout time.Duration
	// MaxRecord is the largest RPC record accepted; a larger one closes
	// the connection.
	MaxRecord int
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{OpTimeout: 30 * time.Second, MaxRecord: 4 << 20}
}

// Validate reports a configuration error.
func (c Config) Validate() error {
	if c.OpTimeout <= 0 {
		return fmt.Errorf("nfs op timeout %v: must be positive", c.OpTimeout)
	}
	if c.MaxRecord < 64<<10 {
		return fmt.Errorf("nfs max record %d: must be at least 65536", c.MaxRecord)
	}
	return nil
}

// Server serves NFSv3 and MOUNT on one listener.
type Server struct {
	cfg      Config
	log      zerolog.Logger
	handler  *handler
	verifier [8]byte

	mu    sync.Mutex
	conns map[*rpcConn]struct{}
}

// New builds a server. secret keys the file handle MAC; every node of a
// cluster must use the same one. New starts nothing.
func New(cfg Config, ns Namespace, data Data, secret []byte, log zerolog.Logger) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	codec, err := newHandleCodec(secret)
	if err != nil {
		return nil, err
	}
	var nonce [8]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return nil, fmt.Errorf("nfs: random nonce: %w", err)
	}
	s := &Server{cfg: cfg, log: log, conns: make(map[*rpcConn]struct{})}
	// The write verifier changes on every start: a client holding
	// UNSTABLE data resends it after a server restart.
	if _, err := rand.Read(s.verifier[:]); err != nil {
		return nil, fmt.Errorf("nfs: random verifier: %w", err)
	}
	s.handler = &handler{
		fs:    &fsys{ctx: context.Background(), opTimeout: cfg.OpTimeout, ns: ns, data: data, nonce: hex.EncodeToString(nonce[:])},
		codec: codec,
		log:   log,
	}
	return s, nil
}

// Listen opens the TCP listener, with a clear error when the address is
// taken or not ours to bind.
func Listen(addr string) (net.Listener, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		switch {
		case errors.Is(err, syscall.EADDRINUSE):
			return nil, fmt.Errorf("nfs address %s is already in use by another program: stop it or choose another port with --nfs-addr: %w", addr, err)
		case errors.Is(err, syscall.EACCES):
			return nil, fmt.Errorf("nfs address %s: permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE): %w", addr, err)
		}
		return nil, fmt.Errorf("nfs address %s: %w", addr, err)
	}
	return l, nil
}

// Serve accepts connections on l until ctx ends, then closes l and every
// connection and waits for their goroutines.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	s.handler.fs.ctx = ctx
	var wg sync.WaitGroup
	defer wg.Wait()
	stop := context.AfterFunc(ctx, func() {
		l.Close()
		s.mu.Lock()
		for c := range s.conns {
			c.raw.Close()
		}
		s.mu.Unlock()
	})
	defer stop()
	for {
		raw, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("nfs accept: %w", err)
		}
		c := s.newConn(raw)
		s.mu.Lock()
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		wg.Go(func() {
			defer func() {
				s.mu.Lock()
				delete(s.conns, c)
				s.mu.Unlock()
			}()
			c.serve(ctx)
		})
	}
}

func (s *Server) newGoNFS(ctx context.Context) *nfs.Server {
	return &nfs.Server{Handler: s.handler, ID: s.verifier, Context: ctx}
}
