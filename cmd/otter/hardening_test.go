package main

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
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
	"github.com/otter-fleet/otter/oci"
	"github.com/otter-fleet/otter/sign"
)

// The hardening tests: each attack or fault found when otter was attacked
// (issue 12), refused with its documented exit code, nothing lost.

// layoutFleet publishes demo releases 1..n in a fresh OCI layout.
func layoutFleet(t *testing.T, n int) (base, dir, trust string, digests []string) {
	t.Helper()
	dir = filepath.Join(t.TempDir(), "l")
	base = "oci:" + dir
	trust, digests, _ = fleet(t, base, n)
	return base, dir, trust, digests
}

// patchBlob is the file of the signed patch from release i-1 to i.
func patchBlob(t *testing.T, base, dir, digest string) v1.Descriptor {
	t.Helper()
	ref, _ := oci.ParseRef(base, false)
	h, _ := v1.NewHash(digest)
	arts, err := oci.Referrers(context.Background(), ref, h, delta.ArtifactType)
	if err != nil || len(arts) != 1 {
		t.Fatalf("patch artifacts %v %v", arts, err)
	}
	m, err := oci.ArtifactManifest(context.Background(), ref, h, arts[0].Digest, delta.ArtifactType)
	if err != nil {
		t.Fatal(err)
	}
	return m.Layers[0]
}

// TestFreezeOnInstalledRelease: a registry that keeps serving the
// installed release after its statement expired does not keep the device
// there quietly: update says 13, and status says so.
func TestFreezeOnInstalledRelease(t *testing.T) {
	base, _, trust, _ := layoutFleet(t, 1)
	d := deviceDirs{store: testutil.TempStore(t), state: t.TempDir(), trust: trust}
	otterJSON(t, &device.UpdateResult{}, append([]string{"update", base + ":r1"}, d.args()...)...)
	later := time.Now().Add(800 * time.Hour).UTC().Format(time.RFC3339) // the statements expire after 720h
	code, _, errs := otter(t, append([]string{"update", base + ":r1", "--at", later}, d.args()...)...)
	if code != exitExpired {
		t.Fatalf("update to the installed release with its statement expired: exit %d, want %d: %s", code, exitExpired, errs)
	}
	var st device.Status
	otterJSON(t, &st, append([]string{"status", "--at", later}, d.args()...)...)
	if !st.Expired || st.Last == nil || st.Last.Result != "failed" || !strings.Contains(st.Last.Reason, "expired") {
		t.Fatalf("status after the freeze: expired %v, last %+v", st.Expired, st.Last)
	}
	if st := status(t, d); st.Expired {
		t.Fatal("status now says the fresh statement expired")
	}
}

// TestCorruptFinishedDownload: a download of the right size but the
// wrong bytes is not reused forever: it is checked, removed, fetched again.
func TestCorruptFinishedDownload(t *testing.T) {
	base, dir, trust, digests := layoutFleet(t, 2)
	d := deviceDirs{store: testutil.TempStore(t), state: t.TempDir(), trust: trust}
	otterJSON(t, &device.UpdateResult{}, append([]string{"update", base + ":r1"}, d.args()...)...)
	blob := patchBlob(t, base+":r2", dir, digests[1])
	if err := os.WriteFile(filepath.Join(d.state, "downloads", blob.Digest.Hex+".patch"), make([]byte, blob.Size), 0o644); err != nil {
		t.Fatal(err)
	}
	var res device.UpdateResult
	otterJSON(t, &res, append([]string{"update", base + ":r2", "--method", "patch"}, d.args()...)...)
	if res.To != 2 || res.Transferred != blob.Size {
		t.Fatalf("update over a corrupt finished download: %+v", res)
	}
}

// TestKilledGC: a gc killed between renaming a store path out of the way
// and removing it leaves no half-deleted path under its real name; the
// next command finishes the removal and the device updates again.
func TestKilledGC(t *testing.T) {
	base, _, trust, digests := layoutFleet(t, 3)
	d := deviceDirs{store: testutil.TempStore(t), state: t.TempDir(), trust: trust}
	for _, r := range []string{"r1", "r2"} {
		otterJSON(t, &device.UpdateResult{}, append([]string{"update", base + ":" + r}, d.args()...)...)
	}
	before, _ := os.ReadDir(d.store)
	cmd := crashingOtter(t, "renamed.otter-gc-", append([]string{"gc", "-q"}, d.args("--keep", "1")...)...)
	if err := cmd.Run(); err == nil {
		t.Fatal("gc was not killed after renaming a store path")
	}
	ents, _ := os.ReadDir(d.store)
	renamed := 0
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".otter-gc-") {
			renamed++
		}
	}
	if renamed != 1 || len(ents) != len(before) {
		t.Fatalf("after the kill: %d entries, %d renamed; before %d", len(ents), renamed, len(before))
	}
	st := status(t, d) // recovers
	if st.Current == nil || st.Current.Digest != digests[1] {
		t.Fatalf("status after a killed gc: %+v", st.Current)
	}
	ents, _ = os.ReadDir(d.store)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".otter-") {
			t.Fatalf("recovery left %s", e.Name())
		}
	}
	otterJSON(t, &device.UpdateResult{}, append([]string{"update", base + ":r3"}, d.args()...)...)
}

// TestFullDiskIsNoSpace: a file system that runs out (here of inodes,
// which the free-space check does not foresee) while layers are unpacked
// or a patch is applied is exit 24 with a reason that says so, never a
// digest mismatch or an invalid patch.
func TestFullDiskIsNoSpace(t *testing.T) {
	testutil.Require(t, os.Geteuid() == 0, "root, to mount a small tmpfs")
	base, _, trust, digests := layoutFleet(t, 2)
	tmpfs := func(t *testing.T, inodes int) string {
		dir := t.TempDir()
		if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=8m,nr_inodes="+itoa(inodes), "tmpfs", dir).CombinedOutput(); err != nil {
			t.Fatalf("mount: %v %s", err, out)
		}
		t.Cleanup(func() { exec.Command("umount", dir).Run() })
		return dir
	}
	check := func(t *testing.T, d deviceDirs, code int, want string) {
		t.Helper()
		st := status(t, d)
		if code != exitNoSpace || st.Last == nil || !strings.Contains(st.Last.Reason, "not enough free space") || !strings.Contains(st.Last.Reason, "no space left") {
			t.Fatalf("exit %d, last %+v; want %d and a reason naming the full disk", code, st.Last, exitNoSpace)
		}
		if want == "" && st.Current != nil || want != "" && (st.Current == nil || st.Current.Digest != want) {
			t.Fatalf("the device moved: %+v", st.Current)
		}
	}
	t.Run("layers", func(t *testing.T) {
		d := deviceDirs{store: tmpfs(t, 6), state: t.TempDir(), trust: trust}
		code, _, _ := otter(t, append([]string{"update", base + ":r1"}, d.args()...)...)
		check(t, d, code, "")
	})
	t.Run("patch", func(t *testing.T) {
		d := deviceDirs{store: testutil.TempStore(t), state: t.TempDir(), trust: trust}
		otterJSON(t, &device.UpdateResult{}, append([]string{"update", base + ":r1"}, d.args()...)...)
		n := 0
		filepathWalk(d.store, func() { n++ })
		small := tmpfs(t, n+3)
		if out, err := exec.Command("cp", "-a", d.store+"/.", small).CombinedOutput(); err != nil {
			t.Fatalf("%s %v", out, err)
		}
		// The generation's root link names the old store directory.
		os.Remove(filepath.Join(d.state, "generations", "1", "root"))
		d.store = small
		code, _, _ := otter(t, append([]string{"update", base + ":r2", "--method", "patch"}, d.args()...)...)
		check(t, d, code, digests[0])
	})
}

func filepathWalk(dir string, fn func()) {
	filepath.WalkDir(dir, func(string, os.DirEntry, error) error { fn(); return nil })
}

// TestStateFilesNeverThroughSymlinks: a symlinked lock or partial
// download in the state directory is not written through.
func TestStateFilesNeverThroughSymlinks(t *testing.T) {
	base, dir, trust, digests := layoutFleet(t, 2)
	outside := t.TempDir()
	t.Run("lock", func(t *testing.T) {
		d := deviceDirs{store: testutil.TempStore(t), state: t.TempDir(), trust: trust}
		victim := filepath.Join(outside, "created-by-otter")
		os.Symlink(victim, filepath.Join(d.state, "lock"))
		if code, _, _ := otter(t, append([]string{"status"}, d.args()...)...); code == 0 {
			t.Fatal("status through a symlinked lock succeeded")
		}
		if _, err := os.Lstat(victim); err == nil {
			t.Fatal("otter created the file the lock links to")
		}
	})
	t.Run("partial download", func(t *testing.T) {
		d := deviceDirs{store: testutil.TempStore(t), state: t.TempDir(), trust: trust}
		otterJSON(t, &device.UpdateResult{}, append([]string{"update", base + ":r1"}, d.args()...)...)
		blob := patchBlob(t, base+":r2", dir, digests[1])
		victim := filepath.Join(outside, "victim")
		os.WriteFile(victim, []byte("keep me"), 0o644)
		os.Symlink(victim, filepath.Join(d.state, "downloads", blob.Digest.Hex+".patch.part"))
		otterJSON(t, &device.UpdateResult{}, append([]string{"update", base + ":r2", "--method", "patch"}, d.args()...)...)
		if got, _ := os.ReadFile(victim); string(got) != "keep me" {
			t.Fatalf("the download was written through the symlink: %q", got)
		}
	})
}

// TestDiagnostics: refusals name the real problem with its own code.
func TestDiagnostics(t *testing.T) {
	t.Run("junk statement attached first", func(t *testing.T) {
		layout := "oci:" + filepath.Join(t.TempDir(), "l")
		key, _, trust := keys(t, t.TempDir(), "k")
		b := demoBundle(t, layout+":r1", "1")
		ref, _ := oci.ParseRef(layout+":r1", false)
		desc := v1.Descriptor{MediaType: "application/vnd.oci.image.manifest.v1+json", Digest: b.Digest, Size: b.Size}
		if _, err := oci.Attach(context.Background(), ref, desc, sign.ReleaseType, []byte(`{"junk":`)); err != nil {
			t.Fatal(err)
		}
		otterJSON(t, &signResult{}, "sign", layout+":r1", "--key", key, "--expires", "1h")
		later := time.Now().Add(2 * time.Hour).UTC().Format(time.RFC3339)
		if code, _, errs := otter(t, "verify", layout+":r1", "--trust", trust, "--at", later); code != exitExpired {
			t.Fatalf("expired statement behind junk: exit %d, want %d: %s", code, exitExpired, errs)
		}
	})
	t.Run("trust init with a duplicate key", func(t *testing.T) {
		_, pub, _ := keys(t, t.TempDir(), "k")
		if code, _, _ := otter(t, "trust", "init", "--key", pub, "--key", pub, "--out", filepath.Join(t.TempDir(), "t.json")); code != exitInvalid {
			t.Fatalf("duplicate key: exit %d, want %d", code, exitInvalid)
		}
	})
	t.Run("damaged generation", func(t *testing.T) {
		base, _, trust, _ := layoutFleet(t, 2)
		d := deviceDirs{store: testutil.TempStore(t), state: t.TempDir(), trust: trust}
		for _, r := range []string{"r1", "r2"} {
			otterJSON(t, &device.UpdateResult{}, append([]string{"update", base + ":" + r}, d.args()...)...)
		}
		os.Remove(filepath.Join(d.state, "generations", "1", "release.json"))
		st := status(t, d)
		if len(st.Generations) != 2 || st.Generations[0].Damaged == "" || st.Current == nil || st.Current.Number != 2 {
			t.Fatalf("status of a device with a damaged generation: %+v", st.Generations)
		}
	})
	// Layout manifests an attacker with the USB stick controls.
	editManifest := func(t *testing.T, edit func(m map[string]any) []byte) string {
		t.Helper()
		dir := filepath.Join(t.TempDir(), "l")
		b := demoBundle(t, "oci:"+dir+":r1", "1")
		blob := filepath.Join(dir, "blobs", "sha256", b.Digest.Hex)
		raw, _ := os.ReadFile(blob)
		var m map[string]any
		json.Unmarshal(raw, &m)
		nb := edit(m)
		h, n, _ := v1.SHA256(bytes.NewReader(nb))
		os.WriteFile(filepath.Join(dir, "blobs", "sha256", h.Hex), nb, 0o644)
		idx, _ := os.ReadFile(filepath.Join(dir, "index.json"))
		idx = bytes.ReplaceAll(idx, []byte(b.Digest.String()), []byte(h.String()))
		idx = bytes.ReplaceAll(idx, []byte(`"size":`+itoa(int(b.Size))), []byte(`"size":`+itoa(int(n))))
		os.WriteFile(filepath.Join(dir, "index.json"), idx, 0o644)
		return "oci:" + dir + ":r1"
	}
	t.Run("negative layer size", func(t *testing.T) {
		ref := editManifest(t, func(m map[string]any) []byte {
			m["layers"].([]any)[0].(map[string]any)["size"] = -1
			b, _ := json.Marshal(m)
			return b
		})
		if code, _, errs := otter(t, "inspect", ref); code != exitInvalid || !strings.Contains(errs, "negative") {
			t.Fatalf("negative layer size: exit %d: %s", code, errs)
		}
	})
	t.Run("garbage manifest", func(t *testing.T) {
		ref := editManifest(t, func(map[string]any) []byte { return []byte("GIF89a, not a manifest") })
		if code, _, errs := otter(t, "inspect", ref); code != exitInvalid || !strings.Contains(errs, "manifest") || !strings.Contains(errs, strings.TrimPrefix(strings.TrimSuffix(ref, ":r1"), "oci:")) {
			t.Fatalf("garbage manifest: exit %d: %s", code, errs)
		}
	})
	t.Run("oversized manifest", func(t *testing.T) {
		ref := editManifest(t, func(m map[string]any) []byte {
			layers := m["layers"].([]any)
			for len(layers) < 40000 {
				layers = append(layers, layers[0])
			}
			m["layers"] = layers
			b, _ := json.Marshal(m)
			return b
		})
		if code, _, errs := otter(t, "inspect", ref); code != exitInvalid || !strings.Contains(errs, "at most") {
			t.Fatalf("a manifest of 40000 layers: exit %d: %s", code, errs)
		}
	})
}

// TestArchiveBounds: an oci-archive whose entries say more than it holds
// (a sparse entry) is refused before anything fills $TMPDIR, and before
// any signature is looked at.
func TestArchiveBounds(t *testing.T) {
	dir := t.TempDir()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	tw.WriteHeader(&tar.Header{Name: "oci-layout", Typeflag: tar.TypeReg, Size: 2, Mode: 0o644})
	tw.Write([]byte("{}"))
	tw.WriteHeader(&tar.Header{Name: "blobs/sha256/" + strings.Repeat("a", 64), Typeflag: tar.TypeReg, Size: 5, Mode: 0o644, Format: tar.FormatPAX,
		PAXRecords: map[string]string{"XXX.sparse.numblocks": "1", "XXX.sparse.map": "0,5", "XXX.sparse.size": "1099511627776"}})
	tw.Write([]byte("hello"))
	tw.Close()
	archive := filepath.Join(dir, "sparse.tar")
	os.WriteFile(archive, bytes.ReplaceAll(b.Bytes(), []byte("XXX.sparse."), []byte("GNU.sparse.")), 0o644)
	_, _, trust := keys(t, t.TempDir(), "k")
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	for _, args := range [][]string{{"inspect", "oci-archive:" + archive}, {"verify", "oci-archive:" + archive, "--trust", trust}} {
		code, _, errs := otter(t, args...)
		if code != exitIntegrity || !strings.Contains(errs, "sparse.tar") {
			t.Fatalf("%v: exit %d: %s", args, code, errs)
		}
	}
	var used int64
	filepath.WalkDir(tmp, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			fi, _ := d.Info()
			used += fi.Size()
		}
		return nil
	})
	if used > 1<<20 {
		t.Fatalf("the refused archive left %d bytes in TMPDIR", used)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

// TestSIGTERMStopsTheHealthCheck: a device command passes its context to
// activation and the health check, so SIGTERM stops a long health check
// at once instead of waiting out its timeout; the device goes back to
// its release.
func TestSIGTERMStopsTheHealthCheck(t *testing.T) {
	base, _, trust, digests := layoutFleet(t, 2)
	d := deviceDirs{store: testutil.TempStore(t), state: t.TempDir(), trust: trust}
	otterJSON(t, &device.UpdateResult{}, append([]string{"update", base + ":r1"}, d.args()...)...)
	cmd := crashingOtter(t, "", append([]string{"update", base + ":r2", "-q", "--health-check", "sleep 60", "--health-timeout", "2m"}, d.args()...)...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Wait for the health check to be running: the journal says switch.
	deadline := time.Now().Add(30 * time.Second)
	for {
		raw, _ := os.ReadFile(filepath.Join(d.state, "journal.json"))
		if strings.Contains(string(raw), `"switch"`) {
			break
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatal("the update never reached its health check")
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
	start := time.Now()
	cmd.Process.Signal(syscall.SIGTERM)
	err := cmd.Wait()
	if took := time.Since(start); took > 10*time.Second {
		t.Fatalf("SIGTERM took %v to stop the update", took)
	}
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() == 0 {
		t.Fatalf("a stopped update exited %v", err)
	}
	if st := status(t, d); st.Current == nil || st.Current.Digest != digests[0] {
		t.Fatalf("after SIGTERM the device is on %+v", st.Current)
	}
}
