package build

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/otter-fleet/otter/nix"
)

var (
	// ErrNoNix is returned when the nix command is not installed.
	ErrNoNix = errors.New("build: nix is not installed")
	// ErrNoAttribute is returned when the flake or file lacks the attribute.
	ErrNoAttribute = errors.New("build: no such attribute")
	// ErrBuildFailed is returned when a derivation's builder failed.
	ErrBuildFailed = errors.New("build: the build failed")
	// ErrNix is returned for any other failure of nix build.
	ErrNix = errors.New("build: nix build failed")
)

// Installable is what to build: a flake output reference
// (".#packages.aarch64-linux.app"), or an attribute of a Nix file.
type Installable struct {
	Flake string // a flake output reference; or
	File  string // a Nix file, with
	Attr  string // an attribute path in it (empty: the file's value)
	Args  map[string]string
}

func (i Installable) String() string {
	if i.Flake != "" {
		return i.Flake
	}
	return fmt.Sprintf("-f %s -A %s", i.File, i.Attr)
}

// Options tune a build. The zero value builds for aarch64-linux with the
// machine's Nix settings.
type Options struct {
	System            string // the target system (default aarch64-linux)
	MaxJobs           int
	Cores             int
	Substituters      string // space-separated, replacing Nix's setting
	TrustedPublicKeys string // space-separated, replacing Nix's setting
	Builders          string // remote builders, in Nix's builders syntax
	BinfmtDir         string // where binfmt_misc is (default DefaultBinfmtDir)
	Log               io.Writer
}

// Output is one built store path.
type Output struct {
	DrvPath string `json:"drvPath"`
	Name    string `json:"name"`
	Path    string `json:"path"`
}

// Result is what nix build made.
type Result struct {
	System      string   `json:"system"`
	Installable string   `json:"installable"`
	Outputs     []Output `json:"outputs"`
}

// Check makes sure this machine can build for system: natively, through
// remote builders, or with aarch64 emulation registered with the F flag
// and a self-test that runs.
func Check(ctx context.Context, o Options) error {
	if _, err := exec.LookPath("nix"); err != nil {
		return fmt.Errorf("%w: apt-get install nix-bin (Debian), or see https://nixos.org/download", ErrNoNix)
	}
	if o.Builders != "" || nativeSystem() == o.system() {
		return nil
	}
	if o.system() != "aarch64-linux" {
		return fmt.Errorf("build: cannot build for %s on %s without --builders", o.system(), nativeSystem())
	}
	dir := o.BinfmtDir
	if dir == "" {
		dir = DefaultBinfmtDir
	}
	st, err := Status(ctx, dir)
	if err != nil {
		return err
	}
	if err := st.Err(); err != nil {
		return fmt.Errorf("%w; fix: %s", err, Fix(err))
	}
	return nil
}

func (o Options) system() string {
	if o.System == "" {
		return "aarch64-linux"
	}
	return o.System
}

func nativeSystem() string {
	arch := map[string]string{"amd64": "x86_64", "arm64": "aarch64", "386": "i686", "riscv64": "riscv64"}[runtime.GOARCH]
	return arch + "-" + runtime.GOOS
}

// Args returns the arguments to `nix` that build inst with o.
func Args(inst Installable, o Options) []string {
	args := []string{
		"--extra-experimental-features", "nix-command flakes",
		"build", "--json", "--no-link", "--print-build-logs",
		"--option", "extra-platforms", o.system(),
	}
	if o.MaxJobs > 0 {
		args = append(args, "--max-jobs", strconv.Itoa(o.MaxJobs))
	}
	if o.Cores > 0 {
		args = append(args, "--cores", strconv.Itoa(o.Cores))
	}
	if o.Substituters != "" {
		args = append(args, "--option", "substituters", o.Substituters)
	}
	if o.TrustedPublicKeys != "" {
		args = append(args, "--option", "trusted-public-keys", o.TrustedPublicKeys)
	}
	if o.Builders != "" {
		args = append(args, "--option", "builders", o.Builders)
	}
	if inst.Flake != "" {
		return append(args, inst.Flake)
	}
	// A file's expression sees builtins.currentSystem: make it the target.
	args = append(args, "--system", o.system())
	names := make([]string, 0, len(inst.Args))
	for k := range inst.Args {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		args = append(args, "--argstr", k, inst.Args[k])
	}
	args = append(args, "--file", inst.File)
	if inst.Attr != "" {
		args = append(args, inst.Attr)
	}
	return args
}

// Build runs nix build for inst, streaming Nix's log to o.Log, after
// checking that this machine can build for the target system.
func Build(ctx context.Context, inst Installable, o Options) (*Result, error) {
	if (inst.Flake == "") == (inst.File == "") {
		return nil, errors.New("build: give a flake reference or a file")
	}
	if err := Check(ctx, o); err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, "nix", Args(inst, o)...)
	var stdout bytes.Buffer
	tail := &tailBuffer{max: 16 << 10}
	cmd.Stdout = &stdout
	if o.Log != nil {
		cmd.Stderr = io.MultiWriter(o.Log, tail)
	} else {
		cmd.Stderr = tail
	}
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, classify(inst, tail.String(), err)
	}
	var raw []struct {
		DrvPath string            `json:"drvPath"`
		Outputs map[string]string `json:"outputs"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &raw); err != nil {
		return nil, fmt.Errorf("%w: reading nix build --json: %v", ErrNix, err)
	}
	res := &Result{System: o.system(), Installable: inst.String()}
	for _, r := range raw {
		for name, p := range r.Outputs {
			if err := nix.ValidateStorePath(p); err != nil {
				return nil, fmt.Errorf("%w: %v", ErrNix, err)
			}
			res.Outputs = append(res.Outputs, Output{DrvPath: r.DrvPath, Name: name, Path: p})
		}
	}
	sort.Slice(res.Outputs, func(i, j int) bool { return res.Outputs[i].Path < res.Outputs[j].Path })
	if len(res.Outputs) == 0 {
		return nil, fmt.Errorf("%w: nix build reported no outputs", ErrNix)
	}
	return res, nil
}

// classify turns Nix's error text into one of the package's errors,
// keeping Nix's own words.
func classify(inst Installable, log string, err error) error {
	msg := lastError(log)
	switch {
	case strings.Contains(log, "does not provide attribute"),
		strings.Contains(log, "attribute '") && (strings.Contains(log, "missing") || strings.Contains(log, "not found")):
		return fmt.Errorf("%w in %s: %s", ErrNoAttribute, inst, msg)
	case strings.Contains(log, "builder for '") && strings.Contains(log, "failed"),
		strings.Contains(log, "build of '") && strings.Contains(log, "failed"):
		return fmt.Errorf("%w (%s): %s", ErrBuildFailed, inst, msg)
	}
	return fmt.Errorf("%w (%s): %v: %s", ErrNix, inst, err, msg)
}

// lastError returns Nix's first "error:" line onwards, briefly.
func lastError(log string) string {
	i := strings.Index(log, "error:")
	if i < 0 {
		return strings.TrimSpace(lastLines(log, 5))
	}
	s := strings.TrimSpace(log[i:])
	if len(s) > 2000 {
		s = s[:2000] + "…"
	}
	return s
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	buf []byte
	max int
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.max {
		t.buf = t.buf[len(t.buf)-t.max:]
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}
