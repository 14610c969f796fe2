package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/otter-fleet/otter/device"
	"github.com/otter-fleet/otter/internal/testutil"
	"github.com/otter-fleet/otter/sign"
)

// TestRolloutAndHalt runs the staged rollout and the halt through the
// command line, in an OCI layout: otter sign --rollout, otter update
// holding (exit 0, hold in --json, held in status) and then updating as
// the clock moves, otter halt holding a device of any wariness, and the
// refusals of bad schedules and reasons (exit 2).
func TestRolloutAndHalt(t *testing.T) {
	base := "oci:" + filepath.Join(t.TempDir(), "layout")
	key, _, trust := keys(t, t.TempDir(), "release")
	for _, v := range []string{"1", "2", "3"} {
		tree, pi, root := demoReleaseTree(t, int(v[0]-'0'))
		otterJSON(t, &bundleResult{}, "bundle", "--store-dir", tree, "--path-info", pi, root, "--out", base+":r"+v, "--release-version", v)
	}
	otterJSON(t, &signResult{}, "sign", base+":r1", "--key", key, "--no-cosign")
	var sr signResult
	otterJSON(t, &sr, "sign", base+":r2", "--key", key, "--no-cosign", "--rollout", "10%:1h")
	if r := sr.Statement.Rollout; r == nil || r.Fraction != 1000 || r.Duration != 3600 {
		t.Fatalf("the signed schedule: %+v", r)
	}
	start, _ := time.Parse(time.RFC3339, sr.Statement.Rollout.Start)
	at := func(d time.Duration) string { return sign.FormatTime(start.Add(d)) }

	d := deviceDirs{store: testutil.TempStore(t), state: t.TempDir(), trust: trust}
	otterJSON(t, &device.UpdateResult{}, append([]string{"update", base + ":r1", "--no-fsync"}, d.args()...)...)
	var res device.UpdateResult
	otterJSON(t, &res, append([]string{"update", base + ":r2", "--no-fsync", "--wariness", "0.5", "--at", at(time.Minute)}, d.args()...)...)
	if res.Hold == nil || res.Hold.Kind != "rollout" || res.To != 1 || res.Hold.Wariness != 0.5 {
		t.Fatalf("a device of wariness 0.5 a minute into a 10%%:1h rollout: %+v", res)
	}
	if st := status(t, d); st.Last == nil || st.Last.Result != "held" || !strings.Contains(st.Last.Reason, "rolling out") {
		t.Fatalf("status after a hold: %+v", st.Last)
	}
	// The machine id decides when no wariness is given.
	mid := filepath.Join(t.TempDir(), "machine-id")
	if err := os.WriteFile(mid, []byte("0123456789abcdef0123456789abcdef\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	res = device.UpdateResult{}
	otterJSON(t, &res, append([]string{"update", base + ":r2", "--no-fsync", "--machine-id", mid, "--at", at(-time.Minute)}, d.args()...)...)
	if res.Hold == nil || res.Hold.Wariness != sign.Wariness("0123456789abcdef0123456789abcdef") {
		t.Fatalf("before the start, with a machine id: %+v", res.Hold)
	}
	res = device.UpdateResult{}
	otterJSON(t, &res, append([]string{"update", base + ":r2", "--no-fsync", "--wariness", "0.5", "--at", at(30 * time.Minute)}, d.args()...)...)
	if res.Hold != nil || res.To != 2 {
		t.Fatalf("30 minutes in (55%%): %+v", res)
	}

	// A halt of r3 holds even a canary; the device stays on r2.
	otterJSON(t, &signResult{}, "sign", base+":r3", "--key", key, "--no-cosign")
	var hr haltResult
	otterJSON(t, &hr, "halt", base+":r3", "--key", key, "--reason", "2 devices rolled back", "--expires", "2h")
	if hr.Halt.Version != 3 || hr.Halt.Reason != "2 devices rolled back" {
		t.Fatalf("halt result %+v", hr)
	}
	// --release-version overrides the bundle's, for halt as for sign.
	var other haltResult
	otterJSON(t, &other, "halt", base+":r1", "--key", key, "--reason", "r", "--release-version", "9")
	otterJSON(t, &sr, "sign", base+":r1", "--key", key, "--no-cosign", "--release-version", "9")
	if other.Halt.Version != 9 || sr.Statement.Version != 9 {
		t.Fatalf("--release-version 9: halt %d, sign %d", other.Halt.Version, sr.Statement.Version)
	}
	res = device.UpdateResult{}
	otterJSON(t, &res, append([]string{"update", base + ":r3", "--no-fsync", "--wariness", "0"}, d.args()...)...)
	if res.Hold == nil || res.Hold.Kind != "halted" || res.To != 2 {
		t.Fatalf("a canary and a halted release: %+v", res)
	}
	// Once the halt expires, the release is offered again.
	res = device.UpdateResult{}
	otterJSON(t, &res, append([]string{"update", base + ":r3", "--no-fsync", "--wariness", "0", "--at", sign.FormatTime(time.Now().Add(3 * time.Hour))}, d.args()...)...)
	if res.Hold != nil || res.To != 3 {
		t.Fatalf("after the halt expired: %+v", res)
	}

	for _, args := range [][]string{
		{"sign", base + ":r3", "--key", key, "--rollout", "200%:1h"},
		{"sign", base + ":r3", "--key", key, "--rollout", "10%"},
		{"halt", base + ":r3", "--key", key, "--reason", "two\nlines"},
		append([]string{"update", base + ":r3", "--wariness", "1"}, d.args()...),
	} {
		if code, _, errs := otter(t, args...); code != exitUsage {
			t.Errorf("otter %s: exit %d, want %d\n%s", strings.Join(args, " "), code, exitUsage, errs)
		}
	}
}
