package demo

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/otter-fleet/otter/nix"
)

// TestStory: the story's releases are reproducible, input-addressed (the
// base-library fix renames the paths that depend on it, nothing else
// does), and the range is checked.
func TestStory(t *testing.T) {
	dir := t.TempDir()
	closures := map[int]*nix.Closure{}
	for n := 1; n <= Releases; n++ {
		root, err := WriteStory(filepath.Join(dir, "r", string(rune('0'+n))), n)
		if err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(filepath.Join(dir, "r", string(rune('0'+n)), "path-info.json"))
		if err != nil {
			t.Fatal(err)
		}
		infos, err := nix.ParsePathInfo(data)
		if err != nil {
			t.Fatal(err)
		}
		if closures[n], err = nix.NewClosure(root, infos); err != nil {
			t.Fatal(err)
		}
	}
	again := filepath.Join(dir, "again")
	if _, err := WriteStory(again, 3); err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(filepath.Join(dir, "r", "3", "path-info.json"))
	b, _ := os.ReadFile(filepath.Join(again, "path-info.json"))
	if !bytes.Equal(a, b) {
		t.Errorf("release 3 written twice differs")
	}
	byName := func(c *nix.Closure) map[string]string {
		m := map[string]string{}
		for _, p := range c.Paths {
			name, _ := nix.ParseName(p.Path)
			m[name] = p.Path
		}
		return m
	}
	r1, r2, r3 := byName(closures[1]), byName(closures[2]), byName(closures[3])
	if r1["dashboard"] != r2["dashboard"] || r1["libgreet"] != r2["libgreet"] || r1["hello"] == r2["hello"] {
		t.Errorf("the app update: %v → %v", r1, r2)
	}
	for _, name := range []string{"libgreet", "hello", "dashboard"} {
		if r2[name] == r3[name] {
			t.Errorf("the base-library fix left %s at %s", name, r2[name])
		}
	}
	if !strings.HasSuffix(r3["hello"], "-hello-1.1") || !strings.HasSuffix(r3["libgreet"], "-libgreet-1.1") {
		t.Errorf("release 3: %v", r3)
	}
	for _, n := range []int{0, Releases + 1} {
		if _, err := WriteStory(filepath.Join(dir, "bad"), n); err == nil {
			t.Errorf("release %d written", n)
		}
	}
}
