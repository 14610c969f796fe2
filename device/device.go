// Package device is otter on the device: numbered generations of
// releases in a state directory, updates that fetch the least they can
// (one patch, else the missing layers), resumably, switch atomically, roll
// back on a failed health check, and recover from power loss at any
// instant. docs/device.md is the state layout and the recovery rules.
package device

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"syscall"
	"time"

	"github.com/otter-fleet/otter/bundle"
	"github.com/otter-fleet/otter/internal/fsutil"
	"github.com/otter-fleet/otter/nix"
	"github.com/otter-fleet/otter/oci"
	"github.com/otter-fleet/otter/sign"
)

// Errors of device operations.
var (
	ErrBusy        = errors.New("device: another otter is working on this device")
	ErrHealthCheck = errors.New("device: the new release failed its health check; rolled back")
	ErrActivation  = errors.New("device: activating the new release failed; rolled back")
	ErrKnownBad    = errors.New("device: this release failed here before")
	ErrNoSpace     = errors.New("device: not enough free space")
	ErrNoPrevious  = errors.New("device: no earlier generation to roll back to")
	ErrState       = errors.New("device: state directory is damaged")
)

// Config says where the device keeps things and what it trusts.
type Config struct {
	Store string // the store directory (default /nix/store)
	State string // the state directory (default /var/lib/otter)
	Trust *sign.Trust
	// System and Channel are what release statements must name.
	System, Channel string
	// Keep is how many generations to keep, the current one included
	// (default 3).
	Keep int
	// Activate and Health are commands (argv) run after a switch; the
	// update rolls back if either fails or outlasts HealthTimeout.
	Activate, Health []string
	HealthTimeout    time.Duration
	// Stall is how many download attempts in a row may make no progress.
	Stall int
	IO    []oci.IOOption
	Now   func() time.Time
	// Progress reports download bytes.
	Progress bundle.Progress
	// NoFsync skips syncs, for scratch devices in tests and benchmarks.
	NoFsync bool
}

// Device is an opened device state; it holds the state lock.
type Device struct {
	c    Config
	lock *os.File
}

// Open locks the state directory (one otter at a time) and finishes or
// undoes whatever an interrupted command left.
func Open(ctx context.Context, c Config) (*Device, *Recovery, error) {
	if c.Store == "" {
		c.Store = nix.StoreDir
	}
	if c.State == "" {
		c.State = "/var/lib/otter"
	}
	if c.Keep < 1 {
		c.Keep = 3
	}
	if c.HealthTimeout <= 0 {
		c.HealthTimeout = 2 * time.Minute
	}
	if c.Stall <= 0 {
		c.Stall = 8
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	for _, dir := range []string{c.Store, c.State, filepath.Join(c.State, "generations"), filepath.Join(c.State, "downloads")} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, nil, err
		}
	}
	// O_NOFOLLOW: a symlinked lock must not make otter create or open the
	// file it points at.
	f, err := os.OpenFile(filepath.Join(c.State, "lock"), os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW, 0o644)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return nil, nil, fmt.Errorf("%w: %s is a symlink", ErrState, filepath.Join(c.State, "lock"))
		}
		return nil, nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("%w (%s is locked)", ErrBusy, c.State)
	}
	d := &Device{c: c, lock: f}
	rec, err := d.recover(ctx)
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return d, rec, nil
}

// Close releases the lock.
func (d *Device) Close() error { return d.lock.Close() }

func (d *Device) path(p ...string) string {
	return filepath.Join(append([]string{d.c.State}, p...)...)
}

// Generation is one installed release.
type Generation struct {
	Number  int            `json:"number"`
	Digest  string         `json:"digest"`
	Root    string         `json:"root"`
	Release *sign.Release  `json:"release"`
	Config  *bundle.Config `json:"-"`
	// Damaged says why a generation's files could not be read.
	Damaged string `json:"damaged,omitempty"`
}

func (d *Device) genDir(n int) string { return d.path("generations", strconv.Itoa(n)) }

// generations lists the complete generations, oldest first.
func (d *Device) generations() ([]int, error) {
	ents, err := os.ReadDir(d.path("generations"))
	if err != nil {
		return nil, err
	}
	var out []int
	for _, e := range ents {
		if n, err := strconv.Atoi(e.Name()); err == nil && n > 0 && strconv.Itoa(n) == e.Name() {
			out = append(out, n)
		}
	}
	sort.Ints(out)
	return out, nil
}

// loadGeneration reads generation n. Its files were checked when it was
// made; they are read back without a trust root.
func (d *Device) loadGeneration(n int) (*Generation, error) {
	dir := d.genDir(n)
	raw, err := readState(filepath.Join(dir, "config.json"))
	if err != nil {
		return nil, fmt.Errorf("%w: generation %d: %v", ErrState, n, err)
	}
	cfg, err := bundle.ParseConfig(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: generation %d: %v", ErrState, n, err)
	}
	env, err := readState(filepath.Join(dir, "release.json"))
	if err != nil {
		return nil, fmt.Errorf("%w: generation %d: %v", ErrState, n, err)
	}
	e, err := sign.ParseEnvelope(env)
	if err != nil {
		return nil, fmt.Errorf("%w: generation %d: %v", ErrState, n, err)
	}
	r, err := sign.ParseRelease(e.Payload)
	if err != nil {
		return nil, fmt.Errorf("%w: generation %d: %v", ErrState, n, err)
	}
	return &Generation{Number: n, Digest: r.Digest, Root: cfg.Root, Release: r, Config: cfg}, nil
}

// current is the generation the current link names; 0 when none.
func (d *Device) current() (int, error) {
	t, err := os.Readlink(d.path("current"))
	if os.IsNotExist(err) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(filepath.Base(t))
	if err != nil || t != filepath.Join("generations", strconv.Itoa(n)) {
		return 0, fmt.Errorf("%w: current points at %q", ErrState, t)
	}
	return n, nil
}

// switchTo points current at generation n (0: no current) atomically:
// a new link renamed over the old one, then the directory synced.
func (d *Device) switchTo(n int) error {
	if n == 0 {
		if err := os.Remove(d.path("current")); err != nil && !os.IsNotExist(err) {
			return err
		}
		return d.syncDir(d.c.State)
	}
	tmp := d.path(".current.tmp")
	os.Remove(tmp)
	if err := os.Symlink(filepath.Join("generations", strconv.Itoa(n)), tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, d.path("current")); err != nil {
		return err
	}
	return d.syncDir(d.c.State)
}

func (d *Device) syncDir(dir string) error {
	if d.c.NoFsync {
		return nil
	}
	return fsutil.SyncDir(dir)
}

// writeJSON replaces a state file atomically.
func (d *Device) writeJSON(name string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return fsutil.AtomicWrite(d.path(name), append(b, '\n'), 0o644)
}

func (d *Device) readJSON(name string, v any) (bool, error) {
	b, err := readState(d.path(name))
	if os.IsNotExist(err) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return false, fmt.Errorf("%w: %s: %v", ErrState, name, err)
	}
	return true, nil
}

func (d *Device) removeState(name string) error {
	if err := os.Remove(d.path(name)); err != nil && !os.IsNotExist(err) {
		return err
	}
	return d.syncDir(d.c.State)
}

// Outcome is how the last update (or rollback) ended.
type Outcome struct {
	Action string `json:"action"` // update, rollback, recover
	Target string `json:"target,omitempty"`
	From   int    `json:"from"`
	To     int    `json:"to"`
	Result string `json:"result"` // ok, failed, interrupted, rolled-back
	Reason string `json:"reason,omitempty"`
	Time   string `json:"time"`
}

func (d *Device) record(o Outcome) error {
	o.Time = sign.FormatTime(d.c.Now())
	return d.writeJSON("last.json", o)
}

// SetProgress sets the download progress callback.
func (d *Device) SetProgress(p bundle.Progress) { d.c.Progress = p }

// Provision writes a device state holding one release as generation 1,
// current: what an SD-card image carries. storeOnDevice is where the
// device will see the store (the generation's root link points there);
// envelope is the release's signed statement.
func Provision(state, storeOnDevice string, manifest, config, envelope []byte) error {
	for _, dir := range []string{state, filepath.Join(state, "generations"), filepath.Join(state, "downloads")} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
	}
	cfg, err := bundle.ParseConfig(config)
	if err != nil {
		return err
	}
	// The bundle's own time, so the same bundle gives the same state.
	created, err := cfg.CreatedTime()
	if err != nil {
		return err
	}
	d := &Device{c: Config{State: state, Store: storeOnDevice, NoFsync: true, Now: func() time.Time { return created }}}
	if err := d.writeGeneration(1, manifest, config, envelope); err != nil {
		return err
	}
	if err := d.switchTo(1); err != nil {
		return err
	}
	return d.record(Outcome{Action: "provision", From: 0, To: 1, Result: "ok"})
}

// readState reads a state file, never through a symlink.
func readState(p string) ([]byte, error) {
	f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return nil, fmt.Errorf("%w: %s is a symlink", ErrState, p)
		}
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, maxStateFile))
}

// maxStateFile bounds what otter reads of one state file.
const maxStateFile = 64 << 20
