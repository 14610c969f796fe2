package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/otter-fleet/otter/device"
	"github.com/otter-fleet/otter/internal/testutil"
)

// TestOptionsRefuseBadValues: options validate themselves; a value a
// command cannot work with is a usage error (2) naming the flag, never
// replaced by a default.
func TestOptionsRefuseBadValues(t *testing.T) {
	d := deviceDirs{store: testutil.TempStore(t), state: t.TempDir(), trust: filepath.Join(t.TempDir(), "none.json")}
	for _, tc := range []struct {
		args []string
		flag string
	}{
		{append([]string{"gc"}, d.args("--keep", "0")...), "--keep"},
		{append([]string{"status"}, d.args("--keep", "-1")...), "--keep"},
		{append([]string{"update", "oci:/nonexistent"}, d.args("--retries", "0")...), "--retries"},
		{append([]string{"update", "oci:/nonexistent"}, d.args("--health-timeout", "0s")...), "--health-timeout"},
		{append([]string{"update", "oci:/nonexistent"}, d.args("--method", "fastest")...), "--method"},
		{append([]string{"status", "extra"}, d.args()...), "no arguments"},
		{append([]string{"status"}, d.args("--nix", "maybe")...), "--nix"},
		{append([]string{"status"}, d.args("--nixos-switch", "reboot")...), "--nixos-switch"},
		{[]string{"delta", "oci:/nonexistent", "--from", "oci:/x", "--max-share", "0"}, "--max-share"},
		{[]string{"verify", "oci:/nonexistent", "--trust", "t.json", "--cosign", "--envelope", "e.json"}, "--cosign"},
		{[]string{"trust", "init", "--key", "k.pub", "--threshold", "0"}, "--threshold"},
	} {
		code, _, errs := otter(t, tc.args...)
		if code != exitUsage || !strings.Contains(errs, tc.flag) {
			t.Errorf("otter %v: exit %d, %q; want %d naming %s", tc.args, code, errs, exitUsage, tc.flag)
		}
	}
}

// TestNixModeDetected: a store with a Nix database beside it is a Nix
// store unless --nix off; status says which.
func TestNixModeDetected(t *testing.T) {
	_, store := testutil.NixChrootStore(t)
	for _, tc := range []struct {
		store, nix, want string
	}{
		{store, "auto", "nix"},
		{store, "off", "plain"},
		{testutil.TempStore(t), "auto", "plain"},
	} {
		var st device.Status
		otterJSON(t, &st, "status", "--store", tc.store, "--state", t.TempDir(), "--nix", tc.nix)
		if st.Mode != tc.want {
			t.Errorf("--store %s --nix %s: mode %q, want %q", tc.store, tc.nix, st.Mode, tc.want)
		}
	}
}

// TestDeviceConfigFile: device commands read the config file, flags
// override it, and a bad file is refused naming file:line and field.
func TestDeviceConfigFile(t *testing.T) {
	base := "oci:" + filepath.Join(t.TempDir(), "l")
	trust, digests, _ := fleet(t, base, 1)
	store, state := testutil.TempStore(t), t.TempDir()
	conf := filepath.Join(t.TempDir(), "device.yaml")
	os.WriteFile(conf, []byte("version: 1\nrelease: "+base+":r1\nchannel: stable\ntrust: "+trust+"\nstore: "+store+"\nstate: "+state+"\nkeep: 2\n"), 0o644)
	var res device.UpdateResult
	otterJSON(t, &res, "update", "--config", conf)
	if res.Target != digests[0] {
		t.Fatalf("update from the config file: %+v", res)
	}
	var st device.Status
	otterJSON(t, &st, "status", "--config", conf)
	if st.Store != store || st.Current == nil {
		t.Fatalf("status from the config file: %+v", st)
	}
	// A flag overrides the file.
	if code, _, errs := otter(t, "gc", "--config", conf, "--keep", "0"); code != exitUsage || !strings.Contains(errs, "--keep") {
		t.Fatalf("--keep 0 over a file's keep: 2: exit %d %s", code, errs)
	}
	os.WriteFile(conf, []byte("version: 1\nrelease: "+base+":r1\ntrust: "+trust+"\nkep: 2\n"), 0o644)
	if code, _, errs := otter(t, "status", "--config", conf); code != exitUsage || !strings.Contains(errs, "device.yaml:4: unknown field kep") {
		t.Fatalf("a misspelt field: exit %d %s", code, errs)
	}
}
