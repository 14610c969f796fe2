package device_test

import (
	"context"
	"crypto"
	"errors"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/otter-fleet/otter/bundle"
	"github.com/otter-fleet/otter/device"
	"github.com/otter-fleet/otter/internal/demo"
	"github.com/otter-fleet/otter/internal/testutil"
	testpub "github.com/otter-fleet/otter/internal/testutil/publish"
	"github.com/otter-fleet/otter/nix"
	"github.com/otter-fleet/otter/oci"
	"github.com/otter-fleet/otter/release"
	"github.com/otter-fleet/otter/sign"
)

// TestChooseMethod is the download decision alone (docs/device.md §2).
func TestChooseMethod(t *testing.T) {
	patch := &v1.Descriptor{Size: 100}
	for _, tc := range []struct {
		method    string
		installed bool
		patch     *v1.Descriptor
		layers    int64
		want      string
		err       error
	}{
		{"", true, patch, 1000, "patch", nil},
		{"", true, patch, 50, "layers", nil},
		{"", true, patch, 100, "layers", nil}, // a tie goes to layers: no patch to apply
		{"", true, nil, 1000, "layers", nil},
		{"", false, nil, 1000, "layers", nil},
		{"patch", true, patch, 50, "patch", nil},
		{"patch", true, nil, 50, "", device.ErrNoPatch},
		{"patch", false, nil, 50, "", device.ErrNoPatch},
		{"layers", true, patch, 1000, "layers", nil},
	} {
		got, err := device.ChooseMethod(tc.method, tc.installed, tc.patch, tc.layers)
		if got != tc.want || !errors.Is(err, tc.err) {
			t.Errorf("ChooseMethod(%q, %v, %v, %d) = %q, %v; want %q, %v", tc.method, tc.installed, tc.patch, tc.layers, got, err, tc.want, tc.err)
		}
	}
	if _, err := device.ChooseMethod("bogus", true, patch, 1); err == nil {
		t.Error("an unknown method was accepted")
	}
}

// published is demo releases 1..n in an OCI layout, each signed for
// stable, with a signed patch from each to the next.
type published struct {
	layout   string
	key      crypto.Signer
	trust    *sign.Trust
	digests  []string
	closures []*nix.Closure
}

func publish(t *testing.T, n int) *published { return publishTrees(t, n, demo.WriteRelease) }

// publishTrees publishes the releases write makes (1..n) as publish does.
func publishTrees(t *testing.T, n int, write func(store string, i int) (*nix.Closure, error)) *published {
	t.Helper()
	return publishStaged(t, n, write, nil)
}

// publishStaged publishes as publishTrees does, release i staged by
// rollouts[i] where it has one.
func publishStaged(t *testing.T, n int, write func(store string, i int) (*nix.Closure, error), rollouts map[int]*sign.Rollout) *published {
	t.Helper()
	key, err := sign.GenerateKey(sign.Ed25519)
	if err != nil {
		t.Fatal(err)
	}
	trust, err := sign.NewTrust(1, 1, key.Public())
	if err != nil {
		t.Fatal(err)
	}
	p := &published{layout: filepath.Join(t.TempDir(), "l"), key: key, trust: trust}
	signer := release.Signer{Keys: []crypto.Signer{key}, Now: time.Now().Add(-time.Hour), Expires: time.Now().Add(24 * time.Hour)}
	var prev *bundle.Bundle
	var prevDigest v1.Hash
	for i := 1; i <= n; i++ {
		store := testutil.TempStore(t)
		c, err := write(store, i)
		if err != nil {
			t.Fatal(err)
		}
		b := testutil.BuildBundle(t, c, store, bundle.WithVersion(uint64(i)))
		ref, err := oci.ParseRef("oci:"+p.layout+":r"+strconv.Itoa(i), false)
		if err != nil {
			t.Fatal(err)
		}
		signer.Rollout = rollouts[i]
		desc, _ := testpub.Release(t, signer, b, ref, uint64(i), "stable")
		if prev != nil {
			testpub.Patch(t, signer, prev, prevDigest, b, ref, desc, "stable", uint64(i))
		}
		prev, prevDigest = b, desc.Digest
		p.digests = append(p.digests, desc.Digest.String())
		p.closures = append(p.closures, c)
	}
	return p
}

func (p *published) ref(t *testing.T, i int) oci.Ref {
	t.Helper()
	r, err := oci.ParseRef("oci:"+p.layout+":r"+strconv.Itoa(i), false)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func openDevice(t *testing.T, p *published, store, st string, health ...string) *device.Device {
	t.Helper()
	d, _, err := device.Open(context.Background(), device.Config{Store: store, State: st, Trust: p.trust, System: "aarch64-linux",
		Channel: "stable", Health: health, HealthTimeout: 10 * time.Second, NoFsync: true})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestUpdate takes a device from a layout through a first install by
// layers, a patch update, up to date, a failed health check and a
// rollback, in the device package alone.
func TestUpdate(t *testing.T) {
	ctx := context.Background()
	p := publish(t, 3)
	store, st := testutil.TempStore(t), t.TempDir()
	d := openDevice(t, p, store, st)
	res, err := d.Update(ctx, p.ref(t, 1), device.UpdateOptions{})
	if err != nil || res.Method != "layers" || res.To != 1 {
		t.Fatalf("first install: %+v %v", res, err)
	}
	testutil.VerifyStore(t, p.closures[0], store)
	if res, err = d.Update(ctx, p.ref(t, 2), device.UpdateOptions{Method: "patch"}); err != nil || res.Method != "patch" || res.To != 2 {
		t.Fatalf("patch update: %+v %v", res, err)
	}
	testutil.VerifyStore(t, p.closures[1], store)
	if res, err = d.Update(ctx, p.ref(t, 2), device.UpdateOptions{}); err != nil || !res.UpToDate {
		t.Fatalf("again: %+v %v", res, err)
	}
	d.Close()

	d = openDevice(t, p, store, st, "/bin/sh", "-c", "exit 3")
	if res, err := d.Update(ctx, p.ref(t, 3), device.UpdateOptions{}); !errors.Is(err, device.ErrHealthCheck) || res == nil || res.Transferred == 0 {
		// The bytes a failed update moved are reported: they were paid for.
		t.Fatalf("a failing health check: %+v, %v", res, err)
	}
	if g, _ := d.Current(); g == nil || g.Digest != p.digests[1] {
		t.Fatalf("after the failed health check: %+v", g)
	}
	o, err := d.Rollback(ctx)
	if err != nil || o.To != 1 {
		t.Fatalf("rollback: %+v %v", o, err)
	}
	if g, _ := d.Current(); g == nil || g.Digest != p.digests[0] {
		t.Fatalf("after the rollback: %+v", g)
	}
	d.Close()
}

// crashed stands for a power loss at a named point.
type crashed struct{ point string }

// stopAt runs fn with the device's test hook unwinding at point (in
// place of SIGKILL there), and fails the test unless fn got that far.
func stopAt(t *testing.T, point string, fn func()) {
	t.Helper()
	device.SetTestHook(func(at string) {
		if at == point {
			panic(crashed{at})
		}
	})
	defer device.SetTestHook(nil)
	defer func() {
		if r := recover(); r == nil {
			t.Fatalf("the update did not reach %s", point)
		} else if _, ok := r.(crashed); !ok {
			panic(r)
		}
	}()
	fn()
}

// TestRecovery stops an update at every point (a hook that unwinds, in
// place of SIGKILL) and opens the device again: it is on exactly the old
// or the new release, with every NAR hash right, and the update run
// again completes.
func TestRecovery(t *testing.T) {
	ctx := context.Background()
	p := publish(t, 2)
	points := []string{"phase-fetch", "fetched", "phase-apply", "applied", "generation", "phase-switch", "switched",
		"activated", "healthy", "phase-commit", "committed"}
	t.Cleanup(func() { device.SetTestHook(nil) })
	for _, point := range points {
		t.Run(point, func(t *testing.T) {
			store, st := testutil.TempStore(t), t.TempDir()
			d := openDevice(t, p, store, st)
			if _, err := d.Update(ctx, p.ref(t, 1), device.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
			stopAt(t, point, func() { d.Update(ctx, p.ref(t, 2), device.UpdateOptions{Method: "patch"}) })
			d.Close()
			d = openDevice(t, p, store, st)
			defer d.Close()
			g, err := d.Current()
			if err != nil || g == nil {
				t.Fatalf("after recovery: %v", err)
			}
			want := 0
			if point == "phase-commit" || point == "committed" {
				want = 1
			}
			if g.Digest != p.digests[want] {
				t.Fatalf("stopped at %s, recovered to %s, want release %d", point, g.Digest, want+1)
			}
			testutil.VerifyStore(t, p.closures[want], store)
			if res, err := d.Update(ctx, p.ref(t, 2), device.UpdateOptions{}); err != nil || (res.To != 2 && !res.UpToDate) {
				t.Fatalf("the update again: %+v %v", res, err)
			}
			testutil.VerifyStore(t, p.closures[1], store)
		})
	}
}
