package main

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/otter-fleet/otter/build"
	"github.com/otter-fleet/otter/oci"
)

func binfmtCommand() *cli.Command {
	return &cli.Command{
		Name:  "binfmt",
		Usage: "inspect or set up aarch64 emulation (qemu through binfmt_misc) for cross-builds",
		Subcommands: []*cli.Command{
			{
				Name:  "status",
				Usage: "whether aarch64 programs run here, and why not",
				Description: `Shows whether binfmt_misc is mounted, which handler runs aarch64 ELF programs
(interpreter and flags: without F, sandboxed Nix builds cannot see the
interpreter), and runs a tiny aarch64 program that ships inside otter.
Exits non-zero when emulation is not usable for Nix builds.`,
				Action: func(c *cli.Context) error { return runBinfmtStatus(c.Context, newUI(c)) },
			},
			{
				Name:  "install",
				Usage: "register qemu-aarch64-static for aarch64 programs, with the F flag (root)",
				Description: `Mounts binfmt_misc if needed and registers the interpreter with the F flag,
replacing an aarch64 registration that lacks it. Running it again changes
nothing. The registration lasts until reboot: run it from the CI job or a boot
unit (NixOS: boot.binfmt.emulatedSystems = [ "aarch64-linux" ]).`,
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "interpreter", Usage: "the qemu-aarch64 binary (default: qemu-aarch64-static on PATH)"},
				},
				Action: func(c *cli.Context) error { return runBinfmtInstall(c.Context, c.String("interpreter"), newUI(c)) },
			},
		},
	}
}

func runBinfmtStatus(ctx context.Context, u *ui) error {
	st, err := build.Status(ctx, build.DefaultBinfmtDir)
	if err != nil {
		return err
	}
	problem := st.Err()
	res := binfmtStatusResult{BinfmtStatus: st, Usable: problem == nil}
	if problem != nil {
		res.Problem, res.Fix = problem.Error(), build.Fix(problem)
	}
	if err := u.result(res, func(w io.Writer) { printBinfmtStatus(w, res) }); err != nil {
		return err
	}
	return problem
}

func runBinfmtInstall(ctx context.Context, interp string, u *ui) error {
	if interp == "" {
		var err error
		if interp, err = build.FindInterpreter(); err != nil {
			return fmt.Errorf("%w; fix: %s", err, build.Fix(err))
		}
	}
	res, err := build.Install(build.DefaultBinfmtDir, interp)
	if err != nil {
		if fix := build.Fix(err); fix != "" {
			return fmt.Errorf("%w; fix: %s", err, fix)
		}
		return err
	}
	st := build.RunSelfTest(ctx)
	out := binfmtInstallResult{InstallResult: res, SelfTest: st}
	if err := u.result(out, func(w io.Writer) {
		switch {
		case res.Registered && len(res.Replaced) > 0:
			fmt.Fprintf(w, "registered %s with the F flag, replacing %s\n", interp, strings.Join(res.Replaced, ", "))
		case res.Registered:
			fmt.Fprintf(w, "registered %s with the F flag\n", interp)
		default:
			fmt.Fprintf(w, "%s is already registered with the F flag\n", interp)
		}
		fmt.Fprintf(w, "self-test: %s", selfTestLine(st))
	}); err != nil {
		return err
	}
	if !st.OK {
		return fmt.Errorf("%w: %s", build.ErrSelfTest, st.Error)
	}
	return nil
}

// binfmtStatusResult is the --json output of otter binfmt status.
type binfmtStatusResult struct {
	*build.BinfmtStatus
	Usable  bool   `json:"usable"`
	Problem string `json:"problem,omitempty"`
	Fix     string `json:"fix,omitempty"`
}

// binfmtInstallResult is the --json output of otter binfmt install.
type binfmtInstallResult struct {
	*build.InstallResult
	SelfTest *build.SelfTest `json:"selfTest"`
}

func selfTestLine(st *build.SelfTest) string {
	if st.OK {
		return "an aarch64 program ran and printed " + fmt.Sprintf("%q", st.Output) + "\n"
	}
	return "FAILED: " + st.Error + "\n"
}

func printBinfmtStatus(w io.Writer, r binfmtStatusResult) {
	fmt.Fprintf(w, "binfmt_misc  %s (%s)\n", map[bool]string{true: "mounted", false: "not mounted"}[r.Mounted], r.Dir)
	if h := r.Handler; h != nil {
		fmt.Fprintf(w, "handler      %s: %s, flags %q, enabled %v\n", h.Name, h.Interpreter, h.Flags, h.Enabled)
	} else {
		fmt.Fprintf(w, "handler      none for aarch64\n")
	}
	if r.SelfTest != nil {
		fmt.Fprintf(w, "self-test    %s", selfTestLine(r.SelfTest))
	}
	if r.Usable {
		fmt.Fprintln(w, "aarch64 builds can run here, in the Nix sandbox too")
	} else {
		fmt.Fprintf(w, "problem      %s\nfix          %s\n", r.Problem, r.Fix)
	}
}

// buildResult is the --json output of otter build.
type buildResult struct {
	*build.Result
	Bundle *bundleResult `json:"bundle,omitempty"`
}

func buildCommand() *cli.Command {
	return &cli.Command{
		Name:      "build",
		Usage:     "build a closure for aarch64-linux with Nix (under qemu emulation on other machines)",
		ArgsUsage: "[FLAKE#ATTR]",
		Description: `Builds a flake output (otter build .#packages.aarch64-linux.app) or an
attribute of a Nix file (otter build -f default.nix -A app) for aarch64-linux,
after checking that this machine can: natively, with --builders, or through
qemu binfmt emulation with the F flag (see otter binfmt status). Nix's build
log streams to stderr. With --out, the result is bundled straight away; a
failed build never makes a bundle.`,
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "file", Aliases: []string{"f"}, Usage: "build an attribute of this Nix file"},
			&cli.StringFlag{Name: "attr", Aliases: []string{"A"}, Usage: "the attribute of --file to build"},
			&cli.StringSliceFlag{Name: "argstr", Usage: "NAME=VALUE passed to the file's function (repeatable)"},
			&cli.StringFlag{Name: "system", Value: "aarch64-linux", Usage: "the target system"},
			&cli.IntFlag{Name: "max-jobs", Usage: "Nix's max-jobs"},
			&cli.IntFlag{Name: "cores", Usage: "Nix's cores"},
			&cli.StringFlag{Name: "substituters", Usage: "binary caches to use instead of Nix's setting (space-separated)"},
			&cli.StringFlag{Name: "trusted-public-keys", Usage: "keys the substituters sign with (space-separated)"},
			&cli.StringFlag{Name: "builders", Usage: "remote builders, in Nix's syntax (e.g. 'ssh://arm64-box aarch64-linux')"},
			&cli.StringFlag{Name: "out", Aliases: []string{"o"}, Usage: "bundle the result to oci:DIR[:TAG] or HOST/REPO:TAG"},
			&cli.Uint64Flag{Name: "release-version", Usage: "with --out: the release version recorded in the bundle"},
		}, registryFlags()...),
		Action: func(c *cli.Context) error {
			o := buildOpts{
				file: c.String("file"), attr: c.String("attr"), argstr: c.StringSlice("argstr"), out: c.String("out"),
				version: c.Uint64("release-version"), registry: registryOptsFrom(c),
				nix: build.Options{
					System: c.String("system"), MaxJobs: c.Int("max-jobs"), Cores: c.Int("cores"),
					Substituters: c.String("substituters"), TrustedPublicKeys: c.String("trusted-public-keys"),
					Builders: c.String("builders"),
				},
			}
			return runBuild(c.Context, o, c.Args().Slice(), newUI(c))
		},
	}
}

// buildOpts are otter build's flags.
type buildOpts struct {
	file, attr, out string
	argstr          []string
	version         uint64
	registry        registryOpts
	nix             build.Options
}

func runBuild(ctx context.Context, o buildOpts, args []string, u *ui) error {
	inst := build.Installable{File: o.file, Attr: o.attr}
	switch {
	case inst.File == "" && len(args) == 1:
		inst.Flake = args[0]
	case inst.File != "" && len(args) == 0:
	default:
		return usageErrorf("build takes one flake reference, or --file with --attr")
	}
	for _, kv := range o.argstr {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return usageErrorf("--argstr %q: want NAME=VALUE", kv)
		}
		if inst.Args == nil {
			inst.Args = map[string]string{}
		}
		inst.Args[k] = v
	}
	var ref *oci.Ref
	if o.out != "" {
		r, err := o.registry.parseRef(o.out)
		if err != nil {
			return err
		}
		ref = &r
	}
	opts := o.nix
	opts.Log = u.errw
	if u.quiet {
		opts.Log = nil
	}
	res, err := build.Build(ctx, inst, opts)
	if err != nil {
		return err
	}
	out := buildResult{Result: res}
	if ref != nil {
		if len(res.Outputs) != 1 {
			return usageErrorf("%s has %d outputs; --out bundles exactly one", inst, len(res.Outputs))
		}
		created, err := sourceDateEpoch()
		if err != nil {
			return err
		}
		out.Bundle, err = runBundle(ctx, bundleOpts{
			root: res.Outputs[0].Path, out: o.out, system: res.System,
			version: o.version, created: created, registry: o.registry,
		}, *ref, u)
		if err != nil {
			return err
		}
	}
	return u.result(out, func(w io.Writer) {
		for _, p := range res.Outputs {
			fmt.Fprintln(w, p.Path)
		}
		if out.Bundle != nil {
			fmt.Fprintf(w, "bundled as %s (%s)\n", out.Bundle.Reference, out.Bundle.Digest)
		}
	})
}
