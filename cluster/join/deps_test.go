package join

import (
	"testing"

	"github.com/wormhole-fs/wormhole/internal/importcheck"
)

// TestImportsOnlyPKI keeps join near the bottom of the dependency graph:
// of Wormhole, it imports cluster/pki only.
func TestImportsOnlyPKI(t *testing.T) { importcheck.Check(t, importcheck.Wormhole("cluster/pki")) }
