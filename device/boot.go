package device

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/otter-fleet/otter/boot"
	"github.com/otter-fleet/otter/bundle"
	"github.com/otter-fleet/otter/state"
)

// Errors of tried boots (docs/image.md §2, docs/device.md §11).
var (
	ErrBootFailed = errors.New("device: the tried boot of the new release did not confirm; back on the previous release")
	ErrOnTrial    = errors.New("device: a tried boot waits for otter confirm")
)

// Boot is how a device that boots its releases' own kernels and inits
// boots them: every generation has its own boot entry (EFI) or slot
// (Raspberry Pi), and an update whose boot part or init changed is
// tried by a reboot before it is trusted. Nil keeps the fast path:
// activation in place, for devices whose base system boots otherwise.
type Boot struct {
	// Loader is "efi" or "pi".
	Loader string
	// ESP is the EFI system partition (efi); Slots the two boot
	// partitions (pi), the first holding autoboot.txt.
	ESP   boot.Volume
	Slots [2]boot.Volume
	// Cmdline is the running kernel's command line (default
	// /proc/cmdline): its init= says which generation booted.
	Cmdline string
	// Reboot is the command that reboots (default: reboot); Tryboot the
	// one that reboots into a staged release (default: Reboot; on a Pi,
	// reboot '0 tryboot', which boots the tryboot partition once).
	Reboot, Tryboot []string
	// BootID names this boot (default /proc/sys/kernel/random/boot_id):
	// a trial staged in this boot has not been tried yet.
	BootID string
}

// RebootCommand is the command that reboots.
func (b *Boot) RebootCommand() []string {
	if len(b.Reboot) > 0 {
		return b.Reboot
	}
	return []string{"reboot"}
}

// TrybootCommand is the command that starts the tried boot.
func (b *Boot) TrybootCommand() []string {
	switch {
	case len(b.Tryboot) > 0:
		return b.Tryboot
	case b.Loader == "pi":
		return []string{"reboot", "0 tryboot"}
	}
	return b.RebootCommand()
}

func (b *Boot) bootID() (string, error) {
	return readTrimmed(b.BootID, "/proc/sys/kernel/random/boot_id")
}

// cmdline is the running kernel's command line.
func (b *Boot) cmdline() (string, error) { return readTrimmed(b.Cmdline, "/proc/cmdline") }

func readTrimmed(p, def string) (string, error) {
	if p == "" {
		p = def
	}
	data, err := os.ReadFile(p)
	return strings.TrimSpace(string(data)), err
}

func (b *Boot) efi() *boot.EFI { return &boot.EFI{ESP: b.ESP} }
func (b *Boot) pi() *boot.Pi   { return &boot.Pi{Slots: b.Slots} }

// Trial is a generation staged for a tried boot (state file
// boot-trial.json).
type Trial struct {
	// Phase is "staging" while its boot files are written, "staged" once
	// a tryboot reboot would try them, "rebooting" once otter started
	// that reboot, "failed" when its health check failed in
	// the tried boot.
	Phase   string `json:"phase"`
	Target  string `json:"target"`
	Version uint64 `json:"version"`
	From    int    `json:"from"`
	To      int    `json:"to"`
	// Slot is the Raspberry Pi boot partition written (1 or 2).
	Slot int `json:"slot,omitempty"`
	// BootID is the boot that staged it: until the next boot it has not
	// been tried.
	BootID string `json:"bootId"`
	Reason string `json:"reason,omitempty"`
}

// initPath is the init= that boots generation n: its own root's init,
// never through current.
func (d *Device) initPath(n int) string {
	return filepath.Join(d.st.Path("generations", strconv.Itoa(n)), "root", "init")
}

// Booted is the generation the running kernel started, by its
// command line's init= (0: none of this state directory's).
func (d *Device) Booted() (int, error) {
	if d.c.Boot == nil {
		return 0, nil
	}
	line, err := d.c.Boot.cmdline()
	if err != nil {
		return 0, err
	}
	return d.generationOf(line), nil
}

// generationOf is the generation a kernel command line's init= starts
// (0: none of this state directory's).
func (d *Device) generationOf(cmdline string) int {
	init := boot.InitOf(cmdline)
	rest, ok := strings.CutPrefix(init, d.st.Path("generations")+"/")
	if !ok {
		return 0
	}
	n, err := strconv.Atoi(strings.TrimSuffix(rest, "/root/init"))
	if err != nil || n <= 0 || d.initPath(n) != init {
		return 0
	}
	return n
}

// withInit is a kernel command line with its init= replaced (or added),
// and without what boot loaders add to the running kernel's (initrd=,
// BOOT_IMAGE=): an entry names its own initrd.
func withInit(cmdline, init string) string {
	var out []string
	for _, f := range strings.Fields(cmdline) {
		if !strings.HasPrefix(f, "init=") && !strings.HasPrefix(f, "initrd=") && !strings.HasPrefix(f, "BOOT_IMAGE=") {
			out = append(out, f)
		}
	}
	return strings.Join(append(out, "init="+init), " ")
}

// options is the kernel command line a new entry of generation n gets:
// the booted generation's own (its EFI entry's options, its Pi slot's
// cmdline.txt: what otter or the image wrote, not what the firmware
// added), else the running kernel's, with n's init.
func (d *Device) options(n int) (string, error) {
	running, err := d.c.Boot.cmdline()
	if err != nil {
		return "", err
	}
	if booted := d.generationOf(running); booted > 0 {
		var line string
		switch d.c.Boot.Loader {
		case "efi":
			line, err = d.c.Boot.efi().Options(booted)
		case "pi":
			line, err = d.c.Boot.pi().Cmdline(d.initPath(booted))
		}
		if err != nil {
			return "", err
		}
		if line != "" {
			return withInit(line, d.initPath(n)), nil
		}
	}
	return withInit(running, d.initPath(n)), nil
}

// checkBootPart refuses, before anything is written, a release this
// device cannot boot: none (a device that boots its releases needs
// their boot part), or one larger than the room it has (bootRoom).
func (d *Device) checkBootPart(cfg *bundle.Config) error {
	if d.c.Boot == nil {
		return nil
	}
	if cfg.Boot == nil {
		return fmt.Errorf("%w: this device boots its releases (%s), and %s carries no boot part", bundle.ErrBootPart, d.c.Boot.Loader, cfg.Root)
	}
	room, err := d.bootRoom()
	if err != nil {
		return err
	}
	return cfg.Boot.Fits(room)
}

// bootRoom is the room a new boot part has: the ESP's free space (efi);
// the whole inactive slot, which staging empties (pi).
func (d *Device) bootRoom() (int64, error) {
	if d.c.Boot.Loader == "efi" {
		_, free, err := d.c.Boot.ESP.Space()
		return free, err
	}
	p := d.c.Boot.pi()
	st, err := p.State()
	if err != nil {
		return 0, err
	}
	total, _, err := p.Slots[2-st.Active].Space()
	return total, err
}

// stage writes generation n's boot entry (efi) or slot (pi) from its
// own boot part; it returns the Pi slot written.
func (d *Device) stage(n int) (int, error) {
	g, err := d.loadGeneration(n)
	if err != nil {
		return 0, err
	}
	bp := g.Config.Boot
	if bp == nil {
		return 0, fmt.Errorf("%w: generation %d has no boot part", bundle.ErrBootPart, n)
	}
	dir := filepath.Join(d.c.Store, filepath.Base(g.Root), "boot")
	opts, err := d.options(n)
	if err != nil {
		return 0, err
	}
	switch d.c.Boot.Loader {
	case "efi":
		kernel, initrd, err := bp.Read(dir)
		if err != nil {
			return 0, err
		}
		x := d.c.Boot.efi()
		title := fmt.Sprintf("otter release %d (generation %d)", g.Release.Version, n)
		return 0, x.Stage(n, kernel, initrd, title, opts)
	case "pi":
		files := map[string][]byte{}
		err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
			if err != nil || e.IsDir() {
				return err
			}
			rel, _ := filepath.Rel(dir, p)
			if rel == "cmdline.txt" || rel == "autoboot.txt" {
				return nil // otter writes these
			}
			data, err := os.ReadFile(p)
			files[filepath.ToSlash(rel)] = data
			return err
		})
		if err != nil {
			return 0, err
		}
		return d.c.Boot.pi().Stage(files, opts+"\n")
	}
	return 0, fmt.Errorf("device: boot loader %q: efi or pi", d.c.Boot.Loader)
}

// confirmBoot makes generation n's entry (or slot) the one that boots.
func (d *Device) confirmBoot(n, slot int) error {
	if d.c.Boot.Loader == "pi" {
		return d.c.Boot.pi().Confirm(slot)
	}
	return d.c.Boot.efi().Confirm(n)
}

// unstage makes sure the next reset does not boot generation n: its EFI
// entry goes; on a Pi, if the slot that boots names n, the other slot is
// made the one that boots (a tryboot is tried once: an unconfirmed slot
// needs nothing, and the next stage rewrites it).
func (d *Device) unstage(n int) error {
	if d.c.Boot.Loader == "efi" {
		return d.c.Boot.efi().Remove(n)
	}
	p := d.c.Boot.pi()
	st, err := p.State()
	if err != nil {
		return err
	}
	cmdline, err := p.Slots[st.Active-1].ReadFile("cmdline.txt")
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if boot.InitOf(string(cmdline)) == d.initPath(n) {
		return p.Confirm(3 - st.Active)
	}
	return nil
}

// pruneBoot removes the EFI entries of generations no longer kept; run
// before gc removes the generations, so that no entry names a missing
// init.
func (d *Device) pruneBoot(keep map[int]bool) error {
	if d.c.Boot == nil || d.c.Boot.Loader != "efi" {
		return nil
	}
	x := d.c.Boot.efi()
	es, err := x.Entries()
	if err != nil {
		return err
	}
	for _, e := range es {
		if !keep[e.Generation] {
			if err := x.Remove(e.Generation); err != nil {
				return err
			}
		}
	}
	return nil
}

// Trial is the tried boot waiting for otter confirm, if any.
func (d *Device) Trial() (*Trial, error) {
	var t Trial
	ok, err := d.st.ReadJSON(state.Trial, &t)
	if err != nil || !ok {
		return nil, err
	}
	switch {
	case t.Phase != "staging" && t.Phase != "staged" && t.Phase != "rebooting" && t.Phase != "failed":
		return nil, fmt.Errorf("%w: %s: phase %q", ErrState, state.Trial, t.Phase)
	case t.To <= 0 || t.From < 0 || t.Target == "" || t.Slot < 0 || t.Slot > 2:
		return nil, fmt.Errorf("%w: %s names no staged generation", ErrState, state.Trial)
	}
	return &t, nil
}

// stageTrial ends an update whose boot part or init changed: generation
// to is written to the inactive slot (or a new entry with tries left),
// and the device is to reboot into it. current still names the old
// generation; otter confirm, in the tried boot, switches it.
func (d *Device) stageTrial(j *journal, res *UpdateResult, version uint64) (*UpdateResult, error) {
	id, err := d.c.Boot.bootID()
	if err != nil {
		return nil, err
	}
	t := &Trial{Phase: "staging", Target: j.Target, Version: version, From: j.From, To: j.To, BootID: id}
	if err := d.st.WriteJSON(state.Trial, t); err != nil {
		return nil, err
	}
	if err := d.st.Remove(state.Journal); err != nil {
		return nil, err
	}
	crashPoint("trial-staging")
	slot, err := d.stage(j.To)
	if err != nil {
		err = noSpace(err)
		if uerr := d.abandonTrial(t, "interrupted", "staging the boot files failed: "+err.Error()); uerr != nil {
			return nil, errors.Join(err, uerr)
		}
		return res, err
	}
	crashPoint("trial-written")
	t.Phase, t.Slot = "staged", slot
	if err := d.st.WriteJSON(state.Trial, t); err != nil {
		return nil, err
	}
	crashPoint("trial-staged")
	res.To, res.Reboot = j.To, strings.Join(d.c.Boot.TrybootCommand(), " ")
	return res, d.record(Outcome{Action: "update", Target: j.Target, From: j.From, To: j.To, Result: "staged",
		Reason: fmt.Sprintf("generation %d is staged for a tried boot; reboot, then otter confirm", j.To)})
}

// abandonTrial undoes a trial that will not boot: its entry, its
// generation, the trial file; and records result.
func (d *Device) abandonTrial(t *Trial, result, reason string) error {
	if err := d.unstage(t.To); err != nil {
		return err
	}
	if err := d.st.Drop(t.To); err != nil {
		return err
	}
	if err := d.syncProfile(context.Background()); err != nil {
		return err
	}
	if result == "rolled-back" {
		if err := d.markFailed(t.Target, reason); err != nil {
			return err
		}
	}
	if err := d.record(Outcome{Action: "update", Target: t.Target, From: t.From, To: t.From, Result: result, Reason: reason}); err != nil {
		return err
	}
	return d.st.Remove(state.Trial)
}

// recoverTrial settles a trial at Open: the tried boot running now is
// left for otter confirm; any other boot after a staged trial means the
// tried boot failed (a panic, a hang, a failed health check) and the
// firmware came back on the previous release: the release is recorded
// as failed. A trial cut while staging is undone.
func (d *Device) recoverTrial() (*Recovery, error) {
	t, err := d.Trial()
	if err != nil || t == nil || d.c.Boot == nil {
		return nil, err
	}
	booted, err := d.Booted()
	if err != nil {
		return nil, err
	}
	id, err := d.c.Boot.bootID()
	if err != nil {
		return nil, err
	}
	rec := &Recovery{Phase: "trial-" + t.Phase, Target: t.Target}
	switch {
	case booted == t.To && t.Phase != "failed":
		rec.Action = "trying"
		return rec, nil
	case id == t.BootID && (t.Phase == "staged" || t.Phase == "rebooting"):
		rec.Action = "staged" // not rebooted yet
		return rec, nil
	case t.Phase == "staged":
		// Rebooted, but not by otter's tryboot (an ordinary reboot, a
		// power cut before it): tried only if the firmware took the new
		// entry (EFI counts its tries); a Pi slot is tried only by a
		// tryboot. Untried, it stays staged for the next tryboot.
		tried, err := d.tried(t)
		if err != nil {
			return nil, err
		}
		if !tried {
			t.BootID = id
			rec.Action = "staged"
			return rec, d.st.WriteJSON(state.Trial, t)
		}
	case t.Phase == "staging":
		rec.Action = "discarded"
		return rec, d.abandonTrial(t, "interrupted", fmt.Sprintf("interrupted while staging generation %d's boot files; still on generation %d", t.To, t.From))
	}
	rec.Action = "boot-failed"
	reason := t.Reason
	if reason == "" {
		reason = fmt.Sprintf("the tried boot of release %d (generation %d) did not confirm; the device came back on generation %d", t.Version, t.To, booted)
	}
	rec.Reason = reason
	return rec, d.abandonTrial(t, "rolled-back", reason)
}

// tried says whether the firmware has booted a staged trial's entry:
// EFI, when its counter shows a try (or it is gone); a Pi slot never
// without a tryboot.
func (d *Device) tried(t *Trial) (bool, error) {
	if d.c.Boot.Loader != "efi" {
		return false, nil
	}
	es, err := d.c.Boot.efi().Entries()
	if err != nil {
		return false, err
	}
	for _, e := range es {
		if e.Generation == t.To {
			return !e.Counted || e.Done > 0 || e.Bad(), nil
		}
	}
	return true, nil
}

// Rebooting records that the tryboot reboot of the staged trial starts
// now (otter update --reboot and the agent call it just before the
// tryboot command): a boot after it that is not the trial is a failed
// try. It returns the trial (nil: none staged).
func (d *Device) Rebooting() (*Trial, error) {
	t, err := d.Trial()
	if err != nil || t == nil || (t.Phase != "staged" && t.Phase != "rebooting") {
		return nil, err
	}
	if t.BootID, err = d.c.Boot.bootID(); err != nil {
		return nil, err
	}
	t.Phase = "rebooting"
	return t, d.st.WriteJSON(state.Trial, t)
}

// ConfirmResult says what otter confirm did.
type ConfirmResult struct {
	// Confirmed is the generation made permanent (0: nothing to
	// confirm).
	Confirmed int      `json:"confirmed"`
	Target    string   `json:"target,omitempty"`
	Version   uint64   `json:"version,omitempty"`
	Booted    int      `json:"booted"`
	Collected []string `json:"collected"`
	// Reboot, when set, is the command to run now: the tried boot
	// failed its health check and the previous release boots next.
	Reboot string `json:"reboot,omitempty"`
	// Recovered is what opening the device found and did first: an
	// interrupted update finished or undone, a tried boot settled.
	Recovered *Recovery `json:"recovered,omitempty"`
}

// Confirm runs in a tried boot: after the health check passes, the
// generation booted becomes the one that boots (the Pi's autoboot.txt
// replaced, the EFI entry's counter dropped) and current names it. A
// failed health check records the release as failed and leaves it to
// the reboot the result names. With no trial running, nothing is done.
func (d *Device) Confirm(ctx context.Context, rec *Recovery) (*ConfirmResult, error) {
	res := &ConfirmResult{Collected: []string{}, Recovered: rec}
	if rec != nil && rec.Action == "boot-failed" {
		return res, fmt.Errorf("%w: %s", ErrBootFailed, rec.Reason)
	}
	if d.c.Boot == nil {
		return res, nil
	}
	var err error
	if res.Booted, err = d.Booted(); err != nil {
		return nil, err
	}
	t, err := d.Trial()
	if err != nil || t == nil || t.To != res.Booted {
		return res, err
	}
	res.Target, res.Version = t.Target, t.Version
	if err := d.healthCheck(ctx, t.To); err != nil {
		cause := fmt.Errorf("%w: %v", ErrHealthCheck, err)
		t.Phase, t.Reason = "failed", fmt.Sprintf("the tried boot of release %d (generation %d) failed its health check: %v", t.Version, t.To, err)
		// The entry goes now, so that the reset boots the previous one;
		// the rest when that boot's otter opens the state.
		if err := d.unstage(t.To); err != nil {
			return nil, errors.Join(cause, err)
		}
		if err := d.st.WriteJSON(state.Trial, t); err != nil {
			return nil, errors.Join(cause, err)
		}
		if err := d.record(Outcome{Action: "confirm", Target: t.Target, From: t.From, To: t.From, Result: "rolled-back", Reason: t.Reason}); err != nil {
			return nil, errors.Join(cause, err)
		}
		res.Reboot = strings.Join(d.c.Boot.RebootCommand(), " ")
		return res, cause
	}
	if err := d.confirmBoot(t.To, t.Slot); err != nil {
		return nil, err
	}
	crashPoint("confirmed")
	if err := d.st.Switch(t.To); err != nil {
		return nil, err
	}
	if res.Collected, err = d.gc(ctx); err != nil {
		return nil, err
	}
	if err := d.record(Outcome{Action: "confirm", Target: t.Target, From: t.From, To: t.To, Result: "ok"}); err != nil {
		return nil, err
	}
	res.Confirmed = t.To
	return res, d.st.Remove(state.Trial)
}
