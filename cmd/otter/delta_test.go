package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/otter-fleet/otter/delta"
	"github.com/otter-fleet/otter/internal/demo"
	"github.com/otter-fleet/otter/internal/testutil"
	"github.com/otter-fleet/otter/oci"
	"github.com/otter-fleet/otter/release"
	"github.com/otter-fleet/otter/sign"
)

// demoReleaseTree writes release n of the demo closure as a store tree.
func demoReleaseTree(t *testing.T, n int) (dir, pathInfo, root string) {
	dir = testutil.TempStore(t)
	store := filepath.Join(dir, "nix", "store")
	os.MkdirAll(store, 0o755)
	c, err := demo.WriteRelease(store, n)
	if err != nil {
		t.Fatal(err)
	}
	data, err := json.Marshal(c.Paths)
	if err != nil {
		t.Fatal(err)
	}
	pathInfo = filepath.Join(dir, "path-info.json")
	os.WriteFile(pathInfo, data, 0o644)
	return dir, pathInfo, c.Root
}

// TestDeltaPublishSignApply makes a signed patch from demo release 1 to
// release 2, published next to release 2 in a layout, and applies it on a
// store holding release 1.
func TestDeltaPublishSignApply(t *testing.T) {
	dir := t.TempDir()
	key, _, trust := keys(t, dir, "release")
	layout := "oci:" + filepath.Join(t.TempDir(), "l")
	for _, n := range []int{1, 2} {
		tree, pi, root := demoReleaseTree(t, n)
		otterJSON(t, &bundleResult{}, "bundle", "--store-dir", tree, "--path-info", pi, root, "--out", layout+":r"+strconv.Itoa(n), "--release-version", strconv.Itoa(n))
	}
	patches := filepath.Join(t.TempDir(), "patches")
	var dr deltaResult
	otterJSON(t, &dr, "delta", "--from", layout+":r1", layout+":r2", "--key", key, "--write", patches, "--max-share", "10")
	if len(dr.Patches) != 1 || dr.Patches[0].Skipped || dr.Patches[0].Statement == nil || dr.Patches[0].File == "" {
		t.Fatalf("delta result %+v", dr)
	}
	p := dr.Patches[0]

	// Published: the patch artifact and its signed statement hang off r2.
	ref, _ := oci.ParseRef(layout+":r2", false)
	arts, err := oci.Referrers(context.Background(), ref, p.Target, delta.ArtifactType)
	if err != nil || len(arts) != 1 || arts[0].Annotations["dev.otter.patch.base"] != p.Base.String() {
		t.Fatalf("published patches %+v %v", arts, err)
	}
	envs, err := release.Statements(context.Background(), ref, p.Target, sign.PatchType)
	if err != nil || len(envs) != 1 {
		t.Fatalf("patch statements %d %v", len(envs), err)
	}
	tr, _ := loadTrust(trust)
	stmt, err := sign.VerifyPatch(envs[0], p.Base.String(), sign.Policy{Trust: tr, Now: time.Now(), Digest: p.Digest, System: "aarch64-linux", Channel: "stable"})
	if err != nil || stmt.Target != p.Target.String() {
		t.Fatalf("patch statement: %v", err)
	}

	// Applied to a store holding release 1.
	store := testutil.TempStore(t)
	otterJSON(t, &extractResult{}, "extract", layout+":r1", store, "--no-fsync")
	if code, _, _ := otter(t, "apply", "--store", store, "--installed", p.Target.String(), p.File); code != exitPatchBase {
		t.Fatalf("a patch for another base: exit %d", code)
	}
	if code, _, _ := otter(t, "apply", "--store", store, "--patch-digest", "sha256:"+strings.Repeat("0", 64), p.File); code != exitPatchInvalid {
		t.Fatalf("a patch that is not the signed one: exit %d", code)
	}
	var ar delta.ApplyResult
	otterJSON(t, &ar, "apply", "--store", store, "--installed", p.Base.String(), "--patch-digest", p.Digest, "--no-fsync", p.File)
	if len(ar.Built) != 3 {
		t.Fatalf("apply built %v", ar.Built)
	}
	_, cfg, err := oci.Open(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	testutil.VerifyStore(t, cfg.Closure(), store)

	// A share limit the patch exceeds: no patch, and the reason.
	otterJSON(t, &dr, "delta", "--from", layout+":r1", layout+":r2", "--no-publish", "--max-share", "0.0001")
	if !dr.Patches[0].Skipped || !strings.Contains(dr.Patches[0].Reason, "missing layers") {
		t.Fatalf("over the share: %+v", dr.Patches[0])
	}
}
