package join

import (
	"go/parser"
	"go/token"
	"os"
	"strconv"
	"strings"
	"testing"
)

// TestImportsOnlyPKI keeps join near the bottom of the dependency graph:
// of Wormhole, it imports cluster/pki only.
func TestImportsOnlyPKI(t *testing.T) {
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
			if strings.HasPrefix(path, "github.com/wormhole-fs/wormhole") && path != "github.com/wormhole-fs/wormhole/cluster/pki" {
				t.Errorf("%s imports %s", name, path)
			}
		}
	}
}
