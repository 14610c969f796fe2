package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/otter-fleet/otter/agent"
	"github.com/otter-fleet/otter/device"
	"github.com/otter-fleet/otter/nixdb"
	"github.com/otter-fleet/otter/oci"
	"github.com/otter-fleet/otter/sign"
)

func deviceFlags() []cli.Flag {
	return append(registryFlags(),
		&cli.StringFlag{Name: "store", Value: "/nix/store", Usage: "the store directory"},
		&cli.StringFlag{Name: "state", Value: "/var/lib/otter", Usage: "the state directory (generations, current, downloads)"},
		&cli.StringFlag{Name: "trust", Usage: "the trust file (default: STATE/trust.json)"},
		&cli.StringFlag{Name: "channel", Value: "stable", Usage: "the channel this device follows"},
		&cli.StringFlag{Name: "system", Value: "aarch64-linux", Usage: "this device's system"},
		&cli.IntFlag{Name: "keep", Value: 3, Usage: "generations to keep, the current one included"},
		&cli.StringFlag{Name: "activate", Usage: "shell command run after switching (OTTER_ROOT, OTTER_GENERATION set)"},
		&cli.StringFlag{Name: "health-check", Usage: "shell command that must succeed after activation, else the update rolls back"},
		&cli.DurationFlag{Name: "health-timeout", Value: 2 * time.Minute, Usage: "how long activation and the health check may take"},
		&cli.StringSliceFlag{Name: "mirror", Usage: "a registry (a pull-through cache of the origin, HOST[:PORT]) to read from first; repeat for more, tried in order"},
		&cli.DurationFlag{Name: "mirror-stall", Value: 30 * time.Second, Usage: "how long a mirror may send nothing before the next one or the origin is asked"},
		&cli.StringFlag{Name: "wariness", Usage: "this device's place in staged rollouts, in [0,1): 0 goes first (default: from the machine id)"},
		&cli.StringFlag{Name: "machine-id", Value: "/etc/machine-id", Usage: "the file whose machine id gives the default wariness"},
		&cli.IntFlag{Name: "retries", Value: 8, Usage: "download attempts in a row without progress before giving up"},
		&cli.BoolFlag{Name: "no-fsync", Usage: "do not sync (scratch devices only)"},
		&cli.StringFlag{Name: "at", Usage: "act as of this RFC 3339 time instead of now", Hidden: true},
		&cli.StringFlag{Name: "config", Value: agent.DefaultConfigPath, Usage: "the device config file (docs/device.md §7), read when it exists; flags override it"},
		&cli.StringFlag{Name: "nix", Value: "auto", Usage: "register paths with Nix's database and root generations in a Nix profile: auto (when STORE/../var/nix/db exists), on or off"},
		&cli.StringFlag{Name: "nix-profile", Usage: "the Nix profile otter's generations are generations of (default STORE/../var/nix/profiles/otter)"},
		&cli.StringFlag{Name: "nixos-switch", Value: "boot", Usage: "for a NixOS release, what switch-to-configuration does once it is healthy: boot or switch"},
		&cli.StringFlag{Name: "boot-loader", Usage: "efi or pi: boot each release's own kernel and init, trying new ones by a reboot (docs/image.md §2); empty: activate in place"},
		&cli.StringFlag{Name: "esp", Usage: "the EFI system partition (--boot-loader efi): a mount point, or a block device or image file PATH[@OFFSET]"},
		&cli.StringSliceFlag{Name: "boot-slot", Usage: "a Raspberry Pi boot partition (--boot-loader pi), twice: partition 1 (with autoboot.txt), then 2"},
		&cli.StringFlag{Name: "reboot-command", Usage: "shell command that reboots (default: reboot)"},
		&cli.StringFlag{Name: "tryboot-command", Usage: "shell command that reboots into a staged release (default: reboot; on a Pi, reboot '0 tryboot')"},
		&cli.StringFlag{Name: "boot-cmdline", Value: "/proc/cmdline", Usage: "the running kernel's command line", Hidden: true},
		&cli.StringFlag{Name: "boot-id", Value: "/proc/sys/kernel/random/boot_id", Usage: "this boot's id", Hidden: true},
	)
}

// deviceOpts are the flags every device command reads.
type deviceOpts struct {
	registry              registryOpts
	store, state, trust   string
	channel, system       string
	keep, retries         int
	activate, healthCheck string
	healthTimeout         time.Duration
	mirrors               []string
	mirrorStall           time.Duration
	// wariness is nil when the machine id in machineID gives it.
	wariness  *float64
	machineID string
	noFsync   bool
	at        time.Time // zero: now
	// nix is auto, on or off; nixProfile and nixosSwitch as device.Config.
	nix, nixProfile, nixosSwitch string
	// boot is how the device boots its releases; cmdline and bootID the
	// files that say which boot this is.
	boot            agent.BootConfig
	cmdline, bootID string
	// file is the device config file read, if any.
	file *agent.Config
}

func deviceOptsFrom(c *cli.Context) (deviceOpts, error) {
	o := deviceOpts{
		registry: registryOptsFrom(c), store: c.String("store"), state: c.String("state"), trust: c.String("trust"),
		channel: c.String("channel"), system: c.String("system"), keep: c.Int("keep"), retries: c.Int("retries"),
		activate: c.String("activate"), healthCheck: c.String("health-check"), healthTimeout: c.Duration("health-timeout"),
		mirrors: c.StringSlice("mirror"), mirrorStall: c.Duration("mirror-stall"),
		machineID: c.String("machine-id"),
		noFsync:   c.Bool("no-fsync"), nix: c.String("nix"), nixProfile: c.String("nix-profile"), nixosSwitch: c.String("nixos-switch"),
		boot: agent.BootConfig{Loader: c.String("boot-loader"), ESP: c.String("esp"), Slots: c.StringSlice("boot-slot"),
			Reboot: c.String("reboot-command"), Tryboot: c.String("tryboot-command")},
		cmdline: c.String("boot-cmdline"), bootID: c.String("boot-id"),
	}
	if s := c.String("wariness"); s != "" {
		w, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return o, usageErrorf("--wariness %q: a number in [0,1)", s)
		}
		o.wariness = &w
	}
	if at := c.String("at"); at != "" {
		t, err := time.Parse(time.RFC3339, at)
		if err != nil {
			return o, usageErrorf("--at: %v", err)
		}
		o.at = t
	}
	if err := o.fromConfigFile(c); err != nil {
		return o, err
	}
	return o, o.validate()
}

// fromConfigFile takes every setting the device config file gives
// (--config, default /etc/otter/device.yaml when it exists) that no flag
// sets: flags override the file.
func (o *deviceOpts) fromConfigFile(c *cli.Context) error {
	path := c.String("config")
	if !c.IsSet("config") {
		if _, err := os.Stat(path); err != nil {
			return nil // no config file: flags and their defaults
		}
	}
	cfg, err := agent.Load(path)
	if err != nil {
		return err
	}
	o.file = cfg
	take := func(flag string, set func()) {
		if !c.IsSet(flag) {
			set()
		}
	}
	take("store", func() { o.store = cfg.Store })
	take("state", func() { o.state = cfg.State })
	take("trust", func() { o.trust = cfg.Trust })
	take("channel", func() { o.channel = cfg.Channel })
	take("system", func() { o.system = cfg.System })
	take("keep", func() { o.keep = cfg.Keep })
	take("activate", func() { o.activate = cfg.Activate })
	take("health-check", func() { o.healthCheck = cfg.HealthCheck })
	take("health-timeout", func() { o.healthTimeout = cfg.HealthTimeout.Duration })
	take("nix", func() { o.nix = cfg.Nix })
	take("insecure", func() { o.registry.insecure = cfg.Insecure })
	take("mirror", func() { o.mirrors = cfg.Mirrors })
	take("mirror-stall", func() { o.mirrorStall = cfg.MirrorStall.Duration })
	take("wariness", func() { o.wariness = cfg.Wariness })
	take("machine-id", func() { o.machineID = cfg.MachineID })
	take("boot-loader", func() { o.boot.Loader = cfg.Boot.Loader })
	take("esp", func() { o.boot.ESP = cfg.Boot.ESP })
	take("boot-slot", func() { o.boot.Slots = cfg.Boot.Slots })
	take("reboot-command", func() { o.boot.Reboot = cfg.Boot.Reboot })
	take("tryboot-command", func() { o.boot.Tryboot = cfg.Boot.Tryboot })
	return nil
}

// validate refuses values a device cannot work with, instead of
// replacing them by defaults.
func (o deviceOpts) validate() error {
	switch {
	case o.keep < 1:
		return usageErrorf("--keep %d: a device keeps at least its current generation (1)", o.keep)
	case o.retries < 1:
		return usageErrorf("--retries %d: at least 1", o.retries)
	case o.healthTimeout <= 0:
		return usageErrorf("--health-timeout %v: must be positive", o.healthTimeout)
	case o.mirrorStall < time.Second:
		return usageErrorf("--mirror-stall %v: at least 1s", o.mirrorStall)
	case o.wariness != nil && !(*o.wariness >= 0 && *o.wariness < 1):
		return usageErrorf("--wariness %v: in [0,1) (0 goes first)", *o.wariness)
	case o.store == "" || o.state == "":
		return usageErrorf("--store and --state must name directories")
	case o.nix != "auto" && o.nix != "on" && o.nix != "off":
		return usageErrorf("--nix %q: auto, on or off", o.nix)
	case o.nixosSwitch != "boot" && o.nixosSwitch != "switch":
		return usageErrorf("--nixos-switch %q: boot or switch", o.nixosSwitch)
	}
	if _, err := o.boot.Device(); err != nil {
		return usageErrorf("--boot-loader: %v", err)
	}
	return nil
}

// config is the device.Config these options describe; with needTrust
// the trust file is read (default STATE/trust.json).
func (o deviceOpts) config(needTrust bool) (device.Config, error) {
	cfg := device.Config{
		Store: o.store, State: o.state, System: o.system, Channel: o.channel,
		Keep: o.keep, Activate: agent.Shell(o.activate), Health: agent.Shell(o.healthCheck),
		HealthTimeout: o.healthTimeout, IO: o.registry.io(nil), NoFsync: o.noFsync, Stall: o.retries,
	}
	if len(o.mirrors) > 0 {
		m, err := oci.NewMirrors(o.mirrors, o.registry.insecure, o.mirrorStall)
		if err != nil {
			return cfg, usageErrorf("--mirror: %v", err)
		}
		cfg.IO = append(cfg.IO, oci.WithMirrors(m))
	}
	cfg.Wariness = o.warinessFunc()
	b, err := o.boot.Device()
	if err != nil {
		return cfg, usageErrorf("--boot-loader: %v", err)
	}
	if b != nil {
		b.Cmdline, b.BootID = o.cmdline, o.bootID
		cfg.Boot = b
	}
	if !o.at.IsZero() {
		at := o.at
		cfg.Now = func() time.Time { return at }
	}
	if o.nix == "on" || o.nix == "auto" && nixdb.Detect(o.store) {
		db, err := nixdb.Open(o.store)
		if err != nil {
			return cfg, err
		}
		cfg.Nix, cfg.NixProfile, cfg.NixOSSwitch = db, o.nixProfile, o.nixosSwitch
	}
	if needTrust {
		path := o.trust
		if path == "" {
			path = filepath.Join(cfg.State, "trust.json")
		}
		t, err := loadTrust(path)
		if err != nil {
			return cfg, err
		}
		cfg.Trust = t
	}
	return cfg, nil
}

// warinessFunc gives the device's wariness: --wariness, else the hash of
// the machine id (read when a staged release first asks for it).
func (o deviceOpts) warinessFunc() func() (float64, error) {
	if o.wariness != nil {
		w := *o.wariness
		return func() (float64, error) { return w, nil }
	}
	path := o.machineID
	return func() (float64, error) {
		id, err := os.ReadFile(path)
		if err != nil {
			return 0, fmt.Errorf("set wariness in the device config or --wariness: %v", err)
		}
		if len(bytes.TrimSpace(id)) == 0 {
			return 0, fmt.Errorf("set wariness in the device config or --wariness: %s is empty", path)
		}
		return sign.Wariness(string(id)), nil
	}
}

// openDevice opens the device state, recovering from an interrupted
// update first; needTrust says whether the command verifies statements.
func openDevice(ctx context.Context, o deviceOpts, u *ui, needTrust bool) (*device.Device, *device.Recovery, error) {
	cfg, err := o.config(needTrust)
	if err != nil {
		return nil, nil, err
	}
	d, rec, err := device.Open(ctx, cfg)
	if err != nil {
		return nil, nil, err
	}
	switch {
	case rec == nil:
	case rec.Action == "boot-failed":
		u.info("the tried boot of %s failed: %s", rec.Target, rec.Reason)
	case rec.Action == "trying":
		u.info("this is the tried boot of %s: otter confirm makes it permanent", rec.Target)
	case rec.Action == "staged":
		u.info("%s is staged: the next reboot tries it", rec.Target)
	default:
		u.info("recovered an interrupted update of %s (phase %s): %s", rec.Target, rec.Phase, rec.Action)
	}
	return d, rec, nil
}

// deviceAction is the Action of a device command that takes no
// arguments: read the options, open the device (recovering first), run
// fn and release the lock.
func deviceAction(needTrust bool, fn func(ctx context.Context, d *device.Device, rec *device.Recovery, u *ui) error) cli.ActionFunc {
	return func(c *cli.Context) error {
		o, err := deviceOptsFrom(c)
		if err != nil {
			return err
		}
		if c.NArg() != 0 {
			return usageErrorf("%s takes no arguments, got %q", c.Command.Name, c.Args().Slice())
		}
		u := newUI(c)
		d, rec, err := openDevice(c.Context, o, u, needTrust)
		if err != nil {
			return err
		}
		defer d.Close()
		return fn(c.Context, d, rec, u)
	}
}

// updateOpts are otter update's flags.
type updateOpts struct {
	device deviceOpts
	retry  bool
	method string // "", patch or layers
	// reboot runs the tryboot command once a release is staged for a
	// tried boot.
	reboot bool
}

func updateOptsFrom(c *cli.Context) (updateOpts, error) {
	d, err := deviceOptsFrom(c)
	o := updateOpts{device: d, retry: c.Bool("retry"), method: c.String("method"), reboot: c.Bool("reboot")}
	if err != nil {
		return o, err
	}
	switch o.method {
	case "auto":
		o.method = ""
	case "patch", "layers":
	default:
		return o, usageErrorf("--method %q: auto, patch or layers", o.method)
	}
	return o, nil
}

func updateCommand() *cli.Command {
	return &cli.Command{
		Name:      "update",
		Usage:     "update this device to a release, atomically, rolling back if its health check fails",
		ArgsUsage: "REF",
		Description: `REF is a registry tag (the channel), an OCI layout (oci:DIR[:TAG]) or an
archive (oci-archive:FILE) for offline and USB updates. otter verifies the
release statement against the trust file, then downloads the least it can: a
signed patch from the installed release, else only the layers of store paths
the device lacks. Downloads resume where they stopped, also after a reboot.
New store paths are checked against their NAR hashes, a new generation is made
and current switched to it atomically; then --activate and --health-check run,
and on failure the device switches back and records why (otter status).
An interrupted update is finished or undone by the next otter command.`,
		Flags: append(deviceFlags(),
			&cli.BoolFlag{Name: "retry", Usage: "install a release that failed its health check here before"},
			&cli.StringFlag{Name: "method", Value: "auto", Usage: "auto (the smaller download), patch (fail without a signed patch) or layers"},
			&cli.BoolFlag{Name: "reboot", Usage: "with --boot-loader: once a new kernel or init is staged, reboot into it (the tryboot command)"}),
		Action: func(c *cli.Context) error {
			o, err := updateOptsFrom(c)
			if err != nil {
				return err
			}
			return runUpdate(c.Context, o, c.Args().Slice(), newUI(c))
		},
	}
}

func runUpdate(ctx context.Context, o updateOpts, args []string, u *ui) error {
	if len(args) == 0 && o.device.file != nil {
		args = []string{o.device.file.Release} // the release the config file follows
	}
	if len(args) != 1 {
		return usageErrorf("update takes one reference (or a config file naming the release), got %d arguments", len(args))
	}
	deviceMemoryLimit()
	s, err := resolveArchive(args[0])
	if err != nil {
		return err
	}
	ref, err := o.device.registry.parseRef(s)
	if err != nil {
		return err
	}
	d, _, err := openDevice(ctx, o.device, u, true)
	if err != nil {
		return err
	}
	defer d.Close()
	progress, done := u.bar("downloading")
	d.SetProgress(progress)
	res, err := d.Update(ctx, ref, device.UpdateOptions{Retry: o.retry, Method: o.method})
	done()
	if err != nil {
		return err
	}
	err = u.result(res, func(w io.Writer) {
		if res.UpToDate {
			fmt.Fprintf(w, "up to date: release %d (%s), generation %d\n", res.Version, res.Target, res.From)
			return
		}
		if res.Hold != nil {
			fmt.Fprintf(w, "staying on generation %d: %s\n", res.From, res.Hold.Message)
			return
		}
		if res.Reboot != "" {
			fmt.Fprintf(w, "staged release %d (%s) as generation %d for a tried boot: %s, then otter confirm\n", res.Version, res.Target, res.To, res.Reboot)
			fmt.Fprintf(w, "  by %s: %s to download, %s transferred\n", res.Method, humanBytes(res.Download), humanBytes(res.Transferred))
			return
		}
		fmt.Fprintf(w, "updated to release %d (%s): generation %d -> %d\n", res.Version, res.Target, res.From, res.To)
		fmt.Fprintf(w, "  by %s: %s to download, %s transferred; %d store paths built, %d collected\n",
			res.Method, humanBytes(res.Download), humanBytes(res.Transferred), len(res.Built), len(res.Collected))
	})
	if err != nil || res.Reboot == "" || !o.reboot {
		return err
	}
	if _, err := d.Rebooting(); err != nil {
		return err
	}
	d.Close() // the lock goes before the machine does
	return reboot(ctx, d.Config().Boot.TrybootCommand(), u)
}

// reboot runs a reboot command; it returns if the command does (a
// systemd reboot is asynchronous).
func reboot(ctx context.Context, argv []string, u *ui) error {
	u.info("rebooting: %s", strings.Join(argv, " "))
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("the reboot command %q: %w", strings.Join(argv, " "), err)
	}
	return nil
}

func confirmCommand() *cli.Command {
	return &cli.Command{
		Name:  "confirm",
		Usage: "in the tried boot of a new release: run the health check and make the release the one that boots",
		Description: `Run by the boot that tries a staged release (otter update on a device with
--boot-loader), after the system is up: the health check runs, and if it
passes the release becomes the one the device boots (the Pi's autoboot.txt
is replaced; the EFI entry's try counter is dropped) and current names it.
If it fails, the release is recorded as failed and the entry goes: the next
reset boots the previous release (--reboot resets now). In a boot after a
tried boot that never confirmed (a panic, a hang the watchdog ended), it
reports that release as failed (exit 22). Otherwise it does nothing.`,
		Flags: append(deviceFlags(),
			&cli.BoolFlag{Name: "reboot", Usage: "reboot at once when the tried boot failed its health check"}),
		Action: func(c *cli.Context) error {
			o, err := deviceOptsFrom(c)
			if err != nil {
				return err
			}
			if c.NArg() != 0 {
				return usageErrorf("confirm takes no arguments, got %q", c.Args().Slice())
			}
			return runConfirm(c.Context, o, c.Bool("reboot"), newUI(c))
		},
	}
}

func runConfirm(ctx context.Context, o deviceOpts, rebootNow bool, u *ui) error {
	d, rec, err := openDevice(ctx, o, u, false)
	if err != nil {
		return err
	}
	defer d.Close()
	res, cerr := d.Confirm(ctx, rec)
	if res == nil {
		return cerr
	}
	err = u.result(res, func(w io.Writer) {
		switch {
		case res.Confirmed > 0:
			fmt.Fprintf(w, "confirmed release %d (%s): generation %d boots from now on\n", res.Version, res.Target, res.Confirmed)
		case cerr != nil:
		default:
			fmt.Fprintf(w, "nothing to confirm (booted generation %d)\n", res.Booted)
		}
	})
	if cerr != nil {
		if res.Reboot != "" && rebootNow {
			d.Close()
			return errors.Join(cerr, reboot(ctx, d.Config().Boot.RebootCommand(), u))
		}
		return cerr
	}
	return err
}

func statusCommand() *cli.Command {
	return &cli.Command{
		Name:  "status",
		Usage: "show the installed release, the generations and how the last update ended",
		Flags: append(deviceFlags(),
			&cli.BoolFlag{Name: "prometheus", Usage: "print the status in Prometheus text format, as otter agent writes it"}),
		Action: func(c *cli.Context) error {
			o, err := deviceOptsFrom(c)
			if err != nil {
				return err
			}
			return runStatus(c.Context, o, c.Bool("prometheus"), c.Args().Slice(), newUI(c))
		},
	}
}

func runStatus(ctx context.Context, o deviceOpts, prometheus bool, args []string, u *ui) error {
	if len(args) != 0 {
		return usageErrorf("status takes no arguments, got %q", args)
	}
	d, rec, err := openDevice(ctx, o, u, false)
	if err != nil {
		return err
	}
	defer d.Close()
	if prometheus {
		text, err := (&agent.Agent{Device: d.Config()}).Metrics()
		if err != nil {
			return err
		}
		_, err = io.WriteString(u.out, text)
		return err
	}
	st, err := d.Status()
	if err != nil {
		return err
	}
	st.Recovered = rec
	return u.result(st, func(w io.Writer) {
		fmt.Fprintf(w, "store %s (%s)\n", st.Store, map[string]string{"nix": "Nix owns it: paths registered, generations in a Nix profile", "plain": "no Nix database"}[st.Mode])
		switch g := st.Current; {
		case g == nil:
			fmt.Fprintln(w, "nothing installed")
		case g.Damaged != "":
			fmt.Fprintf(w, "generation %d: damaged: %s\n", g.Number, g.Damaged)
		default:
			r := g.Release
			fmt.Fprintf(w, "generation %d: release %d on %s (%s)\n  root %s\n", g.Number, r.Version, r.Channel, g.Digest, g.Root)
			if st.Expired {
				fmt.Fprintf(w, "  its signed statement expired at %s: update refuses to stay on it\n", r.Expires)
			}
		}
		for _, g := range st.Generations {
			if g.Damaged != "" {
				fmt.Fprintf(w, "  generation %d: damaged: %s\n", g.Number, g.Damaged)
				continue
			}
			fmt.Fprintf(w, "  generation %d: release %d (%s)\n", g.Number, g.Release.Version, g.Digest)
		}
		if st.Booted > 0 {
			fmt.Fprintf(w, "booted generation %d\n", st.Booted)
		}
		if t := st.Trial; t != nil {
			fmt.Fprintf(w, "tried boot: release %d (%s), generation %d, %s", t.Version, t.Target, t.To, t.Phase)
			switch {
			case t.To == st.Booted:
				fmt.Fprint(w, ": running now; otter confirm keeps it")
			case t.Phase == "staged" || t.Phase == "rebooting":
				fmt.Fprint(w, ": the next tryboot tries it")
			}
			fmt.Fprintln(w)
		}
		if l := st.Last; l != nil {
			fmt.Fprintf(w, "last %s at %s: %s", l.Action, l.Time, l.Result)
			if l.Reason != "" {
				fmt.Fprintf(w, " (%s)", l.Reason)
			}
			fmt.Fprintln(w)
		}
	})
}

func rollbackCommand() *cli.Command {
	return &cli.Command{
		Name:  "rollback",
		Usage: "switch back to the previous generation and activate it",
		Flags: deviceFlags(),
		Action: deviceAction(false, func(ctx context.Context, d *device.Device, _ *device.Recovery, u *ui) error {
			o, err := d.Rollback(ctx)
			if err != nil {
				return err
			}
			return u.result(o, func(w io.Writer) {
				fmt.Fprintf(w, "rolled back: generation %d -> %d (%s): %s %s\n", o.From, o.To, o.Target, o.Result, o.Reason)
			})
		}),
	}
}

func gcCommand() *cli.Command {
	return &cli.Command{
		Name:  "gc",
		Usage: "remove old generations beyond --keep and store paths no generation uses",
		Flags: deviceFlags(),
		Action: deviceAction(false, func(ctx context.Context, d *device.Device, _ *device.Recovery, u *ui) error {
			collected, err := d.GC(ctx)
			if err != nil {
				return err
			}
			return u.result(map[string]any{"collected": collected}, func(w io.Writer) {
				fmt.Fprintf(w, "collected %d store paths\n", len(collected))
			})
		}),
	}
}

func recoverCommand() *cli.Command {
	return &cli.Command{
		Name:  "recover",
		Usage: "finish or undo an interrupted update (every device command does this first)",
		Flags: deviceFlags(),
		Action: deviceAction(false, func(_ context.Context, d *device.Device, rec *device.Recovery, u *ui) error {
			return u.result(map[string]any{"recovered": rec}, func(w io.Writer) {
				if rec == nil {
					fmt.Fprintln(w, "nothing to recover")
				}
			})
		}),
	}
}

func agentCommand() *cli.Command {
	return &cli.Command{
		Name:  "agent",
		Usage: "poll for releases and install them, unattended (the device config file says what and when)",
		Description: `Runs until stopped (SIGTERM stops it within seconds; downloads are kept and
the device stays consistent), or for one poll with --once. Each poll first
asks the registry only for the channel's manifest digest; an update runs, as
otter update does, only when it moved or the installed release's statement
expired. Polls follow the config file's schedule: the first after afterBoot
plus a random jitter, then every interval plus jitter, backing off (doubling
up to maxBackoff) after failures, inside the maintenance window, and never
while an inhibit file exists. One line per poll goes to stderr; the device's
status is written after each for node_exporter's textfile collector.`,
		Flags: append(deviceFlags(),
			&cli.BoolFlag{Name: "once", Usage: "poll once, now, and exit with that poll's exit code"},
		),
		Action: func(c *cli.Context) error {
			o, err := deviceOptsFrom(c)
			if err != nil {
				return err
			}
			return runAgent(c.Context, o, c.Bool("once"), c.Args().Slice(), newUI(c))
		},
	}
}

func runAgent(ctx context.Context, o deviceOpts, once bool, args []string, u *ui) error {
	if o.file == nil {
		return usageErrorf("agent needs the device config file (--config, default %s)", agent.DefaultConfigPath)
	}
	if len(args) != 0 {
		return usageErrorf("agent takes no arguments: the config file names the release")
	}
	deviceMemoryLimit()
	cfg, err := o.config(true)
	if err != nil {
		return err
	}
	s, err := resolveArchive(o.file.Release)
	if err != nil {
		return err
	}
	ref, err := o.registry.parseRef(s)
	if err != nil {
		return err
	}
	a := &agent.Agent{Config: o.file, Device: cfg, Ref: ref, Log: u.errw}
	return a.Run(ctx, once)
}
