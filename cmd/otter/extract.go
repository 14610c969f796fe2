package main

import (
	"context"
	"fmt"
	"io"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/urfave/cli/v2"

	"github.com/otter-fleet/otter/bundle"
)

// extractResult is the --json output of otter extract.
type extractResult struct {
	Reference string  `json:"reference"`
	Digest    v1.Hash `json:"digest"`
	StoreDir  string  `json:"storeDir"`
	Root      string  `json:"root"`
	*bundle.ExtractResult
}

func extractCommand() *cli.Command {
	return &cli.Command{
		Name:      "extract",
		Usage:     "unpack a bundle into a store directory, verifying every store path",
		ArgsUsage: "REF STORE_DIR",
		Description: `Every layer's digest and every store path's NAR hash is checked before the
path is renamed into STORE_DIR; paths already there and correct are skipped.`,
		Flags: append([]cli.Flag{
			&cli.BoolFlag{Name: "repair", Usage: "replace store paths that are present with wrong content"},
			&cli.BoolFlag{Name: "no-fsync", Usage: "do not sync files to disk before renaming them into place"},
		}, registryFlags()...),
		Action: func(c *cli.Context) error {
			o := extractOpts{registry: registryOptsFrom(c), repair: c.Bool("repair"), noFsync: c.Bool("no-fsync")}
			return runExtract(c.Context, o, c.Args().Slice(), newUI(c))
		},
	}
}

// extractOpts are otter extract's flags.
type extractOpts struct {
	registry        registryOpts
	repair, noFsync bool
}

// extractOptions are the bundle.Extract options these flags give.
func (o extractOpts) extractOptions(progress bundle.Progress) []bundle.ExtractOption {
	opts := []bundle.ExtractOption{bundle.WithRepair(o.repair), bundle.WithFsync(!o.noFsync), bundle.WithExtractProgress(progress)}
	if o.registry.jobsSet {
		opts = append(opts, bundle.WithExtractJobs(o.registry.jobs))
	}
	return opts
}

func runExtract(ctx context.Context, o extractOpts, args []string, u *ui) error {
	if len(args) != 2 {
		return usageErrorf("extract takes REF and STORE_DIR, got %d arguments", len(args))
	}
	ref, img, cfg, err := o.registry.open(ctx, args[0])
	if err != nil {
		return err
	}
	d, err := img.Digest()
	if err != nil {
		return err
	}
	progress, finish := u.bar("extracting")
	res, err := bundle.Extract(ctx, img, cfg, args[1], o.extractOptions(progress)...)
	finish()
	if err != nil {
		return err
	}
	out := extractResult{Reference: ref.String(), Digest: d, StoreDir: args[1], Root: cfg.Root, ExtractResult: res}
	return u.result(out, func(w io.Writer) {
		fmt.Fprintf(w, "%s -> %s\n  %d extracted, %d already present, %d repaired; every NAR hash verified\n",
			out.Reference, out.StoreDir, len(res.Extracted), len(res.Present), len(res.Repaired))
	})
}
