package bundle_test

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/otter-fleet/otter/bundle"
	"github.com/otter-fleet/otter/internal/testutil"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/bundle")

// The golden files pin the demo bundle byte for byte: its config and
// manifest. They are made by this test: go test ./bundle -run TestGolden -update
// A change in them is a change of the format (docs/bundle.md) or of the
// pinned zstd encoder, and must be deliberate.
func TestGoldenDemoBundle(t *testing.T) {
	c, store := testutil.DemoStore(t)
	b := build(t, c, store, bundle.WithVersion(1))
	cfg, err := b.RawConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	manifest, err := b.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	for name, got := range map[string][]byte{"demo-config.json": cfg, "demo-manifest.json": manifest} {
		p := filepath.Join("..", "testdata", "bundle", name)
		if *update {
			if err := os.WriteFile(p, got, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		want, err := os.ReadFile(p)
		if err != nil {
			t.Fatalf("%v (make it with -update)", err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s differs from the golden file:\n%s", name, lineDiff(string(want), string(got)))
		}
	}
}

// lineDiff shows the first differing region of two JSON documents,
// broken at commas so it reads.
func lineDiff(want, got string) string {
	w := strings.Split(strings.ReplaceAll(want, ",", ",\n"), "\n")
	g := strings.Split(strings.ReplaceAll(got, ",", ",\n"), "\n")
	var out strings.Builder
	for i := 0; i < len(w) || i < len(g); i++ {
		var a, b string
		if i < len(w) {
			a = w[i]
		}
		if i < len(g) {
			b = g[i]
		}
		if a != b {
			out.WriteString("- " + a + "\n+ " + b + "\n")
		}
	}
	return out.String()
}

func FuzzParseConfig(f *testing.F) {
	testutil.AddSeeds(f, filepath.Join("..", "testdata", "bundle", "*config*.json"))
	// A config with a boot part (§3.1).
	seeds, _ := filepath.Glob(filepath.Join("..", "testdata", "bundle", "*config*.json"))
	if len(seeds) > 0 {
		if data, err := os.ReadFile(seeds[0]); err == nil {
			if cfg, err := bundle.ParseConfig(data); err == nil {
				cfg.Boot = &bundle.Boot{NarHash: cfg.Paths[0].NarHash, NarSize: 4096, Kernel: "Image", Initrd: "initrd", Init: cfg.Paths[0].NarHash}
				if b, err := cfg.Marshal(); err == nil {
					f.Add(b)
				}
			}
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := bundle.ParseConfig(data)
		if err != nil {
			return
		}
		again, err := cfg.Marshal()
		if err != nil {
			t.Fatalf("a parsed config does not marshal: %v", err)
		}
		if !bytes.Equal(again, data) {
			t.Fatalf("parse then marshal changed the bytes:\n%s\n%s", data, again)
		}
		if _, err := bundle.ParseConfig(again); err != nil {
			t.Fatalf("re-parse: %v", err)
		}
	})
}
