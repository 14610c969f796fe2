package device_test

import (
	"context"
	"crypto"
	"errors"
	"testing"
	"time"

	"github.com/otter-fleet/otter/device"
	"github.com/otter-fleet/otter/internal/demo"
	"github.com/otter-fleet/otter/internal/testutil"
	"github.com/otter-fleet/otter/oci"
	"github.com/otter-fleet/otter/release"
	"github.com/otter-fleet/otter/sign"
)

// stagedDevice opens a device at the clock *now with the given wariness
// (nil: none configured).
func stagedDevice(t *testing.T, p *published, store, st string, now *time.Time, wariness *float64) *device.Device {
	t.Helper()
	c := device.Config{Store: store, State: st, Trust: p.trust, System: "aarch64-linux", Channel: "stable",
		HealthTimeout: 10 * time.Second, NoFsync: true, Now: func() time.Time { return *now }}
	if wariness != nil {
		w := *wariness
		c.Wariness = func() (float64, error) { return w, nil }
	}
	d, _, err := device.Open(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// TestStagedRollout: release 2 rolls out 10% → 100% over an hour. A
// device of wariness 0.5 is held (recorded, not an error) until the
// fraction passes 0.5 — 26m40s in — and then updates; a canary (0)
// updates at once; a device with no wariness refuses the staged release
// with ErrNoWariness.
func TestStagedRollout(t *testing.T) {
	ctx := context.Background()
	start := time.Now().UTC().Truncate(time.Second)
	r := &sign.Rollout{Start: sign.FormatTime(start), Fraction: 1000, Duration: 3600}
	p := publishStaged(t, 2, demo.WriteRelease, map[int]*sign.Rollout{2: r})

	install := func(w *float64, now *time.Time) *device.Device {
		d := stagedDevice(t, p, testutil.TempStore(t), t.TempDir(), now, w)
		if res, err := d.Update(ctx, p.ref(t, 1), device.UpdateOptions{}); err != nil || res.To != 1 {
			t.Fatalf("release 1: %+v %v", res, err)
		}
		return d
	}
	half, zero := 0.5, 0.0
	now := start.Add(-time.Minute)
	d := install(&half, &now)
	canary := install(&zero, &now)
	for _, c := range []struct {
		at   time.Duration
		hold bool
	}{{-time.Minute, true}, {0, true}, {26 * time.Minute, true}, {27 * time.Minute, false}} {
		now = start.Add(c.at)
		res, err := d.Update(ctx, p.ref(t, 2), device.UpdateOptions{})
		if err != nil {
			t.Fatalf("at start%+v: %v", c.at, err)
		}
		if (res.Hold != nil) != c.hold || (c.hold && (res.Hold.Kind != "rollout" || res.To != 1)) || (!c.hold && res.To != 2) {
			t.Fatalf("at start%+v: hold %+v, to %d; want hold %v", c.at, res.Hold, res.To, c.hold)
		}
		if c.hold {
			if s, _ := d.Status(); s == nil || s.Last == nil || s.Last.Result != "held" {
				t.Fatalf("last.json after a hold: %+v", s)
			}
			if g, _ := d.Current(); g.Digest != p.digests[0] {
				t.Fatalf("held, but current is %s", g.Digest)
			}
		}
	}
	now = start
	if res, err := canary.Update(ctx, p.ref(t, 2), device.UpdateOptions{}); err != nil || res.Hold != nil || res.To != 2 {
		t.Fatalf("canary at the start: %+v %v", res, err)
	}
	none := install(nil, &now)
	if _, err := none.Update(ctx, p.ref(t, 2), device.UpdateOptions{}); !errors.Is(err, device.ErrNoWariness) {
		t.Fatalf("no wariness: %v", err)
	}
}

// TestHalt: a halt of release 2 keeps a device on release 1 while it is
// in force, whatever its wariness; a halt signed by an untrusted key or
// for another release holds nothing; after the halt expires the device
// updates. A device already on release 2 stays there.
func TestHalt(t *testing.T) {
	ctx := context.Background()
	p := publish(t, 2)
	ref := p.ref(t, 2)
	img, err := oci.OpenManifest(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	desc, err := oci.DescriptorOf(img)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC().Truncate(time.Second)
	stranger, _ := sign.GenerateKey(sign.Ed25519)
	for _, k := range []crypto.Signer{stranger} {
		s := release.Signer{Keys: []crypto.Signer{k}, Now: now, Expires: now.Add(time.Hour)}
		if _, _, err := s.Halt(ctx, ref, desc, 2, "stable", "aarch64-linux", "not ours"); err != nil {
			t.Fatal(err)
		}
	}
	zero := 0.0
	on2 := stagedDevice(t, p, testutil.TempStore(t), t.TempDir(), &now, &zero)
	if res, err := on2.Update(ctx, ref, device.UpdateOptions{}); err != nil || res.Hold != nil || res.To != 1 {
		t.Fatalf("before the halt (an untrusted halt attached): %+v %v", res, err)
	}
	s := release.Signer{Keys: []crypto.Signer{p.key}, Now: now, Expires: now.Add(time.Hour)}
	if _, _, err := s.Halt(ctx, ref, desc, 2, "stable", "aarch64-linux", "health checks fail"); err != nil {
		t.Fatal(err)
	}
	d := stagedDevice(t, p, testutil.TempStore(t), t.TempDir(), &now, &zero)
	if _, err := d.Update(ctx, p.ref(t, 1), device.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	res, err := d.Update(ctx, ref, device.UpdateOptions{})
	if err != nil || res.Hold == nil || res.Hold.Kind != "halted" || res.Hold.Halt.Reason != "health checks fail" || res.To != 1 {
		t.Fatalf("halted: %+v %v", res, err)
	}
	if res, err := on2.Update(ctx, ref, device.UpdateOptions{}); err != nil || !res.UpToDate {
		t.Fatalf("the device already on the halted release: %+v %v", res, err)
	}
	now = now.Add(time.Hour)
	if res, err := d.Update(ctx, ref, device.UpdateOptions{}); err != nil || res.Hold != nil || res.To != 2 {
		t.Fatalf("after the halt expired: %+v %v", res, err)
	}
}
