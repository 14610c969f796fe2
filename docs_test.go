package otter_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/otter-fleet/otter/internal/testutil"
)

// TestNixOSModuleParses: the NixOS module in docs/building.md is valid Nix
// (nix-instantiate --parse; evaluating it needs nixpkgs, which cannot be
// fetched here).
func TestNixOSModuleParses(t *testing.T) {
	_, err := exec.LookPath("nix-instantiate")
	testutil.Require(t, err == nil, "nix-instantiate (Debian's nix-bin)")
	doc, err := os.ReadFile(filepath.Join("docs", "building.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(doc), "<!-- nixos-module -->\n```nix\n")
	module, _, ok2 := strings.Cut(rest, "```\n<!-- /nixos-module -->")
	if !ok || !ok2 || !strings.Contains(module, "switch") {
		t.Fatal("docs/building.md has no NixOS module between its markers")
	}
	f := filepath.Join(t.TempDir(), "otter.nix")
	if err := os.WriteFile(f, []byte(module), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("nix-instantiate", "--parse", f).CombinedOutput(); err != nil {
		t.Fatalf("nix-instantiate --parse: %v\n%s", err, out)
	}
	// A broken module is caught.
	os.WriteFile(f, []byte(module[:len(module)/2]), 0o644)
	if err := exec.Command("nix-instantiate", "--parse", f).Run(); err == nil {
		t.Fatal("nix-instantiate --parse accepted half a module")
	}
}
