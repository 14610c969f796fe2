package otter_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDependencyFences keeps the library packages free of what belongs
// elsewhere: only cmd/ speaks urfave/cli, and the format packages (nix,
// sign, delta) never reach a registry.
func TestDependencyFences(t *testing.T) {
	fences := map[string][]string{
		"./nix":    {"net/http", "github.com/google/go-containerregistry/pkg/v1/remote", "github.com/urfave/cli/v2"},
		"./bundle": {"github.com/urfave/cli/v2"},
		"./build":  {"github.com/urfave/cli/v2", "net/http"},
		"./sign":   {"net/http", "github.com/google/go-containerregistry/pkg/v1/remote", "github.com/urfave/cli/v2"},
		"./delta":  {"github.com/google/go-containerregistry/pkg/v1/remote", "github.com/urfave/cli/v2"},
	}
	for pkg, banned := range fences {
		out, err := exec.Command("go", "list", "-deps", pkg).Output()
		if err != nil {
			t.Fatalf("go list -deps %s: %v", pkg, err)
		}
		deps := strings.Fields(string(out))
		if len(deps) < 5 {
			t.Fatalf("go list -deps %s listed only %v", pkg, deps)
		}
		for _, d := range deps {
			for _, b := range banned {
				if d == b {
					t.Errorf("%s depends on %s", pkg, b)
				}
			}
		}
	}
}
