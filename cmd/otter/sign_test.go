package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/otter-fleet/otter/internal/demo"
	"github.com/otter-fleet/otter/internal/testutil"
)

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// otterBinary builds otter once for tests that run it as a process.
func otterBinary(t *testing.T) string {
	binOnce.Do(func() {
		dir, err := os.MkdirTemp("", "otter-bin-")
		if err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(dir, "otter")
		if out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput(); err != nil {
			binErr = err
			t.Logf("%s", out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// keys makes a key pair with OTTER_PASSWORD and a trust file for it.
func keys(t *testing.T, dir, prefix string, extra ...string) (key, pub, trust string) {
	t.Helper()
	t.Setenv("OTTER_PASSWORD", "pw")
	var kr keygenResult
	otterJSON(t, &kr, append([]string{"keygen", "--prefix", filepath.Join(dir, prefix)}, extra...)...)
	trust = filepath.Join(dir, prefix+"-trust.json")
	var tr trustResult
	otterJSON(t, &tr, "trust", "init", "--key", kr.PublicKey, "--out", trust)
	if tr.Threshold != 1 || len(tr.KeyIDs) != 1 || tr.KeyIDs[0] != kr.KeyID {
		t.Fatalf("trust %+v for key %s", tr, kr.KeyID)
	}
	return kr.PrivateKey, kr.PublicKey, trust
}

// demoBundle writes the demo bundle with a release version to ref.
func demoBundle(t *testing.T, ref string, version string) bundleResult {
	dir, pathInfo := demoTree(t)
	var b bundleResult
	otterJSON(t, &b, "bundle", "--store-dir", dir, "--path-info", pathInfo, demo.Root, "--out", ref, "--release-version", version)
	return b
}

// TestSignInCIVerifyOnDevice signs a release in a registry, copies it to
// a layout and to a single file (a USB stick), and verifies both with the
// otter binary in a network namespace with no network at all. Every
// refusal has its own exit code.
func TestSignInCIVerifyOnDevice(t *testing.T) {
	dir := t.TempDir()
	key, _, trust := keys(t, dir, "release")
	reg := testutil.RealRegistry(t) + "/" + testutil.Repository(t)
	b := demoBundle(t, reg+":r5", "5")
	var sr signResult
	otterJSON(t, &sr, "sign", reg+":r5", "--key", key, "--channel", "stable", "--expires", "720h")
	if sr.Statement.Version != 5 || sr.Statement.Digest != b.Digest.String() || !sr.Cosign || len(sr.Signers) != 1 {
		t.Fatalf("sign result %+v", sr)
	}
	usb := filepath.Join(t.TempDir(), "usb")
	var pr pushResult
	otterJSON(t, &pr, "push", reg+":r5", "oci:"+usb+":r5")
	if pr.Statements != 1 || pr.Cosign != 1 {
		t.Fatalf("push carried %d statements and %d cosign signatures", pr.Statements, pr.Cosign)
	}
	archive := filepath.Join(t.TempDir(), "r5.tar")
	var er exportResult
	otterJSON(t, &er, "export", reg+":r5", archive)

	bin := otterBinary(t)
	unshare, err := exec.LookPath("unshare")
	testutil.Require(t, err == nil && os.Geteuid() == 0, "unshare(1) as root, for a device with no network")
	device := func(args ...string) (int, string) {
		cmd := exec.Command(unshare, append([]string{"--net", bin}, args...)...)
		out, err := cmd.CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return code, string(out)
	}
	// The device really has no network: the registry is out of reach.
	if code, out := device("inspect", reg+":r5"); code == 0 {
		t.Fatalf("the registry is reachable from the device namespace: %s", out)
	}
	for _, src := range []string{"oci:" + usb + ":r5", "oci-archive:" + archive + ":r5"} {
		if code, out := device("verify", src, "--trust", trust, "--installed-version", "4"); code != 0 || !strings.Contains(out, "release 5 on stable") {
			t.Fatalf("verify %s offline: exit %d\n%s", src, code, out)
		}
	}
	_, _, otherTrust := keys(t, dir, "attacker")
	for _, tc := range []struct {
		name string
		args []string
		code int
	}{
		{"rollback", []string{"--installed-version", "6"}, exitRollback},
		{"downgrade allowed", []string{"--installed-version", "6", "--allow-downgrade"}, 0},
		{"freeze", []string{"--at", "2099-01-01T00:00:00Z"}, exitExpired},
		{"another channel", []string{"--channel", "beta"}, exitWrongChannel},
		{"another system", []string{"--system", "x86_64-linux"}, exitWrongSystem},
		{"unknown key", []string{"--trust", otherTrust}, exitUnknownKey},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"verify", "oci:" + usb + ":r5", "--trust", trust}, tc.args...)
			if code, out := device(args...); code != tc.code {
				t.Fatalf("exit %d, want %d\n%s", code, tc.code, out)
			}
		})
	}
	// Mix-and-match: r5's statement presented for another bundle.
	other := demoBundle(t, "oci:"+usb+":r6", "6")
	env := filepath.Join(t.TempDir(), "r5.dsse.json")
	otterJSON(t, &sr, "sign", "oci:"+usb+":r5", "--key", key, "--envelope-out", env)
	if code, _, errs := otter(t, "verify", "oci:"+usb+":r6", "--trust", trust, "--envelope", env); code != exitMixAndMatch {
		t.Fatalf("r5's statement for r6 (%s): exit %d\n%s", other.Digest, code, errs)
	}
	// An unsigned bundle.
	if code, _, _ := otter(t, "verify", "oci:"+usb+":r6", "--trust", trust); code != exitNotSigned {
		t.Fatalf("unsigned bundle: exit %d", code)
	}
	// A truncated statement.
	data, _ := os.ReadFile(env)
	os.WriteFile(env, data[:len(data)/2], 0o644)
	if code, _, _ := otter(t, "verify", "oci:"+usb+":r5", "--trust", trust, "--envelope", env); code != exitMalformed {
		t.Fatalf("truncated statement: exit %d", code)
	}
}

// TestCosignInterop proves with the real cosign binary, against the real
// registry, that cosign accepts what otter signs and otter what cosign
// signs, and that each reads the other's key files.
func TestCosignInterop(t *testing.T) {
	cosign := testutil.Tool(t, "cosign")
	reg := testutil.RealRegistry(t) + "/" + testutil.Repository(t)
	dir := t.TempDir()
	otterKey, otterPub, otterTrust := keys(t, dir, "otter")
	runCosign := func(pass string, args ...string) string {
		t.Helper()
		cmd := exec.Command(cosign, args...)
		cmd.Env = append(os.Environ(), "COSIGN_PASSWORD="+pass, "COSIGN_YES=true")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("cosign %v: %v\n%s", args, err, out)
		}
		return string(out)
	}

	t.Run("cosign verifies what otter signed", func(t *testing.T) {
		demoBundle(t, reg+":a", "1")
		var sr signResult
		otterJSON(t, &sr, "sign", reg+":a", "--key", otterKey, "--channel", "stable")
		out := runCosign("", "verify", "--key", otterPub, "--insecure-ignore-tlog", "--allow-insecure-registry", reg+":a")
		var claims []map[string]any
		if err := json.Unmarshal([]byte(out[strings.Index(out, "["):]), &claims); err != nil || len(claims) != 1 {
			t.Fatalf("cosign verify printed %q", out)
		}
		if !strings.Contains(out, sr.Statement.Digest) || !strings.Contains(out, `"otter.dev/channel":"stable"`) {
			t.Fatalf("cosign's verified claims lack the digest or channel: %s", out)
		}
	})

	t.Run("otter verifies what cosign signed", func(t *testing.T) {
		demoBundle(t, reg+":b", "2")
		runCosign("cpw", "generate-key-pair", "--output-key-prefix", filepath.Join(dir, "cosign"))
		runCosign("cpw", "sign", "--key", filepath.Join(dir, "cosign.key"), "--tlog-upload=false", "--allow-insecure-registry",
			"-a", "otter.dev/expires=2099-01-01T00:00:00Z", "-a", "otter.dev/channel=stable", reg+":b")
		trust := filepath.Join(dir, "cosign-trust.json")
		var tr trustResult
		otterJSON(t, &tr, "trust", "init", "--key", filepath.Join(dir, "cosign.pub"), "--out", trust)
		var vr verifyResult
		otterJSON(t, &vr, "verify", reg+":b", "--trust", trust, "--cosign")
		if vr.Via != "cosign" || vr.Cosign == nil || vr.Cosign.Version != 2 || vr.Cosign.Channel != "stable" {
			t.Fatalf("verify result %+v %+v", vr, vr.Cosign)
		}
		// A device requires otter's statement; verify, by default, applies
		// the device's rule: both refuse a cosign-only bundle alike.
		if code, _, _ := otter(t, "verify", reg+":b", "--trust", trust); code != exitNotSigned {
			t.Fatalf("verify of a cosign-only bundle: exit %d, want %d", code, exitNotSigned)
		}
		dev := deviceDirs{store: testutil.TempStore(t), state: t.TempDir(), trust: trust}
		if code, _, _ := otter(t, append([]string{"update", reg + ":b"}, dev.args()...)...); code != exitNotSigned {
			t.Fatalf("update to a cosign-only bundle: exit %d, want %d", code, exitNotSigned)
		}
		// Another key's trust file: the signature is by a key it does not
		// hold.
		if code, _, _ := otter(t, "verify", reg+":b", "--trust", otterTrust, "--cosign"); code != exitUnknownKey {
			t.Fatalf("cosign signature under the wrong trust: exit %d, want %d", code, exitUnknownKey)
		}
		// Without an expiry claim there is no freshness: refused.
		demoBundle(t, reg+":c", "3")
		runCosign("cpw", "sign", "--key", filepath.Join(dir, "cosign.key"), "--tlog-upload=false", "--allow-insecure-registry", reg+":c")
		if code, _, errs := otter(t, "verify", reg+":c", "--trust", trust, "--cosign"); code != exitMalformed || !strings.Contains(errs, "otter.dev/expires") {
			t.Fatalf("cosign signature without expiry: exit %d %s", code, errs)
		}
	})

	t.Run("each reads the other's keys", func(t *testing.T) {
		demoBundle(t, reg+":d", "4")
		// cosign signs with otter's key file...
		runCosign("pw", "sign", "--key", otterKey, "--tlog-upload=false", "--allow-insecure-registry", "-a", "otter.dev/expires=2099-01-01T00:00:00Z", "-a", "otter.dev/channel=stable", reg+":d")
		var vr verifyResult
		otterJSON(t, &vr, "verify", reg+":d", "--trust", otterTrust, "--cosign")
		// ...and otter signs with cosign's.
		demoBundle(t, reg+":e", "5")
		t.Setenv("OTTER_PASSWORD", "cpw")
		otterJSON(t, &signResult{}, "sign", reg+":e", "--key", filepath.Join(dir, "cosign.key"))
		runCosign("", "verify", "--key", filepath.Join(dir, "cosign.pub"), "--insecure-ignore-tlog", "--allow-insecure-registry", reg+":e")
	})
}

func TestTrustRotationAndEnvKeys(t *testing.T) {
	dir := t.TempDir()
	old, _, trust := keys(t, dir, "old")
	next, nextPub, _ := keys(t, dir, "next", "--algorithm", "ed25519")
	layout := "oci:" + filepath.Join(t.TempDir(), "l")
	demoBundle(t, layout+":r1", "1")
	demoBundle(t, layout+":r2", "2")

	// A key from the environment, as CI secret stores give it.
	keyPEM, _ := os.ReadFile(next)
	t.Setenv("OTTER_SIGNING_KEY", string(keyPEM))
	otterJSON(t, &signResult{}, "sign", layout+":r1", "--key", "env://OTTER_SIGNING_KEY")
	if code, _, _ := otter(t, "verify", layout+":r1", "--trust", trust); code != exitUnknownKey {
		t.Fatalf("the next key before rotation: exit %d", code)
	}

	rotation := filepath.Join(dir, "rotation.json")
	if code, _, _ := otter(t, "trust", "rotate", "--trust", trust, "--new-key", nextPub, "--key", next, "--out", rotation); code != exitUnknownKey {
		t.Fatalf("a rotation the current key did not sign: exit %d", code)
	}
	var rr trustResult
	otterJSON(t, &rr, "trust", "rotate", "--trust", trust, "--new-key", nextPub, "--key", old, "--key", next, "--out", rotation)
	if rr.Version != 2 {
		t.Fatalf("rotation %+v", rr)
	}
	otterJSON(t, &rr, "trust", "update", "--trust", trust, rotation)
	if rr.Version != 2 || len(rr.KeyIDs) != 1 {
		t.Fatalf("updated trust %+v", rr)
	}
	if code, _, errs := otter(t, "verify", layout+":r1", "--trust", trust); code != 0 {
		t.Fatalf("the next key after rotation: exit %d %s", code, errs)
	}
	otterJSON(t, &signResult{}, "sign", layout+":r2", "--key", old)
	if code, _, _ := otter(t, "verify", layout+":r2", "--trust", trust); code != exitUnknownKey {
		t.Fatalf("the old key after rotation: exit %d", code)
	}
	// The same rotation again is no rotation: its version is not higher.
	if code, _, _ := otter(t, "trust", "update", "--trust", trust, rotation); code != exitRollback {
		t.Fatalf("replayed rotation: exit %d", code)
	}
	// A wrong passphrase is its own error.
	t.Setenv("OTTER_PASSWORD", "wrong")
	if code, _, errs := otter(t, "sign", layout+":r2", "--key", old); code != exitInvalid || !strings.Contains(errs, "passphrase") {
		t.Fatalf("wrong passphrase: exit %d %s", code, errs)
	}
}
