package otter_test

import (
	"os/exec"
	"strings"
	"testing"
)

const (
	cliPkg    = "github.com/urfave/cli/v2"
	remotePkg = "github.com/google/go-containerregistry/pkg/v1/remote"
	httpPkg   = "net/http"
	otterPkg  = "github.com/otter-fleet/otter/"
)

// TestDependencyFences keeps the library packages free of what belongs
// elsewhere: only cmd/ speaks urfave/cli; the format packages (nix, sign,
// delta) and the SD-card writer never reach a network; the device state
// knows no registry, patch or signature; the transport (oci) holds no
// verification policy.
func TestDependencyFences(t *testing.T) {
	fences := map[string][]string{
		"./nix":             {httpPkg, remotePkg, cliPkg},
		"./bundle":          {httpPkg, remotePkg, cliPkg},
		"./build":           {cliPkg, httpPkg},
		"./sign":            {httpPkg, remotePkg, cliPkg},
		"./delta":           {httpPkg, remotePkg, cliPkg},
		"./image":           {httpPkg, remotePkg, cliPkg, otterPkg + "oci", otterPkg + "device", otterPkg + "delta", otterPkg + "sign"},
		"./state":           {httpPkg, remotePkg, cliPkg, otterPkg + "oci", otterPkg + "delta", otterPkg + "sign", otterPkg + "device"},
		"./oci":             {cliPkg, otterPkg + "sign"},
		"./device":          {cliPkg},
		"./pipelines":       {cliPkg},
		"./internal/fsutil": {httpPkg, cliPkg},
		"./nixdb":           {httpPkg, remotePkg, cliPkg, otterPkg + "oci", otterPkg + "sign", otterPkg + "device"},
		"./boot":            {httpPkg, remotePkg, cliPkg, otterPkg + "oci", otterPkg + "sign", otterPkg + "device"},
	}
	// Only cmd/ speaks urfave/cli: every other package of the module.
	all, err := exec.Command("go", "list", "./...").Output()
	if err != nil {
		t.Fatalf("go list ./...: %v", err)
	}
	for _, p := range strings.Fields(string(all)) {
		if rel := "./" + strings.TrimPrefix(p, otterPkg); !strings.HasPrefix(rel, "./cmd/") && p != strings.TrimSuffix(otterPkg, "/") {
			fences[rel] = append(fences[rel], cliPkg)
		}
	}
	for pkg, banned := range fences {
		out, err := exec.Command("go", "list", "-deps", pkg).Output()
		if err != nil {
			t.Fatalf("go list -deps %s: %v", pkg, err)
		}
		deps := strings.Fields(string(out))
		if len(deps) == 1 && deps[0] == otterPkg+strings.TrimPrefix(pkg, "./") {
			continue // a package of tests alone (internal/bootproof): nothing of it is linked
		}
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

// TestDrillStaysOut: the fleet drill's fault injection (toxiproxy and
// what it brings: prometheus, zerolog) is its own module's business and
// never enters otter's module graph.
func TestDrillStaysOut(t *testing.T) {
	out, err := exec.Command("go", "list", "-m", "all").Output()
	if err != nil {
		t.Fatalf("go list -m all: %v", err)
	}
	if len(strings.Fields(string(out))) < 5 {
		t.Fatalf("go list -m all listed only %q", out)
	}
	for _, m := range []string{"github.com/Shopify/toxiproxy", "github.com/prometheus/client_golang", "github.com/rs/zerolog"} {
		if strings.Contains(string(out), m) {
			t.Errorf("otter's module graph holds %s: it belongs to drill/go.mod", m)
		}
	}
}
