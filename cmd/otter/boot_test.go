package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/otter-fleet/otter/agent"
	"github.com/otter-fleet/otter/boot"
	"github.com/otter-fleet/otter/device"
	"github.com/otter-fleet/otter/internal/testutil"
	"github.com/otter-fleet/otter/oci"
)

// bootFleet publishes releases 1..n, each one store path with a boot
// part and its own init, signed, at base:rN; it returns base and the
// trust file.
func bootFleet(t *testing.T, n int) (base, trust string) {
	t.Helper()
	key, _, trust := keys(t, t.TempDir(), "release")
	base = "oci:" + filepath.Join(t.TempDir(), "l")
	for i := 1; i <= n; i++ {
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
	return base, trust
}

// TestTriedBootCommands drives a tried boot through the command line, on
// an EFI device whose ESP is a directory: otter update stages a release
// with a new init (--json says reboot; --reboot runs the tryboot
// command), otter status shows the trial, otter confirm keeps it in its
// tried boot, and in a boot after a tried boot that did not confirm
// exits 22 with the release in failed.json; otter update refuses while a
// release is staged (25).
func TestTriedBootCommands(t *testing.T) {
	base, trust := bootFleet(t, 3)
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

// TestAgentTriedBoot: the agent reboots into what it stages (after
// recording it), tries at start a release staged but never tried (the
// power went before its reboot), and confirms the tried boot when it
// starts in it.
func TestAgentTriedBoot(t *testing.T) {
	base, trust := bootFleet(t, 1)
	d := deviceDirs{store: testutil.TempStore(t), state: t.TempDir(), trust: trust}
	espDir, cmdline, bootID := t.TempDir(), filepath.Join(t.TempDir(), "cmdline"), filepath.Join(t.TempDir(), "boot_id")
	for p, s := range map[string]string{cmdline: "root=PARTUUID=1 init=/sbin/init", bootID: "0"} {
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	conf, _, _ := agentDevice(t, base, trust, 1, "schedule: {interval: 1m, jitter: 0s, afterBoot: 0s}\nboot: {loader: efi, esp: "+espDir+", tryboot: tryboot-now}\n")
	cfg, err := agent.Load(conf)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := loadTrust(trust)
	if err != nil {
		t.Fatal(err)
	}
	b, err := cfg.Boot.Device()
	if err != nil {
		t.Fatal(err)
	}
	b.Cmdline, b.BootID = cmdline, bootID
	ref, _ := oci.ParseRef(base+":r1", false)
	var reboots []string
	var log strings.Builder
	a := func() *agent.Agent {
		return &agent.Agent{Config: cfg, Ref: ref, Log: &log, Boot: time.Now().Add(-time.Hour),
			Device: device.Config{Store: d.store, State: d.state, Trust: tr, System: "aarch64-linux", Channel: "stable", NoFsync: true, Boot: b},
			Reboot: func(_ context.Context, argv []string) error {
				reboots = append(reboots, strings.Join(argv, " "))
				return nil
			}}
	}
	trial := func() *device.Trial {
		t.Helper()
		dev, _, err := device.Open(context.Background(), device.Config{Store: d.store, State: d.state, Boot: b, NoFsync: true})
		if err != nil {
			t.Fatal(err)
		}
		defer dev.Close()
		tr, err := dev.Trial()
		if err != nil {
			t.Fatal(err)
		}
		return tr
	}

	// A poll stages release 1, records the reboot and runs the tryboot
	// command.
	if err := a().Run(context.Background(), true); err != nil {
		t.Fatal(err)
	}
	if len(reboots) != 1 || reboots[0] != "/bin/sh -c tryboot-now" || trial().Phase != "rebooting" {
		t.Fatalf("after staging: reboots %v, trial %+v\n%s", reboots, trial(), log.String())
	}

	// Say the power went before that reboot, on a device where an
	// ordinary reset does not take the new entry (a Pi; here the EFI
	// entry is put back untried): staged, the agent tries it at start.
	if err := os.WriteFile(filepath.Join(d.state, "boot-trial.json"), []byte(strings.Replace(mustJSON(t, trial()), `"rebooting"`, `"staged"`, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bootID, []byte("1"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := a().Run(context.Background(), true); err != nil {
		t.Fatal(err)
	}
	if len(reboots) != 2 || trial().Phase != "rebooting" {
		t.Fatalf("a staged, untried release at start: reboots %v, trial %+v\n%s", reboots, trial(), log.String())
	}

	// The tried boot: the agent confirms it when it starts.
	e, opts, err := boot.FirmwareEFI(&boot.EFI{ESP: boot.Dir(espDir)})
	if err != nil || e.Generation != 1 {
		t.Fatalf("the reset: %+v %v", e, err)
	}
	if err := os.WriteFile(cmdline, []byte(opts), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bootID, []byte("2"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := a().Run(context.Background(), true); err != nil {
		t.Fatal(err)
	}
	if trial() != nil || !strings.Contains(log.String(), "confirmed release 1") || len(reboots) != 2 {
		t.Fatalf("in the tried boot: trial %+v, reboots %v\n%s", trial(), reboots, log.String())
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}
