package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/registry"

	"github.com/otter-fleet/otter/diff"
	"github.com/otter-fleet/otter/internal/demo"
	"github.com/otter-fleet/otter/internal/testutil"
	"github.com/otter-fleet/otter/nix"
)

// otter runs the CLI in-process and returns its exit code, stdout and stderr.
func otter(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(append([]string{"otter"}, args...), &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

// otterJSON runs a command with --json and decodes its result.
func otterJSON(t *testing.T, v any, args ...string) {
	t.Helper()
	code, out, errs := otter(t, append(args, "--json")...)
	if code != 0 {
		t.Fatalf("otter %v: exit %d\n%s", args, code, errs)
	}
	if err := json.Unmarshal([]byte(out), v); err != nil {
		t.Fatalf("otter %v --json printed %q: %v", args, out, err)
	}
}

// demoTree writes the demo closure as a store tree with its path-info.
func demoTree(t *testing.T) (dir, pathInfo string) {
	dir = testutil.TempStore(t)
	store := filepath.Join(dir, "nix", "store")
	os.MkdirAll(store, 0o755)
	if err := demo.Write(store); err != nil {
		t.Fatal(err)
	}
	pathInfo = filepath.Join(dir, "path-info.json")
	os.WriteFile(pathInfo, demo.PathInfoJSON, 0o644)
	return dir, pathInfo
}

func TestVersion(t *testing.T) {
	var v versionResult
	otterJSON(t, &v, "version")
	if v.Version == "" || !strings.HasPrefix(v.Go, "go") || v.ArtifactType == "" {
		t.Fatalf("version: %+v", v)
	}
	// Global flags go before or after the command.
	code, out, _ := otter(t, "--json", "version")
	if code != 0 || !strings.Contains(out, `"version"`) {
		t.Fatalf("--json before the command: %d %q", code, out)
	}
}

func TestBundleInspectPushExtract(t *testing.T) {
	dir, pathInfo := demoTree(t)
	layout := filepath.Join(t.TempDir(), "layout")
	var b bundleResult
	otterJSON(t, &b, "bundle", "--store-dir", dir, "--path-info", pathInfo, demo.Root, "--out", "oci:"+layout+":v1", "--release-version", "7")
	if b.Paths != 3 || b.Root != demo.Root || b.Version != 7 || b.CompressedSize == 0 {
		t.Fatalf("bundle result %+v", b)
	}
	var ins inspectResult
	otterJSON(t, &ins, "inspect", "oci:"+layout+":v1")
	if ins.Digest != b.Digest || len(ins.Paths) != 3 || ins.NarSize != b.NarSize || ins.Version != 7 {
		t.Fatalf("inspect %+v", ins)
	}
	code, human, _ := otter(t, "inspect", "oci:"+layout+":v1")
	if code != 0 || !strings.Contains(human, "total: 3 store paths") || !strings.Contains(human, demo.Root) {
		t.Fatalf("inspect for a person:\n%s", human)
	}

	host := testutil.Registry(t)
	dst := host + "/fleet/app:v1"
	var p pushResult
	otterJSON(t, &p, "push", "oci:"+layout+":v1", dst)
	if p.Digest != b.Digest {
		t.Fatalf("pushed %s, bundled %s", p.Digest, b.Digest)
	}
	store := testutil.TempStore(t)
	var x extractResult
	otterJSON(t, &x, "extract", dst, store)
	if len(x.Extracted) != 3 || x.Digest != b.Digest {
		t.Fatalf("extract %+v", x)
	}
	c, _ := demo.Closure()
	testutil.VerifyStore(t, c, store)
	otterJSON(t, &x, "extract", dst, store)
	if len(x.Present) != 3 || len(x.Extracted) != 0 {
		t.Fatalf("second extract %+v", x)
	}
}

func TestSourceDateEpoch(t *testing.T) {
	dir, pathInfo := demoTree(t)
	var a, b bundleResult
	otterJSON(t, &a, "bundle", "--store-dir", dir, "--path-info", pathInfo, demo.Root, "--out", "oci:"+t.TempDir())
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	otterJSON(t, &b, "bundle", "--store-dir", dir, "--path-info", pathInfo, demo.Root, "--out", "oci:"+t.TempDir())
	if a.Digest == b.Digest {
		t.Fatal("SOURCE_DATE_EPOCH did not change the bundle")
	}
	t.Setenv("SOURCE_DATE_EPOCH", "yesterday")
	if code, _, errs := otter(t, "bundle", "--store-dir", dir, "--path-info", pathInfo, demo.Root, "--out", "oci:"+t.TempDir()); code != exitUsage || !strings.Contains(errs, "SOURCE_DATE_EPOCH") {
		t.Fatalf("bad SOURCE_DATE_EPOCH: exit %d, %s", code, errs)
	}
}

// toObjectShape rewrites a Nix 2.8 path-info list in the object shape of
// newer Nix, with SRI hashes.
func toObjectShape(t *testing.T, list []byte) []byte {
	infos, err := nix.ParsePathInfo(list)
	if err != nil {
		t.Fatal(err)
	}
	obj := map[string]any{}
	for _, p := range infos {
		obj[p.Path] = map[string]any{"narHash": p.NarHash.SRI(), "narSize": p.NarSize, "references": p.References, "signatures": []string{}, "ultimate": false}
	}
	out, _ := json.Marshal(obj)
	return out
}

// TestCorpusBothPathInfoShapes bundles corpus r1 from its store tree with
// both path-info shapes: the same bundle.
func TestCorpusBothPathInfoShapes(t *testing.T) {
	dir := testutil.Corpus(t, "r1")
	root, _ := os.ReadFile(filepath.Join(dir, "root"))
	list, _ := os.ReadFile(filepath.Join(dir, "path-info.json"))
	objFile := filepath.Join(t.TempDir(), "object.json")
	os.WriteFile(objFile, toObjectShape(t, list), 0o644)
	var a, b bundleResult
	otterJSON(t, &a, "bundle", "--store-dir", dir, "--path-info", filepath.Join(dir, "path-info.json"), strings.TrimSpace(string(root)), "--out", "oci:"+t.TempDir()+":r1")
	otterJSON(t, &b, "bundle", "--store-dir", filepath.Join(dir, "nix", "store"), "--path-info", objFile, strings.TrimSpace(string(root)), "--out", "oci:"+t.TempDir()+":r1")
	if a.Digest != b.Digest || a.Paths != 22 {
		t.Fatalf("list shape gives %s (%d paths), object shape %s", a.Digest, a.Paths, b.Digest)
	}
}

// TestBundleFromNixStore builds a small closure with real Nix (sandboxed,
// busybox as the builder), bundles it straight from /nix/store, and again
// from a copy of its store paths with the path-info Nix printed: the same
// bundle. Extracting it gives paths Nix's own hashes agree with.
func TestBundleFromNixStore(t *testing.T) {
	nixBuild, err := exec.LookPath("nix-build")
	testutil.Require(t, err == nil, "nix-build (apt-get install nix-bin)")
	bbSrc, err := exec.LookPath("busybox")
	testutil.Require(t, err == nil, "busybox (apt-get install busybox-static)")
	bbDir := t.TempDir()
	data, err := os.ReadFile(bbSrc)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(bbDir, "busybox"), data, 0o755)
	out, err := exec.Command(nixBuild, "testdata/closure.nix", "--arg", "bbdir", bbDir, "--argstr", "tag", "cli", "--no-out-link").CombinedOutput()
	if err != nil {
		t.Fatalf("nix-build: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	root := lines[len(lines)-1]

	var fromNix bundleResult
	otterJSON(t, &fromNix, "bundle", root, "--out", "oci:"+t.TempDir()+":nix")
	if fromNix.Paths != 3 {
		t.Fatalf("closure of %s has %d paths, want 3", root, fromNix.Paths)
	}

	pi, err := exec.Command("nix", "--extra-experimental-features", "nix-command", "path-info", "--json", "--recursive", root).Output()
	if err != nil {
		t.Fatal(err)
	}
	infos, err := nix.ParsePathInfo(pi)
	if err != nil {
		t.Fatal(err)
	}
	tree := testutil.TempStore(t)
	for _, p := range infos {
		if out, err := exec.Command("cp", "-a", p.Path, tree).CombinedOutput(); err != nil {
			t.Fatalf("cp: %v %s", err, out)
		}
	}
	piFile := filepath.Join(t.TempDir(), "path-info.json")
	os.WriteFile(piFile, pi, 0o644)
	var fromTree bundleResult
	layout := filepath.Join(t.TempDir(), "layout")
	otterJSON(t, &fromTree, "bundle", "--store-dir", tree, "--path-info", piFile, root, "--out", "oci:"+layout+":tree")
	if fromTree.Digest != fromNix.Digest {
		t.Fatalf("from the Nix store %s, from a tree %s", fromNix.Digest, fromTree.Digest)
	}

	store := testutil.TempStore(t)
	var x extractResult
	otterJSON(t, &x, "extract", "oci:"+layout+":tree", store)
	for _, p := range infos {
		dump, err := exec.Command("nix-store", "--dump", filepath.Join(store, nix.BaseName(p.Path))).Output()
		if err != nil {
			t.Fatal(err)
		}
		if h := nix.Hash(sha256.Sum256(dump)); h != p.NarHash {
			t.Fatalf("%s extracted: nix-store --dump hashes to %s, Nix says %s", p.Path, h, p.NarHash)
		}
	}
}

func TestExitCodes(t *testing.T) {
	dir, pathInfo := demoTree(t)
	layout := filepath.Join(t.TempDir(), "layout")
	if code, _, errs := otter(t, "bundle", "--store-dir", dir, "--path-info", pathInfo, demo.Root, "--out", "oci:"+layout+":v1"); code != 0 {
		t.Fatal(errs)
	}
	// A path-info that leaves out a reference.
	var list []map[string]any
	json.Unmarshal(demo.PathInfoJSON, &list)
	open, _ := json.Marshal(list[:2])
	openFile := filepath.Join(t.TempDir(), "open.json")
	os.WriteFile(openFile, open, 0o644)

	// A store tree with a changed file.
	bad, badInfo := demoTree(t)
	victim := filepath.Join(bad, "nix", "store", nix.BaseName(demo.Root))
	os.Chmod(victim, 0o755)
	os.Chmod(filepath.Join(victim, "release.json"), 0o644)
	os.WriteFile(filepath.Join(victim, "release.json"), []byte("{}\n"), 0o444)

	// A layout with a damaged layer.
	tampered := filepath.Join(t.TempDir(), "tampered")
	exec.Command("cp", "-a", layout, tampered).Run()
	var ins inspectResult
	otterJSON(t, &ins, "inspect", "oci:"+tampered+":v1")
	blob := filepath.Join(tampered, "blobs", "sha256", ins.Paths[0].Layer.Hex)
	data, _ := os.ReadFile(blob)
	data[len(data)/2] ^= 1
	os.WriteFile(blob, data, 0o644)

	// A registry that wants credentials otter does not have.
	reg := registry.New()
	locked := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, _, ok := r.BasicAuth(); !ok {
			w.Header().Set("WWW-Authenticate", `Basic realm="x"`)
			http.Error(w, "no", http.StatusUnauthorized)
			return
		}
		reg.ServeHTTP(w, r)
	}))
	defer locked.Close()
	u, _ := url.Parse(locked.URL)
	t.Setenv("DOCKER_CONFIG", t.TempDir())

	for _, tc := range []struct {
		name string
		args []string
		code int
		msg  string
	}{
		{"unknown command", []string{"frobnicate"}, exitError, ""},
		{"missing argument", []string{"bundle", "--out", "oci:" + t.TempDir()}, exitUsage, "one store path"},
		{"missing --out", []string{"bundle", demo.Root}, exitUsage, "out"},
		{"bad reference", []string{"inspect", "Not A Ref!"}, exitUsage, "invalid reference"},
		{"not a store path", []string{"bundle", "--store-dir", dir, "--path-info", pathInfo, "/tmp/x", "--out", "oci:" + t.TempDir()}, exitUsage, "/tmp/x"},
		{"not closed", []string{"bundle", "--store-dir", dir, "--path-info", openFile, demo.Root, "--out", "oci:" + t.TempDir()}, exitInvalid, "not closed"},
		{"NAR hash mismatch", []string{"bundle", "--store-dir", bad, "--path-info", badInfo, demo.Root, "--out", "oci:" + t.TempDir()}, exitInvalid, demo.Root},
		{"unreadable path-info", []string{"bundle", "--store-dir", dir, "--path-info", "/nonexistent.json", demo.Root, "--out", "oci:" + t.TempDir()}, exitError, "/nonexistent.json"},
		{"missing tag", []string{"inspect", "oci:" + layout + ":v2"}, exitNotFound, "v2"},
		{"tampered layer", []string{"extract", "oci:" + tampered + ":v1", testutil.TempStore(t)}, exitIntegrity, "digest"},
		{"refused credentials", []string{"push", "oci:" + layout + ":v1", u.Host + "/fleet/app:v1"}, exitRegistry, "credentials"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errs := otter(t, append(tc.args, "--json")...)
			if code != tc.code {
				t.Fatalf("exit %d, want %d\n%s", code, tc.code, errs)
			}
			if !strings.Contains(errs, tc.msg) {
				t.Fatalf("error %q does not mention %q", errs, tc.msg)
			}
			if tc.code != exitError || tc.msg != "" {
				var e errorResult
				if err := json.Unmarshal([]byte(out), &e); err != nil || e.ExitCode != tc.code {
					t.Fatalf("--json error output %q: %v", out, err)
				}
			}
		})
	}
}

func TestNoProgressWithoutTerminal(t *testing.T) {
	dir, pathInfo := demoTree(t)
	code, out, errs := otter(t, "bundle", "--store-dir", dir, "--path-info", pathInfo, demo.Root, "--out", "oci:"+t.TempDir())
	if code != 0 {
		t.Fatal(errs)
	}
	if strings.ContainsAny(out+errs, "\r\x1b") {
		t.Fatalf("progress drawn without a terminal: %q %q", out, errs)
	}
}

// TestDemo runs the README's first command: four releases through the
// release pipeline into a registry on loopback, a device updated to each,
// the failing one rolled back, and otter diff explaining the cascade.
func TestDemo(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "demo")
	var res demoResult
	otterJSON(t, &res, "demo", "--dir", dir)
	if len(res.Steps) != demo.Releases {
		t.Fatalf("%d steps, want %d: %+v", len(res.Steps), demo.Releases, res)
	}
	want := []struct{ outcome, method string }{{"installed", "layers"}, {"updated", "patch"}, {"updated", "patch"}, {"rolled back", ""}}
	for i, s := range res.Steps {
		if s.Outcome != want[i].outcome || s.Method != want[i].method {
			t.Errorf("release %d: %s by %q, want %s by %q (%s)", s.Release, s.Outcome, s.Method, want[i].outcome, want[i].method, s.Error)
		}
		if i > 0 && (s.Patch <= 0 || s.Served <= s.Patch || s.Served >= s.Nix/4) {
			t.Errorf("release %d: patch %d, served %d, Nix %d: want 0 < patch < served < Nix/4", s.Release, s.Patch, s.Served, s.Nix)
		}
	}
	if e := res.Steps[3].Error; !strings.Contains(e, "health check") || !strings.Contains(e, "cannot read the greeting table") {
		t.Errorf("release 4's error %q does not name the failed self test", e)
	}
	if res.Current != 3 || res.Served >= res.Nix/10 {
		t.Errorf("current release %d (want 3); served %d for the updates against Nix %d", res.Current, res.Served, res.Nix)
	}
	// The device holds release 3, every NAR hash as published.
	r3 := filepath.Join(dir, "build", "r3")
	data, err := os.ReadFile(filepath.Join(r3, "path-info.json"))
	if err != nil {
		t.Fatal(err)
	}
	infos, err := nix.ParsePathInfo(data)
	if err != nil {
		t.Fatal(err)
	}
	c, err := nix.NewClosure(infos[len(infos)-1].Path, infos)
	if err != nil {
		t.Fatal(err)
	}
	testutil.VerifyStore(t, c, filepath.Join(dir, "device", "nix", "store"))
	// The cascade: both apps renamed only, because of libgreet.
	renamed := 0
	for _, p := range res.Cascade.Paths {
		if p.Status != diff.Renamed {
			continue
		}
		renamed++
		if len(p.Causes) != 1 || p.Causes[0].Name != "libgreet" || p.Causes[0].FromVersion != "1.0" || p.Causes[0].Version != "1.1" {
			t.Errorf("%s renamed because of %v, want libgreet 1.0 → 1.1", p.Name, p.Causes)
		}
	}
	if renamed != 2 {
		t.Errorf("%d paths renamed only, want hello and dashboard: %+v", renamed, res.Cascade.Paths)
	}
	if html, err := os.ReadFile(res.Report); err != nil || !bytes.Contains(html, []byte("libgreet")) {
		t.Errorf("report %s: %v", res.Report, err)
	} else if bytes.Contains(html, []byte("2.3 → 2.3")) || !bytes.Contains(html, []byte("<td>dashboard 2.3</td>")) {
		t.Errorf("the report writes a renamed path's unchanged version as a change")
	}
	// Again: the directory is emptied and the bundles are the same.
	var again demoResult
	otterJSON(t, &again, "demo", "--dir", dir)
	for i := range res.Steps {
		if again.Steps[i].Digest != res.Steps[i].Digest {
			t.Errorf("release %d: bundle %s, then %s", i+1, res.Steps[i].Digest, again.Steps[i].Digest)
		}
	}
	// A directory the demo did not make is left alone.
	other := t.TempDir()
	keep := filepath.Join(other, "notes.txt")
	if err := os.WriteFile(keep, []byte("mine"), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, _, errs := otter(t, "demo", "--dir", other); code != exitUsage || !strings.Contains(errs, "no earlier demo made it") {
		t.Errorf("demo into a foreign directory: exit %d, %s", code, errs)
	}
	if got, err := os.ReadFile(keep); err != nil || string(got) != "mine" {
		t.Errorf("the foreign directory's file: %q, %v", got, err)
	}
}

func TestReorderArgs(t *testing.T) {
	app := newApp(nil, nil)
	got := strings.Join(reorderArgs(app, []string{"otter", "--json", "bundle", "/nix/store/x", "--out", "oci:d", "-q", "--system=s", "--", "-weird"}), " ")
	want := "otter --json bundle --out oci:d -q --system=s -- /nix/store/x -weird"
	if got != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
	got = strings.Join(reorderArgs(app, []string{"otter", "trust", "init", "--key", "a.pub", "--out", "t.json"}), " ")
	if want := "otter trust init --key a.pub --out t.json"; got != want {
		t.Fatalf("subcommand: got %s, want %s", got, want)
	}
}

// TestProgressOnTerminal runs otter under script(1), which gives it a
// terminal: the progress bar is drawn there, and not with --json.
func TestProgressOnTerminal(t *testing.T) {
	script, err := exec.LookPath("script")
	testutil.Require(t, err == nil, "script (util-linux)")
	bin := filepath.Join(t.TempDir(), "otter")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	store, pathInfo := demoTree(t)
	for _, tc := range []struct {
		extra string
		want  bool
	}{{"", true}, {"--json", false}, {"-q", false}} {
		cmdline := bin + " bundle --store-dir " + store + " --path-info " + pathInfo + " " + demo.Root + " --out oci:" + t.TempDir() + " " + tc.extra
		out, err := exec.Command(script, "-qec", cmdline, "/dev/null").CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", cmdline, err, out)
		}
		if got := strings.Contains(string(out), "packing"); got != tc.want {
			t.Errorf("%q: progress drawn = %v, want %v\n%q", tc.extra, got, tc.want, out)
		}
	}
}
