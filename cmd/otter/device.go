package main

import (
	"fmt"
	"io"
	"path/filepath"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/otter-fleet/otter/device"
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
		&cli.IntFlag{Name: "retries", Value: 8, Usage: "download attempts in a row without progress before giving up"},
		&cli.BoolFlag{Name: "no-fsync", Usage: "do not sync (scratch devices only)"},
		&cli.StringFlag{Name: "at", Usage: "act as of this RFC 3339 time instead of now", Hidden: true},
	)
}

func shell(cmd string) []string {
	if cmd == "" {
		return nil
	}
	return []string{"/bin/sh", "-c", cmd}
}

// openDevice opens the device state, recovering from an interrupted
// update first; needTrust says whether the command verifies statements.
func openDevice(c *cli.Context, u *ui, needTrust bool) (*device.Device, *device.Recovery, error) {
	cfg := device.Config{
		Store: c.String("store"), State: c.String("state"), System: c.String("system"), Channel: c.String("channel"),
		Keep: c.Int("keep"), Activate: shell(c.String("activate")), Health: shell(c.String("health-check")),
		HealthTimeout: c.Duration("health-timeout"), IO: ioOptions(c, nil), NoFsync: c.Bool("no-fsync"), Stall: c.Int("retries"),
	}
	if at := c.String("at"); at != "" {
		t, err := time.Parse(time.RFC3339, at)
		if err != nil {
			return nil, nil, usageErrorf("--at: %v", err)
		}
		cfg.Now = func() time.Time { return t }
	}
	if needTrust {
		path := c.String("trust")
		if path == "" {
			path = filepath.Join(cfg.State, "trust.json")
		}
		t, err := loadTrust(path)
		if err != nil {
			return nil, nil, err
		}
		cfg.Trust = t
	}
	d, rec, err := device.Open(c.Context, cfg)
	if err != nil {
		return nil, nil, err
	}
	if rec != nil {
		u.info("recovered an interrupted update of %s (phase %s): %s", rec.Target, rec.Phase, rec.Action)
	}
	return d, rec, nil
}

// withDevice opens the device state (recovering first), runs fn and
// releases the lock.
func withDevice(needTrust bool, fn func(c *cli.Context, u *ui, d *device.Device, rec *device.Recovery) error) cli.ActionFunc {
	return func(c *cli.Context) error {
		u := newUI(c)
		d, rec, err := openDevice(c, u, needTrust)
		if err != nil {
			return err
		}
		defer d.Close()
		return fn(c, u, d, rec)
	}
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
			&cli.StringFlag{Name: "method", Value: "auto", Usage: "auto (the smaller download), patch (fail without a signed patch) or layers"}),
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return usageErrorf("update takes one reference, got %d arguments", c.NArg())
			}
			method := c.String("method")
			switch method {
			case "auto":
				method = ""
			case "patch", "layers":
			default:
				return usageErrorf("--method %q: auto, patch or layers", method)
			}
			u := newUI(c)
			deviceMemoryLimit()
			s, err := resolveArchive(c.Args().First())
			if err != nil {
				return err
			}
			ref, err := parseRef(c, s)
			if err != nil {
				return err
			}
			d, _, err := openDevice(c, u, true)
			if err != nil {
				return err
			}
			defer d.Close()
			progress, done := u.bar("downloading")
			d.SetProgress(progress)
			res, err := d.Update(c.Context, ref, device.UpdateOptions{Retry: c.Bool("retry"), Method: method})
			done()
			if err != nil {
				return err
			}
			return u.result(res, func(w io.Writer) {
				if res.UpToDate {
					fmt.Fprintf(w, "up to date: release %d (%s), generation %d\n", res.Version, res.Target, res.From)
					return
				}
				fmt.Fprintf(w, "updated to release %d (%s): generation %d -> %d\n", res.Version, res.Target, res.From, res.To)
				fmt.Fprintf(w, "  by %s: %s to download, %s transferred; %d store paths built, %d collected\n",
					res.Method, humanBytes(res.Download), humanBytes(res.Transferred), len(res.Built), len(res.Collected))
			})
		},
	}
}

func statusCommand() *cli.Command {
	return &cli.Command{
		Name:  "status",
		Usage: "show the installed release, the generations and how the last update ended",
		Flags: deviceFlags(),
		Action: withDevice(false, func(c *cli.Context, u *ui, d *device.Device, rec *device.Recovery) error {
			st, err := d.Status()
			if err != nil {
				return err
			}
			st.Recovered = rec
			return u.result(st, func(w io.Writer) {
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
				if l := st.Last; l != nil {
					fmt.Fprintf(w, "last %s at %s: %s", l.Action, l.Time, l.Result)
					if l.Reason != "" {
						fmt.Fprintf(w, " (%s)", l.Reason)
					}
					fmt.Fprintln(w)
				}
			})
		}),
	}
}

func rollbackCommand() *cli.Command {
	return &cli.Command{
		Name:  "rollback",
		Usage: "switch back to the previous generation and activate it",
		Flags: deviceFlags(),
		Action: withDevice(false, func(c *cli.Context, u *ui, d *device.Device, _ *device.Recovery) error {
			o, err := d.Rollback(c.Context)
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
		Action: withDevice(false, func(c *cli.Context, u *ui, d *device.Device, _ *device.Recovery) error {
			collected, err := d.GC()
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
		Action: withDevice(false, func(c *cli.Context, u *ui, d *device.Device, rec *device.Recovery) error {
			return u.result(map[string]any{"recovered": rec}, func(w io.Writer) {
				if rec == nil {
					fmt.Fprintln(w, "nothing to recover")
				}
			})
		}),
	}
}
