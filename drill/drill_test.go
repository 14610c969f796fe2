package main

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// require skips when something the drill needs is missing, or fails
// where everything must run (CI, OTTER_REQUIRE_ALL).
func require(t *testing.T, ok bool, what string) {
	t.Helper()
	if ok {
		return
	}
	if os.Getenv("CI") != "" || os.Getenv("OTTER_REQUIRE_ALL") != "" {
		t.Fatalf("%s is missing; run through `go tool -modfile=tools/task/go.mod task test`, which sets it up", what)
	}
	t.Skipf("%s is missing", what)
}

func requireAll(t *testing.T) string {
	t.Helper()
	require(t, os.Geteuid() == 0, "root (network namespaces)")
	for _, tool := range []string{"ip", "tc", "qemu-aarch64-static", "docker-registry"} {
		_, err := exec.LookPath(tool)
		require(t, err == nil, tool)
	}
	corpus := os.Getenv("OTTER_CORPUS")
	require(t, corpus != "", "the release corpus (OTTER_CORPUS)")
	return corpus
}

// TestDrill is the drill's short version: three devices (two canaries)
// through the same story as `task drill`, with shorter rollouts. Every
// device reaches r3 through the restart of the origin, the canaries roll
// r4 back, the halt keeps the third device off r4 past the end of r4's
// rollout, the site cache costs the origin about one download per
// release, and every store verifies.
func TestDrill(t *testing.T) {
	corpus := requireAll(t)
	repo, _ := filepath.Abs("..")
	o := Options{
		Devices: 3, Canaries: 2, Rate: "1mbit", Faults: faults{Latency: 300 * time.Millisecond, CutEvery: 64 << 10},
		Interval: 5 * time.Second, R3Rollout: 60 * time.Second, R4Rollout: 180 * time.Second, Cautious: 0.85,
		Corpus: corpus, Work: t.TempDir(), Repo: repo, Log: testWriter{t},
	}
	rep, err := Run(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	var table strings.Builder
	printReport(&table, o, rep)
	t.Logf("\n%s", table.String())
	if len(rep.Releases) != 3 || rep.StoresChecked != 3 {
		t.Fatalf("report %+v", rep)
	}
	for _, r := range rep.Releases[:2] {
		if r.Installed != 3 {
			t.Errorf("r%d on %d devices", r.Version, r.Installed)
		}
		// One download per release for the site: distribution 2.8's
		// proxy fetches a missed blob twice (once to stream, once to
		// store), so up to 2× the patch, never once per device.
		if r.OriginBlobs > 2*r.Patch+64<<10 {
			t.Errorf("r%d: the origin served %d blob bytes for a %d-byte patch", r.Version, r.OriginBlobs, r.Patch)
		}
		// Each device downloads about the patch: the resumed bytes of
		// the cuts are not fetched twice.
		if r.Device[2] > r.Patch*11/10 {
			t.Errorf("r%d: a device downloaded %d bytes for a %d-byte patch", r.Version, r.Device[2], r.Patch)
		}
	}
	// The canaries paid for r4's patch once each, though it failed there.
	if r4 := rep.Releases[2]; r4.Device[2] < r4.Patch || r4.Device[2] > r4.Patch*11/10 {
		t.Errorf("r4: a canary downloaded %d bytes for a %d-byte patch", r4.Device[2], r4.Patch)
	}
	if rep.RolledBack != 2 || rep.InstalledAfterHalt != 0 || rep.Releases[2].Installed != 0 {
		t.Errorf("r4: %d rolled back, %d installed after the halt, %d on it", rep.RolledBack, rep.InstalledAfterHalt, rep.Releases[2].Installed)
	}
	t.Logf("the halt came %v into r4's rollout; the first other device would have been offered r4 at %v", rep.HaltAfter, rep.FirstOffer)
	if rep.OriginRestart == 0 {
		t.Error("the origin was not restarted")
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// TestResumeEvery256KiB: with every connection cut after 256 KiB (by
// toxiproxy's limit_data), a device updates r3 → r4 by its 0.9 MB patch
// having moved at most 1.1× the patch's bytes, everything the origin
// the device's link carried counted (manifests, statements, the
// referrers index, the patch, HTTP, TCP and IP headers).
func TestResumeEvery256KiB(t *testing.T) {
	corpus := requireAll(t)
	repo, _ := filepath.Abs("..")
	work := t.TempDir()
	d := newDrill(Options{Corpus: corpus, Work: work, Repo: repo, Log: testWriter{t}})
	t.Cleanup(d.close)
	ctx := context.Background()
	if err := d.buildAndKey(ctx, false); err != nil {
		t.Fatal(err)
	}
	var err error
	if d.origin, err = startRegistry(filepath.Join(work, "origin"), ""); err != nil {
		t.Fatal(err)
	}
	fctx, cancel := context.WithCancel(ctx)
	t.Cleanup(cancel)
	front, all, err := meteredFront(fctx, d.origin.Addr)
	if err != nil {
		t.Fatal(err)
	}
	// r3 is the device's; r4 is published with a patch from it.
	if _, err := d.publishAs(ctx, 3, 1, ""); err != nil {
		t.Fatal(err)
	}
	dev := filepath.Join(work, "device")
	args := []string{"--store", filepath.Join(dev, "store"), "--state", filepath.Join(dev, "state"), "--trust", d.trust,
		"--nix", "off", "--no-fsync", "--insecure"}
	if _, err := d.run(ctx, append([]string{"update", d.origin.Addr + "/fleet/logger:stable"}, args...)...); err != nil {
		t.Fatal(err)
	}
	patch, err := d.publishAs(ctx, 4, 2, "")
	if err != nil {
		t.Fatal(err)
	}
	// The device is in its own namespace; what its link carries towards
	// it is counted on the wire (IP and TCP headers included).
	l, err := newLink(ctx, "r"+strconv.Itoa(os.Getpid()%10000), 250, "100mbit")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.close)
	d.proxies = newProxies()
	cut := int64(256 << 10)
	if _, err := d.proxies.add("cut", l.HostIP+":5001", front, faults{CutEvery: cut}); err != nil {
		t.Fatal(err)
	}
	before, sent := l.txBytes(), all.Bytes()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", l.NS, d.otter, "update", l.HostIP + ":5001/fleet/logger:stable",
		"--method", "patch", "--retries", "20", "--json"}, args...)...)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	moved, originSent := l.txBytes()-before, all.Bytes()-sent
	var res struct {
		Target      string `json:"target"`
		Download    int64  `json:"download"`
		Transferred int64  `json:"transferred"`
	}
	if err := json.Unmarshal(out, &res); err != nil || res.Target != d.digests[2] || res.Download != patch {
		t.Fatalf("update: %v %s", err, out)
	}
	if v, err := verifyStore(filepath.Join(dev, "state"), filepath.Join(dev, "store")); err != nil || v != 2 {
		t.Fatalf("the store after the update: release %d, %v", v, err)
	}
	ratio := float64(moved) / float64(patch)
	t.Logf("patch %d bytes; the device's link carried %d bytes (%.3f×, IP and TCP headers included) through connections cut every %d bytes (at least %d connections); the origin wrote %d bytes into the proxy",
		patch, moved, ratio, cut, (moved+cut-1)/cut, originSent)
	if moved < patch || ratio > 1.1 {
		t.Fatalf("moved %d bytes for a %d-byte patch (%.3f×): want at most 1.1×", moved, patch, ratio)
	}
}
