package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/urfave/cli/v2"

	"github.com/otter-fleet/otter/bundle"
	"github.com/otter-fleet/otter/nix"
	"github.com/otter-fleet/otter/oci"
)

func registryFlags() []cli.Flag {
	return []cli.Flag{
		&cli.BoolFlag{Name: "insecure", Usage: "allow plain HTTP and unverified TLS to the registry"},
		&cli.IntFlag{Name: "jobs", Aliases: []string{"j"}, Usage: "how many blobs or store paths to work on at once (default: CPUs, at least 4 for transfers)"},
	}
}

// registryOpts are the registry flags every command that reads or
// writes bundles takes.
type registryOpts struct {
	insecure bool
	jobs     int
	jobsSet  bool // else the default; --jobs 0 is refused, not defaulted
}

func registryOptsFrom(c *cli.Context) registryOpts {
	return registryOpts{insecure: c.Bool("insecure"), jobs: c.Int("jobs"), jobsSet: c.IsSet("jobs")}
}

// io is the oci options these flags give, with progress if not nil.
func (r registryOpts) io(progress bundle.Progress) []oci.IOOption {
	opts := []oci.IOOption{oci.WithInsecure(r.insecure)}
	if r.jobsSet {
		opts = append(opts, oci.WithIOJobs(r.jobs))
	}
	if progress != nil {
		opts = append(opts, oci.WithIOProgress(progress))
	}
	return opts
}

func (r registryOpts) parseRef(s string) (oci.Ref, error) { return oci.ParseRef(s, r.insecure) }

// open opens the bundle named by a command's argument s (an archive is
// unpacked first).
func (r registryOpts) open(ctx context.Context, s string) (oci.Ref, v1.Image, *bundle.Config, error) {
	s, err := resolveArchive(s)
	if err != nil {
		return oci.Ref{}, nil, nil, err
	}
	ref, err := r.parseRef(s)
	if err != nil {
		return ref, nil, nil, err
	}
	img, cfg, err := oci.Open(ctx, ref, r.io(nil)...)
	return ref, img, cfg, err
}

// bundleOpts are otter bundle's flags.
type bundleOpts struct {
	root, storeDir, pathInfo, out, system string
	version                               uint64
	created                               time.Time
	registry                              registryOpts
}

// bundleResult is the --json output of otter bundle.
type bundleResult struct {
	Reference      string  `json:"reference"`
	Digest         v1.Hash `json:"digest"`
	MediaType      string  `json:"mediaType"`
	Size           int64   `json:"size"`
	ArtifactType   string  `json:"artifactType"`
	Root           string  `json:"root"`
	System         string  `json:"system"`
	Version        uint64  `json:"version"`
	Paths          int     `json:"paths"`
	NarSize        int64   `json:"narSize"`
	CompressedSize int64   `json:"compressedSize"`
}

func bundleCommand() *cli.Command {
	return &cli.Command{
		Name:      "bundle",
		Usage:     "pack a Nix closure into a reproducible OCI artifact",
		ArgsUsage: "ROOT",
		Description: `ROOT is a store path. Without --store-dir, otter asks Nix for its closure
(nix path-info --json --recursive) and reads the files from /nix/store. With
--store-dir DIR and --path-info FILE, it reads a store tree on disk: DIR holds
the store paths (or DIR/nix/store does), FILE is what nix path-info printed.

Every store path's NAR hash is recomputed and checked before the bundle is
written. The bundle is byte-identical for the same closure; file times and the
creation time are 0 unless SOURCE_DATE_EPOCH is set.`,
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "out", Aliases: []string{"o"}, Required: true, Usage: "where to put the bundle: oci:DIR[:TAG] or HOST/REPO:TAG"},
			&cli.StringFlag{Name: "store-dir", Usage: "read store paths from DIR instead of the Nix store"},
			&cli.StringFlag{Name: "path-info", Usage: "the closure's path-info JSON (with --store-dir)"},
			&cli.StringFlag{Name: "system", Value: "aarch64-linux", Usage: "the target system recorded in the bundle"},
			&cli.Uint64Flag{Name: "release-version", Usage: "the release version recorded in the bundle (monotonically increasing)"},
		}, registryFlags()...),
		Action: func(c *cli.Context) error {
			o := bundleOpts{
				storeDir: c.String("store-dir"), pathInfo: c.String("path-info"), out: c.String("out"),
				system: c.String("system"), version: c.Uint64("release-version"), registry: registryOptsFrom(c),
			}
			return runBundleCommand(c.Context, o, c.Args().Slice(), newUI(c))
		},
	}
}

// validate refuses options that do not go together.
func (o bundleOpts) validate() error {
	if (o.storeDir == "") != (o.pathInfo == "") {
		return usageErrorf("--store-dir and --path-info go together")
	}
	return nil
}

func runBundleCommand(ctx context.Context, o bundleOpts, args []string, u *ui) error {
	if len(args) != 1 {
		return usageErrorf("bundle takes one store path, got %d arguments", len(args))
	}
	o.root = args[0]
	var err error
	if o.created, err = sourceDateEpoch(); err != nil {
		return err
	}
	if err := o.validate(); err != nil {
		return err
	}
	ref, err := o.registry.parseRef(o.out)
	if err != nil {
		return err
	}
	res, err := runBundle(ctx, o, ref, u)
	if err != nil {
		return err
	}
	return u.result(res, func(w io.Writer) {
		fmt.Fprintf(w, "%s\n  %d store paths, %s of NAR, %s compressed\n  digest %s\n",
			res.Reference, res.Paths, humanBytes(res.NarSize), humanBytes(res.CompressedSize), res.Digest)
	})
}

// sourceDateEpoch reads SOURCE_DATE_EPOCH (reproducible-builds.org).
func sourceDateEpoch() (time.Time, error) {
	s, ok := os.LookupEnv("SOURCE_DATE_EPOCH")
	if !ok || s == "" {
		return time.Unix(0, 0).UTC(), nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return time.Time{}, usageErrorf("SOURCE_DATE_EPOCH=%q is not a non-negative number of seconds", s)
	}
	return time.Unix(n, 0).UTC(), nil
}

// loadClosure reads the closure from a store tree or from Nix, and
// returns it with the directory its store paths are in.
func loadClosure(ctx context.Context, root, storeDir, pathInfo string) (*nix.Closure, string, error) {
	if err := nix.ValidateStorePath(root); err != nil {
		return nil, "", usageErrorf("%v", err)
	}
	var infos []nix.PathInfo
	if storeDir == "" {
		var err error
		if infos, err = nix.QueryClosure(ctx, root); err != nil {
			return nil, "", err
		}
		storeDir = nix.StoreDir
	} else {
		data, err := os.ReadFile(pathInfo)
		if err != nil {
			return nil, "", fmt.Errorf("reading path-info: %w", err)
		}
		if infos, err = nix.ParsePathInfo(data); err != nil {
			return nil, "", fmt.Errorf("%s: %w", pathInfo, err)
		}
		// A store tree (DIR/nix/store/...) as well as a store directory.
		if _, err := os.Lstat(filepath.Join(storeDir, nix.BaseName(root))); err != nil {
			if _, err2 := os.Stat(filepath.Join(storeDir, "nix", "store")); err2 == nil {
				storeDir = filepath.Join(storeDir, "nix", "store")
			}
		}
	}
	c, err := nix.NewClosure(root, infos)
	if err != nil {
		return nil, "", err
	}
	return c, storeDir, nil
}

// runBundle bundles the closure o names and writes it to ref.
func runBundle(ctx context.Context, o bundleOpts, ref oci.Ref, u *ui) (*bundleResult, error) {
	closure, storeDir, err := loadClosure(ctx, o.root, o.storeDir, o.pathInfo)
	if err != nil {
		return nil, err
	}
	u.log.Debug("closure", "root", closure.Root, "paths", len(closure.Paths), "store", storeDir)
	progress, finish := u.bar("packing")
	opts := []bundle.BuildOption{bundle.WithSystem(o.system), bundle.WithVersion(o.version), bundle.WithCreated(o.created), bundle.WithProgress(progress)}
	if o.registry.jobsSet {
		opts = append(opts, bundle.WithJobs(o.registry.jobs))
	}
	if ref.Remote == nil {
		// Spool beside the layout, so the final copy stays on one file system.
		if err := os.MkdirAll(ref.Layout, 0o755); err != nil {
			return nil, err
		}
		opts = append(opts, bundle.WithSpoolDir(ref.Layout))
	}
	b, err := bundle.Build(ctx, closure, storeDir, opts...)
	finish()
	if err != nil {
		return nil, err
	}
	defer b.Close()
	progress, finish = u.bar("writing")
	desc, err := oci.Write(ctx, b, ref, o.registry.io(progress)...)
	finish()
	if err != nil {
		return nil, err
	}
	res := &bundleResult{
		Reference: ref.String(), Digest: desc.Digest, MediaType: string(desc.MediaType), Size: desc.Size,
		ArtifactType: bundle.ArtifactType, Root: closure.Root, System: b.Config.System, Version: b.Config.Version,
		Paths: len(closure.Paths), NarSize: closure.NarSize(),
	}
	m, err := b.Manifest()
	if err != nil {
		return nil, err
	}
	for _, l := range m.Layers {
		res.CompressedSize += l.Size
	}
	return res, nil
}
