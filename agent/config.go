// Package agent is otter running unattended on a device: the device
// config file (/etc/otter/device.yaml, docs/device.md §7) that every
// device command reads, and the agent loop that polls for releases on a
// schedule with jitter, backoff, a maintenance window and inhibit files,
// updates exactly as otter update does, and writes the device's status
// for node_exporter's textfile collector.
package agent

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/otter-fleet/otter/boot"
	"github.com/otter-fleet/otter/device"
	"github.com/otter-fleet/otter/internal/yamlfile"
	"github.com/otter-fleet/otter/oci"
)

// ErrConfig is returned for a device config file otter cannot use; the
// message names the file, line and field.
var ErrConfig = errors.New("agent: invalid device config")

// DefaultConfigPath is where device commands look for the config file.
const DefaultConfigPath = "/etc/otter/device.yaml"

// Config is device.yaml.
type Config struct {
	Version int `yaml:"version"`
	// Release is the registry repository and channel tag the device
	// follows (HOST/REPO:CHANNEL), or oci:DIR[:TAG].
	Release string `yaml:"release"`
	// Channel is the channel release statements must name (default: the
	// tag of Release).
	Channel  string `yaml:"channel"`
	Trust    string `yaml:"trust"`
	System   string `yaml:"system"`
	Store    string `yaml:"store"`
	State    string `yaml:"state"`
	Insecure bool   `yaml:"insecure"`
	// Mirrors are registries (pull-through caches of the origin, such as
	// a site cache on the LAN) that reads try first, in order; MirrorStall
	// is how long one may send nothing before the next is asked.
	Mirrors     []string `yaml:"mirrors"`
	MirrorStall Duration `yaml:"mirrorStall"`
	// Wariness is the device's place in staged rollouts, in [0,1): 0 for
	// canaries, near 1 for cautious devices. Unset, it is derived from
	// the machine id in MachineID (docs/signing.md §7).
	Wariness  *float64 `yaml:"wariness"`
	MachineID string   `yaml:"machineId"`
	// Nix is auto, on or off (docs/device.md §6).
	Nix           string   `yaml:"nix"`
	Activate      string   `yaml:"activate"`
	HealthCheck   string   `yaml:"healthCheck"`
	HealthTimeout Duration `yaml:"healthTimeout"`
	Keep          int      `yaml:"keep"`
	Schedule      Schedule `yaml:"schedule"`
	// Inhibit are files whose presence holds updates back (an
	// acquisition that must not be disturbed).
	Inhibit []string `yaml:"inhibit"`
	// Status is the Prometheus text file the agent writes after every
	// attempt (node_exporter's textfile collector directory).
	Status string `yaml:"status"`
	// Boot, when its loader is set, makes the device boot its releases'
	// own kernels and inits, trying each new one (docs/image.md §2).
	Boot BootConfig `yaml:"boot"`

	file *yamlfile.File
}

// BootConfig is how a device boots its releases (docs/device.md §11).
type BootConfig struct {
	// Loader is efi or pi; empty: releases are activated in place.
	Loader string `yaml:"loader"`
	// ESP is the EFI system partition (efi); Slots the two boot
	// partitions (pi), the first holding autoboot.txt. Each is a mount
	// point, or a block device or image file, PATH[@OFFSET].
	ESP   string   `yaml:"esp"`
	Slots []string `yaml:"slots"`
	// Reboot and Tryboot are shell commands: a reboot, and the reboot
	// into a staged release (default: reboot; on a Pi, reboot '0 tryboot').
	Reboot  string `yaml:"reboot"`
	Tryboot string `yaml:"tryboot"`
}

// Device is the device's boot configuration (nil: none).
func (b BootConfig) Device() (*device.Boot, error) {
	if b.Loader == "" {
		return nil, nil
	}
	db := &device.Boot{Loader: b.Loader, Reboot: Shell(b.Reboot), Tryboot: Shell(b.Tryboot)}
	var err error
	switch b.Loader {
	case "efi":
		db.ESP, err = boot.OpenVolume(b.ESP)
	case "pi":
		if len(b.Slots) != 2 {
			return nil, fmt.Errorf("pi: two boot partitions, got %d", len(b.Slots))
		}
		for i, s := range b.Slots {
			if db.Slots[i], err = boot.OpenVolume(s); err != nil {
				break
			}
		}
	default:
		return nil, fmt.Errorf("loader %q: efi or pi", b.Loader)
	}
	if err != nil {
		return nil, err
	}
	return db, nil
}

// Shell is the argv that runs a config file's shell command (nil for
// none): activate, healthCheck, boot.reboot, boot.tryboot.
func Shell(cmd string) []string {
	if cmd == "" {
		return nil
	}
	return []string{"/bin/sh", "-c", cmd}
}

// Schedule is when the agent polls.
type Schedule struct {
	Interval   Duration `yaml:"interval"`
	Jitter     Duration `yaml:"jitter"`
	AfterBoot  Duration `yaml:"afterBoot"`
	MaxBackoff Duration `yaml:"maxBackoff"`
	// Window is an optional maintenance window in local time, HH:MM-HH:MM
	// (it may wrap past midnight).
	Window string `yaml:"window"`
}

// Duration is a time.Duration written as Go writes one (30m, 6h).
type Duration struct{ time.Duration }

// UnmarshalYAML reads "30m", "1h30m", "45s".
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if n.Kind != yaml.ScalarNode || err != nil {
		return yamlfile.LineError(n, "%q is not a duration (30m, 6h)", n.Value)
	}
	d.Duration = v
	return nil
}

// Defaults: what a config that leaves a field out gets.
var defaults = Config{
	Version: 1, System: "aarch64-linux", Store: "/nix/store", State: "/var/lib/otter", Nix: "auto", Keep: 3,
	MachineID:     "/etc/machine-id",
	HealthTimeout: Duration{2 * time.Minute}, MirrorStall: Duration{30 * time.Second},
	Schedule: Schedule{Interval: Duration{30 * time.Minute}, Jitter: Duration{5 * time.Minute},
		AfterBoot: Duration{2 * time.Minute}, MaxBackoff: Duration{6 * time.Hour}},
}

// Load reads and checks the config file at path.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrConfig, err)
	}
	return Parse(path, data)
}

// Parse reads a config file's bytes; path is for messages. Fields left
// out get the defaults docs/device.md §7 gives.
func Parse(path string, data []byte) (*Config, error) {
	c := defaults
	f, err := yamlfile.Decode(path, data, &c)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrConfig, err)
	}
	c.file = f
	if c.Channel == "" {
		if i := strings.LastIndex(c.Release, ":"); i >= 0 && !strings.Contains(c.Release[i:], "/") {
			c.Channel = c.Release[i+1:]
		}
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

func (c *Config) fieldErr(field, format string, a ...any) error {
	return fmt.Errorf("%w: %v", ErrConfig, c.file.Err(field, format, a...))
}

// Has reports whether the file sets field (dotted: schedule.interval).
func (c *Config) Has(field string) bool { return c.file != nil && c.file.Has(field) }

func (c *Config) validate() error {
	switch {
	case c.Version != 1:
		return c.fieldErr("version", "%d: this otter reads version 1", c.Version)
	case c.Release == "":
		return c.fieldErr("release", "missing: the registry repository and channel tag (HOST/REPO:CHANNEL)")
	case c.Channel == "":
		return c.fieldErr("channel", "missing, and release names no tag")
	case c.Trust == "":
		return c.fieldErr("trust", "missing: the trust file (otter trust init)")
	case c.Nix != "auto" && c.Nix != "on" && c.Nix != "off":
		return c.fieldErr("nix", "%q: auto, on or off", c.Nix)
	case c.Keep < 1:
		return c.fieldErr("keep", "%d: at least 1 (the current generation)", c.Keep)
	case c.HealthTimeout.Duration <= 0:
		return c.fieldErr("healthTimeout", "must be positive")
	case c.MirrorStall.Duration < time.Second:
		return c.fieldErr("mirrorStall", "%v: at least 1s", c.MirrorStall.Duration)
	case c.Wariness != nil && !(*c.Wariness >= 0 && *c.Wariness < 1):
		return c.fieldErr("wariness", "%v: in [0,1) (0 goes first)", *c.Wariness)
	case !strings.HasPrefix(c.MachineID, "/"):
		return c.fieldErr("machineId", "%q: an absolute path", c.MachineID)
	case c.Schedule.Interval.Duration < time.Second:
		return c.fieldErr("schedule.interval", "%v: at least 1s", c.Schedule.Interval.Duration)
	case c.Schedule.Jitter.Duration < 0 || c.Schedule.Jitter.Duration > c.Schedule.Interval.Duration:
		return c.fieldErr("schedule.jitter", "%v: between 0 and the interval", c.Schedule.Jitter.Duration)
	case c.Schedule.AfterBoot.Duration < 0:
		return c.fieldErr("schedule.afterBoot", "must not be negative")
	case c.Schedule.MaxBackoff.Duration < c.Schedule.Interval.Duration:
		return c.fieldErr("schedule.maxBackoff", "%v: at least the interval", c.Schedule.MaxBackoff.Duration)
	}
	if c.Schedule.Window != "" {
		if _, err := ParseWindow(c.Schedule.Window); err != nil {
			return c.fieldErr("schedule.window", "%v", err)
		}
	}
	if _, err := os.Stat(c.Trust); err != nil {
		return c.fieldErr("trust", "%v", err)
	}
	if len(c.Mirrors) > 0 {
		if _, err := oci.NewMirrors(c.Mirrors, c.Insecure, c.MirrorStall.Duration); err != nil {
			return c.fieldErr("mirrors", "%v", err)
		}
	}
	if _, err := c.Boot.Device(); err != nil {
		return c.fieldErr("boot", "%v", err)
	}
	for i, p := range c.Inhibit {
		if !strings.HasPrefix(p, "/") {
			return c.fieldErr(fmt.Sprintf("inhibit[%d]", i), "%q: an absolute path", p)
		}
	}
	return nil
}

// Window is a daily maintenance window in local time, [Start, End) in
// minutes after midnight; End < Start wraps past midnight.
type Window struct{ Start, End int }

// ParseWindow reads HH:MM-HH:MM.
func ParseWindow(s string) (Window, error) {
	var w Window
	a, b, ok := strings.Cut(s, "-")
	if !ok {
		return w, fmt.Errorf("%q: want HH:MM-HH:MM", s)
	}
	for i, part := range []string{a, b} {
		t, err := time.Parse("15:04", strings.TrimSpace(part))
		if err != nil {
			return w, fmt.Errorf("%q: want HH:MM-HH:MM", s)
		}
		m := t.Hour()*60 + t.Minute()
		if i == 0 {
			w.Start = m
		} else {
			w.End = m
		}
	}
	if w.Start == w.End {
		return w, fmt.Errorf("%q: an empty window", s)
	}
	return w, nil
}

// Open reports whether t (local time) is inside the window.
func (w Window) Open(t time.Time) bool {
	m := t.Hour()*60 + t.Minute()
	if w.Start < w.End {
		return m >= w.Start && m < w.End
	}
	return m >= w.Start || m < w.End
}

// Next is the first instant at or after t that the window is open.
func (w Window) Next(t time.Time) time.Time {
	if w.Open(t) {
		return t
	}
	start := time.Date(t.Year(), t.Month(), t.Day(), w.Start/60, w.Start%60, 0, 0, t.Location())
	if !start.After(t) {
		start = start.AddDate(0, 0, 1)
	}
	return start
}
