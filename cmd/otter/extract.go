package main

import (
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
			if c.NArg() != 2 {
				return usageErrorf("extract takes REF and STORE_DIR, got %d arguments", c.NArg())
			}
			u := newUI(c)
			ref, img, cfg, err := openArg(c, c.Args().Get(0))
			if err != nil {
				return err
			}
			d, err := img.Digest()
			if err != nil {
				return err
			}
			res, err := runExtract(c, u, img, cfg, c.Args().Get(1))
			if err != nil {
				return err
			}
			out := extractResult{Reference: ref.String(), Digest: d, StoreDir: c.Args().Get(1), Root: cfg.Root, ExtractResult: res}
			return u.result(out, func(w io.Writer) {
				fmt.Fprintf(w, "%s -> %s\n  %d extracted, %d already present, %d repaired; every NAR hash verified\n",
					out.Reference, out.StoreDir, len(res.Extracted), len(res.Present), len(res.Repaired))
			})
		},
	}
}

func runExtract(c *cli.Context, u *ui, img v1.Image, cfg *bundle.Config, store string) (*bundle.ExtractResult, error) {
	progress, finish := u.bar("extracting")
	defer finish()
	opts := []bundle.ExtractOption{bundle.WithRepair(c.Bool("repair")), bundle.WithFsync(!c.Bool("no-fsync")), bundle.WithExtractProgress(progress)}
	if c.IsSet("jobs") {
		opts = append(opts, bundle.WithExtractJobs(c.Int("jobs")))
	}
	return bundle.Extract(c.Context, img, cfg, store, opts...)
}
