// Package device is otter on the device: numbered generations of
// releases in a state directory, updates that fetch the least they can
// (one patch, else the missing layers), resumably, switch atomically, roll
// back on a failed health check, and recover from power loss at any
// instant. docs/device.md is the state layout and the recovery rules.
package device

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"

	"github.com/otter-fleet/otter/bundle"
	"github.com/otter-fleet/otter/internal/fsutil"
	"github.com/otter-fleet/otter/nix"
	"github.com/otter-fleet/otter/nixdb"
	"github.com/otter-fleet/otter/oci"
	"github.com/otter-fleet/otter/sign"
	"github.com/otter-fleet/otter/state"
)

// Errors of device operations.
var (
	ErrBusy        = errors.New("device: another otter is working on this device")
	ErrHealthCheck = errors.New("device: the new release failed its health check; rolled back")
	ErrActivation  = errors.New("device: activating the new release failed; rolled back")
	ErrKnownBad    = errors.New("device: this release failed here before")
	ErrNoSpace     = errors.New("device: not enough free space")
	ErrNoPrevious  = errors.New("device: no earlier generation to roll back to")
	ErrState       = state.ErrDamaged
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
	// Wariness gives the device's place in staged rollouts, in [0,1): 0
	// goes first, near 1 last (sign.Wariness of the machine id, or set).
	// Nil refuses staged releases.
	Wariness func() (float64, error)
	// Progress reports download bytes.
	Progress bundle.Progress
	// NoFsync skips syncs, for scratch devices in tests and benchmarks.
	NoFsync bool
	// Nix, when set, is the Nix database of Store: paths are registered,
	// generations rooted in the profile NixProfile (default
	// STORE/../var/nix/profiles/otter), gc goes through Nix, and a NixOS
	// release is switched to with switch-to-configuration test, then
	// NixOSSwitch ("boot", the default, or "switch") once healthy.
	Nix         *nixdb.DB
	NixProfile  string
	NixOSSwitch string
	// Boot, when set, is how this device boots its releases' own
	// kernels and inits: each generation by its own entry or slot, and a
	// new boot part or init tried by a reboot before it is trusted
	// (docs/image.md §2). Nil: activation in place.
	Boot *Boot
}

// Device is an opened device state; it holds the state lock.
type Device struct {
	c    Config
	st   *state.Dir
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
	if err := os.MkdirAll(c.Store, 0o755); err != nil {
		return nil, nil, err
	}
	st, err := state.Open(c.State, c.NoFsync)
	if err != nil {
		return nil, nil, err
	}
	// O_NOFOLLOW: a symlinked lock must not make otter create or open the
	// file it points at.
	f, err := os.OpenFile(st.Path("lock"), os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW, 0o644)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return nil, nil, fmt.Errorf("%w: %s is a symlink", ErrState, st.Path("lock"))
		}
		return nil, nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("%w (%s is locked)", ErrBusy, c.State)
	}
	d := &Device{c: c, st: st, lock: f}
	rec, err := d.recover(ctx)
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return d, rec, nil
}

// Config is the configuration the device was opened with, defaults
// filled in.
func (d *Device) Config() Config { return d.c }

// Close releases the lock.
func (d *Device) Close() error { return d.lock.Close() }

// Generation is one installed release, as otter status shows it.
type Generation struct {
	Number  int            `json:"number"`
	Digest  string         `json:"digest"`
	Root    string         `json:"root"`
	Release *sign.Release  `json:"release"`
	Config  *bundle.Config `json:"-"`
	// Damaged says why a generation's files could not be read.
	Damaged string `json:"damaged,omitempty"`
}

// loadGeneration reads generation n and its statement. The statement was
// verified when the generation was made; it is read back without a trust
// root.
func (d *Device) loadGeneration(n int) (*Generation, error) {
	g, err := d.st.Load(n)
	if err != nil {
		return nil, err
	}
	e, err := sign.ParseEnvelope(g.Envelope)
	if err != nil {
		return nil, fmt.Errorf("%w: generation %d: %v", ErrState, n, err)
	}
	r, err := sign.ParseRelease(e.Payload)
	if err != nil {
		return nil, fmt.Errorf("%w: generation %d: %v", ErrState, n, err)
	}
	return &Generation{Number: n, Digest: g.Digest, Root: g.Root, Release: r, Config: g.Config}, nil
}

func (d *Device) syncDir(dir string) error {
	if d.c.NoFsync {
		return nil
	}
	return fsutil.SyncDir(dir)
}

// Outcome is how the last update (or rollback) ended.
type Outcome = state.Outcome

func (d *Device) record(o Outcome) error { return d.st.Record(o, d.c.Now()) }

// SetProgress sets the download progress callback.
func (d *Device) SetProgress(p bundle.Progress) { d.c.Progress = p }
