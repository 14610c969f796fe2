package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/urfave/cli/v2"

	"github.com/otter-fleet/otter/bundle"
	"github.com/otter-fleet/otter/delta"
	"github.com/otter-fleet/otter/diff"
	"github.com/otter-fleet/otter/internal/fsutil"
	"github.com/otter-fleet/otter/nix"
)

func diffCommand() *cli.Command {
	return &cli.Command{
		Name:      "diff",
		Usage:     "what an update from one release to another costs, and why",
		ArgsUsage: "FROM TO",
		Description: `FROM and TO are bundle references (a registry, oci:DIR[:TAG], oci-archive:FILE)
or closures on this machine (store paths, read through nix path-info). For every
store path: unchanged, renamed only (it differs only in the store paths it
names), changed, added or removed; for every renamed or changed path the
dependency changes that explain it ("openssl 3.0.17 → 3.0.20, via python3"),
rebuilds whose version did not change included; and the bytes: NAR and layer
size per path, its share of otter's patch, and the totals of the patch, the
missing layers and Nix substitution. --html writes one self-contained page.`,
		Flags: append(registryFlags(),
			&cli.StringFlag{Name: "html", Usage: "also write the report as one self-contained HTML page"},
		),
		Action: func(c *cli.Context) error {
			return runDiff(c.Context, registryOptsFrom(c), c.String("html"), c.Args().Slice(), newUI(c))
		},
	}
}

// diffSide opens a release for otter diff: a bundle, or a closure in the
// Nix store, bundled here.
func diffSide(ctx context.Context, o registryOpts, arg string) (delta.Release, diff.Side, func(), error) {
	var img v1.Image
	var cfg *bundle.Config
	done := func() {}
	if strings.HasPrefix(arg, nix.StoreDir+"/") {
		closure, storeDir, err := loadClosure(ctx, arg, "", "")
		if err != nil {
			return delta.Release{}, diff.Side{}, done, err
		}
		spool, err := os.MkdirTemp("", "otter-diff-")
		if err != nil {
			return delta.Release{}, diff.Side{}, done, err
		}
		b, err := bundle.Build(ctx, closure, storeDir, bundle.WithSpoolDir(spool))
		if err != nil {
			fsutil.RemoveAll(spool)
			return delta.Release{}, diff.Side{}, done, err
		}
		done = func() { b.Close(); fsutil.RemoveAll(spool) }
		img, cfg = b, b.Config
	} else {
		var err error
		if _, img, cfg, err = o.open(ctx, arg); err != nil {
			return delta.Release{}, diff.Side{}, done, err
		}
	}
	side, err := diff.SideOf(img, cfg)
	return delta.Release{Image: img, Config: cfg}, side, done, err
}

// compareReleases is otter diff FROM TO: what each store path costs and
// why it changed.
func compareReleases(ctx context.Context, o registryOpts, fromArg, toArg string) (*diff.Result, error) {
	fromRel, from, doneFrom, err := diffSide(ctx, o, fromArg)
	defer doneFrom()
	if err != nil {
		return nil, err
	}
	toRel, to, doneTo, err := diffSide(ctx, o, toArg)
	defer doneTo()
	if err != nil {
		return nil, err
	}
	st, err := delta.Diff(ctx, fromRel, toRel, io.Discard, delta.Options{})
	if err != nil {
		return nil, err
	}
	return diff.Compare(from, to, st), nil
}

func runDiff(ctx context.Context, o registryOpts, html string, args []string, u *ui) error {
	if len(args) != 2 {
		return usageErrorf("diff takes FROM and TO, got %d arguments", len(args))
	}
	u.info("diffing %s against %s …", args[0], args[1])
	res, err := compareReleases(ctx, o, args[0], args[1])
	if err != nil {
		return err
	}
	if html != "" {
		var b bytes.Buffer
		if err := diff.WriteHTML(&b, res, args[0], args[1]); err != nil {
			return err
		}
		if err := fsutil.AtomicWrite(html, b.Bytes(), 0o644); err != nil {
			return err
		}
	}
	return u.result(res, func(w io.Writer) { printDiff(w, res) })
}

func printDiff(w io.Writer, res *diff.Result) {
	t := res.Totals
	fmt.Fprintf(w, "%d changed, %d renamed only, %d added, %d removed, %d unchanged\n",
		t.Paths[diff.Changed], t.Paths[diff.Renamed], t.Paths[diff.Added], t.Paths[diff.Removed], t.Paths[diff.Unchanged])
	fmt.Fprintf(w, "a device downloads: otter's patch %s; the missing layers %s; Nix substitution %s of NAR\n\n",
		humanBytes(t.Patch), humanBytes(t.Layers), humanBytes(t.NarBytes))
	fmt.Fprintf(w, "%-9s %-40s %10s %10s %10s  %s\n", "status", "path", "NAR", "layer", "patch", "why")
	for _, p := range res.Paths {
		if p.Status == diff.Unchanged {
			continue
		}
		name := p.Name
		switch {
		case p.FromVersion != "" && p.Version != "" && p.FromVersion != p.Version:
			name += " " + p.FromVersion + " → " + p.Version
		case p.Version != "":
			name += " " + p.Version
		case p.FromVersion != "":
			name += " " + p.FromVersion
		}
		var why []string
		for _, c := range p.Causes {
			why = append(why, c.String())
		}
		fmt.Fprintf(w, "%-9s %-40s %10s %10s %10s  %s\n", p.Status, name, humanBytes(p.NarSize), humanBytes(p.LayerSize), humanBytes(p.PatchBytes), strings.Join(why, "; "))
	}
}
