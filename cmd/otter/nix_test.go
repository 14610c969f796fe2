package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/otter-fleet/otter/device"
	"github.com/otter-fleet/otter/internal/testutil"
	"github.com/otter-fleet/otter/nix"
)

// TestNixPowerLossSIGKILL: otter update on a store Nix owns, killed with
// SIGKILL at the points around registration: the next command leaves
// Nix's database consistent (nix-store --verify --check-contents clean,
// every path of the release on disk valid) and the update completes.
func TestNixPowerLossSIGKILL(t *testing.T) {
	_, err := exec.LookPath("nix-store")
	testutil.Require(t, err == nil, "nix-store (Debian's nix-bin)")
	base := "oci:" + filepath.Join(t.TempDir(), "l")
	trust, digests, closures := fleet(t, base, 2)
	template := testutil.TempStore(t)
	if err := os.MkdirAll(filepath.Join(template, "root", "nix", "store"), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("nix-store", "--store", filepath.Join(template, "root"), "--verify").CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	tpl := deviceDirs{store: filepath.Join(template, "root", "nix", "store"), state: filepath.Join(template, "state"), trust: trust}
	var res device.UpdateResult
	otterJSON(t, &res, append([]string{"update", base + ":r1"}, tpl.args()...)...)
	verify := func(t *testing.T, root string) {
		t.Helper()
		if out, err := exec.Command("nix-store", "--store", root, "--verify", "--check-contents").CombinedOutput(); err != nil || strings.Contains(string(out), "error") {
			t.Fatalf("nix-store --verify --check-contents: %v %s", err, out)
		}
	}
	for _, point := range []string{"phase-apply", "applied", "registered", "generation", "switched", "healthy", "committed"} {
		t.Run(point, func(t *testing.T) {
			dir := testutil.TempStore(t)
			if out, err := exec.Command("cp", "-a", template+"/.", dir).CombinedOutput(); err != nil {
				t.Fatalf("%s %v", out, err)
			}
			root := filepath.Join(dir, "root")
			d := deviceDirs{store: filepath.Join(root, "nix", "store"), state: filepath.Join(dir, "state"), trust: trust}
			err := crashingOtter(t, point, append([]string{"update", base + ":r2", "-q", "--method", "patch"}, d.args()...)...).Run()
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != -1 {
				t.Fatalf("update was not killed at %s: %v", point, err)
			}
			st := status(t, d) // recovers
			if st.Mode != "nix" || st.Current == nil {
				t.Fatalf("after recovery: %+v", st)
			}
			verify(t, root)
			for _, q := range closures[1].Paths {
				if _, err := os.Lstat(filepath.Join(d.store, nix.BaseName(q.Path))); err == nil {
					if out, err := exec.Command("nix-store", "--store", root, "--check-validity", q.Path).CombinedOutput(); err != nil {
						t.Fatalf("%s is on disk but not valid: %s", q.Path, out)
					}
				}
			}
			otterJSON(t, &res, append([]string{"update", base + ":r2"}, d.args()...)...)
			if st := status(t, d); st.Current == nil || st.Current.Digest != digests[1] {
				t.Fatalf("the update again: %+v", st.Current)
			}
			verify(t, root)
		})
	}
}
