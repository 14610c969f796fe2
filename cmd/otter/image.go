package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/otter-fleet/otter/image"
	"github.com/otter-fleet/otter/pipelines"
	"github.com/otter-fleet/otter/release"
	"github.com/otter-fleet/otter/sign"
)

func imageCommand() *cli.Command {
	return &cli.Command{
		Name:      "image",
		Usage:     "write a flashable SD-card image of a signed release, without root",
		ArgsUsage: "REF",
		Description: `Writes OUT (raw, sparse), OUT.zst and OUT.bmap (for bmaptool copy). The image
holds a partition table, FAT32 boot partitions (A and B for the Raspberry Pi
firmware's tryboot) with the boot files, config.txt and cmdline.txt naming
the root partition by PARTUUID, an ext4 root with the closure in /nix/store
and otter's device state at generation 1 with the release's signed statement
and the trust file, and an ext4 data partition that updates never touch
(docs/image.md). The same bundle and options give the same bytes.`,
		Flags: append(registryFlags(),
			&cli.StringFlag{Name: "out", Aliases: []string{"o"}, Required: true, Usage: "the image file to write"},
			&cli.StringFlag{Name: "board", Value: "rpi4", Usage: "rpi4, rpi5 or generic"},
			&cli.StringFlag{Name: "boot-files", Required: true, Usage: "firmware, kernel and device trees: a directory, or a path inside the closure (/nix/store/…)"},
			&cli.StringFlag{Name: "trust", Required: true, Usage: "the trust file: verifies the release and is installed on the device"},
			&cli.StringFlag{Name: "channel", Value: "stable", Usage: "the channel the devices follow"},
			&cli.StringFlag{Name: "size", Usage: "image size (4G, 3800M); default: the least that holds it"},
			&cli.StringFlag{Name: "boot-size", Value: "256M", Usage: "size of each boot partition"},
			&cli.StringFlag{Name: "data-size", Value: "256M", Usage: "size of the data partition"},
		),
		Action: func(c *cli.Context) error {
			o := imageOpts{registry: registryOptsFrom(c), out: c.String("out"), trust: c.String("trust"), channel: c.String("channel"),
				build: image.Options{Board: c.String("board"), BootFiles: c.String("boot-files")}}
			for _, f := range []struct {
				name string
				dst  *int64
			}{{"size", &o.build.Size}, {"boot-size", &o.build.BootSize}, {"data-size", &o.build.DataSize}} {
				n, err := pipelines.ParseSize(c.String(f.name))
				if err != nil {
					return usageErrorf("--%s: %v", f.name, err)
				}
				*f.dst = n
			}
			return runImage(c.Context, o, c.Args().Slice(), newUI(c))
		},
	}
}

// imageOpts are otter image's flags.
type imageOpts struct {
	registry            registryOpts
	out, trust, channel string
	build               image.Options
}

func runImage(ctx context.Context, o imageOpts, args []string, u *ui) error {
	if len(args) != 1 {
		return usageErrorf("image takes one bundle reference, got %d arguments", len(args))
	}
	ref, img, cfg, err := o.registry.open(ctx, args[0])
	if err != nil {
		return err
	}
	trustBytes, err := os.ReadFile(o.trust)
	if err != nil {
		return fmt.Errorf("reading the trust file: %w", err)
	}
	trust, err := loadTrust(o.trust)
	if err != nil {
		return err
	}
	d, err := img.Digest()
	if err != nil {
		return err
	}
	policy := sign.Policy{Trust: trust, Now: time.Now(), Digest: d.String(), System: cfg.System, Channel: o.channel}
	envelope, _, err := release.Verify(ctx, ref, d, policy, o.registry.io(nil)...)
	if err != nil {
		return fmt.Errorf("%s: a device image needs a signed release: %w", ref, err)
	}
	bo := o.build
	bo.Envelope, bo.Trust = envelope, trustBytes
	bo.Progress = func(step string) { u.info("%s", step) }
	res, err := image.Build(ctx, img, cfg, o.out, bo)
	if err != nil {
		return err
	}
	return u.result(res, func(w io.Writer) {
		fmt.Fprintf(w, "%s: %s (%s of data), %s compressed\n  digest %s\n", res.Image, humanBytes(res.Size), humanBytes(res.Mapped), humanBytes(res.ZstdSize), res.Digest)
		for _, p := range res.Partitions {
			fmt.Fprintf(w, "  %d %-7s %-5s %9s  PARTUUID %s\n", p.Number, p.Name, p.Type, humanBytes(p.Size), p.UUID)
		}
	})
}
