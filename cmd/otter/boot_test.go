package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/otter-fleet/otter/boot"
	"github.com/otter-fleet/otter/device"
	"github.com/otter-fleet/otter/internal/testutil"
)

// TestTriedBootCommands drives a tried boot through the command line, on
// an EFI device whose ESP is a directory: otter update stages a release
// with a new init (--json says reboot; --reboot runs the tryboot
// command), otter status shows the trial, otter confirm keeps it in its
// tried boot, and in a boot after a tried boot that did not confirm
// exits 22 with the release in failed.json; otter update refuses while a
// release is staged (25).
func TestTriedBootCommands(t *testing.T) {
	key, _, trust := keys(t, t.TempDir(), "release")
	base := "oci:" + filepath.Join(t.TempDir(), "l")
	for i := 1; i <= 3; i++ {
		dir := testutil.TempStore(t)
		store := filepath.Join(dir, "nix", "store")
		c := testutil.OnePath(t, store, fmt.Sprintf("otter-cli-boot-release-%d", i), map[string][]byte{
			"boot/Image": []byte("kernel"), "boot/initrd": []byte("initrd"), "init": []byte(fmt.Sprintf("#!/bin/sh\necho %d\n", i))})
		data, err := json.Marshal(c.Paths)
		if err != nil {
			t.Fatal(err)
		}
		pi := filepath.Join(dir, "path-info.json")
		if err := os.WriteFile(pi, data, 0o644); err != nil {
			t.Fatal(err)
		}
		ref := base + ":r" + strconv.Itoa(i)
		otterJSON(t, &bundleResult{}, "bundle", "--store-dir", dir, "--path-info", pi, c.Root, "--out", ref, "--release-version", strconv.Itoa(i))
		otterJSON(t, &signResult{}, "sign", ref, "--key", key, "--expires", "720h")
	}
	d := deviceDirs{store: testutil.TempStore(t), state: t.TempDir(), trust: trust}
	espDir, cmdline, bootID := t.TempDir(), filepath.Join(t.TempDir(), "cmdline"), filepath.Join(t.TempDir(), "boot_id")
	esp := &boot.EFI{ESP: boot.Dir(espDir)}
	tried := filepath.Join(t.TempDir(), "tried")
	write := func(p, s string) {
		t.Helper()
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(cmdline, "root=PARTUUID=1 panic=5 init=/sbin/init")
	write(bootID, "0")
	args := func(cmd string, extra ...string) []string {
		return append(append([]string{cmd}, d.args("--boot-loader", "efi", "--esp", espDir, "--boot-cmdline", cmdline, "--boot-id", bootID,
			"--tryboot-command", "echo tried > "+tried)...), extra...)
	}
	boots := 0
	reset := func() int {
		t.Helper()
		e, opts, err := boot.FirmwareEFI(esp)
		if err != nil {
			t.Fatal(err)
		}
		boots++
		write(cmdline, "initrd=\\otter\\"+strconv.Itoa(e.Generation)+"\\initrd "+opts)
		write(bootID, strconv.Itoa(boots))
		return e.Generation
	}

	var res device.UpdateResult
	otterJSON(t, &res, args("update", base+":r1", "--reboot")...)
	if res.To != 1 || !strings.Contains(res.Reboot, "echo tried") {
		t.Fatalf("update to release 1: %+v", res)
	}
	if data, err := os.ReadFile(tried); err != nil || strings.TrimSpace(string(data)) != "tried" {
		t.Fatalf("--reboot did not run the tryboot command: %q %v", data, err)
	}
	if code, _, _ := otter(t, args("update", base+":r2")...); code != exitBusy {
		t.Fatalf("an update while release 1 is staged: exit %d", code)
	}
	if reset() != 1 {
		t.Fatal("the reset did not boot generation 1")
	}
	if code, out, _ := otter(t, args("status")...); code != 0 || !strings.Contains(out, "booted generation 1") || !strings.Contains(out, "running now; otter confirm keeps it") {
		t.Fatalf("status in the tried boot: exit %d\n%s", code, out)
	}
	var conf device.ConfirmResult
	otterJSON(t, &conf, args("confirm")...)
	if conf.Confirmed != 1 {
		t.Fatalf("confirm: %+v", conf)
	}

	// Release 2 is staged and tried, and the boot never confirms (the
	// firmware's tries run out); the boot after it reports it.
	otterJSON(t, &res, args("update", base+":r2", "--reboot")...)
	for i := 0; i < boot.Tries; i++ {
		if reset() != 2 {
			t.Fatal("the reset did not try generation 2")
		}
	}
	if reset() != 1 {
		t.Fatal("after its tries the reset did not boot generation 1")
	}
	code, _, errs := otter(t, args("confirm")...)
	if code != exitRolledBack || !strings.Contains(errs, "did not confirm") {
		t.Fatalf("confirm after a failed tried boot: exit %d: %s", code, errs)
	}
	st := status(t, d)
	if st.Current == nil || st.Current.Number != 1 || st.Failed[res.Target] == "" || st.Last.Result != "rolled-back" {
		t.Fatalf("status after the failed tried boot: %+v", st)
	}
	if code, _, _ := otter(t, args("update", base+":r2")...); code != exitKnownBad {
		t.Fatalf("release 2 again: exit %d", code)
	}
}
