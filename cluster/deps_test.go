package cluster

import (
	"testing"

	"github.com/wormhole-fs/wormhole/internal/importcheck"
)

// TestImportsNoWormholePackage keeps cluster at the bottom of the graph:
// the other layers consume it, it consumes none of them.
func TestImportsNoWormholePackage(t *testing.T) { importcheck.Check(t, importcheck.Wormhole()) }
