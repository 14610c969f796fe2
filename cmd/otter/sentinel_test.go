package main

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/otter-fleet/otter/agent"
	"github.com/otter-fleet/otter/boot"
	"github.com/otter-fleet/otter/build"
	"github.com/otter-fleet/otter/bundle"
	"github.com/otter-fleet/otter/delta"
	"github.com/otter-fleet/otter/device"
	"github.com/otter-fleet/otter/image"
	"github.com/otter-fleet/otter/internal/testutil"
	"github.com/otter-fleet/otter/nix"
	"github.com/otter-fleet/otter/nixdb"
	"github.com/otter-fleet/otter/oci"
	"github.com/otter-fleet/otter/pipelines"
	"github.com/otter-fleet/otter/sign"
	"github.com/otter-fleet/otter/state"
)

// sentinels holds every exported Err… sentinel of otter's packages; the
// test below proves the list complete by reading the source.
var sentinels = map[string]error{
	"build.ErrNoBinfmt": build.ErrNoBinfmt, "build.ErrNoHandler": build.ErrNoHandler, "build.ErrNoFixBinary": build.ErrNoFixBinary,
	"build.ErrNoQemu": build.ErrNoQemu, "build.ErrNotRoot": build.ErrNotRoot, "build.ErrSelfTest": build.ErrSelfTest,
	"build.ErrNoNix": build.ErrNoNix, "build.ErrNoAttribute": build.ErrNoAttribute, "build.ErrBuildFailed": build.ErrBuildFailed, "build.ErrNix": build.ErrNix,
	"bundle.ErrNarHashMismatch": bundle.ErrNarHashMismatch, "bundle.ErrMissingPath": bundle.ErrMissingPath, "bundle.ErrLayerDigest": bundle.ErrLayerDigest,
	"bundle.ErrLayerFormat": bundle.ErrLayerFormat, "bundle.ErrNotBundle": bundle.ErrNotBundle, "bundle.ErrCorruptPath": bundle.ErrCorruptPath, "bundle.ErrConfig": bundle.ErrConfig,
	"bundle.ErrBootPart": bundle.ErrBootPart,
	"delta.ErrFormat":    delta.ErrFormat, "delta.ErrTruncated": delta.ErrTruncated, "delta.ErrTooLarge": delta.ErrTooLarge, "delta.ErrCorrupt": delta.ErrCorrupt,
	"delta.ErrPatchDigest": delta.ErrPatchDigest, "delta.ErrBaseMismatch": delta.ErrBaseMismatch, "delta.ErrTargetMismatch": delta.ErrTargetMismatch,
	"device.ErrBusy": device.ErrBusy, "device.ErrHealthCheck": device.ErrHealthCheck, "device.ErrActivation": device.ErrActivation, "device.ErrKnownBad": device.ErrKnownBad,
	"device.ErrNoSpace": device.ErrNoSpace, "device.ErrNoPrevious": device.ErrNoPrevious, "device.ErrState": device.ErrState, "device.ErrNoPatch": device.ErrNoPatch,
	"device.ErrNoWariness": device.ErrNoWariness, "device.ErrBootFailed": device.ErrBootFailed, "device.ErrOnTrial": device.ErrOnTrial, "sign.ErrHaltNotYet": sign.ErrHaltNotYet,
	"image.ErrTooSmall": image.ErrTooSmall, "image.ErrBootFiles": image.ErrBootFiles, "image.ErrUnknownBoard": image.ErrUnknownBoard, "image.ErrTool": image.ErrTool,
	"nix.ErrNotClosed": nix.ErrNotClosed, "nix.ErrNotInClosure": nix.ErrNotInClosure, "nix.ErrStorePath": nix.ErrStorePath, "nix.ErrNARFormat": nix.ErrNARFormat, "nix.ErrHashFormat": nix.ErrHashFormat,
	"oci.ErrNotFound": oci.ErrNotFound, "oci.ErrUnauthorized": oci.ErrUnauthorized, "oci.ErrRef": oci.ErrRef, "oci.ErrTooLarge": oci.ErrTooLarge,
	"state.ErrDamaged": state.ErrDamaged,
	"boot.ErrFAT":      boot.ErrFAT, "boot.ErrAutoboot": boot.ErrAutoboot,
	"agent.ErrConfig": agent.ErrConfig,
	"nixdb.ErrNoNix":  nixdb.ErrNoNix, "nixdb.ErrBusy": nixdb.ErrBusy, "nixdb.ErrConflict": nixdb.ErrConflict, "nixdb.ErrNix": nixdb.ErrNix,
	"pipelines.ErrTagTaken": pipelines.ErrTagTaken, "pipelines.ErrReleaseFile": pipelines.ErrReleaseFile,
	"sign.ErrTrust": sign.ErrTrust, "sign.ErrKey": sign.ErrKey, "sign.ErrPassphrase": sign.ErrPassphrase, "sign.ErrBadSignature": sign.ErrBadSignature,
	"sign.ErrUnknownKey": sign.ErrUnknownKey, "sign.ErrThreshold": sign.ErrThreshold, "sign.ErrExpired": sign.ErrExpired, "sign.ErrRollback": sign.ErrRollback,
	"sign.ErrWrongSystem": sign.ErrWrongSystem, "sign.ErrWrongChannel": sign.ErrWrongChannel, "sign.ErrDigestMismatch": sign.ErrDigestMismatch,
	"sign.ErrWrongType": sign.ErrWrongType, "sign.ErrNotSigned": sign.ErrNotSigned, "sign.ErrMalformed": sign.ErrMalformed, "sign.ErrOversized": sign.ErrOversized,
}

// TestSentinelExitCodes: every exported Err… sentinel is listed in
// docs/cli.md's sentinel table, and exitCode maps it (wrapped, as callers
// return it) to the code the table gives.
func TestSentinelExitCodes(t *testing.T) {
	root, err := testutil.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	// The sentinels the source declares.
	declared := map[string]bool{}
	for _, pkg := range []string{"agent", "boot", "build", "bundle", "delta", "device", "image", "nix", "nixdb", "oci", "pipelines", "sign", "state"} {
		fset := token.NewFileSet()
		files, _ := filepath.Glob(filepath.Join(root, pkg, "*.go"))
		for _, f := range files {
			if strings.HasSuffix(f, "_test.go") {
				continue
			}
			af, err := parser.ParseFile(fset, f, nil, 0)
			if err != nil {
				t.Fatal(err)
			}
			for _, d := range af.Decls {
				gd, ok := d.(*ast.GenDecl)
				if !ok || gd.Tok != token.VAR {
					continue
				}
				for _, s := range gd.Specs {
					for _, n := range s.(*ast.ValueSpec).Names {
						if strings.HasPrefix(n.Name, "Err") && n.IsExported() {
							declared[pkg+"."+n.Name] = true
						}
					}
				}
			}
		}
	}
	for name := range declared {
		if _, ok := sentinels[name]; !ok {
			t.Errorf("%s is not in this test's list", name)
		}
	}
	// The codes docs/cli.md gives them.
	doc, err := os.ReadFile(filepath.Join(root, "docs", "cli.md"))
	if err != nil {
		t.Fatal(err)
	}
	documented := map[string]int{}
	for _, m := range regexp.MustCompile("(?m)^\\| `([a-z]+\\.Err[A-Za-z]+)` \\| ([0-9]+) \\|").FindAllStringSubmatch(string(doc), -1) {
		documented[m[1]], _ = strconv.Atoi(m[2])
	}
	for name, err := range sentinels {
		want, ok := documented[name]
		if !ok {
			t.Errorf("docs/cli.md does not give the exit code of %s", name)
			continue
		}
		if !declared[name] {
			t.Errorf("%s is listed but not declared", name)
		}
		if got := exitCode(fmt.Errorf("context: %w", err)); got != want {
			t.Errorf("%s: exit %d, docs/cli.md says %d", name, got, want)
		}
	}
}
