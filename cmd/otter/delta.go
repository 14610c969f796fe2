package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/urfave/cli/v2"

	"github.com/otter-fleet/otter/delta"
	"github.com/otter-fleet/otter/internal/fsutil"
	"github.com/otter-fleet/otter/release"
	"github.com/otter-fleet/otter/sign"
)

// patchResult is one patch of otter delta's --json output.
type patchResult struct {
	From      string       `json:"from"`
	Base      v1.Hash      `json:"base"`
	Target    v1.Hash      `json:"target"`
	Size      int64        `json:"size"`
	Share     float64      `json:"share"` // of the target bundle's compressed size
	Skipped   bool         `json:"skipped"`
	Reason    string       `json:"reason,omitempty"`
	File      string       `json:"file,omitempty"`
	Digest    string       `json:"digest,omitempty"`
	Artifact  string       `json:"artifact,omitempty"`
	Statement *sign.Patch  `json:"statement,omitempty"`
	Stats     *delta.Stats `json:"stats,omitempty"`
	Seconds   float64      `json:"seconds"`
}

type deltaResult struct {
	To      string        `json:"to"`
	Patches []patchResult `json:"patches"`
}

func deltaCommand() *cli.Command {
	return &cli.Command{
		Name:      "delta",
		Usage:     "make a signed patch from each base release to a target release",
		ArgsUsage: "TO",
		Description: `Makes one patch per --from base: the target's new store paths rebuilt from the
base's, with store-path hashes rewritten and every changed file diffed
(docs/delta.md). A patch larger than --max-share of the target bundle is not
made: a device is better off fetching the layers it lacks.

Patches are published next to TO (its repository or OCI layout) as artifacts
whose subject is TO, annotated with their base digest, and with --key a signed
patch statement beside each; --write DIR also writes the patch files.`,
		Flags: append([]cli.Flag{
			&cli.StringSliceFlag{Name: "from", Required: true, Usage: "a base release (repeatable)"},
			&cli.StringFlag{Name: "write", Usage: "also write the patch files into this directory"},
			&cli.BoolFlag{Name: "no-publish", Usage: "do not publish the patches next to TO"},
			&cli.Float64Flag{Name: "max-share", Value: 0.6, Usage: "make no patch larger than this share of the target bundle"},
			&cli.StringSliceFlag{Name: "key", Aliases: []string{"k"}, Usage: "sign each patch with this key (repeatable)"},
			&cli.StringFlag{Name: "channel", Value: "stable", Usage: "the channel in the patch statements"},
			&cli.StringFlag{Name: "expires", Value: "30d", Usage: "expiry of the patch statements"},
		}, registryFlags()...),
		Action: func(c *cli.Context) error {
			o := deltaOpts{
				registry: registryOptsFrom(c), signing: signingOptsFrom(c), from: c.StringSlice("from"), write: c.String("write"),
				noPublish: c.Bool("no-publish"), maxShare: c.Float64("max-share"), channel: c.String("channel"),
			}
			return runDelta(c.Context, o, c.Args().Slice(), newUI(c))
		},
	}
}

// deltaOpts are otter delta's flags.
type deltaOpts struct {
	registry       registryOpts
	signing        signingOpts
	from           []string
	write, channel string
	noPublish      bool
	maxShare       float64
}

func (o deltaOpts) validate() error {
	if o.maxShare <= 0 {
		return usageErrorf("--max-share %v: a share above 0 (0.6 is 60%% of the full bundle)", o.maxShare)
	}
	return nil
}

func runDelta(ctx context.Context, o deltaOpts, args []string, u *ui) error {
	if len(args) != 1 {
		return usageErrorf("delta takes one target release, got %d arguments", len(args))
	}
	if err := o.validate(); err != nil {
		return err
	}
	in, err := signingInputs(ctx, o.registry, o.signing, args[0], u)
	if err != nil {
		return err
	}
	m, err := in.img.Manifest()
	if err != nil {
		return err
	}
	var full int64
	for _, l := range m.Layers {
		full += l.Size
	}
	res := deltaResult{To: in.ref.String()}
	for _, from := range o.from {
		pr, err := makePatch(ctx, o, u, from, in, full)
		if err != nil {
			return err
		}
		res.Patches = append(res.Patches, *pr)
	}
	return u.result(res, func(w io.Writer) {
		for _, p := range res.Patches {
			if p.Skipped {
				fmt.Fprintf(w, "%s -> %s: no patch (%s)\n", p.From, res.To, p.Reason)
				continue
			}
			fmt.Fprintf(w, "%s -> %s: %s (%.1f%% of the full bundle), made in %.1f s\n", p.From, res.To, humanBytes(p.Size), 100*p.Share, p.Seconds)
			if p.Artifact != "" {
				fmt.Fprintf(w, "  published as %s", p.Artifact)
				if p.Statement != nil {
					fmt.Fprint(w, ", signed")
				}
				fmt.Fprintln(w)
			}
			if p.File != "" {
				fmt.Fprintf(w, "  written to %s\n", p.File)
			}
		}
	})
}

// makePatch makes, writes and publishes the patch from the release from
// to the target in (the bundle of full compressed bytes).
func makePatch(ctx context.Context, o deltaOpts, u *ui, from string, in *signing, full int64) (*patchResult, error) {
	to, toRef, toDesc := delta.Release{Image: in.img, Config: in.cfg}, in.ref, in.desc
	_, fromImg, fromCfg, err := o.registry.open(ctx, from)
	if err != nil {
		return nil, err
	}
	baseDigest, err := fromImg.Digest()
	if err != nil {
		return nil, err
	}
	if fromCfg.System != to.Config.System {
		return nil, usageErrorf("%s is for %s, the target for %s", from, fromCfg.System, to.Config.System)
	}
	pr := &patchResult{From: from, Base: baseDigest, Target: toDesc.Digest}
	tmp, err := os.CreateTemp("", "otter-patch-")
	if err != nil {
		return nil, err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	start := time.Now()
	u.info("diffing %s against %s …", from, toRef)
	jobs := 0
	if o.registry.jobsSet {
		jobs = o.registry.jobs
	}
	st, err := delta.Diff(ctx, delta.Release{Image: fromImg, Config: fromCfg}, to, tmp, delta.Options{Jobs: jobs})
	if err != nil {
		return nil, err
	}
	pr.Seconds = time.Since(start).Seconds()
	pr.Size, pr.Stats = st.Size, st
	var worth bool
	if pr.Share, worth = release.Worthwhile(st.Size, full, o.maxShare); !worth {
		pr.Skipped = true
		pr.Reason = fmt.Sprintf("%s is %.0f%% of the %s bundle, over --max-share %.0f%%: devices fetch the missing layers instead",
			humanBytes(st.Size), 100*pr.Share, humanBytes(full), 100*o.maxShare)
		return pr, nil
	}
	patch, err := os.ReadFile(tmp.Name())
	if err != nil {
		return nil, err
	}
	pd, _, err := v1.SHA256(bytes.NewReader(patch))
	if err != nil {
		return nil, err
	}
	pr.Digest = pd.String()
	if dir := o.write; dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
		pr.File = filepath.Join(dir, baseDigest.Hex[:12]+"-"+toDesc.Digest.Hex[:12]+".patch")
		if err := fsutil.AtomicWrite(pr.File, patch, 0o644); err != nil {
			return nil, err
		}
	}
	if o.noPublish {
		return pr, nil
	}
	signer := release.Signer{Keys: in.keys, Now: in.now, Expires: in.expires, IO: o.registry.io(nil)}
	ad, stmt, err := signer.PublishPatch(ctx, toRef, toDesc, baseDigest, patch, pr.Digest, o.channel, to.Config.Version, to.Config.System)
	if err != nil {
		return nil, err
	}
	pr.Artifact = ad.Digest.String()
	pr.Statement = stmt
	return pr, nil
}

func applyCommand() *cli.Command {
	return &cli.Command{
		Name:      "apply",
		Usage:     "rebuild a target release's new store paths from the installed ones and a patch",
		ArgsUsage: "PATCH",
		Description: `Checks the patch (its digest with --patch-digest, its header, its base) before
touching anything, builds every new store path in a staging directory inside
the store, checks every file's SHA-256 and every path's NAR hash against the
target closure the patch carries, and only then renames the paths into place.`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "store", Value: "/nix/store", Usage: "the store directory"},
			&cli.StringFlag{Name: "installed", Usage: "the installed release's bundle digest; a patch for another base is refused"},
			&cli.StringFlag{Name: "patch-digest", Usage: "the digest the signed patch statement names"},
			&cli.BoolFlag{Name: "no-fsync", Usage: "do not sync before renaming (scratch stores)"},
		},
		Action: func(c *cli.Context) error {
			o := applyOpts{store: c.String("store"), apply: delta.ApplyOptions{
				Installed: c.String("installed"), PatchDigest: c.String("patch-digest"), NoFsync: c.Bool("no-fsync"),
			}}
			return runApply(c.Context, o, c.Args().Slice(), newUI(c))
		},
	}
}

// applyOpts are otter apply's flags.
type applyOpts struct {
	store string
	apply delta.ApplyOptions
}

func runApply(ctx context.Context, o applyOpts, args []string, u *ui) error {
	if len(args) != 1 {
		return usageErrorf("apply takes one patch file, got %d arguments", len(args))
	}
	deviceMemoryLimit()
	res, err := delta.Apply(ctx, args[0], o.store, o.apply)
	if err != nil {
		return err
	}
	return u.result(res, func(w io.Writer) {
		fmt.Fprintf(w, "applied: %d new store paths built, %d already present; target %s\n", len(res.Built), len(res.Present), res.Target)
	})
}

// deviceMemoryLimit keeps the heap of device-side commands near what they
// hold live (about 40 MiB plus the file being rebuilt) instead of letting
// the collector double it: devices have little RAM. GOMEMLIMIT, when set,
// wins.
func deviceMemoryLimit() {
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(48 << 20)
	}
}
