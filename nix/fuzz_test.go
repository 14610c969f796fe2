package nix_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/otter-fleet/otter/nix"
)

func FuzzParsePathInfo(f *testing.F) {
	seeds, err := filepath.Glob(filepath.Join("..", "testdata", "nix", "pathinfo-*.json"))
	if err != nil || len(seeds) == 0 {
		f.Fatalf("no seed path-info files in testdata/nix (%v)", err)
	}
	for _, s := range seeds {
		data, err := os.ReadFile(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
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
