package device_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/otter-fleet/otter/boot"
	"github.com/otter-fleet/otter/bundle"
	"github.com/otter-fleet/otter/device"
	"github.com/otter-fleet/otter/internal/demo"
	"github.com/otter-fleet/otter/internal/testutil"
	"github.com/otter-fleet/otter/nix"
	"github.com/otter-fleet/otter/state"
)

// bootRelease writes release i as one root store path with a boot part:
// releases 1 and 2 differ in their init, 3 and 4 in their kernel, 5 has
// release 2's kernel and init (an activation), 6 has no boot part.
func bootRelease(t *testing.T) func(store string, i int) (*nix.Closure, error) {
	return func(store string, i int) (*nix.Closure, error) {
		if i == 6 {
			return demo.WriteRelease(store, 1)
		}
		kernel, init := "kernel A", fmt.Sprintf("#!/bin/sh\necho release %d\n", i)
		switch i {
		case 3, 4:
			kernel = fmt.Sprintf("kernel %d", i)
		case 5:
			init = "#!/bin/sh\necho release 2\n"
		}
		return testutil.OnePath(t, store, fmt.Sprintf("otter-boot-release-%d", i), map[string][]byte{
			"boot/Image": []byte(kernel), "boot/initrd": []byte("initrd"), "init": []byte(init), "etc/app": []byte(fmt.Sprint(i))}), nil
	}
}

// efiDevice is a device that boots by EFI entries on an ESP (a directory
// here), with its kernel command line and boot id in files the test
// rewrites at each simulated reset.
type efiDevice struct {
	t               *testing.T
	p               *published
	store, st       string
	esp             *boot.EFI
	cmdline, bootID string
	boots           int
	health          []string
	checkFails      string
}

func (e *efiDevice) open() (*device.Device, *device.Recovery) {
	e.t.Helper()
	d, rec, err := device.Open(context.Background(), device.Config{Store: e.store, State: e.st, Trust: e.p.trust, System: "aarch64-linux",
		Channel: "stable", HealthTimeout: 10 * time.Second, NoFsync: true, Keep: 3,
		Health: []string{"/bin/sh", "-c", `test "$OTTER_RELEASE_VERSION" != "` + e.checkFails + `"`},
		Boot:   &device.Boot{Loader: "efi", ESP: e.esp.ESP, Cmdline: e.cmdline, BootID: e.bootID}})
	if err != nil {
		e.t.Fatal(err)
	}
	return d, rec
}

// reset is the firmware at a reset: systemd-boot picks (and counts) an
// entry, and the kernel runs with its options.
func (e *efiDevice) reset() boot.Entry {
	e.t.Helper()
	ent, opts, err := boot.FirmwareEFI(e.esp)
	if err != nil {
		e.t.Fatal(err)
	}
	e.boots++
	// systemd-boot passes the entry's initrd on the command line too.
	if err := os.WriteFile(e.cmdline, []byte(fmt.Sprintf("initrd=\\otter\\%d\\initrd %s\n", ent.Generation, opts)), 0o644); err != nil {
		e.t.Fatal(err)
	}
	if err := os.WriteFile(e.bootID, []byte(fmt.Sprintf("boot-%d\n", e.boots)), 0o644); err != nil {
		e.t.Fatal(err)
	}
	return ent
}

func (e *efiDevice) entries() string {
	es, err := e.esp.Entries()
	if err != nil {
		e.t.Fatal(err)
	}
	var names []string
	for _, x := range es {
		names = append(names, x.Name)
	}
	return strings.Join(names, " ")
}

func newEFIDevice(t *testing.T, p *published) *efiDevice {
	dir := t.TempDir()
	e := &efiDevice{t: t, p: p, store: testutil.TempStore(t), st: filepath.Join(dir, "state"), esp: &boot.EFI{ESP: boot.Dir(filepath.Join(dir, "esp"))},
		cmdline: filepath.Join(dir, "cmdline"), bootID: filepath.Join(dir, "boot_id")}
	if err := os.Mkdir(filepath.Join(dir, "esp"), 0o755); err != nil { // mounted
		t.Fatal(err)
	}
	if err := os.WriteFile(e.cmdline, []byte("root=PARTUUID=1 rw panic=5 init=/sbin/init\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(e.bootID, []byte("boot-0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return e
}

// TestTriedBoot: releases whose kernel or init changed are staged as an
// entry with tries left and confirmed in the boot that tried them; one
// that never confirms (a panicking init) comes back on the previous
// release by itself, and the next otter records it as failed; one whose
// health check fails in its tried boot too; the same kernel and init are
// activated without a reboot, with an entry of their own; a release
// without a boot part is refused; no entry names current.
func TestTriedBoot(t *testing.T) {
	ctx := context.Background()
	p := publishTrees(t, 6, bootRelease(t))
	e := newEFIDevice(t, p)

	// update stages release i and tries it at the next reset.
	update := func(i int) *device.UpdateResult {
		t.Helper()
		d, _ := e.open()
		defer d.Close()
		res, err := d.Update(ctx, p.ref(t, i), device.UpdateOptions{})
		if err != nil || res.Reboot == "" {
			t.Fatalf("release %d: %+v %v", i, res, err)
		}
		return res
	}
	confirm := func() (*device.ConfirmResult, error) {
		t.Helper()
		d, rec := e.open()
		defer d.Close()
		return d.Confirm(ctx, rec)
	}
	current := func(want int) {
		t.Helper()
		d, _ := e.open()
		defer d.Close()
		g, err := d.Current()
		if err != nil || g == nil || g.Digest != p.digests[want-1] {
			t.Fatalf("current is %+v (%v), want release %d", g, err, want)
		}
	}

	// Release 1: staged, tried, confirmed.
	if res := update(1); res.To != 1 || res.Reboot != "reboot" {
		t.Fatalf("release 1: %+v", res)
	}
	if got := e.entries(); got != "otter-1+3.conf" {
		t.Fatalf("entries after staging 1: %s", got)
	}
	if ent := e.reset(); ent.Generation != 1 || ent.Name != "otter-1+2-1.conf" {
		t.Fatalf("the first reset booted %+v", ent)
	}
	if res, err := confirm(); err != nil || res.Confirmed != 1 {
		t.Fatalf("confirm 1: %+v %v", res, err)
	}
	current(1)

	// Release 2 (a new init): staged; until the reset, otter leaves the
	// trial alone and refuses another update.
	update(2)
	d, rec := e.open()
	if rec == nil || rec.Action != "staged" {
		t.Fatalf("before the reset: %+v", rec)
	}
	if _, err := d.Update(ctx, p.ref(t, 2), device.UpdateOptions{}); !errors.Is(err, device.ErrOnTrial) {
		t.Fatalf("an update while a trial is staged: %v", err)
	}
	d.Close()
	// A boot of generation 1 (chosen in systemd-boot's menu) leaves
	// generation 2's entry untried: it stays staged, not failed.
	opts, err := e.esp.Options(1)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(e.cmdline, []byte(opts), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(e.bootID, []byte("chosen in the menu"), 0o644); err != nil {
		t.Fatal(err)
	}
	if d, rec := e.open(); rec == nil || rec.Action != "staged" {
		t.Fatalf("a boot that did not take the staged entry: %+v", rec)
	} else {
		d.Close()
	}
	if ent := e.reset(); ent.Generation != 2 {
		t.Fatalf("the reset booted %+v", ent)
	}
	if boot.InitOf(mustRead(t, e.cmdline)) != filepath.Join(e.st, "generations", "2", "root", "init") {
		t.Fatalf("generation 2 booted with %s", mustRead(t, e.cmdline))
	}
	if res, err := confirm(); err != nil || res.Confirmed != 2 {
		t.Fatalf("confirm 2: %+v %v", res, err)
	}
	current(2)

	// Release 3 never confirms: systemd-boot tries it three times, then
	// boots generation 2; that boot's otter records release 3 as failed.
	update(3)
	for try := 1; try <= boot.Tries; try++ {
		if ent := e.reset(); ent.Generation != 3 {
			t.Fatalf("try %d booted %+v", try, ent)
		}
		// The init panics: nothing runs otter.
	}
	if ent := e.reset(); ent.Generation != 2 {
		t.Fatalf("after three failed tries the reset booted %+v (%s)", ent, e.entries())
	}
	if _, err := confirm(); !errors.Is(err, device.ErrBootFailed) {
		t.Fatalf("the boot after the failed tries: %v", err)
	}
	current(2)
	if got := e.entries(); got != "otter-2.conf otter-1.conf" {
		t.Fatalf("entries after the failed tries: %s", got)
	}
	var last state.Outcome
	readState(t, e.st, state.Last, &last)
	failed := map[string]string{}
	readState(t, e.st, state.Failed, &failed)
	if last.Result != "rolled-back" || last.Target != p.digests[2] || !strings.Contains(failed[p.digests[2]], "did not confirm") {
		t.Fatalf("last.json %+v, failed.json %v", last, failed)
	}
	d, _ = e.open()
	if _, err := d.Update(ctx, p.ref(t, 3), device.UpdateOptions{}); !errors.Is(err, device.ErrKnownBad) {
		t.Fatalf("release 3 again: %v", err)
	}
	if _, err := d.Confirm(ctx, nil); err != nil {
		t.Fatalf("a second confirm reports nothing: %v", err)
	}
	d.Close()

	// Release 4 boots but fails its health check: confirm says reboot,
	// and the reset boots generation 2.
	e.checkFails = "4"
	update(4)
	e.reset()
	if res, err := confirm(); !errors.Is(err, device.ErrHealthCheck) || res == nil || res.Reboot != "reboot" {
		t.Fatalf("confirm of a failing release: %+v %v", res, err)
	}
	if ent := e.reset(); ent.Generation != 2 {
		t.Fatalf("after the failed health check the reset booted %+v", ent)
	}
	if _, err := confirm(); !errors.Is(err, device.ErrBootFailed) {
		t.Fatalf("the boot after the failed health check: %v", err)
	}
	readState(t, e.st, state.Failed, &failed)
	if !strings.Contains(failed[p.digests[3]], "health check") {
		t.Fatalf("failed.json %v", failed)
	}
	current(2)

	// Release 5 has release 2's kernel and init: activated, no reboot,
	// with a confirmed entry of its own; gc keeps three generations.
	d, _ = e.open()
	res, err := d.Update(ctx, p.ref(t, 5), device.UpdateOptions{})
	// Generation 3: the failed ones were dropped, their numbers reused.
	if err != nil || res.Reboot != "" || res.To != 3 {
		t.Fatalf("release 5: %+v %v", res, err)
	}
	// Release 6 has no boot part: refused before anything is written.
	if res, err := d.Update(ctx, p.ref(t, 6), device.UpdateOptions{}); !errors.Is(err, bundle.ErrBootPart) || res == nil || res.Transferred != 0 {
		t.Fatalf("a release without a boot part: %+v %v", res, err)
	}
	if ents, _ := os.ReadDir(filepath.Join(e.st, "downloads")); len(ents) != 0 {
		t.Fatalf("a refused release left downloads: %v", ents)
	}
	d.Close()
	current(5)
	if got := e.entries(); got != "otter-3.conf otter-2.conf otter-1.conf" {
		t.Fatalf("entries after the activation: %s", got)
	}
	if ent := e.reset(); ent.Generation != 3 {
		t.Fatalf("after the activation the reset booted %+v", ent)
	}
	for _, x := range []string{"otter-3.conf", "otter-2.conf", "otter-1.conf"} {
		// No current, and no initrd= the loader added to the command
		// line it was made from.
		if data, _ := e.esp.ESP.ReadFile("loader/entries/" + x); strings.Contains(string(data), "current") || strings.Contains(string(data), "initrd=") {
			t.Fatalf("%s names current or another initrd:\n%s", x, data)
		}
	}
}

// TestTrialPowerCut: an update cut while it writes the new entry is
// undone by the next otter (the entry and the generation go, the device
// is on the old release); cut after it is staged, the reset tries it.
func TestTrialPowerCut(t *testing.T) {
	ctx := context.Background()
	p := publishTrees(t, 2, bootRelease(t))
	t.Cleanup(func() { device.SetTestHook(nil) })
	for _, point := range []string{"trial-staging", "trial-written", "trial-staged"} {
		t.Run(point, func(t *testing.T) {
			e := newEFIDevice(t, p)
			d, _ := e.open()
			if _, err := d.Update(ctx, p.ref(t, 1), device.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
			d.Close()
			e.reset()
			if _, err := func() (*device.ConfirmResult, error) { d, rec := e.open(); defer d.Close(); return d.Confirm(ctx, rec) }(); err != nil {
				t.Fatal(err)
			}
			d, _ = e.open()
			stopAt(t, point, func() { d.Update(ctx, p.ref(t, 2), device.UpdateOptions{}) })
			d.Close()
			// The power cut: a reset, then otter.
			ent := e.reset()
			d, rec := e.open()
			defer d.Close()
			if point == "trial-staged" {
				if ent.Generation != 2 || rec == nil || rec.Action != "trying" {
					t.Fatalf("cut at %s: booted %+v, recovery %+v", point, ent, rec)
				}
				if res, err := d.Confirm(ctx, rec); err != nil || res.Confirmed != 2 {
					t.Fatalf("confirm: %+v %v", res, err)
				}
				return
			}
			// The entry was written but not yet recorded as staged: the
			// firmware may try it (systemd-boot boots the newest) — either
			// way the next otter leaves the device on one release.
			if ent.Generation == 2 {
				if rec == nil || rec.Action != "trying" {
					t.Fatalf("cut at %s: booted 2, recovery %+v", point, rec)
				}
				return
			}
			if rec == nil || rec.Action != "discarded" || e.entries() != "otter-1.conf" {
				t.Fatalf("cut at %s: recovery %+v, entries %s", point, rec, e.entries())
			}
			if g, _ := d.Current(); g == nil || g.Digest != p.digests[0] {
				t.Fatalf("cut at %s: current %+v", point, g)
			}
		})
	}
}

func mustRead(t *testing.T, p string) string {
	t.Helper()
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func readState(t *testing.T, dir, name string, v any) {
	t.Helper()
	st, err := state.Open(dir, true)
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := st.ReadJSON(name, v); err != nil || !ok {
		t.Fatalf("%s: %v %v", name, ok, err)
	}
}

// TestTriedBootPi is TestTriedBoot's story on a Raspberry Pi's two boot
// partitions (directories here, as a mounted FAT is), through the
// firmware model: after each step, what autoboot.txt says, which slot a
// tryboot and an ordinary reset boot, and each partition's cmdline.txt.
func TestTriedBootPi(t *testing.T) {
	ctx := context.Background()
	p := publishTrees(t, 5, bootRelease(t))
	dir := t.TempDir()
	slots := [2]boot.Volume{boot.Dir(filepath.Join(dir, "p1")), boot.Dir(filepath.Join(dir, "p2"))}
	pi := &boot.Pi{Slots: slots}
	for _, d := range []string{"p1", "p2"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cmdline, bootID := filepath.Join(dir, "cmdline"), filepath.Join(dir, "boot_id")
	store, st := testutil.TempStore(t), filepath.Join(dir, "state")
	boots := 0
	// reset is the firmware at a reset (tryboot or not): it writes the
	// kernel command line the slot's cmdline.txt gives (with what the
	// firmware adds) and a new boot id, and returns the slot.
	reset := func(tryboot bool) int {
		t.Helper()
		slot, line, err := boot.Firmware(pi, tryboot)
		if err != nil {
			t.Fatal(err)
		}
		boots++
		if err := os.WriteFile(cmdline, []byte("coherent_pool=1M 8250.nr_uarts=1 "+line+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(bootID, []byte(fmt.Sprint(boots)), 0o644); err != nil {
			t.Fatal(err)
		}
		return slot
	}
	if err := os.WriteFile(cmdline, []byte("console=serial0,115200 root=PARTUUID=1-03 rootwait panic=5 init=/sbin/init\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bootID, []byte("0"), 0o644); err != nil {
		t.Fatal(err)
	}
	open := func() (*device.Device, *device.Recovery) {
		t.Helper()
		d, rec, err := device.Open(ctx, device.Config{Store: store, State: st, Trust: p.trust, System: "aarch64-linux", Channel: "stable",
			HealthTimeout: 10 * time.Second, NoFsync: true, Keep: 3,
			Boot: &device.Boot{Loader: "pi", Slots: slots, Cmdline: cmdline, BootID: bootID}})
		if err != nil {
			t.Fatal(err)
		}
		return d, rec
	}
	initOf := func(n int) string { return filepath.Join(st, "generations", fmt.Sprint(n), "root", "init") }
	// reads asserts what the firmware reads: autoboot.txt's slots and
	// each partition's cmdline.txt's generation (0: none).
	reads := func(active, tried, gen1, gen2 int) {
		t.Helper()
		s, err := pi.State()
		if err != nil || s.Active != active || s.Tryboot != tried {
			t.Fatalf("autoboot.txt: %+v %v, want boot_partition=%d, tryboot %d", s, err, active, tried)
		}
		for i, want := range []int{gen1, gen2} {
			data, _ := slots[i].ReadFile("cmdline.txt")
			if got := boot.InitOf(string(data)); (want == 0 && got != "") || (want > 0 && got != initOf(want)) {
				t.Fatalf("partition %d's cmdline.txt starts %q, want generation %d", i+1, got, want)
			}
			if strings.Contains(string(data), "coherent_pool") {
				t.Fatalf("partition %d's cmdline.txt took what the firmware added: %s", i+1, data)
			}
		}
	}
	update := func(i int) {
		t.Helper()
		d, _ := open()
		defer d.Close()
		if res, err := d.Update(ctx, p.ref(t, i), device.UpdateOptions{}); err != nil || res.Reboot != "reboot 0 tryboot" {
			t.Fatalf("release %d: %+v %v", i, res, err)
		}
	}
	// rebooting is what otter update --reboot and the agent do just
	// before the tryboot command.
	rebooting := func() {
		t.Helper()
		d, _ := open()
		defer d.Close()
		if tr, err := d.Rebooting(); err != nil || tr == nil || tr.Phase != "rebooting" {
			t.Fatalf("rebooting: %+v %v", tr, err)
		}
	}
	confirm := func() (*device.ConfirmResult, error) {
		t.Helper()
		d, rec := open()
		defer d.Close()
		return d.Confirm(ctx, rec)
	}

	// Release 1 goes to partition 2 (1 has nothing yet), is tried, and
	// confirmed: autoboot.txt then boots 2.
	update(1)
	rebooting()
	reads(1, 2, 0, 1)
	// The slot holds the boot part (boot/) and otter's cmdline.txt.
	if files, _ := slots[1].List(""); strings.Join(files, " ") != "Image cmdline.txt initrd" {
		t.Fatalf("partition 2 holds %v", files)
	}
	if data, _ := slots[1].ReadFile("Image"); string(data) != "kernel A" {
		t.Fatalf("partition 2's kernel: %q", data)
	}
	if reset(true) != 2 {
		t.Fatal("the tryboot did not boot partition 2")
	}
	if res, err := confirm(); err != nil || res.Confirmed != 1 {
		t.Fatalf("confirm 1: %+v %v", res, err)
	}
	reads(2, 1, 0, 1)

	// Release 2 (a new init) goes to partition 1; until the tryboot an
	// ordinary reset still boots release 1 on partition 2.
	update(2)
	reads(2, 1, 2, 1)
	// The power goes before the tryboot: the ordinary boot after it
	// leaves release 2 staged, untried (not failed), for the next tryboot.
	if reset(false) != 2 {
		t.Fatal("an ordinary reset did not boot partition 2")
	}
	if d, rec := open(); rec == nil || rec.Action != "staged" {
		t.Fatalf("after a reset before the tryboot: %+v", rec)
	} else {
		d.Close()
	}
	rebooting()
	if reset(true) != 1 {
		t.Fatal("the tryboot did not boot partition 1")
	}
	if res, err := confirm(); err != nil || res.Confirmed != 2 {
		t.Fatalf("confirm 2: %+v %v", res, err)
	}
	reads(1, 2, 2, 1)

	// Release 3 (a new kernel) panics in its tryboot: the reset after the
	// panic is an ordinary one and boots release 2; its otter records 3.
	update(3)
	rebooting()
	reads(1, 2, 2, 3)
	if reset(true) != 2 {
		t.Fatal("the tryboot did not boot partition 2")
	}
	if reset(false) != 1 {
		t.Fatal("the reset after the panic did not boot partition 1")
	}
	if _, err := confirm(); !errors.Is(err, device.ErrBootFailed) {
		t.Fatalf("the boot after the failed try: %v", err)
	}
	reads(1, 2, 2, 3) // partition 2 is stale; only a tryboot would start it

	// Release 5 has release 2's kernel and init: activated, then written
	// to partition 2 and confirmed there, so the next reset starts it.
	d, _ := open()
	res, err := d.Update(ctx, p.ref(t, 5), device.UpdateOptions{})
	d.Close()
	if err != nil || res.Reboot != "" {
		t.Fatalf("release 5: %+v %v", res, err)
	}
	reads(2, 1, 2, res.To)
	if reset(false) != 2 {
		t.Fatal("the reset after the activation did not boot partition 2")
	}
}

// TestBootPartTooLarge: a boot part larger than the room on the ESP is
// refused before anything is downloaded or written.
func TestBootPartTooLarge(t *testing.T) {
	_, err := exec.LookPath("mkfs.fat")
	testutil.Require(t, err == nil, "mkfs.fat (dosfstools)")
	ctx := context.Background()
	p := publishTrees(t, 1, func(store string, i int) (*nix.Closure, error) {
		return testutil.OnePath(t, store, "otter-boot-release-large", map[string][]byte{
			"boot/Image": bytes.Repeat([]byte("k"), 3<<20), "init": []byte("#!/bin/sh\n")}), nil
	})
	e := newEFIDevice(t, p)
	img := filepath.Join(t.TempDir(), "esp.img")
	if out, err := exec.Command("mkfs.fat", "-C", img, "2048").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.fat: %v %s", err, out)
	}
	e.esp = &boot.EFI{ESP: boot.FAT{Path: img}}
	d, _ := e.open()
	defer d.Close()
	res, err := d.Update(ctx, p.ref(t, 1), device.UpdateOptions{})
	if !errors.Is(err, bundle.ErrBootPart) || !strings.Contains(err.Error(), "the partition has") || res == nil || res.Transferred != 0 {
		t.Fatalf("a 3 MiB boot part for a 2 MiB ESP: %+v %v", res, err)
	}
	if gens, _ := os.ReadDir(filepath.Join(e.st, "generations")); len(gens) != 0 {
		t.Fatalf("generations after the refusal: %v", gens)
	}
}
