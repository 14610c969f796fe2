package pipelines

import (
	"bytes"
	"context"
	"crypto"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/otter-fleet/otter/build"
	"github.com/otter-fleet/otter/bundle"
	"github.com/otter-fleet/otter/delta"
	"github.com/otter-fleet/otter/diff"
	"github.com/otter-fleet/otter/image"
	"github.com/otter-fleet/otter/nix"
	"github.com/otter-fleet/otter/oci"
	"github.com/otter-fleet/otter/release"
	"github.com/otter-fleet/otter/sign"
)

// ErrTagTaken is returned when a release tag already names another bundle:
// release versions are immutable.
var ErrTagTaken = errors.New("pipelines: the release tag names another bundle")

// Runner runs a release file.
type Runner struct {
	File *ReleaseFile
	// Keys sign; the previous releases patched from must verify against
	// them.
	Keys    []crypto.Signer
	Now     time.Time
	Expires time.Time
	// Rollout, when set, stages the release (docs/signing.md §7).
	Rollout *sign.Rollout
	// Created is the bundles' creation time (SOURCE_DATE_EPOCH).
	Created time.Time
	IO      []oci.IOOption
	Log     func(format string, a ...any)
}

// Result is what a run did, per target.
type Result struct {
	Release uint64         `json:"release"`
	Targets []TargetResult `json:"targets"`
}

// TargetResult is one target's outcome.
type TargetResult struct {
	Name      string `json:"name"`
	Reference string `json:"reference"`
	Digest    string `json:"digest"`
	// Full is the bundle's compressed size: what a device without any
	// earlier release downloads.
	Full     int64            `json:"full"`
	Pushed   bool             `json:"pushed"`
	Signed   []string         `json:"signed"` // channels newly signed
	Patches  []PatchResult    `json:"patches"`
	Channels []string         `json:"channels"`
	Image    *image.Result    `json:"image,omitempty"`
	Skipped  []SkippedRelease `json:"skipped"`
}

// PatchResult is one patch from an earlier release.
type PatchResult struct {
	From     string  `json:"from"`
	Base     string  `json:"base"`
	Size     int64   `json:"size"`
	Share    float64 `json:"share"`
	Existing bool    `json:"existing,omitempty"`
	Skipped  bool    `json:"skipped,omitempty"`
	Reason   string  `json:"reason,omitempty"`
	// Diff is what the update costs and why (otter diff), for a patch
	// made in this run.
	Diff *diff.Result `json:"diff,omitempty"`
}

// SkippedRelease is an earlier release no patch was made from, and why.
type SkippedRelease struct {
	Tag    string `json:"tag"`
	Reason string `json:"reason"`
}

func (r *Runner) log(format string, a ...any) {
	if r.Log != nil {
		r.Log(format, a...)
	}
}

// Run publishes every target: build, bundle, push, sign, patch, image,
// and last the channel tags, so a channel never names a release that is
// not complete. A rerun skips what is already there and correct.
func (r *Runner) Run(ctx context.Context) (*Result, error) {
	if len(r.Keys) == 0 {
		return nil, errors.New("pipelines: no signing key")
	}
	pubs := make([]crypto.PublicKey, len(r.Keys))
	for i, k := range r.Keys {
		pubs[i] = k.Public()
	}
	trust, err := sign.NewTrust(1, len(pubs), pubs...)
	if err != nil {
		return nil, err
	}
	res := &Result{Release: r.File.Release}
	for _, t := range r.File.Targets {
		tr, err := r.target(ctx, t, trust)
		if err != nil {
			return res, fmt.Errorf("target %s: %w", t.Name, err)
		}
		res.Targets = append(res.Targets, *tr)
	}
	return res, nil
}

// Tag is the immutable tag of release version v.
func Tag(v uint64) string { return "v" + strconv.FormatUint(v, 10) }

func (r *Runner) target(ctx context.Context, t Target, trust *sign.Trust) (*TargetResult, error) {
	rf := r.File
	repo := rf.Registry + "/" + t.Name
	ref, err := oci.ParseRef(repo+":"+Tag(rf.Release), rf.Insecure)
	if err != nil || ref.Remote == nil {
		return nil, fmt.Errorf("%w: registry %q: %v", ErrReleaseFile, rf.Registry, err)
	}
	tr := &TargetResult{Name: t.Name, Reference: ref.String(), Signed: []string{}, Patches: []PatchResult{}, Channels: []string{}, Skipped: []SkippedRelease{}}

	// Build (or take the store tree) and bundle.
	closure, storeDir, err := r.closure(ctx, t)
	if err != nil {
		return nil, err
	}
	r.log("%s: bundling %s (%d store paths)", t.Name, closure.Root, len(closure.Paths))
	b, err := bundle.Build(ctx, closure, storeDir, bundle.WithSystem(t.System), bundle.WithVersion(rf.Release), bundle.WithCreated(r.Created))
	if err != nil {
		return nil, err
	}
	defer b.Close()
	desc, err := oci.DescriptorOf(b)
	if err != nil {
		return nil, err
	}
	tr.Digest = desc.Digest.String()
	m, err := b.Manifest()
	if err != nil {
		return nil, err
	}
	for _, l := range m.Layers {
		tr.Full += l.Size
	}

	// Push, unless the tag already holds this very bundle.
	if existing, err := oci.Head(ctx, ref, r.IO...); err != nil {
		return nil, err
	} else if existing != nil && existing.Digest != desc.Digest {
		return nil, fmt.Errorf("%w: %s is %s, this build is %s", ErrTagTaken, ref, existing.Digest, desc.Digest)
	} else if existing == nil {
		r.log("%s: pushing %s", t.Name, ref)
		if _, err := oci.Write(ctx, b, ref, r.IO...); err != nil {
			return nil, err
		}
		tr.Pushed = true
	}

	// A release statement per channel.
	signer := release.Signer{Keys: r.Keys, Now: r.Now, Expires: r.Expires, Rollout: r.Rollout, IO: r.IO}
	envs, err := release.Statements(ctx, ref, desc.Digest, sign.ReleaseType, r.IO...)
	if err != nil {
		return nil, err
	}
	envelopes := map[string][]byte{}
	for _, c := range rf.Channels {
		p := sign.Policy{Trust: trust, Now: r.Now, Digest: desc.Digest.String(), System: t.System, Channel: c}
		if e, _, err := sign.VerifyReleases(envs, p); err == nil {
			envelopes[c] = e
			continue
		}
		st, err := signer.Statement(desc, b.Config, rf.Release, c)
		if err != nil {
			return nil, err
		}
		payload, err := st.Marshal()
		if err != nil {
			return nil, err
		}
		env, err := signer.Seal(sign.ReleaseType, payload)
		if err != nil {
			return nil, err
		}
		if _, _, err := signer.AttachRelease(ctx, ref, desc, st, env, rf.Signing.Cosign == nil || *rf.Signing.Cosign); err != nil {
			return nil, err
		}
		envelopes[c] = env
		tr.Signed = append(tr.Signed, c)
	}

	// Patches from the newest earlier releases signed by our keys.
	if rf.Patches.From > 0 {
		if err := r.patches(ctx, t, ref, desc, b, trust, signer, tr); err != nil {
			return nil, err
		}
	}

	if im := rf.Image; im != nil && im.Target == t.Name {
		var trustBytes []byte
		if im.Trust != "" {
			if trustBytes, err = os.ReadFile(im.Trust); err != nil {
				return nil, err
			}
		} else if trustBytes, err = trust.Marshal(); err != nil {
			return nil, err
		}
		size := int64(0)
		if im.Size != "" {
			if size, err = ParseSize(im.Size); err != nil {
				return nil, fmt.Errorf("image.size: %w", err)
			}
		}
		r.log("%s: writing the image %s", t.Name, im.Out)
		tr.Image, err = image.Build(ctx, b, b.Config, im.Out, image.Options{
			Board: im.Board, BootFiles: im.BootFiles, Size: size, Envelope: envelopes[rf.Channels[0]], Trust: trustBytes,
		})
		if err != nil {
			return nil, err
		}
	}

	// Last: the channels, so a device following one never sees a release
	// without its statement and patches.
	for _, c := range rf.Channels {
		cref, err := oci.ParseRef(repo+":"+c, rf.Insecure)
		if err != nil {
			return nil, err
		}
		if cur, err := oci.Head(ctx, cref, r.IO...); err == nil && cur != nil && cur.Digest == desc.Digest {
			continue
		}
		if err := oci.Tag(ctx, ref, c, b, r.IO...); err != nil {
			return nil, fmt.Errorf("moving channel %s: %w", c, err)
		}
		tr.Channels = append(tr.Channels, c)
	}
	return tr, nil
}

func (r *Runner) closure(ctx context.Context, t Target) (*nix.Closure, string, error) {
	if s := t.Store; s != nil {
		data, err := os.ReadFile(s.PathInfo)
		if err != nil {
			return nil, "", err
		}
		infos, err := nix.ParsePathInfo(data)
		if err != nil {
			return nil, "", fmt.Errorf("%s: %w", s.PathInfo, err)
		}
		dir := s.Dir
		if _, err := os.Stat(filepath.Join(dir, "nix", "store")); err == nil {
			dir = filepath.Join(dir, "nix", "store")
		}
		c, err := nix.NewClosure(s.Root, infos)
		return c, dir, err
	}
	inst := build.Installable{Flake: t.Flake, File: t.File, Attr: t.Attr}
	r.log("%s: building %s for %s", t.Name, inst, t.System)
	res, err := build.Build(ctx, inst, build.Options{System: t.System})
	if err != nil {
		return nil, "", err
	}
	if len(res.Outputs) == 0 {
		return nil, "", fmt.Errorf("%s built nothing", inst)
	}
	infos, err := nix.QueryClosure(ctx, res.Outputs[0].Path)
	if err != nil {
		return nil, "", err
	}
	c, err := nix.NewClosure(res.Outputs[0].Path, infos)
	return c, nix.StoreDir, err
}

// patches makes a patch from each of the newest Patches.From earlier
// releases that verify against our keys.
func (r *Runner) patches(ctx context.Context, t Target, ref oci.Ref, desc v1.Descriptor, b *bundle.Bundle, trust *sign.Trust, signer release.Signer, tr *TargetResult) error {
	rf := r.File
	tags, err := oci.ListTags(ctx, ref, r.IO...)
	if err != nil {
		return err
	}
	var versions []uint64
	for _, tag := range tags {
		if v, err := strconv.ParseUint(strings.TrimPrefix(tag, "v"), 10, 64); err == nil && strings.HasPrefix(tag, "v") && Tag(v) == tag && v < rf.Release {
			versions = append(versions, v)
		}
	}
	sort.Slice(versions, func(i, j int) bool { return versions[i] > versions[j] })
	existing, err := oci.Referrers(ctx, ref, desc.Digest, delta.ArtifactType, r.IO...)
	if err != nil {
		return err
	}
	made := 0
	for _, v := range versions {
		if made >= rf.Patches.From {
			break
		}
		from, err := oci.ParseRef(ref.Remote.Context().String()+":"+Tag(v), rf.Insecure)
		if err != nil {
			return err
		}
		img, cfg, err := oci.Open(ctx, from, r.IO...)
		if err != nil {
			tr.Skipped = append(tr.Skipped, SkippedRelease{Tag: Tag(v), Reason: err.Error()})
			continue
		}
		base, err := img.Digest()
		if err != nil {
			return err
		}
		if why := r.signedByUs(ctx, from, base, cfg, trust); why != "" {
			tr.Skipped = append(tr.Skipped, SkippedRelease{Tag: Tag(v), Reason: why})
			r.log("%s: no patch from %s: %s", t.Name, Tag(v), why)
			continue
		}
		made++
		pr := PatchResult{From: Tag(v), Base: base.String()}
		for _, e := range existing {
			if e.Annotations[delta.AnnotationBase] == base.String() {
				pr.Existing, pr.Size = true, e.Size
			}
		}
		if pr.Existing {
			tr.Patches = append(tr.Patches, pr)
			continue
		}
		r.log("%s: diffing %s against %s", t.Name, Tag(v), Tag(rf.Release))
		var buf bytes.Buffer
		st, err := delta.Diff(ctx, delta.Release{Image: img, Config: cfg}, delta.Release{Image: b, Config: b.Config}, &buf, delta.Options{})
		if err != nil {
			return err
		}
		var ok bool
		pr.Size = st.Size
		fromSide, err := diff.SideOf(img, cfg)
		if err != nil {
			return err
		}
		toSide, err := diff.SideOf(b, b.Config)
		if err != nil {
			return err
		}
		pr.Diff = diff.Compare(fromSide, toSide, st)
		if pr.Share, ok = release.Worthwhile(st.Size, tr.Full, rf.Patches.MaxShare); !ok {
			pr.Skipped = true
			pr.Reason = fmt.Sprintf("%.0f%% of the full bundle, over maxShare %.0f%%: devices fetch the missing layers", 100*pr.Share, 100*rf.Patches.MaxShare)
			tr.Patches = append(tr.Patches, pr)
			continue
		}
		digest, _, err := v1.SHA256(bytes.NewReader(buf.Bytes()))
		if err != nil {
			return err
		}
		for _, c := range rf.Channels {
			if _, _, err := signer.PublishPatch(ctx, ref, desc, base, buf.Bytes(), digest.String(), c, rf.Release, t.System); err != nil {
				return err
			}
		}
		tr.Patches = append(tr.Patches, pr)
	}
	return nil
}

// signedByUs says why an earlier release is no base for a patch: empty
// when a statement on it verifies against our keys.
func (r *Runner) signedByUs(ctx context.Context, ref oci.Ref, d v1.Hash, cfg *bundle.Config, trust *sign.Trust) string {
	envs, err := release.Statements(ctx, ref, d, sign.ReleaseType, r.IO...)
	if err != nil {
		return err.Error()
	}
	if len(envs) == 0 {
		return "not signed"
	}
	var first error
	for _, e := range envs {
		// Any of our channels, expired or not: it was ours.
		ev, err := sign.ParseEnvelope(e)
		if err != nil {
			continue
		}
		st, err := sign.ParseRelease(ev.Payload)
		if err != nil {
			continue
		}
		p := sign.Policy{Trust: trust, Now: r.Now, Digest: d.String(), System: cfg.System, Channel: st.Channel}
		if exp, err := time.Parse(time.RFC3339, st.Expires); err == nil && exp.Before(p.Now) {
			p.Now = exp.Add(-time.Second)
		}
		if _, err := sign.VerifyRelease(e, p); err == nil {
			return ""
		} else if first == nil {
			first = err
		}
	}
	return fmt.Sprintf("not signed by the release key (%v)", first)
}

// ParseSize reads 4G, 3800M, 512K or a byte count.
func ParseSize(s string) (int64, error) {
	if s == "" {
		return 0, nil
	}
	mult := int64(1)
	switch strings.ToUpper(s[len(s)-1:]) {
	case "K":
		mult = 1 << 10
	case "M":
		mult = 1 << 20
	case "G":
		mult = 1 << 30
	}
	num := s
	if mult > 1 {
		num = s[:len(s)-1]
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%q is not a size (like 4G, 3800M)", s)
	}
	return n * mult, nil
}

// Note says why a patch was not made in this run ("" when it was).
func (p PatchResult) Note() string {
	switch {
	case p.Skipped:
		return "no patch: " + p.Reason
	case p.Existing:
		return "already published"
	}
	return ""
}

// Summary is the run's cost table in Markdown, for a CI job's summary
// ($GITHUB_STEP_SUMMARY): per target and base, what a device downloads
// by patch, by the missing layers, and what Nix would substitute.
func Summary(res *Result) string {
	var b strings.Builder
	fmt.Fprintf(&b, "## otter release %d: what each device downloads\n\n", res.Release)
	fmt.Fprintf(&b, "| target | from | patch | missing layers | Nix (NAR) | full bundle | renamed / changed | note |\n| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |\n")
	for _, t := range res.Targets {
		if len(t.Patches) == 0 {
			fmt.Fprintf(&b, "| %s | (none) | | | | %d | | first release |\n", t.Name, t.Full)
		}
		for _, p := range t.Patches {
			note := p.Note()
			layers, nar, counts := "", "", ""
			if d := p.Diff; d != nil {
				layers, nar = fmt.Sprint(d.Totals.Layers), fmt.Sprint(d.Totals.NarBytes)
				counts = fmt.Sprintf("%d / %d", d.Totals.Paths[diff.Renamed], d.Totals.Paths[diff.Changed])
			}
			fmt.Fprintf(&b, "| %s | %s | %d | %s | %s | %d | %s | %s |\n", t.Name, p.From, p.Size, layers, nar, t.Full, counts, note)
		}
	}
	return b.String()
}
