package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/otter-fleet/otter/diff"
	"github.com/otter-fleet/otter/internal/testutil"
)

// TestDiffDemo: between demo releases 1 and 2 the greeting changed, hello
// is the same program renamed because of it, and the release changed;
// the HTML report is one page with its bars and its cascade.
func TestDiffDemo(t *testing.T) {
	layout := "oci:" + filepath.Join(t.TempDir(), "l")
	for i := 1; i <= 2; i++ {
		tree, pi, root := demoReleaseTree(t, i)
		otterJSON(t, &bundleResult{}, "bundle", "--store-dir", tree, "--path-info", pi, root, "--out", layout+":r"+strconv.Itoa(i))
	}
	html := filepath.Join(t.TempDir(), "report.html")
	var res diff.Result
	otterJSON(t, &res, "diff", layout+":r1", layout+":r2", "--html", html)
	by := map[string]diff.Path{}
	for _, p := range res.Paths {
		by[p.Name] = p
	}
	g, h, r := by["otter-demo-greeting"], by["otter-demo-hello"], by["otter-demo-release"]
	if g.Status != diff.Changed || g.FromVersion != "1.0" || g.Version != "2.0" {
		t.Fatalf("greeting: %+v", g)
	}
	if h.Status != diff.Renamed || len(h.Causes) != 1 || h.Causes[0].Name != "otter-demo-greeting" || h.Causes[0].String() != "otter-demo-greeting 1.0 → 2.0" {
		t.Fatalf("hello: %+v", h)
	}
	if r.Status != diff.Changed || len(r.Causes) < 2 || r.Causes[1].String() != "otter-demo-greeting 1.0 → 2.0, via otter-demo-hello" {
		t.Fatalf("release: %+v", r)
	}
	if res.Totals.Patch <= 0 || res.Totals.Layers <= 0 || res.Totals.Paths[diff.Renamed] != 1 {
		t.Fatalf("totals %+v", res.Totals)
	}
	// The person's table says the same.
	_, out, _ := otter(t, "diff", layout+":r1", layout+":r2")
	if !strings.Contains(out, "renamed") || !strings.Contains(out, "otter-demo-greeting 1.0 → 2.0, via otter-demo-hello") {
		t.Fatalf("table:\n%s", out)
	}
	page, err := os.ReadFile(html)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`id="cascade"`, `id="node-otter-demo-greeting"`, `id="ways"`, "default-src 'none'"} {
		if !strings.Contains(string(page), want) {
			t.Fatalf("the report lacks %s", want)
		}
	}
	if strings.Contains(string(page), "http://") && !strings.Contains(string(page), `xmlns="http://www.w3.org/2000/svg"`) || strings.Contains(string(page), "https://") || strings.Contains(string(page), "<script") {
		t.Fatal("the report fetches something")
	}
	chromiumDOM(t, html, `id="node-otter-demo-greeting"`, "1 renamed only")
}

// chromiumDOM loads the page in headless chromium with no network and
// checks the DOM it rendered.
func chromiumDOM(t *testing.T, page string, wants ...string) {
	t.Helper()
	bin, err := exec.LookPath("chromium")
	testutil.Require(t, err == nil, "chromium (Debian's)")
	out, err := exec.Command(bin, "--headless", "--no-sandbox", "--disable-gpu", "--proxy-server=127.0.0.1:9", "--dump-dom", "file://"+page).Output()
	if err != nil {
		t.Fatalf("chromium: %v", err)
	}
	for _, w := range wants {
		if !strings.Contains(string(out), w) {
			t.Fatalf("chromium rendered no %q:\n%.2000s", w, out)
		}
	}
}

// TestDiffCorpusOpenSSL: on corpus r2 → r3, the openssl security fix,
// every renamed path names openssl as its cause.
func TestDiffCorpusOpenSSL(t *testing.T) {
	_, rels := sharedCorpusFleet(t)
	var res diff.Result
	otterJSON(t, &res, "diff", rels[1].ref, rels[2].ref, "--insecure")
	renamed := 0
	for _, p := range res.Paths {
		if p.Status != diff.Renamed {
			continue
		}
		renamed++
		found := false
		for _, c := range p.Causes {
			if c.Name == "openssl" {
				found = true
			}
		}
		if !found {
			t.Errorf("%s is renamed, but not because of openssl: %v", p.Path, p.Causes)
		}
	}
	if renamed == 0 {
		t.Fatalf("no renamed path on the openssl fix: %+v", res.Totals)
	}
	t.Logf("r2 → r3: %d renamed, totals %+v", renamed, res.Totals)
}
