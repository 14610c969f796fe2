package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/otter-fleet/otter/internal/testutil"
	"github.com/otter-fleet/otter/nix"
)

func TestBinfmtStatus(t *testing.T) {
	testutil.LockBinfmt(t, false)
	code, out, errs := otter(t, "binfmt", "status", "--json")
	var st binfmtStatusResult
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("binfmt status --json printed %q (%s): %v", out, errs, err)
	}
	if st.Usable != (code == 0) {
		t.Fatalf("usable %v but exit %d", st.Usable, code)
	}
	if !st.Usable && (st.Problem == "" || st.Fix == "") {
		t.Fatalf("unusable without a problem and fix: %+v", st)
	}
	testutil.Require(t, st.Usable, "aarch64 emulation (otter binfmt install)")
	if st.SelfTest == nil || !st.SelfTest.OK || !st.Handler.FixBinary() {
		t.Fatalf("status %+v", st)
	}
}

// TestCrossBuildToDevice is the cross-build from end to end: otter builds
// a three-path aarch64 closure with sandboxed Nix through qemu, bundles
// it, extracts it into an empty store, checks every NAR hash against
// Nix's own, and runs the built aarch64 busybox from the extracted store.
func TestCrossBuildToDevice(t *testing.T) {
	_, err := exec.LookPath("nix")
	testutil.Require(t, err == nil, "nix (apt-get install nix-bin)")
	testutil.LockBinfmt(t, false)
	t.Setenv("NIX_CONFIG", "sandbox = true\nsandbox-fallback = false")
	bb := testutil.ArmBusybox(t)
	tag := testutil.Nonce()
	layout := filepath.Join(t.TempDir(), "layout")
	var res buildResult
	otterJSON(t, &res, "build", "-f", "../../testdata/cross/closure.nix", "-A", "app",
		"--argstr", "bbdir="+bb, "--argstr", "tag="+tag, "--out", "oci:"+layout+":app", "--release-version", "3")
	if len(res.Outputs) != 1 || res.Bundle == nil || res.Bundle.Paths != 3 || res.Bundle.Version != 3 || res.System != "aarch64-linux" {
		t.Fatalf("build result %+v %+v", res.Result, res.Bundle)
	}
	store := testutil.TempStore(t)
	var x extractResult
	otterJSON(t, &x, "extract", "oci:"+layout+":app", store)
	infos, err := nix.QueryClosure(t.Context(), res.Outputs[0].Path)
	if err != nil {
		t.Fatal(err)
	}
	c, err := nix.NewClosure(res.Outputs[0].Path, infos)
	if err != nil {
		t.Fatal(err)
	}
	testutil.VerifyStore(t, c, store)

	tools, _ := filepath.Glob(filepath.Join(store, "*-otter-cross-tools-"+tag, "bin", "busybox"))
	greeting, _ := filepath.Glob(filepath.Join(store, "*-otter-cross-greeting-"+tag, "share", "greeting"))
	if len(tools) != 1 || len(greeting) != 1 {
		t.Fatalf("extracted store lacks the built files: %v %v", tools, greeting)
	}
	head := make([]byte, 20)
	f, _ := os.Open(tools[0])
	f.Read(head)
	f.Close()
	if head[18] != 0xb7 {
		t.Fatalf("%s is not an aarch64 ELF (e_machine %#x)", tools[0], head[18])
	}
	out, err := exec.Command(tools[0], "cat", greeting[0]).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "hello from aarch64 ("+tag+"), built on aarch64") {
		t.Fatalf("running the extracted aarch64 busybox: %v %q", err, out)
	}
}

func TestBuildFailureMakesNoBundle(t *testing.T) {
	_, err := exec.LookPath("nix")
	testutil.Require(t, err == nil, "nix (apt-get install nix-bin)")
	testutil.LockBinfmt(t, false)
	layout := filepath.Join(t.TempDir(), "layout")
	code, _, errs := otter(t, "build", "-f", "../../testdata/cross/closure.nix", "-A", "app", "-q",
		"--argstr", "bbdir="+testutil.ArmBusybox(t), "--argstr", "tag="+testutil.Nonce(), "--argstr", "fail=1", "--out", "oci:"+layout+":app")
	if code != exitBuild || !strings.Contains(errs, "build failed") {
		t.Fatalf("exit %d: %s", code, errs)
	}
	if _, err := os.Stat(layout); !os.IsNotExist(err) {
		t.Fatalf("a failed build left %s: %v", layout, err)
	}
	code, _, errs = otter(t, "build", "-f", "../../testdata/cross/closure.nix", "-A", "nope", "--argstr", "bbdir="+testutil.ArmBusybox(t))
	if code != exitNotFound || !strings.Contains(errs, "nope") {
		t.Fatalf("missing attribute: exit %d: %s", code, errs)
	}
	if code, _, _ := otter(t, "build"); code != exitUsage {
		t.Fatalf("no installable: exit %d", code)
	}
}
