// Package importcheck lets a package's tests pin what it may import, so
// the layering the architecture describes (chunk at the bottom, the
// composition root at the top, pure packages free of I/O libraries) is
// checked, not only written down.
package importcheck

import (
	"go/parser"
	"go/token"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// Module is the import path prefix of Wormhole's own packages.
const Module = "github.com/wormhole-fs/wormhole"

// Check fails t for each import of the package in the current directory
// (its non-test files) that allowed refuses.
func Check(t testing.TB, allowed func(path string) bool) {
	t.Helper()
	files, err := os.ReadDir(".")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	for _, f := range files {
		name := f.Name()
		if !strings.HasSuffix(name, ".go") || strings.HasSuffix(name, "_test.go") {
			continue
		}
		af, err := parser.ParseFile(fset, name, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range af.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			if !allowed(path) {
				t.Errorf("%s imports %s, which this package must not", name, path)
			}
		}
	}
}

// StandardLibrary allows the standard library only.
func StandardLibrary(path string) bool {
	first, _, _ := strings.Cut(path, "/")
	return !strings.Contains(first, ".")
}

// Wormhole allows any package outside Wormhole, and of Wormhole's own
// only pkgs (paths below Module, such as "chunker/chunk").
func Wormhole(pkgs ...string) func(path string) bool {
	return func(path string) bool {
		rest, ok := strings.CutPrefix(path, Module+"/")
		return !ok && path != Module || slices.Contains(pkgs, rest)
	}
}
