package nfsfront

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"github.com/wormhole-fs/wormhole/etcdmeta/meta"
)

// READDIR and READDIRPLUS, served page by page from the namespace's
// key-ordered listing: a reply costs one range read of its own entries
// (and, for READDIRPLUS, one batched attribute read), so listing a
// directory of n entries is O(n) however the client pages it.
//
// A cookie names a position: cookies 1 and 2 follow "." and "..", and an
// entry's cookie is page<<32 | index, where page identifies, in a bounded
// table, the directory and the name the page started after. Resuming at
// the last entry of a page (what clients do) costs nothing extra; resuming
// in the middle re-reads that page's head. Cookies are per server
// process: after a restart, or when the table has forgotten a page, the
// client gets NFS3ERR_BAD_COOKIE and restarts the listing.

const (
	cookieAfterDot    = 1
	cookieAfterDotDot = 2
	// maxCookiePages bounds the page table (about 100 bytes a page).
	maxCookiePages = 1 << 16
	// readdirBatch is the most entries read from the namespace per reply.
	readdirBatch = 1024
)

// Errors of directory listing; errors.go maps them to NFS status.
var (
	errBadCookie = errors.New("readdir cookie unknown or from another server instance")
	errTooSmall  = errors.New("reply size limit too small")
)

// cookiePage is where one reply page started.
type cookiePage struct {
	dir   meta.Ino
	after string // the page's entries come after this name
	count uint32 // entries in the page
	last  string // name of its last entry
}

// cookieTable maps reply pages to their start, bounded FIFO.
type cookieTable struct {
	mu    sync.Mutex
	next  uint32
	pages map[uint32]cookiePage
	order []uint32
}

func (t *cookieTable) add(p cookiePage) uint32 {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.pages == nil {
		t.pages = make(map[uint32]cookiePage)
	}
	t.next++
	if t.next == 0 {
		t.next = 1
	}
	id := t.next
	t.pages[id] = p
	t.order = append(t.order, id)
	if len(t.order) > maxCookiePages {
		delete(t.pages, t.order[0])
		t.order = t.order[1:]
	}
	return id
}

func (t *cookieTable) get(id uint32) (cookiePage, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	p, ok := t.pages[id]
	return p, ok
}

// dirEntry is one entry of a reply with its cookie.
type dirEntry struct {
	meta.Entry
	cookie uint64
}

// resume turns a cookie into the name to list after, and whether "." and
// ".." are still to come.
func (s *Server) resume(ctx context.Context, dir meta.Ino, cookie uint64) (after string, dots int, err error) {
	switch cookie {
	case 0:
		return "", 2, nil
	case cookieAfterDot:
		return "", 1, nil
	case cookieAfterDotDot:
		return "", 0, nil
	}
	p, ok := s.cookies.get(uint32(cookie >> 32))
	idx := uint32(cookie)
	if !ok || p.dir != dir || idx == 0 || idx > p.count {
		return "", 0, errBadCookie
	}
	if idx == p.count {
		return p.last, 0, nil
	}
	ents, err := s.handler.fs.ns.ReadDir(ctx, dir, p.after, int(idx))
	if err != nil {
		return "", 0, err
	}
	if len(ents) == 0 {
		return p.after, 0, nil
	}
	return ents[len(ents)-1].Name, 0, nil
}

// listPage reads the entries of dir after the cookie, up to fit(entry)
// returning false, and gives them cookies. eof reports the end.
func (s *Server) listPage(ctx context.Context, dir meta.Attr, cookie uint64, fit func(name string) bool) (dots int, ents []dirEntry, eof bool, err error) {
	after, dots, err := s.resume(ctx, dir.Ino, cookie)
	if err != nil {
		return 0, nil, false, err
	}
	for _, name := range dotNames[2-dots:] {
		if !fit(name) {
			return 0, nil, false, fmt.Errorf("readdir reply too small for %q: %w", name, errTooSmall)
		}
	}
	raw, err := s.handler.fs.ns.ReadDir(ctx, dir.Ino, after, readdirBatch)
	if err != nil {
		return 0, nil, false, err
	}
	eof = len(raw) < readdirBatch
	for i, e := range raw {
		if !fit(e.Name) {
			if i == 0 && dots == 0 {
				return 0, nil, false, fmt.Errorf("readdir reply too small for %q: %w", e.Name, errTooSmall)
			}
			raw, eof = raw[:i], false
			break
		}
	}
	if len(raw) > 0 {
		page := s.cookies.add(cookiePage{dir: dir.Ino, after: after, count: uint32(len(raw)), last: raw[len(raw)-1].Name})
		ents = make([]dirEntry, len(raw))
		for i, e := range raw {
			ents[i] = dirEntry{Entry: e, cookie: uint64(page)<<32 | uint64(i+1)}
		}
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
	case a.cookie != 0 && a.verf != s.cookieVerf():
		return dir, errBadCookie
	}
	return dir, nil
}

// cookieVerf is the cookie verifier: it changes with every server start,
// when the cookie table starts empty.
func (s *Server) cookieVerf() uint64 { return binary.BigEndian.Uint64(s.verifier[:]) }

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
		dots, ents, eof, err = s.listPage(ctx, dir, a.cookie, func(name string) bool {
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
	e.u64(s.cookieVerf())
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
		dots, ents, eof, err = s.listPage(ctx, dir, a.cookie, func(name string) bool {
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
	e.u64(s.cookieVerf())
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
