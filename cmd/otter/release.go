package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/otter-fleet/otter/diff"
	"github.com/otter-fleet/otter/internal/fsutil"
	"github.com/otter-fleet/otter/pipelines"
)

func releaseCommand() *cli.Command {
	return &cli.Command{
		Name:  "release",
		Usage: "run the release pipeline a release file describes: build, bundle, sign, push, patch, image",
		Description: `Reads otter.yaml (docs/pipeline.md). For each target: build it (or take the
store tree), bundle it, push it as <registry>/<name>:v<release>, attach a signed
release statement for each channel, make a signed patch from each of the last
patches.from releases in the registry that the same key signed (saying why an
earlier release was passed over), write the SD-card image if asked, and last
move the channel tags. Rerunning after a failure skips what is already there
and correct; a release tag that names another bundle is refused.`,
		Flags: append(registryFlags(),
			&cli.StringFlag{Name: "file", Aliases: []string{"f"}, Value: "otter.yaml", Usage: "the release file"},
			&cli.StringFlag{Name: "template", Usage: "print a ready CI file instead: github (GitHub Actions) or gitlab (GitLab CI)"},
			&cli.StringFlag{Name: "rollout", Usage: "stage the release: PERCENT%:DURATION[@START], e.g. 10%:48h (overrides signing.rollout)"},
			&cli.StringFlag{Name: "report", Usage: "write each target's update report (otter diff --html from the newest earlier release) into this directory"},
		),
		Action: func(c *cli.Context) error {
			o := releaseOpts{registry: registryOptsFrom(c), file: c.String("file"), template: c.String("template"), report: c.String("report"), rollout: c.String("rollout")}
			return runRelease(c.Context, o, c.Args().Slice(), newUI(c))
		},
	}
}

// releaseOpts are otter release's flags.
type releaseOpts struct {
	registry               registryOpts
	file, template, report string
	// rollout overrides the release file's signing.rollout.
	rollout string
}

func runRelease(ctx context.Context, o releaseOpts, args []string, u *ui) error {
	if len(args) != 0 {
		return usageErrorf("release takes no arguments (the release file says what to do), got %d", len(args))
	}
	if o.template != "" {
		data, err := pipelines.Template(o.template)
		if err != nil {
			return usageErrorf("--template: %v", err)
		}
		_, err = u.out.Write(data)
		return err
	}
	rf, err := pipelines.LoadReleaseFile(o.file)
	if err != nil {
		return err
	}
	keys, err := loadKeys(u, []string{rf.Signing.Key})
	if err != nil {
		return fmt.Errorf("%s: signing.key: %w", rf.Path(), err)
	}
	now := time.Now()
	expires, err := parseExpiry(rf.Signing.Expires, now)
	if err != nil {
		return fmt.Errorf("%s: signing.expires: %w", rf.Path(), err)
	}
	created, err := sourceDateEpoch()
	if err != nil {
		return err
	}
	rollout, err := parseRollout(o.rollout, rf.Signing.Rollout, now)
	if err != nil {
		return err
	}
	reg := o.registry
	reg.insecure = reg.insecure || rf.Insecure
	r := &pipelines.Runner{
		File: rf, Keys: keys, Now: now, Expires: expires, Created: created, Rollout: rollout,
		IO:  reg.io(nil),
		Log: func(format string, a ...any) { u.info(format, a...) },
	}
	res, err := r.Run(ctx)
	if err != nil {
		return err
	}
	if err := releaseReports(res, o.report); err != nil {
		return err
	}
	// In GitHub Actions, the job's summary shows what each device will
	// download.
	if f := os.Getenv("GITHUB_STEP_SUMMARY"); f != "" {
		sf, err := os.OpenFile(f, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			return fmt.Errorf("GITHUB_STEP_SUMMARY: %w", err)
		}
		_, err = io.WriteString(sf, pipelines.Summary(res))
		if cerr := sf.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("GITHUB_STEP_SUMMARY: %w", err)
		}
	}
	return u.result(res, func(w io.Writer) { printRelease(w, res) })
}

// releaseReports writes, for each target with a patch made in this run,
// the update report from the newest earlier release to dir/<target>.html.
func releaseReports(res *pipelines.Result, dir string) error {
	if dir == "" {
		return nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, t := range res.Targets {
		for _, p := range t.Patches {
			if p.Diff == nil {
				continue
			}
			var b bytes.Buffer
			if err := diff.WriteHTML(&b, p.Diff, t.Name+":"+p.From, t.Reference); err != nil {
				return err
			}
			if err := fsutil.AtomicWrite(filepath.Join(dir, t.Name+".html"), b.Bytes(), 0o644); err != nil {
				return err
			}
			break
		}
	}
	return nil
}

func printRelease(w io.Writer, res *pipelines.Result) {
	fmt.Fprintf(w, "release %d\n", res.Release)
	fmt.Fprintf(w, "%-12s %-10s %12s %12s %8s  %s\n", "target", "from", "download", "full bundle", "saving", "")
	for _, t := range res.Targets {
		fmt.Fprintf(w, "%-12s %-10s %12s %12s %8s  %s\n", t.Name, "(none)", humanBytes(t.Full), humanBytes(t.Full), "", t.Digest)
		for _, p := range t.Patches {
			note := p.Note()
			if d := p.Diff; d != nil && note == "" {
				note = fmt.Sprintf("%d renamed, %d changed; Nix would substitute %s of NAR", d.Totals.Paths[diff.Renamed], d.Totals.Paths[diff.Changed], humanBytes(d.Totals.NarBytes))
			}
			fmt.Fprintf(w, "%-12s %-10s %12s %12s %7.1f%%  %s\n", "", p.From, humanBytes(p.Size), humanBytes(t.Full), 100*(1-p.Share), note)
		}
		for _, s := range t.Skipped {
			fmt.Fprintf(w, "%-12s %-10s %12s %12s %8s  no patch: %s\n", "", s.Tag, "-", "", "", s.Reason)
		}
		state := "pushed"
		if !t.Pushed {
			state = "already in the registry"
		}
		fmt.Fprintf(w, "  %s %s; signed for %v; channels moved: %v\n", t.Reference, state, t.Signed, t.Channels)
		if t.Image != nil {
			fmt.Fprintf(w, "  image %s (%s, %s compressed)\n", t.Image.Image, humanBytes(t.Image.Size), humanBytes(t.Image.ZstdSize))
		}
	}
}
