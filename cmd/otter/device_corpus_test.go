package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/otter-fleet/otter/device"
	"github.com/otter-fleet/otter/internal/testutil"
	"github.com/otter-fleet/otter/nix"
)

type corpusRelease struct {
	ref     string
	digest  string
	closure *nix.Closure
	patch   int64 // the signed patch from the release before, 0 for r1
}

// corpusFleet publishes corpus releases r1..rN to repo on a registry,
// signed, with a signed patch from each release to the next.
func corpusFleet(t *testing.T, repo string, names ...string) (trust string, rels []corpusRelease) {
	t.Helper()
	key, _, trust := keys(t, t.TempDir(), "release")
	for i, r := range names {
		dir := testutil.Corpus(t, r)
		root, err := os.ReadFile(filepath.Join(dir, "root"))
		if err != nil {
			t.Fatal(err)
		}
		ref := repo + ":" + r
		var b bundleResult
		otterJSON(t, &b, "bundle", "-q", "--store-dir", dir, "--path-info", filepath.Join(dir, "path-info.json"), strings.TrimSpace(string(root)), "--out", ref, "--insecure")
		otterJSON(t, &signResult{}, "sign", ref, "--key", key, "--insecure", "--no-cosign")
		c, _ := testutil.CorpusClosure(t, r)
		rel := corpusRelease{ref: ref, digest: b.Digest.String(), closure: c}
		if i > 0 {
			var dr deltaResult
			otterJSON(t, &dr, "delta", "-q", "--from", rels[i-1].ref, ref, "--key", key, "--insecure")
			if len(dr.Patches) != 1 || dr.Patches[0].Skipped {
				t.Fatalf("delta %s: %+v", r, dr)
			}
			rel.patch = dr.Patches[0].Size
		}
		rels = append(rels, rel)
	}
	return trust, rels
}

var corpusFleetOnce struct {
	sync.Once
	trust string
	rels  []corpusRelease
	dir   string
}

// sharedCorpusFleet publishes r1..r3 once per test process.
func sharedCorpusFleet(t *testing.T) (string, []corpusRelease) {
	reg := testutil.RealRegistry(t)
	testutil.Corpus(t, "r3")
	corpusFleetOnce.Do(func() {
		corpusFleetOnce.trust, corpusFleetOnce.rels = corpusFleet(t, reg+"/"+testutil.Repository(t), "r1", "r2", "r3")
		// The trust file lives in t's temp dir: keep a copy for later tests.
		dir, err := os.MkdirTemp("", "otter-fleet-")
		if err != nil {
			t.Fatal(err)
		}
		data, _ := os.ReadFile(corpusFleetOnce.trust)
		corpusFleetOnce.trust = filepath.Join(dir, "trust.json")
		os.WriteFile(corpusFleetOnce.trust, data, 0o644)
	})
	if corpusFleetOnce.rels == nil {
		t.Fatal("publishing the corpus fleet failed in an earlier test")
	}
	return corpusFleetOnce.trust, corpusFleetOnce.rels
}

// arm64Otter cross-builds otter as a static linux/arm64 binary.
func arm64Otter(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "otter-arm64")
	cmd := exec.Command("go", "build", "-trimpath", "-o", bin, ".")
	cmd.Env = append(os.Environ(), "GOOS=linux", "GOARCH=arm64", "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cross-building otter: %v\n%s", err, out)
	}
	testutil.StaticARM64(t, bin)
	return bin
}

// TestArm64DeviceThroughThreeReleases runs the static arm64 otter under
// qemu-user: a device provisioned with corpus r1 updates to r2 and r3 from
// docker-registry on loopback, by signed patches, and after each update an
// arm64 program of the new closure runs.
func TestArm64DeviceThroughThreeReleases(t *testing.T) {
	qemu, err := exec.LookPath("qemu-aarch64-static")
	testutil.Require(t, err == nil, "qemu-aarch64-static (apt qemu-user-static)")
	testutil.LockBinfmt(t, false)
	trust, rels := sharedCorpusFleet(t)
	bin := arm64Otter(t)
	d := deviceDirs{store: testutil.TempStore(t), state: t.TempDir(), trust: trust}
	// Provisioning (what otter image does): release 1 by its layers.
	otterJSON(t, &device.UpdateResult{}, append([]string{"update", rels[0].ref, "--no-fsync"}, d.args()...)...)

	// The health check runs the new closure's own aarch64 busybox.
	health := `b=$(readlink "$OTTER_ROOT/bin/busybox") && "$OTTER_STORE/${b#/nix/store/}" sha256sum "$OTTER_ROOT/manifest.json"`
	for i, rel := range rels[1:] {
		cmd := exec.Command(qemu, append([]string{bin, "update", rel.ref, "--json", "--method", "patch", "--health-check", health}, d.args()...)...)
		cmd.Env = append(os.Environ(), "GOMAXPROCS=2")
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("arm64 otter update to r%d: %v\n%s", i+2, err, out)
		}
		var res device.UpdateResult
		if err := json.Unmarshal(out, &res); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		if res.Target != rel.digest || res.Method != "patch" || res.Download != rel.patch || res.To != i+2 {
			t.Fatalf("update to r%d: %+v", i+2, res)
		}
		testutil.VerifyStore(t, rel.closure, d.store)
		t.Logf("r%d -> r%d under qemu: %d-byte patch, %d paths built", i+1, i+2, res.Download, len(res.Built))
	}
	if st := status(t, d); st.Current.Digest != rels[2].digest || len(st.Generations) != 3 {
		t.Fatalf("status after three releases: %+v", st)
	}
}

// TestUpdateOverBadLink updates r2 -> r3 through a proxy that cuts every
// connection after 48 KB and adds latency, and once more through a clean
// proxy: the cuts cost less than a tenth of the patch in extra bytes.
func TestUpdateOverBadLink(t *testing.T) {
	trust, rels := sharedCorpusFleet(t)
	reg := testutil.RealRegistry(t)
	base := deviceDirs{store: testutil.TempStore(t), state: t.TempDir(), trust: trust}
	otterJSON(t, &device.UpdateResult{}, append([]string{"update", rels[1].ref, "--no-fsync"}, base.args()...)...)
	copyDevice := func() deviceDirs {
		d := deviceDirs{store: testutil.TempStore(t), state: t.TempDir(), trust: trust}
		for _, p := range [][2]string{{base.store, d.store}, {base.state, d.state}} {
			if out, err := exec.Command("cp", "-a", p[0]+"/.", p[1]).CombinedOutput(); err != nil {
				t.Fatalf("%s %v", out, err)
			}
		}
		return d
	}
	through := func(link *testutil.BadLink) (device.UpdateResult, int64) {
		d := copyDevice()
		ref := strings.Replace(rels[2].ref, reg, link.Addr, 1)
		var res device.UpdateResult
		otterJSON(t, &res, append([]string{"update", ref, "--no-fsync"}, d.args()...)...)
		testutil.VerifyStore(t, rels[2].closure, d.store)
		return res, link.Received.Load()
	}
	clean, cleanBytes := through(testutil.NewBadLink(t, reg, 0, 0))
	bad := testutil.NewBadLink(t, reg, 48<<10, 5*time.Millisecond)
	res, badBytes := through(bad)
	patch := rels[2].patch
	if res.Method != "patch" || res.Transferred != patch || clean.Transferred != patch {
		t.Fatalf("bad link: %+v; clean: %+v", res, clean)
	}
	if bad.Cuts.Load() < 2 {
		t.Fatalf("the link was cut %d times", bad.Cuts.Load())
	}
	extra := badBytes - cleanBytes
	t.Logf("patch %d B; through the link %d B with %d cuts, %d B clean", patch, badBytes, bad.Cuts.Load(), cleanBytes)
	if float64(extra+patch) > 1.1*float64(patch) {
		t.Errorf("the cuts cost %d extra bytes on a %d-byte patch", extra, patch)
	}
}

// TestUpdateRegistryVanishes: the registry goes away in the middle of the
// download; the device stays on its release with the reason recorded,
// and the next update resumes the download.
func TestUpdateRegistryVanishes(t *testing.T) {
	trust, rels := sharedCorpusFleet(t)
	reg := testutil.RealRegistry(t)
	d := deviceDirs{store: testutil.TempStore(t), state: t.TempDir(), trust: trust}
	otterJSON(t, &device.UpdateResult{}, append([]string{"update", rels[0].ref, "--no-fsync"}, d.args()...)...)
	link := testutil.NewBadLink(t, reg, 0, 2*time.Millisecond)
	ref := strings.Replace(rels[1].ref, reg, link.Addr, 1)
	go func() {
		// Down in the middle of the layers.
		for link.Received.Load() < 2<<20 {
			time.Sleep(time.Millisecond)
		}
		link.Down.Store(true)
	}()
	code, _, stderr := otter(t, append([]string{"update", ref, "--method", "layers", "--retries", "2"}, d.args()...)...)
	if code == 0 {
		t.Skip("the update finished before the registry vanished")
	}
	st := status(t, d)
	if st.Current.Digest != rels[0].digest || st.Last == nil || st.Last.Result != "failed" || st.Last.Reason == "" {
		t.Fatalf("after the registry vanished (%s): %+v", stderr, st)
	}
	testutil.VerifyStore(t, rels[0].closure, d.store)
	link.Down.Store(false)
	var res device.UpdateResult
	otterJSON(t, &res, append([]string{"update", ref, "--method", "layers"}, d.args()...)...)
	if len(st.Downloads) == 0 || res.Transferred >= res.Download {
		t.Errorf("kept %v; the next update moved %d of %d bytes", st.Downloads, res.Transferred, res.Download)
	}
	testutil.VerifyStore(t, rels[1].closure, d.store)
}
