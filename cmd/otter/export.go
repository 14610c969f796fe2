package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/urfave/cli/v2"

	"github.com/otter-fleet/otter/internal/fsutil"
	"github.com/otter-fleet/otter/oci"
	"github.com/otter-fleet/otter/release"
)

// archiveDirs are the directories oci-archive references were unpacked
// into; run removes them when the command ends.
var archiveDirs []string

func cleanupArchives() {
	for _, d := range archiveDirs {
		fsutil.RemoveAll(d)
	}
	archiveDirs = nil
}

// resolveArchive turns oci-archive:FILE[:TAG] into an oci: reference to
// the archive unpacked in a temporary directory.
func resolveArchive(s string) (string, error) {
	rest, ok := strings.CutPrefix(s, oci.ArchivePrefix)
	if !ok {
		return s, nil
	}
	file, tag := rest, ""
	if i := strings.LastIndex(rest, ":"); i >= 0 && !strings.Contains(rest[i:], "/") {
		file, tag = rest[:i], rest[i+1:]
	}
	dir, err := os.MkdirTemp("", "otter-archive-")
	if err != nil {
		return "", err
	}
	archiveDirs = append(archiveDirs, dir)
	if err := oci.ExtractArchive(file, dir); err != nil {
		return "", err
	}
	if tag != "" {
		return oci.LayoutPrefix + dir + ":" + tag, nil
	}
	return oci.LayoutPrefix + dir, nil
}

// exportResult is the --json output of otter export.
type exportResult struct {
	Source     string  `json:"source"`
	File       string  `json:"file"`
	Digest     v1.Hash `json:"digest"`
	Size       int64   `json:"size"`
	Statements int     `json:"statements"`
	Cosign     int     `json:"cosignSignatures"`
}

func exportCommand() *cli.Command {
	return &cli.Command{
		Name:      "export",
		Usage:     "write a bundle and its signatures to one file, for offline and USB updates",
		ArgsUsage: "REF FILE",
		Description: `FILE is a tar of an OCI layout holding the bundle (tagged TAG, default the
source's tag or "latest") and everything attached to it. Every command that
reads a bundle takes it back as oci-archive:FILE[:TAG]; otter verify checks it
with no network.`,
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "tag", Usage: "the tag inside the archive"},
		}, registryFlags()...),
		Action: func(c *cli.Context) error {
			return runExport(c.Context, exportOpts{registry: registryOptsFrom(c), tag: c.String("tag")}, c.Args().Slice(), newUI(c))
		},
	}
}

// exportOpts are otter export's flags.
type exportOpts struct {
	registry registryOpts
	tag      string
}

func runExport(ctx context.Context, o exportOpts, args []string, u *ui) error {
	if len(args) != 2 {
		return usageErrorf("export takes REF and FILE, got %d arguments", len(args))
	}
	src, img, _, err := o.registry.open(ctx, args[0])
	if err != nil {
		return err
	}
	tag := o.tag
	if tag == "" {
		tag = src.Tag
		if src.Remote != nil {
			tag = src.Remote.Identifier()
		}
		if tag == "" || strings.HasPrefix(tag, "sha256:") {
			tag = "latest"
		}
	}
	tmp, err := os.MkdirTemp("", "otter-export-")
	if err != nil {
		return err
	}
	defer fsutil.RemoveAll(tmp)
	dst, err := oci.ParseRef(oci.LayoutPrefix+filepath.Join(tmp, "layout")+":"+tag, false)
	if err != nil {
		return usageErrorf("--tag: %v", err)
	}
	cr, err := release.Copy(ctx, img, src, dst, o.registry.io(nil)...)
	if err != nil {
		return err
	}
	out := args[1]
	f, err := os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".tmp-")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if err := oci.WriteArchive(dst.Layout, f); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	fi, _ := f.Stat()
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), out); err != nil {
		return err
	}
	res := exportResult{Source: src.String(), File: out, Digest: cr.Manifest.Digest, Size: fi.Size(), Statements: cr.Statements, Cosign: cr.Cosign}
	return u.result(res, func(w io.Writer) {
		fmt.Fprintf(w, "wrote %s (%s): bundle %s, %d statement(s), %d cosign signature(s)\n  read it back as %s%s:%s\n",
			out, humanBytes(res.Size), res.Digest, res.Statements, res.Cosign, oci.ArchivePrefix, out, tag)
	})
}
