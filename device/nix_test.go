package device_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/otter-fleet/otter/bundle"
	"github.com/otter-fleet/otter/device"
	"github.com/otter-fleet/otter/internal/fsutil"
	"github.com/otter-fleet/otter/internal/testutil"
	"github.com/otter-fleet/otter/nix"
	"github.com/otter-fleet/otter/nixdb"
	"github.com/otter-fleet/otter/oci"
	"github.com/otter-fleet/otter/release"
	"github.com/otter-fleet/otter/sign"
)

func nixRoot(t *testing.T) (root, store string) { return testutil.NixChrootStore(t) }

func nixCmd(t *testing.T, root string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, append([]string{"--store", root}, args...)...)
	cmd.Env = append(os.Environ(), "NIX_STATE_DIR="+filepath.Join(root, "nix", "var", "nix"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return string(out)
}

func openNixDevice(t *testing.T, p *published, store, st string, keep int, health ...string) *device.Device {
	t.Helper()
	db, err := nixdb.Open(store)
	if err != nil {
		t.Fatal(err)
	}
	d, _, err := device.Open(context.Background(), device.Config{Store: store, State: st, Trust: p.trust, System: "aarch64-linux",
		Channel: "stable", Health: health, HealthTimeout: 10 * time.Second, NoFsync: true, Keep: keep, Nix: db})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// checkNixStore: Nix's own check of every registered path is clean, and
// what Nix says of the installed closure is the signed closure exactly.
func checkNixStore(t *testing.T, root string, c *nix.Closure) {
	t.Helper()
	nixCmd(t, root, "nix-store", "--verify", "--check-contents")
	raw := nixCmd(t, root, "nix", "--extra-experimental-features", "nix-command", "path-info", "--json", "-r", c.Root)
	infos, err := nix.ParsePathInfo([]byte(raw[strings.Index(raw, "["):]))
	if err != nil {
		t.Fatal(err)
	}
	if len(infos) != len(c.Paths) {
		t.Fatalf("Nix lists %d paths in the closure, the release %d", len(infos), len(c.Paths))
	}
	for _, got := range infos {
		want := c.Lookup(got.Path)
		if want == nil || got.NarHash != want.NarHash || got.NarSize != want.NarSize || strings.Join(got.References, " ") != strings.Join(want.References, " ") {
			t.Fatalf("Nix holds %+v, the release says %+v", got, want)
		}
	}
}

// profileRoots are the store paths the otter profile's generations name.
func profileRoots(t *testing.T, store string) []string {
	t.Helper()
	db, _ := nixdb.Open(store)
	gens, err := db.Generations(db.ProfilePath("otter"))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, g := range gens {
		out = append(out, g.Path)
	}
	return out
}

func statusRoots(t *testing.T, d *device.Device) []string {
	t.Helper()
	st, err := d.Status()
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode != "nix" {
		t.Fatalf("status mode %q on a Nix store", st.Mode)
	}
	var out []string
	for _, g := range st.Generations {
		out = append(out, g.Root)
	}
	return out
}

// TestNixDevice takes a device whose store Nix owns from r1 to r2 to r3
// by patch: after each step Nix's database holds exactly the signed
// closure and verifies it, the otter profile has the same generations as
// otter, a path Nix added itself lives on beside otter's, and after
// otter gc --keep 2 and nix-collect-garbage -d exactly the kept
// generations' paths remain.
func TestNixDevice(t *testing.T) {
	ctx := context.Background()
	p := publish(t, 3)
	root, store := nixRoot(t)
	// Nix's own path, before otter.
	own := filepath.Join(t.TempDir(), "own.txt")
	os.WriteFile(own, []byte("added by nix-store --add\n"), 0o644)
	ownPath := strings.TrimSpace(nixCmd(t, root, "nix-store", "--add", own))
	st := t.TempDir()
	d := openNixDevice(t, p, store, st, 3)
	for i := 1; i <= 3; i++ {
		o := device.UpdateOptions{Method: "patch"}
		if i == 1 {
			o.Method = ""
		}
		if _, err := d.Update(ctx, p.ref(t, i), o); err != nil {
			t.Fatalf("update to r%d: %v", i, err)
		}
		checkNixStore(t, root, p.closures[i-1])
		if s, pr := statusRoots(t, d), profileRoots(t, store); strings.Join(s, " ") != strings.Join(pr, " ") {
			t.Fatalf("otter's generations %v, the profile's %v", s, pr)
		}
	}
	nixCmd(t, root, "nix-store", "--check-validity", ownPath)
	// Nix's own path, after otter; and nix-env sees otter's generations.
	os.WriteFile(own, []byte("added after otter\n"), 0o644)
	ownAfter := strings.TrimSpace(nixCmd(t, root, "nix-store", "--add", own))
	list := nixCmd(t, root, "nix-env", "-p", filepath.Join(root, "nix", "var", "nix", "profiles", "otter"), "--list-generations")
	if n := len(strings.Split(strings.TrimSpace(list), "\n")); n != len(statusRoots(t, d)) {
		t.Fatalf("nix-env lists %d generations, otter status %d:\n%s", n, len(statusRoots(t, d)), list)
	}
	if _, err := d.Update(ctx, p.ref(t, 3), device.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	nixCmd(t, root, "nix-store", "--check-validity", ownPath, ownAfter)
	d.Close()

	d = openNixDevice(t, p, store, st, 2)
	if _, err := d.GC(ctx); err != nil {
		t.Fatal(err)
	}
	kept := statusRoots(t, d)
	if len(kept) != 2 || strings.Join(kept, " ") != strings.Join(profileRoots(t, store), " ") {
		t.Fatalf("after gc --keep 2: otter %v, profile %v", kept, profileRoots(t, store))
	}
	d.Close()
	nixCmd(t, root, "nix-collect-garbage", "-d")
	want := map[string]bool{}
	for _, c := range p.closures[1:] {
		for _, q := range c.Paths {
			want[nix.BaseName(q.Path)] = true
		}
	}
	ents, _ := os.ReadDir(store)
	var left []string
	for _, e := range ents {
		if e.Name() != ".links" {
			left = append(left, e.Name())
		}
	}
	sort.Strings(left)
	if len(left) != len(want) {
		t.Fatalf("after nix-collect-garbage -d: %v, want the %d paths of generations 2 and 3", left, len(want))
	}
	for _, n := range left {
		if !want[n] {
			t.Fatalf("%s survived, it is no kept generation's", n)
		}
	}
	nixCmd(t, root, "nix-store", "--verify", "--check-contents")
	checkNixStore(t, root, p.closures[2])
}

// TestNixPowerLoss stops an update at every point, Nix registration
// included, and opens the device again: Nix's database verifies, no
// registered path is missing or wrong, and the update completes.
func TestNixPowerLoss(t *testing.T) {
	ctx := context.Background()
	p := publish(t, 2)
	points := []string{"phase-fetch", "fetched", "phase-apply", "applied", "registered", "generation", "phase-switch", "switched",
		"activated", "healthy", "phase-commit", "committed"}
	t.Cleanup(func() { device.SetTestHook(nil) })
	for _, point := range points {
		t.Run(point, func(t *testing.T) {
			root, store := nixRoot(t)
			st := t.TempDir()
			d := openNixDevice(t, p, store, st, 3)
			if _, err := d.Update(ctx, p.ref(t, 1), device.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
			stopAt(t, point, func() { d.Update(ctx, p.ref(t, 2), device.UpdateOptions{Method: "patch"}) })
			d.Close()
			d = openNixDevice(t, p, store, st, 3)
			defer d.Close()
			g, err := d.Current()
			if err != nil || g == nil {
				t.Fatal(err)
			}
			want := 0
			if point == "phase-commit" || point == "committed" {
				want = 1
			}
			if g.Digest != p.digests[want] {
				t.Fatalf("stopped at %s, recovered to %s, want release %d", point, g.Digest, want+1)
			}
			checkNixStore(t, root, p.closures[want])
			// No path of release 2 lies in the store unregistered: recovery
			// registered what the journal named.
			for _, q := range p.closures[1].Paths {
				if _, err := os.Lstat(filepath.Join(store, nix.BaseName(q.Path))); err == nil {
					nixCmd(t, root, "nix-store", "--check-validity", q.Path)
				}
			}
			if s, pr := statusRoots(t, d), profileRoots(t, store); strings.Join(s, " ") != strings.Join(pr, " ") {
				t.Fatalf("otter's generations %v, the profile's %v", s, pr)
			}
			if _, err := d.Update(ctx, p.ref(t, 2), device.UpdateOptions{}); err != nil {
				t.Fatalf("the update again: %v", err)
			}
			checkNixStore(t, root, p.closures[1])
		})
	}
}

// nixosRelease writes release i of a stand-in NixOS system: a root with
// bin/switch-to-configuration, a script that records its calls in
// $OTTER_TEST_SWITCH_LOG (it stands in for NixOS's, which installs the
// boot loader entries and starts and stops units).
func nixosRelease(store string, i int) (*nix.Closure, error) {
	sum := sha256.Sum256([]byte(fmt.Sprintf("otter-nixos-test-%d", i)))
	base := nix.EncodeBase32(sum[:20]) + fmt.Sprintf("-nixos-system-otter-%d", i)
	dir := filepath.Join(store, base, "bin")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	script := fmt.Sprintf("#!/bin/sh\necho \"release-%d $1\" >> \"$OTTER_TEST_SWITCH_LOG\"\n", i)
	if err := os.WriteFile(filepath.Join(dir, "switch-to-configuration"), []byte(script), 0o555); err != nil {
		return nil, err
	}
	if err := fsutil.Canonicalize(filepath.Join(store, base)); err != nil {
		return nil, err
	}
	h, size, err := nix.HashPath(filepath.Join(store, base))
	if err != nil {
		return nil, err
	}
	return nix.NewClosure(nix.StoreDir+"/"+base, []nix.PathInfo{{Path: nix.StoreDir + "/" + base, NarHash: h, NarSize: size, References: []string{}}})
}

// TestNixOSOrder: a NixOS release is activated in nixos-rebuild's order
// (system profile, switch-to-configuration test, the health check,
// switch-to-configuration boot), and one that fails its health check
// gets the old system activated again and the system profile set back.
func TestNixOSOrder(t *testing.T) {
	ctx := context.Background()
	p := publishTrees(t, 3, nixosRelease)
	root, store := nixRoot(t)
	log := filepath.Join(t.TempDir(), "switch.log")
	t.Setenv("OTTER_TEST_SWITCH_LOG", log)
	st := t.TempDir()
	health := []string{"/bin/sh", "-c", `echo "health $OTTER_RELEASE_VERSION" >> "$OTTER_TEST_SWITCH_LOG"; test "$OTTER_RELEASE_VERSION" != 3`}
	d := openNixDevice(t, p, store, st, 3, health...)
	defer d.Close()
	system := filepath.Join(root, "nix", "var", "nix", "profiles", "system")
	for i, want := range []string{
		"release-1 test\nhealth 1\nrelease-1 boot\n",
		"release-2 test\nhealth 2\nrelease-2 boot\n",
	} {
		os.Remove(log)
		if _, err := d.Update(ctx, p.ref(t, i+1), device.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		if got, _ := os.ReadFile(log); string(got) != want {
			t.Fatalf("update to release %d called:\n%s\nwant:\n%s", i+1, got, want)
		}
		if l := profileTarget(t, system); l != p.closures[i].Root {
			t.Fatalf("the system profile names %s after release %d", l, i+1)
		}
	}
	os.Remove(log)
	if _, err := d.Update(ctx, p.ref(t, 3), device.UpdateOptions{}); !errors.Is(err, device.ErrHealthCheck) {
		t.Fatalf("release 3 passed its health check: %v", err)
	}
	if got, _ := os.ReadFile(log); string(got) != "release-3 test\nhealth 3\nrelease-2 test\n" {
		t.Fatalf("a failed NixOS release called:\n%s", got)
	}
	if l := profileTarget(t, system); l != p.closures[1].Root {
		t.Fatalf("the system profile names %s after the rollback", l)
	}
	db, _ := nixdb.Open(store)
	gens, _ := db.Generations(system)
	for _, g := range gens {
		if g.Path == p.closures[2].Root {
			t.Fatalf("the failed system is still generation %d of the system profile", g.Number)
		}
	}
	checkNixStore(t, root, p.closures[1])
	// otter rollback goes back the same way: test, then boot.
	os.Remove(log)
	if _, err := d.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(log); string(got) != "release-1 test\nrelease-1 boot\n" {
		t.Fatalf("rollback called:\n%s", got)
	}
	if l := profileTarget(t, system); l != p.closures[0].Root {
		t.Fatalf("the system profile names %s after otter rollback", l)
	}
	// nix-env lists the otter profile's generations as otter status does.
	out := nixCmd(t, root, "nix-env", "-p", filepath.Join(root, "nix", "var", "nix", "profiles", "otter"), "--list-generations")
	if n := len(strings.Split(strings.TrimSpace(out), "\n")); n != len(statusRoots(t, d)) {
		t.Fatalf("nix-env lists %d generations, otter %d:\n%s", n, len(statusRoots(t, d)), out)
	}
}

// TestNixRefusals: a path Nix holds with another NAR hash, and a
// database another Nix process holds, each leave the device as it was.
func TestNixRefusals(t *testing.T) {
	ctx := context.Background()
	p := publish(t, 2)
	t.Run("valid with another hash", func(t *testing.T) {
		root, store := nixRoot(t)
		d := openNixDevice(t, p, store, t.TempDir(), 3)
		defer d.Close()
		if _, err := d.Update(ctx, p.ref(t, 1), device.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		// Nix holds one of release 2's new paths, with other content.
		var target string
		for _, q := range p.closures[1].Paths {
			if p.closures[0].Lookup(q.Path) == nil {
				target = q.Path
				break
			}
		}
		os.MkdirAll(filepath.Join(store, nix.BaseName(target)), 0o755)
		os.WriteFile(filepath.Join(store, nix.BaseName(target), "other"), []byte("not the release's\n"), 0o444)
		fsutil.Canonicalize(filepath.Join(store, nix.BaseName(target)))
		h, size, _ := nix.HashPath(filepath.Join(store, nix.BaseName(target)))
		cmd := exec.Command("nix-store", "--store", root, "--load-db")
		cmd.Stdin = strings.NewReader(fmt.Sprintf("%s\n%s\n%d\n\n0\n", target, h, size))
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%v %s", err, out)
		}
		_, err := d.Update(ctx, p.ref(t, 2), device.UpdateOptions{Method: "patch"})
		if !errors.Is(err, nixdb.ErrConflict) || !strings.Contains(err.Error(), target) {
			t.Fatalf("want a conflict naming %s, got %v", target, err)
		}
		if g, _ := d.Current(); g.Digest != p.digests[0] {
			t.Fatal("the device moved")
		}
		if got, _ := os.ReadFile(filepath.Join(store, nix.BaseName(target), "other")); string(got) != "not the release's\n" {
			t.Fatal("Nix's path was overwritten")
		}
		nixCmd(t, root, "nix-store", "--verify", "--check-contents")
	})
	t.Run("database held", func(t *testing.T) {
		root, store := nixRoot(t)
		st := t.TempDir()
		d := openNixDevice(t, p, store, st, 3)
		defer d.Close()
		if _, err := d.Update(ctx, p.ref(t, 1), device.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		lock, err := os.OpenFile(filepath.Join(root, "nix", "var", "nix", "db", "big-lock"), os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer lock.Close()
		syscall.Flock(int(lock.Fd()), syscall.LOCK_EX)
		d.Close()
		db, _ := nixdb.Open(store)
		db.Timeout = 2 * time.Second
		d2, _, err := device.Open(ctx, device.Config{Store: store, State: st, Trust: p.trust, System: "aarch64-linux", Channel: "stable", NoFsync: true, Nix: db})
		if err != nil {
			t.Fatal(err)
		}
		defer d2.Close()
		if _, err := d2.Update(ctx, p.ref(t, 2), device.UpdateOptions{Method: "patch"}); !errors.Is(err, nixdb.ErrBusy) {
			t.Fatalf("a held database: %v", err)
		}
		if g, _ := d2.Current(); g.Digest != p.digests[0] {
			t.Fatal("the device moved")
		}
		syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
		nixCmd(t, root, "nix-store", "--verify", "--check-contents")
	})
}

// profileTarget is the store path a profile's current generation names
// (the links name /nix/store paths, which a chroot store keeps elsewhere).
func profileTarget(t *testing.T, profile string) string {
	t.Helper()
	gen, err := os.Readlink(profile)
	if err != nil {
		t.Fatal(err)
	}
	target, err := os.Readlink(filepath.Join(filepath.Dir(profile), gen))
	if err != nil {
		t.Fatal(err)
	}
	return target
}

// TestNixRefusesAnOpenClosure: a signed release whose config is not
// closed (a path refers to one the bundle lacks) is refused before
// anything is registered.
func TestNixRefusesAnOpenClosure(t *testing.T) {
	ctx := context.Background()
	p := publish(t, 2)
	root, store := nixRoot(t)
	d := openNixDevice(t, p, store, t.TempDir(), 3)
	defer d.Close()
	if _, err := d.Update(ctx, p.ref(t, 1), device.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	validBefore := nixCmd(t, root, "nix-store", "--query", "--requisites", p.closures[0].Root)
	// Release 2 without its greeting path, which hello refers to.
	ref := p.ref(t, 2)
	img, err := oci.OpenManifest(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	m, _ := img.Manifest()
	rawCfg, _ := img.RawConfigFile()
	var cfg map[string]any
	json.Unmarshal(rawCfg, &cfg)
	paths := cfg["paths"].([]any)
	drop := -1
	for i, q := range paths {
		if strings.Contains(q.(map[string]any)["path"].(string), "greeting") {
			drop = i
		}
	}
	cfg["paths"] = append(paths[:drop:drop], paths[drop+1:]...)
	rootfs := cfg["rootfs"].(map[string]any)
	ids := rootfs["diff_ids"].([]any)
	rootfs["diff_ids"] = append(ids[:drop:drop], ids[drop+1:]...)
	newCfg, _ := json.Marshal(cfg)
	layers := append(append([]v1.Descriptor{}, m.Layers[:drop]...), m.Layers[drop+1:]...)
	nm := *m
	nm.Layers = layers
	cd, cs, _ := v1.SHA256(bytes.NewReader(newCfg))
	nm.Config.Digest, nm.Config.Size = cd, cs
	rawM, _ := json.Marshal(nm)
	md, ms, _ := v1.SHA256(bytes.NewReader(rawM))
	for _, blob := range [][]byte{newCfg, rawM} {
		h, _, _ := v1.SHA256(bytes.NewReader(blob))
		os.WriteFile(filepath.Join(p.layout, "blobs", "sha256", h.Hex), blob, 0o644)
	}
	idxPath := filepath.Join(p.layout, "index.json")
	idx, _ := os.ReadFile(idxPath)
	var im v1.IndexManifest
	json.Unmarshal(idx, &im)
	im.Manifests = append(im.Manifests, v1.Descriptor{MediaType: m.MediaType, Digest: md, Size: ms, ArtifactType: m.ArtifactType,
		Annotations: map[string]string{"org.opencontainers.image.ref.name": "open"}})
	idx, _ = json.Marshal(im)
	os.WriteFile(idxPath, idx, 0o644)
	openRef, _ := oci.ParseRef("oci:"+p.layout+":open", false)
	signer := release.Signer{Keys: []crypto.Signer{p.key}, Now: time.Now().Add(-time.Hour), Expires: time.Now().Add(time.Hour)}
	desc := v1.Descriptor{MediaType: m.MediaType, Digest: md, Size: ms}
	st, err := signer.Statement(desc, &bundle.Config{System: "aarch64-linux", Root: p.closures[1].Root}, 2, "stable")
	if err != nil {
		t.Fatal(err)
	}
	payload, _ := st.Marshal()
	env, _ := signer.Seal(sign.ReleaseType, payload)
	if _, _, err := signer.AttachRelease(ctx, openRef, desc, st, env, false); err != nil {
		t.Fatal(err)
	}
	_, err = d.Update(ctx, openRef, device.UpdateOptions{Method: "layers"})
	if !errors.Is(err, bundle.ErrConfig) || !strings.Contains(err.Error(), "which the bundle lacks") {
		t.Fatalf("a release whose closure is not closed: %v", err)
	}
	if after := nixCmd(t, root, "nix-store", "--query", "--requisites", p.closures[0].Root); after != validBefore {
		t.Fatal("the database changed")
	}
	for _, q := range p.closures[1].Paths {
		if p.closures[0].Lookup(q.Path) != nil {
			continue
		}
		if out, err := exec.Command("nix-store", "--store", root, "--check-validity", q.Path).CombinedOutput(); err == nil {
			t.Fatalf("%s was registered: %s", q.Path, out)
		}
	}
	if g, _ := d.Current(); g.Digest != p.digests[0] {
		t.Fatal("the device moved")
	}
}
