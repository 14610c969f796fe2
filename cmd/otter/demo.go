package main

import (
	"bytes"
	"context"
	"crypto"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/urfave/cli/v2"

	"github.com/otter-fleet/otter/device"
	"github.com/otter-fleet/otter/diff"
	"github.com/otter-fleet/otter/internal/demo"
	"github.com/otter-fleet/otter/internal/fsutil"
	"github.com/otter-fleet/otter/internal/meter"
	"github.com/otter-fleet/otter/oci"
	"github.com/otter-fleet/otter/pipelines"
	"github.com/otter-fleet/otter/sign"
)

// demoMarker marks a directory otter demo made, so that a rerun may
// empty it and nothing else.
const demoMarker = ".otter-demo"

// demoStep is one release of the demo and what the device made of it.
type demoStep struct {
	Release   uint64 `json:"release"`
	Story     string `json:"story"`
	Reference string `json:"reference"`
	Digest    string `json:"digest"`
	// Patch is the signed patch from the previous release (0 for the
	// first).
	Patch int64 `json:"patch"`
	// Outcome is installed, updated or "rolled back".
	Outcome    string `json:"outcome"`
	Error      string `json:"error,omitempty"`
	Method     string `json:"method"`
	Generation int    `json:"generation"`
	// Downloaded is what the device's update transferred; Served all the
	// registry sent it (manifests, statements and signatures as well).
	Downloaded int64 `json:"downloaded"`
	Served     int64 `json:"served"`
	// Nix is what Nix substitution would fetch for the same step: the
	// NAR of every store path the device lacks.
	Nix int64 `json:"nix"`
}

// demoResult is the --json output of otter demo.
type demoResult struct {
	Dir     string     `json:"dir"`
	Steps   []demoStep `json:"steps"`
	Current uint64     `json:"current"`
	// Cascade is otter diff of the base-library fix (release 2 → 3).
	Cascade *diff.Result `json:"cascade"`
	Report  string       `json:"report"`
	// The totals are over the updates, the first install left out.
	Downloaded int64 `json:"downloaded"`
	Served     int64 `json:"served"`
	Nix        int64 `json:"nix"`
}

var demoStories = map[int]string{
	1: "first install: libgreet 1.0, hello 1.0, dashboard 2.3",
	2: "an app update: hello 1.0 → 1.1",
	3: "a security fix: libgreet 1.0 → 1.1, a cascade",
	4: "hello 1.2, which fails the release's self test",
}

func demoCommand() *cli.Command {
	return &cli.Command{
		Name:  "demo",
		Usage: "the whole update story, offline: release, sign, patch, a device updated by patch, a bad release rolled back",
		Description: `The demo publishes four releases of a small closure that the otter binary
carries (an app on a base library) with the release pipeline, into a registry it
runs on 127.0.0.1, and updates a device (directories under DIR/device) to each:
the first install, an app update and a base-library security fix by signed
patch, each checked by the release's own self test, and a release that fails
its self test and is rolled back. It then shows otter diff explaining the
base-library fix, writes that as DIR/report.html, and says how many bytes the
device downloaded against what Nix substitution would fetch. DIR is emptied
first if an earlier demo made it; nothing outside DIR is written.`,
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
			return u.result(res, func(w io.Writer) { printDemo(w, res) })
		},
	}
}

// demoDir makes dir ready: created, or emptied if an earlier demo made it.
func demoDir(dir string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	entries, err := os.ReadDir(abs)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return "", err
	case len(entries) > 0:
		if _, err := os.Stat(filepath.Join(abs, demoMarker)); err != nil {
			return "", usageErrorf("%s is not empty and no earlier demo made it; name another with --dir", abs)
		}
		for _, e := range entries {
			if err := fsutil.RemoveAll(filepath.Join(abs, e.Name())); err != nil {
				return "", err
			}
		}
	}
	if err := os.MkdirAll(abs, 0o755); err != nil {
		return "", err
	}
	return abs, os.WriteFile(filepath.Join(abs, demoMarker), []byte("made by otter demo; a rerun empties this directory\n"), 0o644)
}

// demoRegistry runs go-containerregistry's registry on 127.0.0.1 until
// ctx ends.
func demoRegistry(ctx context.Context) (string, *meter.Handler, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	h := &meter.Handler{H: registry.New(registry.Logger(log.New(io.Discard, "", 0)))}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(l) }() // ends with ErrServerClosed
	context.AfterFunc(ctx, func() { _ = srv.Close() })
	return l.Addr().String(), h, nil
}

// demoKey makes the demo's release key (DIR/keys/release.key, no
// passphrase) and the trust root that names it.
func demoKey(dir string) (crypto.Signer, *sign.Trust, error) {
	k, err := sign.GenerateKey(sign.ECDSAP256)
	if err != nil {
		return nil, nil, err
	}
	trust, err := sign.NewTrust(1, 1, k.Public())
	if err != nil {
		return nil, nil, err
	}
	pem, err := sign.MarshalPrivateKey(k, nil)
	if err != nil {
		return nil, nil, err
	}
	tj, err := trust.Marshal()
	if err != nil {
		return nil, nil, err
	}
	if err := os.MkdirAll(filepath.Join(dir, "keys"), 0o700); err != nil {
		return nil, nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "keys", "release.key"), pem, 0o600); err != nil {
		return nil, nil, err
	}
	return k, trust, os.WriteFile(filepath.Join(dir, "keys", "trust.json"), tj, 0o644)
}

// demoRelease publishes release n of the story with the release
// pipeline, from the release file it writes to DIR/otter.yaml.
func demoRelease(ctx context.Context, dir, reg string, n int, key crypto.Signer, u *ui) (*pipelines.TargetResult, error) {
	build := filepath.Join(dir, "build", fmt.Sprintf("r%d", n))
	root, err := demo.WriteStory(build, n)
	if err != nil {
		return nil, err
	}
	body := fmt.Sprintf(`# otter demo's release file: release %d of the story (docs/pipeline.md)
version: 1
registry: %s/demo
insecure: true
channels: [stable]
release: %d
targets:
  - name: app
    store:
      dir: %s
      pathInfo: %s
      root: %s
signing:
  key: %s
  cosign: false
patches:
  from: 1
  maxShare: 1
`, n, reg, n, build, filepath.Join(build, "path-info.json"), root, filepath.Join(dir, "keys", "release.key"))
	path := filepath.Join(dir, "otter.yaml")
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		return nil, err
	}
	rf, err := pipelines.ParseReleaseFile(path, []byte(body))
	if err != nil {
		return nil, err
	}
	created, err := sourceDateEpoch()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	r := &pipelines.Runner{
		File: rf, Keys: []crypto.Signer{key}, Now: now, Expires: now.Add(30 * 24 * time.Hour), Created: created,
		IO:  registryOpts{insecure: true}.io(nil),
		Log: func(format string, a ...any) { u.info("  "+format, a...) },
	}
	res, err := r.Run(ctx)
	if err != nil {
		return nil, err
	}
	return &res.Targets[0], nil
}

func runDemo(ctx context.Context, dir string, u *ui) (*demoResult, error) {
	abs, err := demoDir(dir)
	if err != nil {
		return nil, err
	}
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	reg, served, err := demoRegistry(ctx)
	if err != nil {
		return nil, err
	}
	key, trust, err := demoKey(abs)
	if err != nil {
		return nil, err
	}
	u.info("a registry on %s, a release key in %s", reg, filepath.Join(abs, "keys"))
	d, _, err := device.Open(ctx, device.Config{
		Store: filepath.Join(abs, "device", "nix", "store"), State: filepath.Join(abs, "device", "state"),
		Trust: trust, System: "aarch64-linux", Channel: "stable",
		Health:        []string{"/bin/sh", "-c", `exec /bin/sh "$OTTER_ROOT/bin/selftest"`},
		HealthTimeout: 30 * time.Second,
		IO:            registryOpts{insecure: true}.io(nil),
	})
	if err != nil {
		return nil, err
	}
	defer d.Close()
	channel, err := oci.ParseRef(reg+"/demo/app:stable", true)
	if err != nil {
		return nil, err
	}
	res := &demoResult{Dir: abs, Steps: []demoStep{}}
	for n := 1; n <= demo.Releases; n++ {
		u.info("release %d: %s", n, demoStories[n])
		tr, err := demoRelease(ctx, abs, reg, n, key, u)
		if err != nil {
			return nil, fmt.Errorf("release %d: %w", n, err)
		}
		step := demoStep{Release: uint64(n), Story: demoStories[n], Reference: tr.Reference, Digest: tr.Digest}
		for _, p := range tr.Patches {
			if p.Diff != nil {
				step.Patch, step.Nix = p.Size, p.Diff.Totals.NarBytes
				if n == 3 {
					res.Cascade = p.Diff
				}
			}
		}
		before := served.Bytes()
		ur, err := d.Update(ctx, channel, device.UpdateOptions{})
		step.Served = served.Bytes() - before
		switch {
		case err == nil:
			step.Outcome, step.Method, step.Generation = "updated", ur.Method, ur.To
			step.Downloaded = ur.Transferred
			if n == 1 {
				step.Outcome = "installed"
			}
		case errors.Is(err, device.ErrHealthCheck):
			step.Outcome, step.Error = "rolled back", err.Error()
		default:
			return nil, fmt.Errorf("updating the device to release %d: %w", n, err)
		}
		if n == 1 {
			cur, err := d.Current()
			if err != nil {
				return nil, err
			}
			step.Nix = cur.Config.Closure().NarSize()
		}
		if step.Method != "" {
			u.info("  device: %s by %s, %s downloaded", step.Outcome, step.Method, humanBytes(step.Served))
		} else {
			u.info("  device: %s, %s downloaded: %s", step.Outcome, humanBytes(step.Served), step.Error)
		}
		res.Steps = append(res.Steps, step)
		if n > 1 {
			res.Downloaded += step.Downloaded
			res.Served += step.Served
			res.Nix += step.Nix
		}
	}
	if last := res.Steps[len(res.Steps)-1]; last.Outcome != "rolled back" {
		return nil, fmt.Errorf("release %d passed its self test; the story needs it to fail", last.Release)
	}
	cur, err := d.Current()
	if err != nil {
		return nil, err
	}
	res.Current = cur.Release.Version
	if res.Cascade == nil {
		return nil, errors.New("release 3 has no patch report")
	}
	var b bytes.Buffer
	if err := diff.WriteHTML(&b, res.Cascade, "release 2", "release 3"); err != nil {
		return nil, err
	}
	res.Report = filepath.Join(abs, "report.html")
	return res, fsutil.AtomicWrite(res.Report, b.Bytes(), 0o644)
}

func printDemo(w io.Writer, res *demoResult) {
	fmt.Fprintf(w, "otter demo: four releases published with otter release, signed, patched, and a device updated to each\n\n")
	fmt.Fprintf(w, "%-3s %-52s %-11s %-6s %9s %10s %10s\n", "", "release", "device", "by", "patch", "download", "Nix (NAR)")
	for _, s := range res.Steps {
		patch, method := "-", s.Method
		if s.Patch > 0 {
			patch = humanBytes(s.Patch)
		}
		if method == "" {
			method = "-"
		}
		fmt.Fprintf(w, "%-3d %-52s %-11s %-6s %9s %10s %10s\n", s.Release, s.Story, s.Outcome, method, patch, humanBytes(s.Served), humanBytes(s.Nix))
		if s.Error != "" {
			fmt.Fprintf(w, "    %s\n", strings.ReplaceAll(s.Error, "\n", " "))
		}
	}
	fmt.Fprintf(w, "\n(download is everything the registry sent the device: the patch or layers, and the manifests,\nsigned statements and signatures otter checks before it trusts them.)\n")
	fmt.Fprintf(w, "\nThe device runs release %d: release 4 failed its self test and was rolled back.\n", res.Current)
	fmt.Fprintf(w, "\nWhy the base-library fix renamed what it did (otter diff release 2 → 3):\n")
	var b bytes.Buffer
	printDiff(&b, res.Cascade)
	for _, line := range strings.SplitAfter(b.String(), "\n") {
		if strings.TrimSpace(line) != "" {
			fmt.Fprint(w, "  "+line)
		} else {
			fmt.Fprint(w, line)
		}
	}
	fmt.Fprintf(w, "\nFor the three updates the device downloaded %s from the registry, manifests, statements and\n", humanBytes(res.Served))
	fmt.Fprintf(w, "signatures included. Nix substitution would have fetched %s of NAR.\n", humanBytes(res.Nix))
	fmt.Fprintf(w, "\nUnder %s: device/ (its store and state), build/ (the releases' store trees),\n", res.Dir)
	fmt.Fprintf(w, "otter.yaml (the last release file), keys/, and report.html (the cascade, for a browser).\n")
}
