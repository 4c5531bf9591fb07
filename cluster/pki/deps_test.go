package pki

import (
	"testing"

	"github.com/wormhole-fs/wormhole/internal/importcheck"
)

// TestStandardLibraryOnly keeps the trust code free of dependencies.
func TestStandardLibraryOnly(t *testing.T) { importcheck.Check(t, importcheck.StandardLibrary) }
