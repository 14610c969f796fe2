package otter_test

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/otter-fleet/otter/internal/testutil"
)

// TestPackages builds the .deb packages twice (byte-identical), keeps
// lintian quiet, installs the amd64 one with dpkg into a scratch root and
// checks its files, runs the installed binary, checks the arm64 one is
// an aarch64 static binary, and verifies the unit with systemd-analyze.
func TestPackages(t *testing.T) {
	for _, tool := range []string{"dpkg", "dpkg-deb", "lintian", "systemd-analyze"} {
		_, err := exec.LookPath(tool)
		testutil.Require(t, err == nil, tool)
	}
	_, err := os.Stat(filepath.Join(".bin", "nfpm"))
	testutil.Require(t, err == nil, ".bin/nfpm (go tool -modfile=tools/task/go.mod task tools)")
	build := func(dir string) {
		cmd := exec.Command("scripts/package.sh", "0.3.0")
		cmd.Env = append(os.Environ(), "DIST="+dir, "SOURCE_DATE_EPOCH=1700000000")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("package.sh: %v\n%s", err, out)
		}
	}
	a, b := t.TempDir(), t.TempDir()
	build(a)
	build(b)
	for _, arch := range []string{"amd64", "arm64"} {
		name := "otter_0.3.0_" + arch + ".deb"
		x, _ := os.ReadFile(filepath.Join(a, name))
		y, _ := os.ReadFile(filepath.Join(b, name))
		if len(x) == 0 || !bytes.Equal(x, y) {
			t.Fatalf("%s: two builds differ (%d and %d bytes)", name, len(x), len(y))
		}
		out, _ := exec.Command("lintian", "-I", filepath.Join(a, name)).CombinedOutput()
		for _, l := range strings.Split(string(out), "\n") {
			if l != "" && !strings.Contains(l, "running with root privileges") {
				t.Errorf("lintian %s: %s", name, l)
			}
		}
	}
	// Install the amd64 package into a scratch root.
	root := t.TempDir()
	for _, d := range []string{"var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/dpkg/triggers"} {
		os.MkdirAll(filepath.Join(root, d), 0o755)
	}
	os.WriteFile(filepath.Join(root, "var/lib/dpkg/status"), nil, 0o644)
	deb := filepath.Join(a, "otter_0.3.0_amd64.deb")
	if out, err := exec.Command("dpkg", "--root="+root, "--log=/dev/null", "--force-script-chrootless", "--force-bad-path", "-i", deb).CombinedOutput(); err != nil {
		t.Fatalf("dpkg -i: %v\n%s", err, out)
	}
	for _, f := range []string{"usr/bin/otter", "lib/systemd/system/otter-agent.service", "usr/share/doc/otter/examples/device.yaml",
		"usr/share/doc/otter/copyright", "usr/share/man/man1/otter.1.gz"} {
		if _, err := os.Stat(filepath.Join(root, f)); err != nil {
			t.Errorf("the package installed no %s", f)
		}
	}
	out, err := exec.Command(filepath.Join(root, "usr/bin/otter"), "version", "--json").Output()
	var v struct{ Version, Platform string }
	if err != nil || json.Unmarshal(out, &v) != nil || v.Version != "0.3.0" || v.Platform != "linux/amd64" {
		t.Fatalf("the installed otter says %s (%v)", out, err)
	}
	if out, err := exec.Command("dpkg", "--root="+root, "-s", "otter").CombinedOutput(); err != nil || !strings.Contains(string(out), "Status: install ok installed") {
		t.Fatalf("dpkg -s: %v %s", err, out)
	}
	// The arm64 binary is a static aarch64 ELF.
	arm := t.TempDir()
	if out, err := exec.Command("dpkg-deb", "-x", filepath.Join(a, "otter_0.3.0_arm64.deb"), arm).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	testutil.StaticARM64(t, filepath.Join(arm, "usr/bin/otter"))
	// The unit, as installed, with its ExecStart pointing at the binary.
	unit, _ := os.ReadFile(filepath.Join(root, "lib/systemd/system/otter-agent.service"))
	check := filepath.Join(t.TempDir(), "otter-agent.service")
	os.WriteFile(check, bytes.ReplaceAll(unit, []byte("/usr/bin/otter"), []byte(filepath.Join(root, "usr/bin/otter"))), 0o644)
	if out, err := exec.Command("systemd-analyze", "verify", "--man=no", check).CombinedOutput(); err != nil || len(bytes.TrimSpace(out)) != 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
	// systemd-analyze does catch a broken unit.
	os.WriteFile(check, append(unit, []byte("\n[Service]\nBogusKey=1\n")...), 0o644)
	if out, _ := exec.Command("systemd-analyze", "verify", "--man=no", check).CombinedOutput(); len(bytes.TrimSpace(out)) == 0 {
		t.Fatal("systemd-analyze verify passed a unit with an unknown key")
	}
}
