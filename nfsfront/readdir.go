package nfsfront

import (
	"context"
	"errors"
	"fmt"

	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
)

// READDIR and READDIRPLUS, served page by page from the namespace's
// listing: a reply costs one range read of its own entries (and, for
// READDIRPLUS, one batched attribute read), so listing a directory of n
// entries is O(n) however the client pages it.
//
// Cookies 1 and 2 follow "." and ".."; an entry's cookie is the one the
// namespace gives it (meta.Entry.Cookie), which depends on its name only.
// So a listing resumes from any cookie on any node of a cluster, after a
// restart, and after entries before it were removed: a client that
// switches nodes in the middle of `ls` gets the rest of the directory.
// The cookie verifier is always 0 (RFC 1813 allows it): cookies never go
// stale.

const (
	cookieAfterDot    = 1
	cookieAfterDotDot = 2
	// readdirBatch is the most entries read from the namespace per reply.
	readdirBatch = 1024
)

// errTooSmall means the client's reply size cannot hold one entry.
var errTooSmall = errors.New("reply size limit too small")

// dirEntry is one entry of a reply with its cookie.
type dirEntry struct {
	meta.Entry
	cookie uint64
}

// listPage reads the entries of dir after the cookie, up to fit(entry)
// returning false, and gives them cookies. eof reports the end.
//
// room is the most entries the reply could hold were every name one byte
// long: only that many are read from the namespace.
func (s *Server) listPage(ctx context.Context, dir meta.Attr, cookie uint64, room uint32, fit func(name string) bool) (dots int, ents []dirEntry, eof bool, err error) {
	switch cookie {
	case 0:
		dots = 2
	case cookieAfterDot:
		dots = 1
	}
	for _, name := range dotNames[2-dots:] {
		if !fit(name) {
			return 0, nil, false, fmt.Errorf("readdir reply too small for %q: %w", name, errTooSmall)
		}
	}
	limit := int(min(room+1, readdirBatch))
	raw, err := s.handler.fs.ns.ReadDir(ctx, dir.Ino, cookie, limit)
	if err != nil {
		return 0, nil, false, err
	}
	eof = len(raw) < limit
	for i, e := range raw {
		if fit(e.Name) {
			continue
		}
		// Never end a page inside a group of entries sharing a cookie
		// (a hash collision): resuming from it would skip the rest.
		for i > 0 && raw[i-1].Cookie == raw[i].Cookie {
			i--
		}
		if i == 0 && dots == 0 {
			return 0, nil, false, fmt.Errorf("readdir reply too small for %q: %w", e.Name, errTooSmall)
		}
		raw, eof = raw[:i], false
		break
	}
	ents = make([]dirEntry, len(raw))
	for i, e := range raw {
		ents[i] = dirEntry{Entry: e, cookie: e.Cookie}
	}
	return dots, ents, eof, nil
}

// The names of "." and ".." and the cookies that follow them.
var (
	dotNames   = [2]string{".", ".."}
	dotCookies = [2]uint64{cookieAfterDot, cookieAfterDotDot}
)

// readdirArgs are the arguments both procedures share.
type readdirArgs struct {
	fh      []byte
	cookie  uint64
	verf    uint64
	dirMax  uint32 // READDIR count, READDIRPLUS dircount
	replMax uint32 // READDIR count, READDIRPLUS maxcount
}

func (s *Server) checkDir(ctx context.Context, c creds, a readdirArgs) (meta.Attr, error) {
	dir, err := s.attrFor(ctx, c, a.fh)
	switch {
	case err != nil:
		return dir, err
	case dir.Type != meta.TypeDir:
		return dir, fmt.Errorf("readdir inode %d: %w", dir.Ino, meta.ErrNotDir)
	case !allowed(dir, c, permRead):
		return dir, fmt.Errorf("readdir %d: %w", dir.Ino, errAccess)
	}
	return dir, nil
}

// cookieVerf is the cookie verifier, always 0: cookies are valid on every
// node and forever (see above).
const cookieVerf = 0

func xdrLen(name string) uint32 { return 4 + (uint32(len(name))+3)&^3 }

func (s *Server) readdir(ctx context.Context, c creds, d *xdrDecoder, e *xdrEncoder) {
	a := readdirArgs{fh: d.opaque(maxFHSize), cookie: d.u64(), verf: d.u64()}
	a.dirMax = d.u32()
	a.replMax = a.dirMax
	if d.err != nil {
		return
	}
	dir, err := s.checkDir(ctx, c, a)
	var dots int
	var ents []dirEntry
	var eof bool
	if err == nil {
		// status, post_op_attr, verifier, list end, eof
		used := uint32(4 + 88 + 8 + 4 + 4)
		dots, ents, eof, err = s.listPage(ctx, dir, a.cookie, a.replMax/(4+8+8+8), func(name string) bool {
			n := 4 + 8 + xdrLen(name) + 8 // value_follows, fileid, name, cookie
			if used+n > a.replMax {
				return false
			}
			used += n
			return true
		})
	}
	e.u32(uint32(statusOf(err)))
	encodePostOp(e, dir, dir.Ino != 0)
	if err != nil {
		return
	}
	e.u64(cookieVerf)
	for i := 2 - dots; i < 2; i++ {
		e.bool(true)
		e.u64(uint64(dotIno(dir, i)))
		e.opaque([]byte(dotNames[i]))
		e.u64(dotCookies[i])
	}
	for _, ent := range ents {
		e.bool(true)
		e.u64(uint64(ent.Ino))
		e.opaque([]byte(ent.Name))
		e.u64(ent.cookie)
	}
	e.bool(false)
	e.bool(eof)
}

// dotIno is the inode of "." (i 0) or ".." (i 1) of dir.
func dotIno(dir meta.Attr, i int) meta.Ino {
	if i == 0 {
		return dir.Ino
	}
	return dir.Parent
}

func (s *Server) readdirplus(ctx context.Context, c creds, d *xdrDecoder, e *xdrEncoder) {
	a := readdirArgs{fh: d.opaque(maxFHSize), cookie: d.u64(), verf: d.u64()}
	a.dirMax, a.replMax = d.u32(), d.u32()
	if d.err != nil {
		return
	}
	dir, err := s.checkDir(ctx, c, a)
	var dots int
	var ents []dirEntry
	var eof bool
	if err == nil {
		dirUsed := uint32(0)
		used := uint32(4 + 88 + 8 + 4 + 4)
		// A one-byte name takes 8 bytes of XDR, so an entry at least 24 of
		// dircount.
		dots, ents, eof, err = s.listPage(ctx, dir, a.cookie, a.dirMax/(8+8+8), func(name string) bool {
			dn := 8 + xdrLen(name) + 8                      // fileid, name, cookie
			n := 4 + dn + 4 + 84 + 4 + 4 + (handleLen+3)&^3 // + attrs and handle
			if dirUsed+dn > a.dirMax || used+n > a.replMax {
				return false
			}
			dirUsed += dn
			used += n
			return true
		})
	}
	var attrs []meta.Attr
	if err == nil {
		inos := make([]meta.Ino, 0, len(ents)+2)
		for i := 2 - dots; i < 2; i++ {
			inos = append(inos, dotIno(dir, i))
		}
		for _, ent := range ents {
			inos = append(inos, ent.Ino)
		}
		attrs, err = s.handler.fs.ns.GetAttrs(ctx, inos)
	}
	e.u32(uint32(statusOf(err)))
	encodePostOp(e, dir, dir.Ino != 0)
	if err != nil {
		return
	}
	e.u64(cookieVerf)
	entry := func(ino meta.Ino, name string, cookie uint64, a meta.Attr) {
		e.bool(true)
		e.u64(uint64(ino))
		e.opaque([]byte(name))
		e.u64(cookie)
		ok := a.Ino == ino // removed since the listing: no attributes, no handle
		encodePostOp(e, a, ok)
		e.bool(ok)
		if ok {
			e.opaque(s.handleFor(c, a))
		}
	}
	k := 0
	for i := 2 - dots; i < 2; i++ {
		entry(dotIno(dir, i), dotNames[i], dotCookies[i], attrs[k])
		k++
	}
	for _, ent := range ents {
		entry(ent.Ino, ent.Name, ent.cookie, attrs[k])
		k++
	}
	e.bool(false)
	e.bool(eof)
}
