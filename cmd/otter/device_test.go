package main

import (
	"context"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/otter-fleet/otter/delta"
	"github.com/otter-fleet/otter/device"
	"github.com/otter-fleet/otter/internal/testutil"
	"github.com/otter-fleet/otter/nix"
	"github.com/otter-fleet/otter/oci"
)

// fleet publishes demo releases 1..n at base:rN, each signed, and a signed
// patch from each release to the next. It returns the trust file and each
// release's digest and closure.
func fleet(t *testing.T, base string, n int) (trust string, digests []string, closures []*nix.Closure) {
	t.Helper()
	key, _, trust := keys(t, t.TempDir(), "release")
	for i := 1; i <= n; i++ {
		tree, pi, root := demoReleaseTree(t, i)
		ref := base + ":r" + strconv.Itoa(i)
		var b bundleResult
		otterJSON(t, &b, "bundle", "--store-dir", tree, "--path-info", pi, root, "--out", ref, "--release-version", strconv.Itoa(i))
		otterJSON(t, &signResult{}, "sign", ref, "--key", key, "--expires", "720h")
		if i > 1 {
			otterJSON(t, &deltaResult{}, "delta", "--from", base+":r"+strconv.Itoa(i-1), ref, "--key", key, "--max-share", "10")
		}
		r, _ := oci.ParseRef(ref, true)
		_, cfg, err := oci.Open(context.Background(), r, oci.WithInsecure(true))
		if err != nil {
			t.Fatal(err)
		}
		digests = append(digests, b.Digest.String())
		closures = append(closures, cfg.Closure())
	}
	return trust, digests, closures
}

type deviceDirs struct{ store, state, trust string }

func (d deviceDirs) args(extra ...string) []string {
	return append([]string{"--store", d.store, "--state", d.state, "--trust", d.trust, "--insecure"}, extra...)
}

func status(t *testing.T, d deviceDirs) device.Status {
	t.Helper()
	var st device.Status
	otterJSON(t, &st, append([]string{"status"}, d.args()...)...)
	return st
}

// TestDeviceUpdates takes a device through first install, a patch update,
// a failed health check, a known-bad refusal, a retry, a rollback, an
// anti-rollback refusal and garbage collection.
func TestDeviceUpdates(t *testing.T) {
	for _, where := range []struct {
		name string
		base func(t *testing.T) string
	}{
		{"layout", func(t *testing.T) string { return "oci:" + filepath.Join(t.TempDir(), "l") }},
		{"docker-registry", func(t *testing.T) string { return testutil.RealRegistry(t) + "/" + testutil.Repository(t) }},
	} {
		t.Run(where.name, func(t *testing.T) {
			base := where.base(t)
			trust, digests, closures := fleet(t, base, 3)
			d := deviceDirs{store: testutil.TempStore(t), state: t.TempDir(), trust: trust}

			if st := status(t, d); st.Current != nil {
				t.Fatalf("a new device has %+v installed", st.Current)
			}
			var res device.UpdateResult
			otterJSON(t, &res, append([]string{"update", base + ":r1"}, d.args()...)...)
			if res.Method != "layers" || res.To != 1 || res.Target != digests[0] || len(res.Built) != 3 {
				t.Fatalf("first install: %+v", res)
			}
			testutil.VerifyStore(t, closures[0], d.store)

			// The demo's paths are tiny: their layers are a smaller
			// download than a patch, which carries the target's manifest.
			if code, _, _ := otter(t, append([]string{"update", base + ":r2", "--method", "bogus"}, d.args()...)...); code != exitUsage {
				t.Fatalf("--method bogus: exit %d", code)
			}
			otterJSON(t, &res, append([]string{"update", base + ":r2", "--method", "patch"}, d.args()...)...)
			d2 := deviceDirs{store: testutil.TempStore(t), state: t.TempDir(), trust: trust}
			var auto device.UpdateResult
			otterJSON(t, &auto, append([]string{"update", base + ":r1"}, d2.args()...)...)
			otterJSON(t, &auto, append([]string{"update", base + ":r2"}, d2.args()...)...)
			if auto.Method != "layers" || auto.Download >= res.Download {
				t.Fatalf("auto chose %s (%d bytes), the patch is %d bytes", auto.Method, auto.Download, res.Download)
			}
			testutil.VerifyStore(t, closures[1], d2.store)
			if res.Method != "patch" || res.From != 1 || res.To != 2 || res.Target != digests[1] {
				t.Fatalf("patch update: %+v", res)
			}
			if res.Transferred != res.Download || res.Download == 0 {
				t.Errorf("downloaded %d of a %d-byte patch", res.Transferred, res.Download)
			}
			testutil.VerifyStore(t, closures[1], d.store)
			root, err := os.Readlink(filepath.Join(d.state, "generations", "2", "root"))
			if err != nil || closures[1].Lookup(nix.StoreDir+"/"+filepath.Base(root)) == nil || filepath.Dir(root) != d.store {
				t.Fatalf("generation 2 root %q %v", root, err)
			}

			otterJSON(t, &res, append([]string{"update", base + ":r2"}, d.args()...)...)
			if !res.UpToDate {
				t.Fatalf("second update to the same release: %+v", res)
			}

			// A release that fails its health check: back on 2, and why.
			marker := filepath.Join(t.TempDir(), "activated")
			failing := d.args("--activate", "echo $OTTER_GENERATION >> "+marker, "--health-check", "echo sensor dead >&2; exit 3")
			if code, _, stderr := otter(t, append([]string{"update", base + ":r3"}, failing...)...); code != exitRolledBack {
				t.Fatalf("failed health check: exit %d, %s", code, stderr)
			}
			st := status(t, d)
			if st.Current == nil || st.Current.Number != 2 || st.Last.Result != "rolled-back" || st.Failed[digests[2]] == "" {
				t.Fatalf("after the failed check: %+v", st)
			}
			if got, _ := os.ReadFile(marker); string(got) != "3\n2\n" {
				t.Errorf("activations %q, want generation 3 then 2 again", got)
			}
			testutil.VerifyStore(t, closures[1], d.store)
			if code, _, _ := otter(t, append([]string{"update", base + ":r3"}, d.args()...)...); code != exitKnownBad {
				t.Fatalf("known-bad release: exit %d", code)
			}
			// A health check that hangs is a failure too.
			hanging := d.args("--retry", "--health-check", "sleep 30", "--health-timeout", "300ms")
			if code, _, stderr := otter(t, append([]string{"update", base + ":r3"}, hanging...)...); code != exitRolledBack {
				t.Fatalf("hanging health check: exit %d, %s", code, stderr)
			}
			otterJSON(t, &res, append([]string{"update", base + ":r3", "--retry", "--method", "patch", "--health-check", "test -d $OTTER_ROOT"}, d.args()...)...)
			if res.To != 3 || res.Method != "patch" {
				t.Fatalf("retried update: %+v", res)
			}
			testutil.VerifyStore(t, closures[2], d.store)

			// Anti-rollback: release 1 is older than the installed 3.
			if code, _, _ := otter(t, append([]string{"update", base + ":r1"}, d.args()...)...); code != exitRollback {
				t.Fatalf("older release: exit %d", code)
			}
			var o device.Outcome
			otterJSON(t, &o, append([]string{"rollback"}, d.args()...)...)
			if o.From != 3 || o.To != 2 || status(t, d).Current.Digest != digests[1] {
				t.Fatalf("rollback: %+v", o)
			}
			testutil.VerifyStore(t, closures[1], d.store)

			// gc keeping only the current generation collects releases 1 and 3.
			var gc struct{ Collected []string }
			otterJSON(t, &gc, append([]string{"gc"}, d.args("--keep", "1")...)...)
			testutil.AssertOnlyStorePaths(t, d.store, closures[1])
			if len(gc.Collected) == 0 {
				t.Fatal("gc collected nothing")
			}
		})
	}
}

// TestDevicePowerLoss kills otter update (SIGKILL) at every phase and at
// random instants. After each kill the next otter command finds the device
// on exactly the old or exactly the new release with every NAR hash
// right, and updating again completes.
func TestDevicePowerLoss(t *testing.T) {
	base := "oci:" + filepath.Join(t.TempDir(), "l")
	trust, digests, closures := fleet(t, base, 2)
	template := deviceDirs{store: testutil.TempStore(t), state: t.TempDir(), trust: trust}
	otterJSON(t, &device.UpdateResult{}, append([]string{"update", base + ":r1", "--no-fsync"}, template.args()...)...)

	fresh := func(t *testing.T) deviceDirs {
		d := deviceDirs{store: testutil.TempStore(t), state: t.TempDir(), trust: trust}
		for _, p := range [][2]string{{template.store, d.store}, {template.state, d.state}} {
			if out, err := exec.Command("cp", "-a", p[0]+"/.", p[1]).CombinedOutput(); err != nil {
				t.Fatalf("%s %v", out, err)
			}
		}
		return d
	}
	check := func(t *testing.T, d deviceDirs, label string) string {
		st := status(t, d)
		if st.Current == nil {
			t.Fatalf("%s: nothing installed after recovery", label)
		}
		switch st.Current.Digest {
		case digests[0]:
			testutil.VerifyStore(t, closures[0], d.store)
		case digests[1]:
			testutil.VerifyStore(t, closures[1], d.store)
		default:
			t.Fatalf("%s: on %s, neither release", label, st.Current.Digest)
		}
		if _, err := os.Stat(filepath.Join(d.state, "journal.json")); !os.IsNotExist(err) {
			t.Fatalf("%s: journal left after recovery", label)
		}
		return st.Current.Digest
	}
	finish := func(t *testing.T, d deviceDirs, label string) {
		var res device.UpdateResult
		otterJSON(t, &res, append([]string{"update", base + ":r2", "--health-check", "true"}, d.args()...)...)
		if st := status(t, d); st.Current == nil || st.Current.Digest != digests[1] {
			t.Fatalf("%s: the update again did not complete: %+v", label, res)
		}
		testutil.VerifyStore(t, closures[1], d.store)
	}
	run := func(d deviceDirs, point string) *exec.Cmd {
		return crashingOtter(t, point, append([]string{"update", base + ":r2", "-q", "--health-check", "sleep 0.05"}, d.args()...)...)
	}

	points := []string{"phase-fetch", "fetched", "phase-apply", "applied", "generation", "phase-switch", "switched",
		"activated", "healthy", "phase-commit", "committed"}
	for _, p := range points {
		t.Run(p, func(t *testing.T) {
			d := fresh(t)
			err := run(d, p).Run()
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != -1 {
				t.Fatalf("update was not killed at %s: %v", p, err)
			}
			got := check(t, d, p)
			if (p == "committed" || p == "phase-commit") != (got == digests[1]) {
				t.Errorf("killed at %s, recovered to %s", p, got)
			}
			finish(t, d, p)
		})
	}
	rng := rand.New(rand.NewSource(time.Now().UnixNano()))
	for i := range 12 {
		delay := time.Duration(rng.Intn(250)) * time.Millisecond
		t.Run(fmt.Sprintf("random-%d-%v", i, delay), func(t *testing.T) {
			d := fresh(t)
			cmd := run(d, "")
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			time.Sleep(delay)
			cmd.Process.Kill()
			cmd.Wait()
			// A child the killed otter was starting (its health check) holds
			// a copy of the lock's descriptor until it execs: a power loss
			// would end it too. Wait for it, as the next boot would.
			waitUnlocked(t, d.state)
			check(t, d, delay.String())
			finish(t, d, delay.String())
		})
	}
}

// TestDeviceLockAndStatusJSON: a second otter waits for no one: it is
// refused while the state is locked.
func TestDeviceBusy(t *testing.T) {
	state := t.TempDir()
	d, _, err := device.Open(context.Background(), device.Config{Store: testutil.TempStore(t), State: state})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	code, _, _ := otter(t, "status", "--store", t.TempDir(), "--state", state)
	if code != exitBusy {
		t.Fatalf("status while locked: exit %d", code)
	}
}

// TestDeviceBadInput: a tampered download, a truncated one, no patch for
// the installed release and a full disk each leave the device on its
// release, working, with the reason in otter status.
func TestDeviceBadInput(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "l")
	base := "oci:" + dir
	trust, digests, closures := fleet(t, base, 3)
	onR2 := func(t *testing.T) deviceDirs {
		d := deviceDirs{store: testutil.TempStore(t), state: t.TempDir(), trust: trust}
		otterJSON(t, &device.UpdateResult{}, append([]string{"update", base + ":r2", "--no-fsync"}, d.args()...)...)
		return d
	}
	stayed := func(t *testing.T, d deviceDirs, code, want int, reason string) {
		t.Helper()
		if code != want {
			t.Fatalf("exit %d, want %d", code, want)
		}
		st := status(t, d)
		if st.Current == nil || st.Current.Digest != digests[1] || st.Last == nil || st.Last.Result != "failed" || !strings.Contains(st.Last.Reason, reason) {
			t.Fatalf("status %+v, last %+v; want on r2, failed with %q", st.Current, st.Last, reason)
		}
		testutil.VerifyStore(t, closures[1], d.store)
		if _, err := os.Stat(filepath.Join(d.state, "journal.json")); !os.IsNotExist(err) {
			t.Fatal("journal left behind")
		}
	}
	// The r2 -> r3 patch blob, found through the published artifact.
	ref, _ := oci.ParseRef(base+":r3", false)
	h, _ := v1.NewHash(digests[2])
	arts, err := oci.Referrers(context.Background(), ref, h, delta.ArtifactType)
	if err != nil || len(arts) != 1 {
		t.Fatalf("patch artifacts %v %v", arts, err)
	}
	m, err := oci.ArtifactManifest(context.Background(), ref, h, arts[0].Digest, delta.ArtifactType)
	if err != nil {
		t.Fatal(err)
	}
	blob := filepath.Join(dir, "blobs", "sha256", m.Layers[0].Digest.Hex)
	good, err := os.ReadFile(blob)
	if err != nil {
		t.Fatal(err)
	}
	restore := func() { os.Chmod(blob, 0o644); os.WriteFile(blob, good, 0o644) }

	t.Run("tampered", func(t *testing.T) {
		defer restore()
		bad := append([]byte{}, good...)
		bad[len(bad)/2] ^= 1
		os.Chmod(blob, 0o644)
		os.WriteFile(blob, bad, 0o644)
		d := onR2(t)
		code, _, _ := otter(t, append([]string{"update", base + ":r3", "--method", "patch"}, d.args()...)...)
		stayed(t, d, code, exitIntegrity, "hashes to")
	})
	t.Run("truncated", func(t *testing.T) {
		defer restore()
		os.Chmod(blob, 0o644)
		os.WriteFile(blob, good[:len(good)-100], 0o644)
		d := onR2(t)
		code, _, _ := otter(t, append([]string{"update", base + ":r3", "--method", "patch", "--retries", "1"}, d.args()...)...)
		// A blob that ends early is a damaged blob (6), not a network error.
		stayed(t, d, code, exitIntegrity, "downloading the patch")
	})
	t.Run("no patch from the installed release", func(t *testing.T) {
		d := deviceDirs{store: testutil.TempStore(t), state: t.TempDir(), trust: trust}
		otterJSON(t, &device.UpdateResult{}, append([]string{"update", base + ":r1", "--no-fsync"}, d.args()...)...)
		code, _, _ := otter(t, append([]string{"update", base + ":r3", "--method", "patch"}, d.args()...)...)
		if code != exitPatchBase {
			t.Fatalf("exit %d", code)
		}
		if st := status(t, d); st.Current.Digest != digests[0] || !strings.Contains(st.Last.Reason, "no signed patch") {
			t.Fatalf("status %+v", st.Last)
		}
	})
	t.Run("full disk", func(t *testing.T) {
		testutil.Require(t, os.Geteuid() == 0, "root, to mount a small tmpfs")
		d := onR2(t)
		// The store moves onto a file system with no room for release 3.
		small := t.TempDir()
		if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", small).CombinedOutput(); err != nil {
			t.Fatalf("mount: %v %s", err, out)
		}
		t.Cleanup(func() { exec.Command("umount", small).Run() })
		if out, err := exec.Command("cp", "-a", d.store+"/.", small).CombinedOutput(); err != nil {
			t.Skipf("release 2 does not fit the tmpfs: %s", out)
		}
		d.store = small
		code, _, _ := otter(t, append([]string{"update", base + ":r3"}, d.args()...)...)
		stayed(t, d, code, exitNoSpace, "not enough free space")
	})
}

// waitUnlocked waits (up to 5 s) until no process holds the state's lock.
func waitUnlocked(t *testing.T, state string) {
	t.Helper()
	f, err := os.Open(filepath.Join(state, "lock"))
	if err != nil {
		return // never locked
	}
	defer f.Close()
	for deadline := time.Now().Add(5 * time.Second); ; {
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err == nil {
			syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s is still locked 5 s after otter was killed", state)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
