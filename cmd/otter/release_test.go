package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/otter-fleet/otter/device"
	"github.com/otter-fleet/otter/internal/testutil"
	"github.com/otter-fleet/otter/pipelines"
)

// releaseFile writes an otter.yaml publishing corpus release rN as
// release n of target "system".
func releaseFile(t *testing.T, dir, registry, key, corpusRelease string, n int, extra string) string {
	t.Helper()
	src := testutil.Corpus(t, corpusRelease)
	root, err := os.ReadFile(filepath.Join(src, "root"))
	if err != nil {
		t.Fatal(err)
	}
	body := fmt.Sprintf(`version: 1
registry: %s
insecure: true
channels: [stable]
release: %d
targets:
  - name: system
    store:
      dir: %s
      pathInfo: %s
      root: %s
signing:
  key: %s
  cosign: false
patches:
  from: 2
  maxShare: 1
%s`, registry, n, src, filepath.Join(src, "path-info.json"), strings.TrimSpace(string(root)), key, extra)
	p := filepath.Join(dir, fmt.Sprintf("otter-%d.yaml", n))
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestReleasePipeline publishes corpus r1, r2 and r3 with release files
// into docker-registry, reruns the last one (nothing to do), and then a
// device made from the r1 image the pipeline wrote updates to the stable
// channel using only what the pipeline published.
func TestReleasePipeline(t *testing.T) {
	needTools(t, "sfdisk", "mkfs.fat", "mcopy", "mkfs.ext4", "debugfs")
	dir := t.TempDir()
	key, _, _ := keys(t, dir, "release")
	registry := testutil.RealRegistry(t) + "/" + testutil.Repository(t)
	img := filepath.Join(t.TempDir(), "sd.img")
	imageSection := fmt.Sprintf("image:\n  target: system\n  board: rpi4\n  bootFiles: %s\n  out: %s\n", bootFiles(t), img)
	var results []pipelines.Result
	summary := filepath.Join(t.TempDir(), "step-summary.md")
	t.Setenv("GITHUB_STEP_SUMMARY", summary)
	reports := filepath.Join(t.TempDir(), "reports")
	for n, r := range []string{"r1", "r2", "r3"} {
		extra := ""
		if n == 0 {
			extra = imageSection
		}
		var res pipelines.Result
		otterJSON(t, &res, "release", "-f", releaseFile(t, dir, registry, key, r, n+1, extra), "--report", reports)
		if len(res.Targets) != 1 {
			t.Fatalf("release %d: %+v", n+1, res)
		}
		tr := res.Targets[0]
		if !tr.Pushed || len(tr.Signed) != 1 || len(tr.Channels) != 1 || len(tr.Patches) != n {
			t.Fatalf("release %d: %+v", n+1, tr)
		}
		for _, p := range tr.Patches {
			if p.Skipped || p.Existing || p.Size <= 0 || p.Size >= tr.Full/10 {
				t.Fatalf("release %d: patch %+v for a %d-byte bundle", n+1, p, tr.Full)
			}
		}
		results = append(results, res)
	}
	if results[0].Targets[0].Image == nil {
		t.Fatal("release 1 wrote no image")
	}
	// The costs: in each patch's diff, in the CI summary, in the report.
	p := results[2].Targets[0].Patches[0]
	if p.Diff == nil || p.Diff.Totals.Patch != p.Size || p.Diff.Totals.Layers <= p.Size {
		t.Fatalf("release 3's patch from %s: %+v", p.From, p.Diff)
	}
	md, err := os.ReadFile(summary)
	if err != nil || !strings.Contains(string(md), "| system | v2 | "+strconv.FormatInt(p.Size, 10)+" |") || strings.Count(string(md), "## otter release") != 3 {
		t.Fatalf("GITHUB_STEP_SUMMARY:\n%s (%v)", md, err)
	}
	if page, err := os.ReadFile(filepath.Join(reports, "system.html")); err != nil || !strings.Contains(string(page), `id="cascade"`) {
		t.Fatalf("no update report: %v", err)
	}
	// A rerun finds everything done.
	var again pipelines.Result
	otterJSON(t, &again, "release", "-f", filepath.Join(dir, "otter-3.yaml"))
	tr := again.Targets[0]
	if tr.Pushed || len(tr.Signed) != 0 || len(tr.Channels) != 0 || len(tr.Patches) != 2 || !tr.Patches[0].Existing || !tr.Patches[1].Existing {
		t.Fatalf("rerun did work again: %+v", tr)
	}

	// The device, provisioned from the image of release 1.
	r1 := results[0].Targets[0].Image
	root := partitionFile(t, img, r1.Partitions[2])
	dump := t.TempDir()
	sh(t, "debugfs", "-R", "rdump /nix/store "+dump, root)
	sh(t, "debugfs", "-R", "rdump /var/lib/otter "+dump, root)
	d := deviceDirs{store: filepath.Join(dump, "store"), state: filepath.Join(dump, "otter"), trust: filepath.Join(dump, "otter", "trust.json")}
	var up device.UpdateResult
	otterJSON(t, &up, append([]string{"update", registry + "/system:stable"}, d.args()...)...)
	want := results[2].Targets[0]
	if up.Target != want.Digest || up.Method != "patch" || up.From != 1 || up.To != 2 {
		t.Fatalf("device update: %+v", up)
	}
	c3, _ := testutil.CorpusClosure(t, "r3")
	testutil.VerifyStore(t, c3, d.store)
	t.Logf("device r1 -> r3 from what the pipeline published: %d bytes downloaded (full bundle %d)", up.Transferred, want.Full)
}

// TestReleaseRefusals: an earlier release signed by another key or not at
// all gets no patch, with the reason; a release tag that names another
// bundle is refused before anything moves; a missing key and a malformed
// file say what is wrong.
func TestReleaseRefusals(t *testing.T) {
	dir := t.TempDir()
	key, _, _ := keys(t, dir, "release")
	otherKey, _, _ := keys(t, dir, "other")
	registry := testutil.RealRegistry(t) + "/" + testutil.Repository(t)
	// Release 1 signed by another key, release 2 unsigned (pushed by hand).
	var res pipelines.Result
	otterJSON(t, &res, "release", "-f", releaseFile(t, dir, registry, otherKey, "r1", 1, ""))
	otterJSON(t, &bundleResult{}, "bundle", "-q", "--store-dir", testutil.Corpus(t, "r2"), "--path-info", filepath.Join(testutil.Corpus(t, "r2"), "path-info.json"),
		strings.TrimSpace(string(must(os.ReadFile(filepath.Join(testutil.Corpus(t, "r2"), "root"))))), "--out", registry+"/system:v2", "--insecure")
	otterJSON(t, &res, "release", "-f", releaseFile(t, dir, registry, key, "r3", 3, ""))
	tr := res.Targets[0]
	if len(tr.Patches) != 0 || len(tr.Skipped) != 2 || !strings.Contains(tr.Skipped[0].Reason, "not signed") ||
		!strings.Contains(tr.Skipped[1].Reason, "not signed by the release key") {
		t.Fatalf("earlier releases: %+v", tr)
	}
	// Release 3 again, from other content: the tag is taken.
	code, _, stderr := otter(t, "release", "-f", releaseFile(t, dir, registry, key, "r2", 3, ""))
	if code != exitInvalid || !strings.Contains(stderr, "names another bundle") {
		t.Fatalf("tag taken: exit %d, %s", code, stderr)
	}
	var in inspectResult
	otterJSON(t, &in, "inspect", registry+"/system:stable", "--insecure")
	if in.Digest.String() != tr.Digest {
		t.Fatalf("the refused release moved stable to %s", in.Digest)
	}
	// A registry that is down.
	code, _, stderr = otter(t, "release", "-f", releaseFile(t, dir, "127.0.0.1:1/fleet", key, "r1", 1, ""))
	if code == 0 || !strings.Contains(stderr, "127.0.0.1:1") {
		t.Fatalf("registry down: exit %d, %s", code, stderr)
	}
	code, _, stderr = otter(t, "release", "-f", releaseFile(t, dir, registry, "env://OTTER_NO_SUCH_KEY", "r1", 4, ""))
	if code == 0 || !strings.Contains(stderr, "signing.key") {
		t.Fatalf("missing key: exit %d, %s", code, stderr)
	}
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("version: 1\nregistry: x.example/y\nrelease: 1\ntargets: []\nsigning: {key: k}\n"), 0o644)
	code, _, stderr = otter(t, "release", "-f", bad)
	if code != exitUsage || !strings.Contains(stderr, "bad.yaml:4: targets: at least one target") {
		t.Fatalf("malformed file: exit %d, %s", code, stderr)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
