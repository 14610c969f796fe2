package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/urfave/cli/v2"

	"github.com/otter-fleet/otter/bundle"
	"github.com/otter-fleet/otter/internal/demo"
	"github.com/otter-fleet/otter/internal/fsutil"
	"github.com/otter-fleet/otter/nix"
	"github.com/otter-fleet/otter/oci"
)

// demoResult is the --json output of otter demo.
type demoResult struct {
	Dir      string         `json:"dir"`
	Source   string         `json:"source"`
	Bundle   *bundleResult  `json:"bundle"`
	Inspect  *inspectResult `json:"inspect"`
	StoreDir string         `json:"storeDir"`
	Verified []string       `json:"verified"`
	Digest   v1.Hash        `json:"digest"`
}

func demoCommand() *cli.Command {
	return &cli.Command{
		Name:  "demo",
		Usage: "bundle the small closure inside otter, inspect it and extract it again",
		Description: `The demo writes a three-path closure as a store tree under DIR/source, bundles
it into the OCI layout DIR/layout (tag demo), inspects the bundle, extracts it
into DIR/store, and checks every NAR hash there. Nothing outside DIR is touched.`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "dir", Value: "otter-demo", Usage: "where the demo writes"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 0 {
				return usageErrorf("demo takes no arguments (--dir says where it writes)")
			}
			u := newUI(c)
			res, err := runDemo(c.Context, c.String("dir"), u)
			if err != nil {
				return err
			}
			return u.result(res, func(w io.Writer) {
				printInspect(w, res.Inspect)
				fmt.Fprintf(w, "\nThe demo made, under %s:\n", res.Dir)
				fmt.Fprintf(w, "  source/   a store tree and its path-info.json (the input)\n")
				fmt.Fprintf(w, "  layout/   an OCI image layout holding the bundle %s\n", res.Bundle.Reference)
				fmt.Fprintf(w, "  store/    the bundle extracted again: %d store paths, every NAR hash verified\n", len(res.Verified))
				fmt.Fprintf(w, "\nTry: otter inspect --json %s\n", res.Bundle.Reference)
			})
		},
	}
}

func runDemo(ctx context.Context, dir string, u *ui) (*demoResult, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	source, store := filepath.Join(abs, "source"), filepath.Join(abs, "store")
	for _, d := range []string{source, store} {
		if err := fsutil.RemoveAll(d); err != nil {
			return nil, err
		}
	}
	storeTree := filepath.Join(source, "nix", "store")
	if err := os.MkdirAll(storeTree, 0o755); err != nil {
		return nil, err
	}
	if err := demo.Write(storeTree); err != nil {
		return nil, err
	}
	pathInfo := filepath.Join(source, "path-info.json")
	if err := os.WriteFile(pathInfo, demo.PathInfoJSON, 0o644); err != nil {
		return nil, err
	}
	u.info("wrote the demo closure to %s", source)
	ref, err := oci.ParseRef("oci:"+filepath.Join(abs, "layout")+":demo", false)
	if err != nil {
		return nil, err
	}
	created, err := sourceDateEpoch()
	if err != nil {
		return nil, err
	}
	br, err := runBundle(ctx, bundleOpts{root: demo.Root, storeDir: source, pathInfo: pathInfo, system: "aarch64-linux", version: 1, created: created}, ref, u)
	if err != nil {
		return nil, err
	}
	u.info("bundled it into %s (%s)", br.Reference, br.Digest)
	img, cfg, err := oci.Open(ctx, ref)
	if err != nil {
		return nil, err
	}
	ins, err := describe(ref, img, cfg)
	if err != nil {
		return nil, err
	}
	progress, finish := u.bar("extracting")
	_, err = bundle.Extract(ctx, img, cfg, store, extractOpts{}.extractOptions(progress)...)
	finish()
	if err != nil {
		return nil, err
	}
	u.info("extracted it into %s", store)
	res := &demoResult{Dir: abs, Source: source, Bundle: br, Inspect: ins, StoreDir: store, Digest: br.Digest}
	for _, p := range cfg.Paths {
		h, n, err := nix.HashPath(filepath.Join(store, nix.BaseName(p.Path)))
		if err != nil {
			return nil, err
		}
		if h != p.NarHash || n != p.NarSize {
			return nil, &bundle.NarHashError{Path: p.Path, WantHash: p.NarHash, GotHash: h, WantSize: p.NarSize, GotSize: n}
		}
		res.Verified = append(res.Verified, p.Path)
	}
	return res, nil
}
