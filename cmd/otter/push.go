package main

import (
	"context"
	"fmt"
	"io"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/urfave/cli/v2"

	"github.com/otter-fleet/otter/release"
)

// pushResult is the --json output of otter push.
type pushResult struct {
	Source      string  `json:"source"`
	Destination string  `json:"destination"`
	Digest      v1.Hash `json:"digest"`
	Size        int64   `json:"size"`
	Statements  int     `json:"statements"`
	Cosign      int     `json:"cosignSignatures"`
}

func pushCommand() *cli.Command {
	return &cli.Command{
		Name:      "push",
		Usage:     "copy a bundle and its signatures between OCI layouts and registries",
		ArgsUsage: "SRC DST",
		Description: `SRC and DST are oci:DIR[:TAG] or HOST/REPO:TAG. Only the blobs DST lacks are
copied; the manifest is written last, so DST never names a partial bundle.
Signed statements and cosign signatures attached to the bundle come along, so
a layout made with push (on a USB stick, say) verifies offline.`,
		Flags: registryFlags(),
		Action: func(c *cli.Context) error {
			return runPush(c.Context, registryOptsFrom(c), c.Args().Slice(), newUI(c))
		},
	}
}

func runPush(ctx context.Context, o registryOpts, args []string, u *ui) error {
	if len(args) != 2 {
		return usageErrorf("push takes SRC and DST, got %d arguments", len(args))
	}
	dst, err := o.parseRef(args[1])
	if err != nil {
		return err
	}
	src, img, cfg, err := o.open(ctx, args[0])
	if err != nil {
		return err
	}
	progress, finish := u.bar("pushing")
	cr, err := release.Copy(ctx, img, src, dst, o.io(progress)...)
	finish()
	if err != nil {
		return err
	}
	res := pushResult{Source: src.String(), Destination: dst.String(), Digest: cr.Manifest.Digest, Size: cr.Manifest.Size, Statements: cr.Statements, Cosign: cr.Cosign}
	return u.result(res, func(w io.Writer) {
		fmt.Fprintf(w, "%s -> %s\n  %s (%d store paths, root %s), %d statement(s), %d cosign signature(s)\n",
			res.Source, res.Destination, res.Digest, len(cfg.Paths), cfg.Root, res.Statements, res.Cosign)
	})
}
