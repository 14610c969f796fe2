package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"sort"
	"strings"
	"time"

	"github.com/otter-fleet/otter/device"
	"github.com/otter-fleet/otter/internal/fsutil"
	"github.com/otter-fleet/otter/oci"
	"github.com/otter-fleet/otter/state"
)

// Next is when the poll after one at now happens: the interval (doubled
// for each consecutive failure, up to MaxBackoff) plus a random jitter
// in [0, Jitter], moved into the maintenance window if there is one.
func (s Schedule) Next(now time.Time, failures int, rnd *rand.Rand) time.Time {
	wait := s.Interval.Duration
	for i := 0; i < failures && wait < s.MaxBackoff.Duration; i++ {
		wait *= 2
	}
	wait = min(wait, s.MaxBackoff.Duration)
	if j := s.Jitter.Duration; j > 0 {
		wait += time.Duration(rnd.Int64N(int64(j) + 1))
	}
	return s.inWindow(now.Add(wait))
}

// First is when the first poll happens: AfterBoot after boot (at the
// earliest now), plus a random point of the jitter, so that a fleet that
// boots together does not poll together.
func (s Schedule) First(now, boot time.Time, rnd *rand.Rand) time.Time {
	t := boot.Add(s.AfterBoot.Duration)
	if t.Before(now) {
		t = now
	}
	if j := s.Jitter.Duration; j > 0 {
		t = t.Add(time.Duration(rnd.Int64N(int64(j) + 1)))
	}
	return s.inWindow(t)
}

func (s Schedule) inWindow(t time.Time) time.Time {
	if s.Window == "" {
		return t
	}
	w, err := ParseWindow(s.Window)
	if err != nil {
		return t // validated when the config was read
	}
	return w.Next(t)
}

// Inhibited returns the first of the inhibit files that exists.
func (c *Config) Inhibited() string {
	for _, p := range c.Inhibit {
		if _, err := os.Lstat(p); err == nil {
			return p
		}
	}
	return ""
}

// Agent polls for releases and installs them.
type Agent struct {
	Config *Config
	// Device is the device's configuration (flags and file merged).
	Device device.Config
	// Ref is the release the device follows.
	Ref oci.Ref
	// Log gets one line per attempt (stderr, for journald).
	Log io.Writer
	// Now, Sleep and Rand are the clock and the dice; tests replace them.
	Now   func() time.Time
	Sleep func(ctx context.Context, d time.Duration) error
	Rand  *rand.Rand
	// Boot is when the device booted (default: from /proc/uptime).
	Boot time.Time
	// Inhibit is how often an inhibit file is looked at again.
	InhibitPoll time.Duration
	// Reboot runs a reboot command (the device's boot config gives it);
	// tests replace it.
	Reboot func(ctx context.Context, argv []string) error
}

// Attempt is how one poll ended.
type Attempt struct {
	Time    time.Time            `json:"time"`
	Changed bool                 `json:"changed"` // the channel named another release
	Result  *device.UpdateResult `json:"result,omitempty"`
	Err     error                `json:"-"`
}

// counters persist across restarts in the state directory (agent.json).
type counters struct {
	LastAttempt     time.Time `json:"lastAttempt"`
	LastSuccess     time.Time `json:"lastSuccess"`
	Failures        int       `json:"consecutiveFailures"`
	DownloadedBytes int64     `json:"downloadedBytes"`
	Rollbacks       int64     `json:"rollbacks"`
	LastError       string    `json:"lastError,omitempty"`
}

const countersFile = "agent.json"

func (a *Agent) defaults() {
	if a.Now == nil {
		a.Now = time.Now
	}
	if a.Sleep == nil {
		a.Sleep = func(ctx context.Context, d time.Duration) error {
			t := time.NewTimer(d)
			defer t.Stop()
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-t.C:
				return nil
			}
		}
	}
	if a.Rand == nil {
		a.Rand = rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), uint64(os.Getpid())))
	}
	if a.Boot.IsZero() {
		a.Boot = bootTime(a.Now())
	}
	if a.InhibitPoll <= 0 {
		a.InhibitPoll = 30 * time.Second
	}
	if a.Log == nil {
		a.Log = io.Discard
	}
	if a.Device.Now == nil {
		a.Device.Now = a.Now
	}
	if a.Reboot == nil {
		a.Reboot = func(ctx context.Context, argv []string) error {
			cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
			cmd.Stdout, cmd.Stderr = a.Log, a.Log
			return cmd.Run()
		}
	}
}

// staged is the trial staged and waiting for its tryboot, if any.
func (a *Agent) staged(ctx context.Context) (*device.Trial, error) {
	d, _, err := device.Open(ctx, a.Device)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	t, err := d.Trial()
	if err != nil || t == nil || t.Phase != "staged" {
		return nil, err
	}
	return t, nil
}

// tryboot records the reboot into the staged release, then runs the
// tryboot command.
func (a *Agent) tryboot(ctx context.Context) error {
	d, _, err := device.Open(ctx, a.Device)
	if err != nil {
		return err
	}
	t, err := d.Rebooting()
	d.Close()
	if err != nil || t == nil {
		return err
	}
	fmt.Fprintf(a.Log, "otter agent: rebooting to try release %d\n", t.Version)
	return a.Reboot(ctx, a.Device.Boot.TrybootCommand())
}

// Confirm settles a tried boot when the agent starts: in the boot that
// tries a staged release, otter confirm's health check and
// confirmation; in the boot after one that never confirmed, the failed
// release is recorded (and counted as a rollback). A tried boot that
// fails its health check reboots into the previous release.
func (a *Agent) Confirm(ctx context.Context) (*device.ConfirmResult, error) {
	a.defaults()
	d, rec, err := device.Open(ctx, a.Device)
	if err != nil {
		return nil, err
	}
	res, err := d.Confirm(ctx, rec)
	d.Close()
	switch {
	case err != nil:
		fmt.Fprintf(a.Log, "otter agent: %v\n", err)
		if c, lerr := a.load(); lerr == nil {
			c.Rollbacks++
			c.LastError = err.Error()
			_ = a.save(c)
		}
		if res != nil && res.Reboot != "" && a.Device.Boot != nil {
			return res, errors.Join(err, a.Reboot(ctx, a.Device.Boot.RebootCommand()))
		}
	case res.Confirmed > 0:
		fmt.Fprintf(a.Log, "otter agent: confirmed release %d (%s), generation %d\n", res.Version, res.Target, res.Confirmed)
	}
	return res, err
}

// Run polls until ctx is done: the first poll at Schedule.First, each
// next one at Schedule.Next; it waits for the window and for inhibit
// files before each. once makes it one attempt, at once; its error is
// that attempt's.
func (a *Agent) Run(ctx context.Context, once bool) error {
	a.defaults()
	failures := 0
	if c, err := a.load(); err == nil {
		failures = c.Failures
	}
	if a.Device.Boot != nil {
		if _, err := a.Confirm(ctx); err != nil && once {
			return err
		}
		// A release staged and not yet tried (the power went before the
		// tryboot): try it now.
		if t, err := a.staged(ctx); err == nil && t != nil {
			return a.tryboot(ctx)
		}
	}
	at := a.Config.Schedule.First(a.Now(), a.Boot, a.Rand)
	if once {
		at = a.Now()
	}
	for {
		if err := a.Sleep(ctx, at.Sub(a.Now())); err != nil {
			return nil // stopped
		}
		if err := a.waitInhibit(ctx); err != nil {
			return nil
		}
		att := a.Attempt(ctx)
		if ctx.Err() != nil && att.Err != nil {
			return nil // stopped mid-attempt: the device stays consistent, downloads kept
		}
		if att.Err != nil {
			failures++
		} else {
			failures = 0
		}
		if att.Err == nil && att.Result != nil && att.Result.Reboot != "" && a.Device.Boot != nil {
			// Staged for a tried boot: the agent in that boot confirms it.
			return a.tryboot(ctx)
		}
		if once {
			return att.Err
		}
		at = a.Config.Schedule.Next(a.Now(), failures, a.Rand)
		fmt.Fprintf(a.Log, "otter agent: next poll at %s\n", at.Format(time.RFC3339))
	}
}

func (a *Agent) waitInhibit(ctx context.Context) error {
	logged := false
	for {
		f := a.Config.Inhibited()
		if f == "" {
			return nil
		}
		if !logged {
			fmt.Fprintf(a.Log, "otter agent: %s exists: waiting\n", f)
			logged = true
		}
		if err := a.Sleep(ctx, a.InhibitPoll); err != nil {
			return err
		}
	}
}

// Attempt is one poll: the cheap check first (the channel's manifest
// digest against the installed one, and the installed statement's
// expiry, on the device), an update only when something changed. It logs
// one line and writes the status file.
func (a *Agent) Attempt(ctx context.Context) Attempt {
	a.defaults()
	att := Attempt{Time: a.Now()}
	var digest string
	att.Changed, digest, att.Err = a.changed(ctx)
	if att.Err == nil && att.Changed {
		if digest != "" {
			fmt.Fprintf(a.Log, "otter agent: %s names %s: updating\n", a.Ref, digest)
		}
		att.Result, att.Err = a.update(ctx)
	}
	c, _ := a.load()
	c.LastAttempt = att.Time
	if att.Result != nil {
		c.DownloadedBytes += att.Result.Transferred
	}
	switch {
	case att.Err == nil:
		c.LastSuccess, c.Failures, c.LastError = att.Time, 0, ""
	default:
		c.Failures++
		c.LastError = att.Err.Error()
		if errors.Is(att.Err, device.ErrHealthCheck) || errors.Is(att.Err, device.ErrActivation) {
			c.Rollbacks++
		}
	}
	if err := a.save(c); err != nil && att.Err == nil {
		att.Err = err
	}
	switch {
	case att.Err != nil:
		fmt.Fprintf(a.Log, "otter agent: poll of %s failed (%d in a row): %v\n", a.Ref, c.Failures, att.Err)
	case !att.Changed:
		fmt.Fprintf(a.Log, "otter agent: %s unchanged\n", a.Ref)
	case att.Result.UpToDate:
		fmt.Fprintf(a.Log, "otter agent: %s: up to date\n", a.Ref)
	case att.Result.Hold != nil:
		fmt.Fprintf(a.Log, "otter agent: %s: %s\n", a.Ref, att.Result.Hold.Message)
	case att.Result.Reboot != "":
		fmt.Fprintf(a.Log, "otter agent: staged release %d (%s) for a tried boot by %s, %d bytes\n", att.Result.Version, att.Result.Target, att.Result.Method, att.Result.Transferred)
	default:
		fmt.Fprintf(a.Log, "otter agent: updated to release %d (%s) by %s, %d bytes\n", att.Result.Version, att.Result.Target, att.Result.Method, att.Result.Transferred)
	}
	if a.Config.Status != "" {
		if err := a.WriteStatus(a.Config.Status); err != nil {
			fmt.Fprintf(a.Log, "otter agent: writing %s: %v\n", a.Config.Status, err)
		}
	}
	return att
}

// changed is the cheap check: one HEAD of the channel's manifest, and
// the installed statement's expiry read on the device. Only when the
// digest moved or the statement expired does the agent update (which
// verifies everything, and refuses to stay on an expired release). It
// also gives the digest the channel names, when it looked.
func (a *Agent) changed(ctx context.Context) (bool, string, error) {
	d, _, err := device.Open(ctx, a.Device)
	if err != nil {
		return false, "", err
	}
	g, err := d.Current()
	var held *device.Hold
	if err == nil {
		held, err = d.Held()
	}
	d.Close()
	if err != nil || g == nil {
		return true, "", err
	}
	if exp, err := time.Parse(time.RFC3339, g.Release.Expires); err != nil || !a.Device.Now().Before(exp) {
		return true, "", nil
	}
	if a.Ref.Remote == nil {
		img, err := oci.OpenManifest(ctx, a.Ref, a.Device.IO...)
		if err != nil {
			return false, "", err
		}
		h, err := img.Digest()
		if err != nil {
			return false, "", err
		}
		return h.String() != g.Digest && !heldNow(held, h.String(), a.Device.Now()), h.String(), nil
	}
	desc, err := oci.Head(ctx, a.Ref, a.Device.IO...)
	if err != nil {
		return false, "", err
	}
	if desc == nil {
		return false, "", fmt.Errorf("%w: %s", oci.ErrNotFound, a.Ref)
	}
	return desc.Digest.String() != g.Digest && !heldNow(held, desc.Digest.String(), a.Device.Now()), desc.Digest.String(), nil
}

// heldNow says whether digest is the release the last update held back
// (a halt, or a rollout not yet at this device) and the hold has not run
// out: nothing about it is fetched again before then. A new release moves
// the channel's digest, and is looked at at once.
func heldNow(h *device.Hold, digest string, now time.Time) bool {
	if h == nil || h.Target != digest {
		return false
	}
	until, err := time.Parse(time.RFC3339, h.Until)
	return err == nil && now.Before(until)
}

// update runs the update exactly as otter update does.
func (a *Agent) update(ctx context.Context) (*device.UpdateResult, error) {
	d, _, err := device.Open(ctx, a.Device)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	return d.Update(ctx, a.Ref, device.UpdateOptions{})
}

func (a *Agent) load() (counters, error) {
	var c counters
	st, err := state.Open(a.Device.State, a.Device.NoFsync)
	if err != nil {
		return c, err
	}
	_, err = st.ReadJSON(countersFile, &c)
	return c, err
}

func (a *Agent) save(c counters) error {
	st, err := state.Open(a.Device.State, a.Device.NoFsync)
	if err != nil {
		return err
	}
	return st.WriteJSON(countersFile, c)
}

// WriteStatus writes the device's status in Prometheus text format to
// path, replaced atomically (node_exporter's textfile collector reads
// it).
func (a *Agent) WriteStatus(path string) error {
	text, err := a.Metrics()
	if err != nil {
		return err
	}
	return fsutil.AtomicWrite(path, []byte(text), 0o644)
}

// Metrics is the device's status in Prometheus text format.
func (a *Agent) Metrics() (string, error) {
	a.defaults()
	st, err := state.Open(a.Device.State, true)
	if err != nil {
		return "", err
	}
	c, _ := a.load()
	var version uint64
	var digest string
	if n, err := st.Current(); err == nil && n > 0 {
		if g, err := st.Load(n); err == nil {
			digest = g.Digest
			version = g.Config.Version
		}
	}
	ts := func(t time.Time) float64 {
		if t.IsZero() {
			return 0
		}
		return float64(t.UnixNano()) / 1e9
	}
	var b strings.Builder
	metric := func(name, help, typ string, v float64, labels ...string) {
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s %s\n%s", name, help, name, typ, name)
		if len(labels) > 0 {
			sort.Strings(labels)
			fmt.Fprintf(&b, "{%s}", strings.Join(labels, ","))
		}
		fmt.Fprintf(&b, " %v\n", v)
	}
	metric("otter_release_version", "The installed release's version.", "gauge", float64(version))
	if digest != "" {
		metric("otter_release_info", "The installed release, by bundle digest.", "gauge", 1, fmt.Sprintf("digest=%q", digest))
	}
	metric("otter_last_attempt_timestamp_seconds", "When the agent last polled.", "gauge", ts(c.LastAttempt))
	metric("otter_last_success_timestamp_seconds", "When a poll last ended well.", "gauge", ts(c.LastSuccess))
	metric("otter_consecutive_failures", "Polls in a row that failed.", "gauge", float64(c.Failures))
	metric("otter_downloaded_bytes_total", "Bytes downloaded for updates.", "counter", float64(c.DownloadedBytes))
	metric("otter_rollbacks_total", "Updates rolled back after a failed activation or health check.", "counter", float64(c.Rollbacks))
	return b.String(), nil
}

// bootTime is when the machine booted, from /proc/uptime; now when it
// cannot be read.
func bootTime(now time.Time) time.Time {
	raw, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return now
	}
	var up float64
	if _, err := fmt.Sscanf(string(raw), "%f", &up); err != nil {
		return now
	}
	return now.Add(-time.Duration(up * float64(time.Second)))
}
