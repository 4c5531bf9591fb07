package nfsfront

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
)

// maxDatagram is the largest UDP datagram read; MOUNT and portmapper calls
// are far smaller.
const maxDatagram = 64 << 10

// udpWorkers bounds the calls served at once on one UDP socket. A further
// datagram waits in the socket buffer (or is dropped by the kernel, and
// the client retransmits).
const udpWorkers = 8

// serveUDP answers the calls of svc arriving on pc until ctx ends, then
// closes pc and waits for the calls in flight. Every datagram is one
// record (RFC 5531 has no record marking over UDP). Nothing is forwarded
// to go-nfs: NFS itself is served over TCP only.
func (s *Server) serveUDP(ctx context.Context, pc net.PacketConn, svc services, ep *endpoints) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	stop := context.AfterFunc(ctx, func() { pc.Close() })
	defer stop()
	sem := make(chan struct{}, udpWorkers)
	buf := make([]byte, maxDatagram)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			pc.Close()
			return fmt.Errorf("udp read on %s: %w", pc.LocalAddr(), err)
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return nil
		}
		rec := bytes.Clone(buf[:n])
		o := origin{svc: svc, udp: true, local: pc.LocalAddr(), remote: from, ep: ep}
		wg.Go(func() {
			defer func() { <-sem }()
			reply, _ := s.dispatch(ctx, rec, o)
			if reply == nil {
				return
			}
			if _, err := pc.WriteTo(reply, from); err != nil && ctx.Err() == nil {
				s.log.Debug().Err(err).Str("client", from.String()).Msg("udp reply")
			}
			s.releaseReply(reply)
		})
	}
}
