package device

import (
	"bytes"
	"context"
	"errors"

	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/sys/unix"

	"github.com/otter-fleet/otter/bundle"
	"github.com/otter-fleet/otter/delta"
	"github.com/otter-fleet/otter/nix"
	"github.com/otter-fleet/otter/oci"
	"github.com/otter-fleet/otter/release"
	"github.com/otter-fleet/otter/sign"
	"github.com/otter-fleet/otter/state"
)

// UpdateOptions tune one update.
type UpdateOptions struct {
	// Retry installs a release even if it failed its health check here.
	Retry bool
	// Method forces "patch" (an error if there is no signed patch from the
	// installed release) or "layers"; empty picks the smaller download.
	Method string
}

// ErrNoPatch is returned when a patch is required and the registry has
// no signed patch from the installed release.
var ErrNoPatch = errors.New("device: no signed patch from the installed release")

// UpdateResult says what an update did.
type UpdateResult struct {
	Target   string `json:"target"`
	Version  uint64 `json:"version"`
	From     int    `json:"from"`
	To       int    `json:"to"`
	UpToDate bool   `json:"upToDate,omitempty"`
	// Method is patch (one signed patch from the installed release) or
	// layers (the store paths the device lacks).
	Method string `json:"method,omitempty"`
	// Download is the size of what the method needs; Transferred what
	// crossed the network this time (less when resuming).
	Download    int64    `json:"download"`
	Transferred int64    `json:"transferred"`
	Built       []string `json:"built"`
	Collected   []string `json:"collected"`
	// Hold, when set, says why the device stays where it is although the
	// release verified: it is halted, or its rollout has not reached this
	// device. Not an error.
	Hold *Hold `json:"hold,omitempty"`
	// Reboot, when set, is the command that starts the tried boot of the
	// staged generation To (its boot part or init changed, docs/image.md
	// §2); otter confirm in that boot makes it permanent.
	Reboot string `json:"reboot,omitempty"`
}

// Hold is why a verified release is not installed now.
type Hold struct {
	// Kind is "halted" (a signed halt is in force) or "rollout" (the
	// staged rollout has not reached this device's wariness).
	Kind    string `json:"kind"`
	Message string `json:"message"`
	// Fraction is the rollout's current fraction and Wariness this
	// device's, for a rollout hold.
	Fraction float64 `json:"fraction,omitempty"`
	Wariness float64 `json:"wariness,omitempty"`
	// Halt is the halt in force, for a halted release.
	Halt *sign.Halt `json:"halt,omitempty"`
	// Until is when the hold ends by itself, RFC 3339: the halt's expiry,
	// or the instant the rollout reaches this device. Nothing need be
	// fetched about this release before then (the agent's cheap check).
	Until string `json:"until"`
	// Target is the release held back.
	Target string `json:"target"`
}

// hold decides whether the verified release stmt is installed now
// (docs/device.md §10): not while a halt is in force, nor before its
// rollout schedule reaches this device's wariness.
func (d *Device) hold(ctx context.Context, ref oci.Ref, digest v1.Hash, stmt *sign.Release, p sign.Policy) (*Hold, error) {
	var h *sign.Halt
	err := d.retry(ctx, func() (err error) {
		h, err = release.Halted(ctx, ref, digest, p, d.c.IO...)
		return err
	})
	if err != nil {
		return nil, err
	}
	if h != nil {
		return &Hold{Kind: "halted", Halt: h, Target: digest.String(), Until: h.Expires,
			Message: fmt.Sprintf("release %d is halted until %s: %s", h.Version, h.Expires, h.Reason)}, nil
	}
	if stmt.Rollout == nil {
		return nil, nil
	}
	if d.c.Wariness == nil {
		return nil, fmt.Errorf("%w: release %d has a rollout schedule, and this device has no wariness", ErrNoWariness, stmt.Version)
	}
	w, err := d.c.Wariness()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoWariness, err)
	}
	now := d.c.Now()
	if f := stmt.Rollout.FractionAt(now); !(w < f) {
		return &Hold{Kind: "rollout", Fraction: f, Wariness: w, Target: digest.String(), Until: sign.FormatTime(stmt.Rollout.OfferedAt(w)),
			Message: fmt.Sprintf("release %d is rolling out (%s): at %.1f%% of devices, this device's wariness is %.1f%%", stmt.Version, stmt.Rollout, 100*f, 100*w)}, nil
	}
	return nil, nil
}

// Held is the release the last update held back and until when (nil:
// none). A held record for another digest than the channel's is stale.
func (d *Device) Held() (*Hold, error) {
	var h Hold
	ok, err := d.st.ReadJSON(state.Held, &h)
	if err != nil || !ok {
		return nil, err
	}
	return &h, nil
}

// ErrNoWariness is a staged release on a device that has neither a
// wariness in its configuration nor a machine id to derive one from.
var ErrNoWariness = errors.New("device: no wariness for a staged rollout")

// Update installs the release ref names, or leaves the device on its
// current release with the reason in the returned error and last.json.
// An update that failed after it began also returns its result so far:
// what it transferred was paid for.
func (d *Device) Update(ctx context.Context, ref oci.Ref, o UpdateOptions) (*UpdateResult, error) {
	var img v1.Image
	err := d.retry(ctx, func() (err error) {
		img, err = oci.OpenManifest(ctx, ref, d.c.IO...)
		return err
	})
	if err != nil {
		return nil, err
	}
	digest, err := img.Digest()
	if err != nil {
		return nil, err
	}
	from, err := d.st.Current()
	if err != nil {
		return nil, err
	}
	if t, err := d.Trial(); err != nil || t != nil {
		if err == nil {
			err = fmt.Errorf("%w: generation %d (release %d) is staged; reboot into it, then otter confirm", ErrOnTrial, t.To, t.Version)
		}
		return nil, err
	}
	res := &UpdateResult{Target: digest.String(), From: from, To: from, Built: []string{}, Collected: []string{}}
	var installed *Generation
	if from > 0 {
		if installed, err = d.loadGeneration(from); err != nil {
			return nil, err
		}
		if installed.Digest == digest.String() {
			// Nothing to install, but a release whose statement has
			// expired is not one to stay on (a freeze): the statement is
			// verified again, and a refusal is reported.
			policy := d.policy(digest, installed)
			err := d.retry(ctx, func() error {
				_, _, err := release.Verify(ctx, ref, digest, policy, d.c.IO...)
				return err
			})
			if err != nil {
				if rerr := d.record(Outcome{Action: "update", Target: digest.String(), From: from, To: from, Result: "failed", Reason: err.Error()}); rerr != nil {
					return nil, errors.Join(err, rerr)
				}
				return nil, err
			}
			res.UpToDate, res.Version = true, installed.Release.Version
			return res, nil
		}
	}
	failed := map[string]string{}
	if _, err := d.st.ReadJSON(state.Failed, &failed); err != nil {
		return nil, err
	}
	if why, bad := failed[digest.String()]; bad && !o.Retry {
		return nil, fmt.Errorf("%w (%s); --retry installs it anyway", ErrKnownBad, why)
	}
	// fail ends an update before the switch: the device is untouched but
	// for downloads (kept for the next try) and store paths no generation
	// names yet (gc collects them).
	j := &journal{Target: digest.String(), From: from}
	fail := func(err error) (*UpdateResult, error) {
		if j.To > 0 {
			if derr := d.st.Drop(j.To); derr != nil {
				return nil, errors.Join(err, derr)
			}
		}
		err = noSpace(err)
		if rerr := d.record(Outcome{Action: "update", Target: digest.String(), From: from, To: from, Result: "failed", Reason: err.Error()}); rerr != nil {
			return nil, errors.Join(err, rerr)
		}
		if rerr := d.st.Remove(state.Journal); rerr != nil {
			return nil, errors.Join(err, rerr)
		}
		return res, err // what was transferred counts, even for an update that failed
	}

	// The statement: trusted keys, this system and channel, not expired,
	// not older than what is installed.
	policy := d.policy(digest, installed)
	var (
		envelope []byte
		stmt     *sign.Release
	)
	err = d.retry(ctx, func() (err error) {
		envelope, stmt, err = release.Verify(ctx, ref, digest, policy, d.c.IO...)
		return err
	})
	if err != nil {
		return fail(err)
	}
	res.Version = stmt.Version
	// A verified release may still not be for this device yet: a halt in
	// force, or a staged rollout that has not reached its wariness.
	if res.Hold, err = d.hold(ctx, ref, digest, stmt, policy); err != nil {
		return fail(err)
	}
	if res.Hold != nil {
		if err := d.st.WriteJSON(state.Held, res.Hold); err != nil {
			return nil, err
		}
		if err := d.record(Outcome{Action: "update", Target: digest.String(), From: from, To: from, Result: "held", Reason: res.Hold.Message}); err != nil {
			return nil, err
		}
		return res, nil
	}

	// A device that boots its releases refuses one it cannot boot before
	// it downloads anything (the config is a small blob).
	if d.c.Boot != nil {
		var bc *bundle.Config
		err := d.retry(ctx, func() (err error) {
			bc, err = bundle.ReadConfig(img)
			return err
		})
		if err != nil {
			return fail(err)
		}
		if err := d.checkBootPart(bc); err != nil {
			return fail(err)
		}
	}
	if err := d.setPhase(j, phaseFetch); err != nil {
		return nil, err
	}
	dl := d.st.Path("downloads")
	plan, err := d.planLayers(img)
	if err != nil {
		return fail(err)
	}
	var (
		patchFile, patchDigest string
		target                 *delta.Target
	)
	var p *v1.Descriptor
	if installed != nil && o.Method != "layers" {
		err := d.retry(ctx, func() (err error) {
			p, err = release.FindPatch(ctx, ref, digest, installed.Digest, policy, d.c.IO...)
			return err
		})
		if err != nil {
			return fail(err)
		}
	}
	method, err := ChooseMethod(o.Method, installed != nil, p, plan.bytes)
	if err != nil {
		if installed != nil {
			err = fmt.Errorf("%w: %s to %s", err, installed.Digest, digest)
		}
		return fail(err)
	}
	if method == "patch" {
		res.Method, res.Download, patchDigest = "patch", p.Size, p.Digest.String()
		if err := d.checkSpace(p.Size, 0); err != nil {
			return fail(err)
		}
		patchFile = filepath.Join(dl, p.Digest.Hex+".patch")
		fr, err := oci.FetchBlob(ctx, ref, *p, patchFile, d.c.Stall, d.ioWithProgress()...)
		if fr != nil {
			res.Transferred += fr.Transferred
		}
		if err != nil {
			return fail(fmt.Errorf("downloading the patch: %w", err))
		}
		// The patch carries the target's config: no need to fetch it.
		if target, err = delta.ReadTarget(patchFile); err != nil {
			os.Remove(patchFile)
			return fail(fmt.Errorf("the downloaded patch: %w", err))
		}
		if got, _, _ := v1.SHA256(bytes.NewReader(target.Manifest)); got != digest {
			os.Remove(patchFile)
			return fail(fmt.Errorf("%w: the patch builds %s, not %s", delta.ErrFormat, got, digest))
		}
		if err := d.checkSpace(0, d.missingNar(target.Config)); err != nil {
			return fail(err)
		}
	}
	var cfg *bundle.Config
	if patchFile == "" {
		err := d.retry(ctx, func() (err error) {
			cfg, err = bundle.ReadConfig(img)
			return err
		})
		if err != nil {
			return fail(err)
		}
		if err := checkTitles(img, cfg); err != nil {
			return fail(err)
		}
		res.Method, res.Download = "layers", plan.bytes
		if err := d.checkSpace(plan.bytes, d.missingNar(cfg)); err != nil {
			return fail(err)
		}
		for _, l := range plan.layers {
			fr, err := oci.FetchBlob(ctx, ref, l, filepath.Join(dl, l.Digest.Hex+".layer"), d.c.Stall, d.ioWithProgress()...)
			if fr != nil {
				res.Transferred += fr.Transferred
			}
			if err != nil {
				return fail(fmt.Errorf("downloading layer %s: %w", l.Digest, err))
			}
		}
	}
	crashPoint("fetched")

	newClosure := cfgClosure(cfg, target)
	newCfg := cfg
	if target != nil {
		newCfg = target.Config
	}
	if err := d.nixCheck(ctx, newClosure); err != nil {
		return fail(err)
	}
	if d.c.Nix != nil {
		j.Paths = newClosure.Paths
	}
	if err := d.setPhase(j, phaseApply); err != nil {
		return nil, err
	}
	var manifest, config []byte
	if patchFile != "" {
		ar, err := delta.Apply(ctx, patchFile, d.c.Store, delta.ApplyOptions{Installed: installed.Digest, PatchDigest: patchDigest, NoFsync: d.c.NoFsync})
		if err != nil {
			return fail(fmt.Errorf("applying the patch: %w", err))
		}
		res.Built = ar.Built
		manifest, config = target.Manifest, target.RawConfig
	} else {
		er, err := bundle.Extract(ctx, &localImage{Image: img, dir: dl}, cfg, d.c.Store, bundle.WithFsync(!d.c.NoFsync))
		if err != nil {
			return fail(fmt.Errorf("installing the layers: %w", err))
		}
		res.Built = er.Extracted
		if manifest, err = img.RawManifest(); err == nil {
			config, err = img.RawConfigFile()
		}
		if err != nil {
			return fail(err)
		}
	}
	crashPoint("applied")
	// With Nix, every path of the release is valid before a generation
	// names it.
	if err := d.nixRegister(ctx, newClosure); err != nil {
		return fail(err)
	}
	crashPoint("registered")

	// The new generation, complete before anything names it.
	gens, err := d.st.Generations()
	if err != nil {
		return nil, err
	}
	to := 1
	if len(gens) > 0 {
		to = gens[len(gens)-1] + 1
	}
	j.To = to
	if err := d.setPhase(j, phaseApply); err != nil {
		return nil, err
	}
	if err := d.st.Write(to, d.c.Store, manifest, config, envelope); err != nil {
		return fail(err)
	}
	crashPoint("generation")
	// Rooted in the Nix profile before anything switches to it.
	if err := d.syncProfile(ctx); err != nil {
		return fail(err)
	}
	// The downloads served their purpose once the generation exists.
	dropDownloads := func() {
		if patchFile != "" {
			os.Remove(patchFile)
			return
		}
		for _, l := range plan.layers {
			os.Remove(filepath.Join(dl, l.Digest.Hex+".layer"))
		}
	}
	// A new boot part or init is tried by a reboot, not activated.
	if d.c.Boot != nil {
		var old *bundle.Config
		if installed != nil {
			old = installed.Config
		}
		if bundle.NeedsReboot(old, newCfg) {
			dropDownloads()
			return d.stageTrial(j, res, stmt.Version)
		}
	}
	if err := d.setPhase(j, phaseSwitch); err != nil {
		return nil, err
	}
	if err := d.st.Switch(to); err != nil {
		return nil, err
	}
	crashPoint("switched")
	if err := d.activate(ctx, to); err != nil {
		return d.rollBackFailed(ctx, j, res, fmt.Errorf("%w: %v", ErrActivation, err))
	}
	crashPoint("activated")
	if err := d.healthCheck(ctx, to); err != nil {
		return d.rollBackFailed(ctx, j, res, fmt.Errorf("%w: %v", ErrHealthCheck, err))
	}
	crashPoint("healthy")
	if err := d.nixosCommit(ctx, to); err != nil {
		return d.rollBackFailed(ctx, j, res, fmt.Errorf("%w: switch-to-configuration: %v", ErrActivation, err))
	}
	if d.c.Boot != nil {
		// The same kernel and init, activated: the next boot starts the
		// new generation by its own entry (or slot).
		slot, err := d.stage(to)
		if err == nil {
			err = d.confirmBoot(to, slot)
		}
		if err != nil {
			return d.rollBackFailed(ctx, j, res, fmt.Errorf("%w: writing its boot entry: %v", ErrActivation, err))
		}
	}
	if err := d.setPhase(j, phaseCommit); err != nil {
		return nil, err
	}
	res.To = to
	if res.Collected, err = d.gc(ctx); err != nil {
		return nil, err
	}
	dropDownloads()
	if err := d.record(Outcome{Action: "update", Target: digest.String(), From: from, To: to, Result: "ok"}); err != nil {
		return nil, err
	}
	crashPoint("committed")
	return res, d.st.Remove(state.Journal)
}

// cfgClosure is the new release's closure: from the patch's target when
// updating by patch, else from the bundle config.
func cfgClosure(cfg *bundle.Config, target *delta.Target) *nix.Closure {
	if target != nil {
		return target.Config.Closure()
	}
	return cfg.Closure()
}

// policy is what a statement for digest must satisfy on this device.
func (d *Device) policy(digest v1.Hash, installed *Generation) sign.Policy {
	p := sign.Policy{Trust: d.c.Trust, Now: d.c.Now(), Digest: digest.String(), System: d.c.System, Channel: d.c.Channel}
	if installed != nil {
		p.Installed, p.HasInstalled = installed.Release.Version, true
	}
	return p
}

// noSpace names a full disk (or quota) as such, whatever step met it:
// it is the device's limit, not bad input.
func noSpace(err error) error {
	if (errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)) && !errors.Is(err, ErrNoSpace) {
		return fmt.Errorf("%w: %v", ErrNoSpace, err)
	}
	return err
}

// ChooseMethod decides how an update downloads (docs/device.md §2,
// step 4): "patch" when a signed patch from the installed release exists
// and is forced (method "patch") or smaller than the layers the store
// lacks (method ""); "layers" otherwise. A forced patch without one (or
// without anything installed) is ErrNoPatch.
func ChooseMethod(method string, installed bool, patch *v1.Descriptor, layerBytes int64) (string, error) {
	switch method {
	case "", "patch", "layers":
	default:
		return "", fmt.Errorf("device: method %q: patch, layers or empty", method)
	}
	switch {
	case method == "layers":
		return "layers", nil
	case method == "patch" && !installed:
		return "", fmt.Errorf("%w: nothing is installed", ErrNoPatch)
	case method == "patch" && patch == nil:
		return "", ErrNoPatch
	case patch != nil && (method == "patch" || patch.Size < layerBytes):
		return "patch", nil
	}
	return "layers", nil
}

// rollBackFailed puts the old generation back after the new one failed
// to activate or to pass its health check, and remembers the release.
func (d *Device) rollBackFailed(ctx context.Context, j *journal, res *UpdateResult, cause error) (*UpdateResult, error) {
	if err := d.st.Switch(j.From); err != nil {
		return nil, err
	}
	if d.c.Boot != nil {
		if err := d.unstage(j.To); err != nil {
			return nil, err
		}
	}
	// Stopped (SIGTERM) or not, the old release is activated again.
	ctx = context.WithoutCancel(ctx)
	if j.From > 0 {
		if err := d.activate(ctx, j.From); err != nil {
			cause = fmt.Errorf("%w; reactivating generation %d also failed: %v", cause, j.From, err)
		}
	}
	if d.c.Nix != nil {
		// The failed system leaves the system profile, the failed
		// generation the otter profile.
		if g, err := d.loadGeneration(j.To); err == nil && d.nixosScript(g.Root) != "" {
			if err := d.dropSystem(ctx, g.Root); err != nil {
				return nil, err
			}
		}
	}
	if err := d.st.Drop(j.To); err != nil {
		return nil, err
	}
	if err := d.syncProfile(ctx); err != nil {
		return nil, err
	}
	if err := d.markFailed(j.Target, cause.Error()); err != nil {
		return nil, err
	}
	if err := d.record(Outcome{Action: "update", Target: j.Target, From: j.From, To: j.From, Result: "rolled-back", Reason: cause.Error()}); err != nil {
		return nil, err
	}
	if err := d.st.Remove(state.Journal); err != nil {
		return nil, err
	}
	return res, cause
}

// markFailed records in failed.json that the release target failed here,
// and why: otter update refuses it from then on (without --retry).
func (d *Device) markFailed(target, reason string) error {
	failed := map[string]string{}
	if _, err := d.st.ReadJSON(state.Failed, &failed); err != nil {
		return err
	}
	failed[target] = reason
	return d.st.WriteJSON(state.Failed, failed)
}

type layerPlan struct {
	layers []v1.Descriptor
	bytes  int64 // compressed, to download
}

// planLayers lists the layers of the store paths the store lacks, by the
// store path each layer's title annotation names (bundle.md §4).
func (d *Device) planLayers(img v1.Image) (*layerPlan, error) {
	m, err := img.Manifest()
	if err != nil {
		return nil, err
	}
	p := &layerPlan{}
	for _, l := range m.Layers {
		name := l.Annotations[titleAnnotation]
		if nix.ValidateStorePath(nix.StoreDir+"/"+name) != nil {
			return nil, fmt.Errorf("%w: layer %s names no store path (%q)", bundle.ErrConfig, l.Digest, name)
		}
		if _, err := os.Lstat(filepath.Join(d.c.Store, name)); err == nil {
			continue
		}
		p.layers = append(p.layers, l)
		p.bytes += l.Size
	}
	return p, nil
}

// checkTitles makes sure the layer titles the plan went by name the
// config's store paths, which is what Extract installs.
func checkTitles(img v1.Image, cfg *bundle.Config) error {
	m, err := img.Manifest()
	if err != nil {
		return err
	}
	for i, l := range m.Layers {
		if i >= len(cfg.Paths) || l.Annotations[titleAnnotation] != filepath.Base(cfg.Paths[i].Path) {
			return fmt.Errorf("%w: layer %d is titled %q, the config says %s", bundle.ErrConfig, i, l.Annotations[titleAnnotation], cfg.Paths[min(i, len(cfg.Paths)-1)].Path)
		}
	}
	return nil
}

const titleAnnotation = "org.opencontainers.image.title"

// missingNar is the unpacked size of the closure's paths the store lacks.
func (d *Device) missingNar(cfg *bundle.Config) int64 {
	var n int64
	for _, p := range cfg.Paths {
		if _, err := os.Lstat(filepath.Join(d.c.Store, filepath.Base(p.Path))); err != nil {
			n += p.NarSize
		}
	}
	return n
}

// checkSpace refuses an update the file systems cannot hold: the download
// in the state directory, the new paths (and their staging) in the store.
func (d *Device) checkSpace(download, nar int64) error {
	need := map[string]int64{d.st.Path("downloads"): download, d.c.Store: nar}
	var sd, ss unix.Statfs_t
	if unix.Statfs(d.st.Path("downloads"), &sd) == nil && unix.Statfs(d.c.Store, &ss) == nil && sd.Fsid == ss.Fsid {
		need = map[string]int64{d.c.Store: download + nar}
	}
	for dir, n := range need {
		var st unix.Statfs_t
		if err := unix.Statfs(dir, &st); err != nil {
			return err
		}
		free := int64(st.Bavail) * int64(st.Bsize)
		n += n/10 + 1<<20 // file system overhead
		if free < n {
			return fmt.Errorf("%w on %s: %d bytes needed, %d free", ErrNoSpace, dir, n, free)
		}
	}
	return nil
}

func (d *Device) ioWithProgress() []oci.IOOption {
	if d.c.Progress == nil {
		return d.c.IO
	}
	return append(append([]oci.IOOption{}, d.c.IO...), oci.WithIOProgress(d.c.Progress))
}

// activate activates generation n: a NixOS system first the NixOS way
// (nixosActivate), then the activation command.
func (d *Device) activate(ctx context.Context, n int) error {
	g, err := d.loadGeneration(n)
	if err != nil {
		return err
	}
	if err := d.nixosActivate(ctx, g); err != nil {
		return err
	}
	return d.run(ctx, d.c.Activate, n)
}

func (d *Device) healthCheck(ctx context.Context, n int) error { return d.run(ctx, d.c.Health, n) }

// run runs a command for generation n within the health timeout; a
// cancelled ctx (SIGTERM) stops it at once.
func (d *Device) run(ctx context.Context, argv []string, n int) error {
	if len(argv) == 0 {
		return nil
	}
	g, err := d.loadGeneration(n)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, d.c.HealthTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), "OTTER_GENERATION="+strconv.Itoa(n), "OTTER_ROOT="+filepath.Join(d.c.Store, filepath.Base(g.Root)),
		"OTTER_STORE="+d.c.Store, "OTTER_RELEASE_VERSION="+strconv.FormatUint(g.Release.Version, 10))
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.WaitDelay = time.Second
	err = cmd.Run()
	if errors.Is(ctx.Err(), context.Canceled) {
		return fmt.Errorf("%s stopped: %w", argv[0], ctx.Err())
	}
	if ctx.Err() == context.DeadlineExceeded {
		return fmt.Errorf("%s did not finish within %v", argv[0], d.c.HealthTimeout)
	}
	if err != nil {
		msg := strings.TrimSpace(out.String())
		if len(msg) > 500 {
			msg = msg[len(msg)-500:]
		}
		return fmt.Errorf("%s: %v: %s", argv[0], err, msg)
	}
	return nil
}

// localImage reads layers from finished downloads.
type localImage struct {
	v1.Image
	dir string
}

func (l *localImage) LayerByDigest(h v1.Hash) (v1.Layer, error) {
	p := filepath.Join(l.dir, h.Hex+".layer")
	fi, err := os.Stat(p)
	if err != nil {
		return nil, fmt.Errorf("layer %s was not downloaded: %w", h, err)
	}
	return partial.CompressedToLayer(&fileLayer{path: p, digest: h, size: fi.Size()})
}

type fileLayer struct {
	path   string
	digest v1.Hash
	size   int64
}

func (f *fileLayer) Digest() (v1.Hash, error)            { return f.digest, nil }
func (f *fileLayer) Size() (int64, error)                { return f.size, nil }
func (f *fileLayer) MediaType() (types.MediaType, error) { return bundle.LayerMediaType, nil }
func (f *fileLayer) Compressed() (io.ReadCloser, error)  { return os.Open(f.path) }

// retry runs fn again while it fails the way a dropping link fails (a
// connection reset or cut short), up to Stall times with a growing wait.
func (d *Device) retry(ctx context.Context, fn func() error) error {
	wait := 250 * time.Millisecond
	for i := 0; ; i++ {
		err := fn()
		if err == nil || i >= d.c.Stall || !transient(err) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
		wait = min(2*wait, 30*time.Second)
	}
}

func transient(err error) bool {
	var ne net.Error
	return errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EPIPE) || errors.As(err, &ne)
}
