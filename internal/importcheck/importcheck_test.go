package importcheck

import "testing"

func TestRules(t *testing.T) {
	for _, c := range []struct {
		allowed func(string) bool
		path    string
		want    bool
	}{
		{StandardLibrary, "net/http", true},
		{StandardLibrary, "github.com/rs/zerolog", false},
		{StandardLibrary, Module + "/chunker/chunk", false},
		{Wormhole("chunker/chunk"), Module + "/chunker/chunk", true},
		{Wormhole("chunker/chunk"), Module + "/chunker", false},
		{Wormhole("chunker/chunk"), Module + "/chunker/chunkertest", false},
		{Wormhole(), "github.com/rs/zerolog", true},
		{Wormhole(), Module, false},
	} {
		if got := c.allowed(c.path); got != c.want {
			t.Errorf("%s allowed = %v, want %v", c.path, got, c.want)
		}
	}
}
