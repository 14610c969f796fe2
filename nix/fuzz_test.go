package nix_test

import (
	"path/filepath"
	"testing"

	"github.com/otter-fleet/otter/internal/testutil"
	"github.com/otter-fleet/otter/nix"
)

func FuzzParsePathInfo(f *testing.F) {
	testutil.AddSeeds(f, filepath.Join("..", "testdata", "nix", "pathinfo-*.json"))
	f.Fuzz(func(t *testing.T, data []byte) {
		infos, err := nix.ParsePathInfo(data)
		if err != nil {
			return
		}
		for i, p := range infos {
			if err := nix.ValidateStorePath(p.Path); err != nil {
				t.Fatalf("accepted an invalid path: %v", err)
			}
			if i > 0 && infos[i-1].Path >= p.Path {
				t.Fatal("result not sorted and unique")
			}
			if again, err := nix.ParseHash(p.NarHash.String()); err != nil || again != p.NarHash {
				t.Fatalf("hash %s does not round-trip", p.NarHash)
			}
		}
	})
}
