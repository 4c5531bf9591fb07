package nfsfront

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/rs/zerolog"
	nfs "github.com/willscott/go-nfs"

	"github.com/wormhole-fs/wormhole/chunker/chunk"
	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
)

// Namespace is what the front needs from the metadata layer.
type Namespace interface {
	GetAttr(ctx context.Context, ino meta.Ino) (meta.Attr, error)
	GetAttrs(ctx context.Context, inos []meta.Ino) ([]meta.Attr, error)
	Lookup(ctx context.Context, dir meta.Ino, name string) (meta.Attr, error)
	Create(ctx context.Context, dir meta.Ino, name string, args meta.CreateArgs) (meta.Attr, error)
	Link(ctx context.Context, ino meta.Ino, dir meta.Ino, name string) (meta.Attr, error)
	Unlink(ctx context.Context, dir meta.Ino, name string) (meta.Freed, error)
	Rmdir(ctx context.Context, dir meta.Ino, name string) error
	Rename(ctx context.Context, fromDir meta.Ino, fromName string, toDir meta.Ino, toName string) (meta.Freed, error)
	SetAttr(ctx context.Context, ino meta.Ino, args meta.SetAttrArgs) (meta.Attr, error)
	ReadDir(ctx context.Context, dir meta.Ino, cookie uint64, limit int) ([]meta.Entry, error)
	StatFS(ctx context.Context) (uint64, error)
}

// Data is what the front needs from the data layer. A Data that is also a
// dataViewer lends large READs their bytes in place (see replyTail).
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

// dataViewer is a Data that can lend file bytes instead of copying them:
// ReadView returns up to n verified bytes of ino at off (size is the file
// size from its attributes) and a function to call once they are sent, or
// ok false, having read nothing, when the bytes are to be read with ReadAt.
type dataViewer interface {
	ReadView(ctx context.Context, ino meta.Ino, size uint64, off int64, n int) (data []byte, release func(), ok bool, err error)
}

// Config configures the NFS front.
type Config struct {
	// OpTimeout bounds each metadata or data call made for one request.
	OpTimeout time.Duration
	// MaxRecord is the largest RPC record accepted; a larger one closes
	// the connection.
	MaxRecord int
	// Exports say who may mount and how; the first admitting a client
	// applies. At most 255.
	Exports []Export
	// MaxConns bounds open client connections in all, MaxConnsPerClient
	// those from one address; a connection over the bound is closed at
	// once. IdleTimeout closes a connection that sent nothing for that long
	// (clients reconnect transparently).
	MaxConns, MaxConnsPerClient int
	IdleTimeout                 time.Duration
	// Gate, when set, decides which NFSv3 calls may run under the
	// cluster's current posture (see Gate); nil allows everything.
	Gate Gate
	// Locks, when set, holds the locks NLM grants: the front then serves
	// NLM v4 and NSM on the NFS port, so clients may mount without
	// `nolock`. A cluster needs one table shared by every node.
	Locks LockTable
}

// DefaultConfig returns the defaults: a loopback-only export.
func DefaultConfig() Config {
	return Config{
		OpTimeout: 30 * time.Second, MaxRecord: 4 << 20,
		Exports:  []Export{LoopbackExport()},
		MaxConns: 4096, MaxConnsPerClient: 64, IdleTimeout: 15 * time.Minute,
	}
}

// Validate reports a configuration error.
func (c Config) Validate() error {
	if c.OpTimeout <= 0 {
		return fmt.Errorf("nfs op timeout %v: must be positive", c.OpTimeout)
	}
	if c.MaxRecord < 64<<10 {
		return fmt.Errorf("nfs max record %d: must be at least 65536", c.MaxRecord)
	}
	if len(c.Exports) == 0 || len(c.Exports) > 255 {
		return fmt.Errorf("nfs exports: %d given, need 1 to 255", len(c.Exports))
	}
	for _, x := range c.Exports {
		if err := x.Validate(); err != nil {
			return err
		}
	}
	if c.MaxConns < 1 || c.MaxConnsPerClient < 1 || c.IdleTimeout <= 0 {
		return fmt.Errorf("nfs connection limits %d total, %d per client, idle %v: must be positive", c.MaxConns, c.MaxConnsPerClient, c.IdleTimeout)
	}
	return nil
}

// Server serves NFSv3, MOUNT and the portmapper on the sockets of
// Listeners.
type Server struct {
	cfg      Config
	log      zerolog.Logger
	handler  *handler
	verifier [8]byte

	mounts mountTable
	nsm    nsmState
	// callSlots bounds the calls served at once over all connections
	// (maxServerCalls), and so the records and replies they pin.
	callSlots chan struct{}
	grants    nlmGrants // blocked NLM requests (nlm_granted.go)
	// replyBufs holds the buffers of large READ replies: a reply
	// returned by dispatch goes back with releaseReply once written.
	replyBufs bufPool
	// inProgress holds the TCP calls being served, so that a client's
	// retransmission of one of them is dropped (dupcalls.go).
	inProgress inProgress
	// completed keeps the replies of calls that changed the namespace,
	// for clients that send them again (dupcalls.go).
	completed completed
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
	s := &Server{cfg: cfg, log: log, callSlots: make(chan struct{}, maxServerCalls)}
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

// Serve serves on ls until ctx ends, then closes ls, lets the calls in
// flight on TCP connections finish and send their replies (for up to
// drainGrace, then they are cancelled), closes every connection and waits
// for their goroutines. If one listener fails, Serve stops the others and
// returns the error.
func (s *Server) Serve(ctx context.Context, ls *Listeners) error {
	s.handler.fs.ctx = ctx
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ep := ls.endpoints()
	ep.locks = s.cfg.Locks != nil
	var wg sync.WaitGroup
	var errMu sync.Mutex
	var errs []error
	run := func(f func() error) {
		wg.Go(func() {
			if err := f(); err != nil {
				errMu.Lock()
				errs = append(errs, err)
				errMu.Unlock()
				cancel()
			}
		})
	}
	run(func() error { return s.serveTCP(ctx, ls.tcp, svcNFS|svcMount|svcPortmap|svcLock, ep) })
	run(func() error { return s.serveUDP(ctx, ls.udp, svcMount|svcPortmap|svcLock, ep) })
	if ls.portmapTCP != nil {
		run(func() error { return s.serveTCP(ctx, ls.portmapTCP, svcPortmap, ep) })
		run(func() error { return s.serveUDP(ctx, ls.portmapUDP, svcPortmap, ep) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// serveTCP accepts connections on l until ctx ends, then closes l and
// waits for its connections, which answer the calls they are serving
// (for up to drainGrace) and close.
func (s *Server) serveTCP(ctx context.Context, l net.Listener, svc services, ep *endpoints) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	conns := make(map[*rpcConn]struct{})
	perClient := make(map[string]int)
	var mu sync.Mutex
	stop := context.AfterFunc(ctx, func() { l.Close() })
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
			l.Close()
			return fmt.Errorf("nfs accept on %s: %w", l.Addr(), err)
		}
		client := clientName(raw.RemoteAddr())
		mu.Lock()
		if open := len(conns); open >= s.cfg.MaxConns || perClient[client] >= s.cfg.MaxConnsPerClient {
			mu.Unlock()
			s.log.Warn().Str("client", client).Int("open", open).Msg("connection refused: connection limit reached")
			raw.Close()
			continue
		}
		c := s.newConn(raw, origin{svc: svc, local: raw.LocalAddr(), remote: raw.RemoteAddr(), ep: ep})
		conns[c] = struct{}{}
		perClient[client]++
		mu.Unlock()
		wg.Go(func() {
			defer func() {
				mu.Lock()
				delete(conns, c)
				if perClient[client]--; perClient[client] == 0 {
					delete(perClient, client)
				}
				mu.Unlock()
			}()
			c.serve(ctx)
		})
	}
}

func (s *Server) newGoNFS(ctx context.Context) *nfs.Server {
	return &nfs.Server{Handler: s.handler, ID: s.verifier, Context: ctx}
}
