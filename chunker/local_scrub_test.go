package chunker

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wormhole-fs/wormhole/chunker/chunk"
)

func TestLocalVerify(t *testing.T) {
	data := pattern(3*BlockSize+100, 5)
	fileSize := int64(dataOffset(len(data)) + len(data))
	last := dataOffset(len(data)) + len(data) - 1
	tests := []struct {
		name    string
		damage  func(b []byte) []byte // nil: leave the file alone
		wantErr error
	}{
		{"intact", nil, nil},
		// Block 2, which a range read of the first blocks would not see.
		{"flip in a late block", func(b []byte) []byte { b[dataOffset(len(data))+2*BlockSize+7] ^= 1; return b }, chunk.ErrCorrupt},
		{"flip in the last byte", func(b []byte) []byte { b[last] ^= 0x80; return b }, chunk.ErrCorrupt},
		{"flip in the block-sum table", func(b []byte) []byte { b[headerSizeV2+40] ^= 1; return b }, chunk.ErrCorrupt},
		{"flip in the magic", func(b []byte) []byte { b[1] ^= 1; return b }, chunk.ErrCorrupt},
		{"truncated", func(b []byte) []byte { return b[:len(b)-1] }, chunk.ErrCorrupt},
		{"truncated into the header", func(b []byte) []byte { return b[:30] }, chunk.ErrCorrupt},
		{"empty file", func(b []byte) []byte { return b[:0] }, chunk.ErrCorrupt},
		{"extended", func(b []byte) []byte { return append(b, 0) }, chunk.ErrCorrupt},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := openTestStore(t)
			id := chunk.NewID()
			if _, err := s.Put(t.Context(), id, data); err != nil {
				t.Fatal(err)
			}
			if tt.damage != nil {
				writeFile(t, s.Path(id), tt.damage(readFile(t, s.Path(id))))
			}
			n, err := s.Verify(t.Context(), id)
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil) != (err == nil) {
				t.Fatalf("Verify = %d, %v; want %v", n, err, tt.wantErr)
			}
			if err != nil && !strings.Contains(err.Error(), s.Path(id)) {
				t.Errorf("Verify error %q does not name the path %s", err, s.Path(id))
			}
			if tt.wantErr == nil && n != fileSize {
				t.Errorf("Verify read %d bytes, want the file size %d", n, fileSize)
			}
			// Get agrees with Verify.
			if _, gerr := s.Get(t.Context(), id); !errors.Is(gerr, tt.wantErr) || (tt.wantErr == nil) != (gerr == nil) {
				t.Errorf("Get = %v, Verify = %v", gerr, err)
			}
		})
	}
}

func TestLocalVerifyVersion1AndEmpty(t *testing.T) {
	s := openTestStore(t)
	v1 := chunk.NewID()
	data := pattern(1000, 9)
	writeFile(t, s.Path(v1), encodeChunkV1(v1, data))
	if n, err := s.Verify(t.Context(), v1); err != nil || n != int64(headerSizeV1+len(data)) {
		t.Fatalf("Verify of a version 1 chunk = %d, %v", n, err)
	}
	b := readFile(t, s.Path(v1))
	b[len(b)-1] ^= 1
	writeFile(t, s.Path(v1), b)
	if _, err := s.Verify(t.Context(), v1); !errors.Is(err, chunk.ErrCorrupt) {
		t.Fatalf("Verify of a damaged version 1 chunk = %v, want ErrCorrupt", err)
	}

	empty := chunk.NewID()
	if _, err := s.Put(t.Context(), empty, nil); err != nil {
		t.Fatal(err)
	}
	if n, err := s.Verify(t.Context(), empty); err != nil || n != headerSizeV2 {
		t.Fatalf("Verify of an empty chunk = %d, %v", n, err)
	}
}

func TestLocalVerifyMissingAndCancelled(t *testing.T) {
	s := openTestStore(t)
	if _, err := s.Verify(t.Context(), chunk.NewID()); !errors.Is(err, chunk.ErrNotFound) {
		t.Fatalf("Verify of a missing chunk = %v, want ErrNotFound", err)
	}
	id := chunk.NewID()
	if _, err := s.Put(t.Context(), id, []byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(s.Path(id)); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(s.Path(id), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Verify(t.Context(), id); !errors.Is(err, chunk.ErrCorrupt) {
		t.Fatalf("Verify of a directory in a chunk's place = %v, want ErrCorrupt", err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := s.Verify(ctx, id); !errors.Is(err, ctx.Err()) {
		t.Fatalf("Verify with a cancelled context = %v", err)
	}
}

func TestLocalQuarantine(t *testing.T) {
	s := openTestStore(t)
	ctx := t.Context()
	bad, good := chunk.NewID(), chunk.NewID()
	for _, id := range []chunk.ID{bad, good} {
		if _, err := s.Put(ctx, id, []byte("data of "+id.String())); err != nil {
			t.Fatal(err)
		}
	}
	damaged := readFile(t, s.Path(bad))
	damaged[len(damaged)-1] ^= 1
	writeFile(t, s.Path(bad), damaged)

	before := time.Now().Unix()
	if err := s.Quarantine(ctx, bad); err != nil {
		t.Fatalf("Quarantine: %v", err)
	}
	after := time.Now().Unix()
	if _, err := s.Get(ctx, bad); !errors.Is(err, chunk.ErrNotFound) {
		t.Errorf("Get after Quarantine = %v, want ErrNotFound", err)
	}
	if ids := listAll(t, s); !slices.Equal(ids, []chunk.ID{good}) {
		t.Errorf("List after Quarantine = %v, want only %s", ids, good)
	}
	if _, err := s.Get(ctx, good); err != nil {
		t.Errorf("Get of the other chunk: %v", err)
	}

	entries, err := os.ReadDir(filepath.Join(s.Dir(), QuarantineDir))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Fatalf("quarantine holds %d files, want 1", len(entries))
	}
	name := entries[0].Name()
	ts, ok := strings.CutPrefix(name, bad.String()+".")
	if !ok {
		t.Fatalf("quarantined file %q is not named by the chunk ID", name)
	}
	unix, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		t.Fatalf("quarantined file %q: no Unix time after the ID: %v", name, err)
	}
	if unix < before || unix > after {
		t.Errorf("quarantined file %q: time %d not in [%d, %d]", name, unix, before, after)
	}
	if got := readFile(t, filepath.Join(s.Dir(), QuarantineDir, name)); string(got) != string(damaged) {
		t.Error("the quarantined file does not hold the damaged bytes")
	}

	// Quarantining the same ID again (a copy put back, found bad again)
	// keeps both files, even within one second.
	if _, err := s.Put(ctx, bad, []byte("again")); err != nil {
		t.Fatal(err)
	}
	if err := s.Quarantine(ctx, bad); err != nil {
		t.Fatalf("second Quarantine: %v", err)
	}
	if entries, _ := os.ReadDir(filepath.Join(s.Dir(), QuarantineDir)); len(entries) != 2 {
		t.Errorf("quarantine holds %d files after two quarantines of one ID, want 2", len(entries))
	}

	if err := s.Quarantine(ctx, chunk.NewID()); !errors.Is(err, chunk.ErrNotFound) {
		t.Errorf("Quarantine of a missing chunk = %v, want ErrNotFound", err)
	}

	// The store reopens with its quarantine in place and still lists only
	// the good chunk.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, err := OpenLocal(s.Dir(), testLogger(t))
	if err != nil {
		t.Fatalf("reopen with a quarantine directory: %v", err)
	}
	defer func() { _ = s2.Close() }()
	if ids := listAll(t, s2); !slices.Equal(ids, []chunk.ID{good}) {
		t.Errorf("List after reopening = %v, want only %s", ids, good)
	}
	if entries, _ := os.ReadDir(filepath.Join(s.Dir(), QuarantineDir)); len(entries) != 2 {
		t.Errorf("reopening removed quarantined files: %d left", len(entries))
	}
}

// PruneQuarantine deletes the copies set aside before its time (counted
// to the second the name records) and leaves younger ones, files an
// operator put there, and the store's chunks alone.
func TestLocalPruneQuarantine(t *testing.T) {
	s := openTestStore(t)
	ctx := t.Context()
	if n, b, err := s.PruneQuarantine(ctx, time.Now()); n != 0 || b != 0 || err != nil {
		t.Fatalf("PruneQuarantine with no quarantine: %d, %d, %v", n, b, err)
	}
	bad, good := chunk.NewID(), chunk.NewID()
	for _, id := range []chunk.ID{bad, good} {
		if _, err := s.Put(ctx, id, []byte("data of "+id.String())); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Quarantine(ctx, bad); err != nil {
		t.Fatal(err)
	}
	quarantined := time.Now()
	dir := filepath.Join(s.Dir(), QuarantineDir)
	entries, err := os.ReadDir(dir)
	if err != nil || len(entries) != 1 {
		t.Fatalf("quarantine: %d files, %v", len(entries), err)
	}
	info, err := entries[0].Info()
	if err != nil {
		t.Fatal(err)
	}
	notes := filepath.Join(dir, "notes.txt")
	writeFile(t, notes, []byte("kept by the operator"))
	stale := filepath.Join(dir, bad.String()+".17000.x")
	writeFile(t, stale, []byte("not a name Quarantine gives"))

	if n, _, err := s.PruneQuarantine(ctx, quarantined.Add(-time.Hour)); n != 0 || err != nil {
		t.Fatalf("PruneQuarantine an hour before: %d deleted, %v; want none", n, err)
	}
	n, b, err := s.PruneQuarantine(ctx, quarantined.Add(2*time.Second))
	if err != nil || n != 1 || b != info.Size() {
		t.Fatalf("PruneQuarantine after: %d files, %d bytes, %v; want 1, %d", n, b, err, info.Size())
	}
	left, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range left {
		names = append(names, e.Name())
	}
	if want := []string{filepath.Base(stale), "notes.txt"}; !slices.Equal(names, want) {
		t.Errorf("quarantine after pruning holds %v, want %v", names, want)
	}
	if ids := listAll(t, s); !slices.Equal(ids, []chunk.ID{good}) {
		t.Errorf("List after pruning = %v, want %s", ids, good)
	}
}
