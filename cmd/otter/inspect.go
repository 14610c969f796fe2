package main

import (
	"context"
	"fmt"
	"io"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/urfave/cli/v2"

	"github.com/otter-fleet/otter/bundle"
	"github.com/otter-fleet/otter/oci"
)

// inspectResult is the --json output of otter inspect.
type inspectResult struct {
	Reference      string        `json:"reference"`
	Digest         v1.Hash       `json:"digest"`
	ConfigDigest   v1.Hash       `json:"configDigest"`
	Root           string        `json:"root"`
	System         string        `json:"system"`
	Version        uint64        `json:"version"`
	Created        string        `json:"created"`
	Paths          []inspectPath `json:"paths"`
	NarSize        int64         `json:"narSize"`
	CompressedSize int64         `json:"compressedSize"`
}

type inspectPath struct {
	bundle.Path
	Layer          v1.Hash `json:"layer"`
	CompressedSize int64   `json:"compressedSize"`
}

func inspectCommand() *cli.Command {
	return &cli.Command{
		Name:      "inspect",
		Usage:     "show the closure a bundle holds",
		ArgsUsage: "REF",
		Flags:     registryFlags(),
		Action: func(c *cli.Context) error {
			return runInspect(c.Context, registryOptsFrom(c), c.Args().Slice(), newUI(c))
		},
	}
}

func runInspect(ctx context.Context, o registryOpts, args []string, u *ui) error {
	if len(args) != 1 {
		return usageErrorf("inspect takes one reference, got %d arguments", len(args))
	}
	ref, img, cfg, err := o.open(ctx, args[0])
	if err != nil {
		return err
	}
	res, err := describe(ref, img, cfg)
	if err != nil {
		return err
	}
	return u.result(res, func(w io.Writer) { printInspect(w, res) })
}

func describe(ref oci.Ref, img v1.Image, cfg *bundle.Config) (*inspectResult, error) {
	m, err := img.Manifest()
	if err != nil {
		return nil, err
	}
	d, err := img.Digest()
	if err != nil {
		return nil, err
	}
	res := &inspectResult{
		Reference: ref.String(), Digest: d, ConfigDigest: m.Config.Digest, Root: cfg.Root,
		System: cfg.System, Version: cfg.Version, Created: cfg.Created,
	}
	for i, p := range cfg.Paths {
		res.Paths = append(res.Paths, inspectPath{Path: p, Layer: m.Layers[i].Digest, CompressedSize: m.Layers[i].Size})
		res.NarSize += p.NarSize
		res.CompressedSize += m.Layers[i].Size
	}
	return res, nil
}

func printInspect(w io.Writer, r *inspectResult) {
	fmt.Fprintf(w, "%s\n  digest   %s\n  root     %s\n  system   %s, version %d, created %s\n\n",
		r.Reference, r.Digest, r.Root, r.System, r.Version, r.Created)
	fmt.Fprintf(w, "%10s  %10s  %s\n", "NAR", "compressed", "store path")
	for _, p := range r.Paths {
		fmt.Fprintf(w, "%10s  %10s  %s\n", humanBytes(p.NarSize), humanBytes(p.CompressedSize), p.Path.Path)
	}
	fmt.Fprintf(w, "%10s  %10s  total: %d store paths\n", humanBytes(r.NarSize), humanBytes(r.CompressedSize), len(r.Paths))
}
