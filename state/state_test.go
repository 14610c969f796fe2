package state_test

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/otter-fleet/otter/internal/testutil"
	"github.com/otter-fleet/otter/state"
)

// demoFiles is the demo bundle's manifest and config, and a stand-in
// statement.
func demoFiles(t *testing.T) (manifest, config, envelope []byte) {
	t.Helper()
	c, store := testutil.DemoStore(t)
	b := testutil.BuildBundle(t, c, store)
	manifest, err := b.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	config, err = b.RawConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	return manifest, config, []byte(`{"payloadType":"stand-in"}`)
}

func TestGenerations(t *testing.T) {
	manifest, config, envelope := demoFiles(t)
	s, err := state.Open(t.TempDir(), true)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := s.Current(); n != 0 || err != nil {
		t.Fatalf("a new state names generation %d (%v)", n, err)
	}
	for _, n := range []int{1, 2, 3} {
		if err := s.Write(n, "/nix/store", manifest, config, envelope); err != nil {
			t.Fatal(err)
		}
	}
	gens, err := s.Generations()
	if err != nil || len(gens) != 3 || gens[0] != 1 || gens[2] != 3 {
		t.Fatalf("generations %v %v", gens, err)
	}
	g, err := s.Load(2)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(manifest)
	if g.Digest != "sha256:"+hex.EncodeToString(sum[:]) || string(g.Envelope) != string(envelope) || g.Config == nil || g.Root != g.Config.Root {
		t.Fatalf("generation 2: %+v", g)
	}
	if l, _ := os.Readlink(s.Path("generations", "2", "root")); l != filepath.Join("/nix/store", filepath.Base(g.Root)) {
		t.Fatalf("root link %q", l)
	}
	if err := s.Switch(2); err != nil {
		t.Fatal(err)
	}
	if n, _ := s.Current(); n != 2 {
		t.Fatalf("current %d after switching to 2", n)
	}
	// The current generation is never dropped; another is, by rename.
	if err := s.Drop(2); err != nil {
		t.Fatal(err)
	}
	if err := s.Drop(1); err != nil {
		t.Fatal(err)
	}
	if gens, _ := s.Generations(); len(gens) != 2 || gens[0] != 2 {
		t.Fatalf("after dropping 1 and (refused) 2: %v", gens)
	}
	if err := s.Switch(0); err != nil {
		t.Fatal(err)
	}
	if n, _ := s.Current(); n != 0 {
		t.Fatal("switching to 0 left a current link")
	}
}

// TestDamage: a damaged state directory is named as such, and what a
// command cut short left is cleaned up.
func TestDamage(t *testing.T) {
	manifest, config, envelope := demoFiles(t)
	s, err := state.Open(t.TempDir(), true)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Write(1, "/nix/store", manifest, config, envelope); err != nil {
		t.Fatal(err)
	}
	os.Remove(s.Path("generations", "1", "release.json"))
	if _, err := s.Load(1); !errors.Is(err, state.ErrDamaged) {
		t.Fatalf("a generation without its statement: %v", err)
	}
	os.Symlink("generations/x", s.Path("current"))
	if _, err := s.Current(); !errors.Is(err, state.ErrDamaged) {
		t.Fatalf("current naming no generation: %v", err)
	}
	secret := filepath.Join(t.TempDir(), "secret.json")
	os.WriteFile(secret, []byte(`{"action":"stolen"}`), 0o644)
	os.Symlink(secret, s.Path(state.Last))
	var o state.Outcome
	if _, err := s.ReadJSON(state.Last, &o); !errors.Is(err, state.ErrDamaged) || o.Action != "" {
		t.Fatalf("a symlinked state file was read: %v %+v", err, o)
	}
	// Leftovers of a cut-short write and removal.
	os.MkdirAll(s.Path("generations", ".new-4", "x"), 0o755)
	os.MkdirAll(s.Path("generations", ".gc-3"), 0o555)
	os.Symlink("generations/1", s.Path(".current.tmp"))
	s.RemoveLeftovers()
	ents, _ := os.ReadDir(s.Path("generations"))
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".") {
			t.Fatalf("left %s", e.Name())
		}
	}
	if _, err := os.Lstat(s.Path(".current.tmp")); err == nil {
		t.Fatal("left .current.tmp")
	}
}

// TestRemoveRenamed: a removal killed after the rename leaves nothing
// under the real name.
func TestRemoveRenamed(t *testing.T) {
	if os.Getenv("STATE_HELPER") == "1" {
		state.Hook = func(string) { os.Exit(3) } // killed between the steps
		state.RemoveRenamed(os.Getenv("STATE_DIR"), "p", ".otter-gc-")
		return
	}
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "p", "sub"), 0o755)
	os.WriteFile(filepath.Join(dir, "p", "sub", "f"), []byte("x"), 0o444)
	cmd := exec.Command(os.Args[0], "-test.run", "^TestRemoveRenamed$")
	cmd.Env = append(os.Environ(), "STATE_HELPER=1", "STATE_DIR="+dir)
	if err := cmd.Run(); err == nil {
		t.Fatal("the helper was not stopped")
	}
	if _, err := os.Lstat(filepath.Join(dir, "p")); !os.IsNotExist(err) {
		t.Fatal("the tree is still under its real name")
	}
	if _, err := os.Lstat(filepath.Join(dir, ".otter-gc-p", "sub", "f")); err != nil {
		t.Fatalf("the renamed tree: %v", err)
	}
}

// TestProvision: the same bundle gives the same state, byte for byte,
// with generation 1 current and the bundle's own time in last.json.
func TestProvision(t *testing.T) {
	manifest, config, envelope := demoFiles(t)
	var trees [2]string
	for i := range trees {
		root := filepath.Join(t.TempDir(), "state")
		if err := state.Provision(root, "/nix/store", manifest, config, envelope); err != nil {
			t.Fatal(err)
		}
		trees[i] = root
	}
	if a, b := snapshot(t, trees[0]), snapshot(t, trees[1]); a != b {
		t.Fatalf("two provisions differ:\n%s\n%s", a, b)
	}
	s, _ := state.Open(trees[0], true)
	if n, _ := s.Current(); n != 1 {
		t.Fatalf("current %d", n)
	}
	var o state.Outcome
	if ok, err := s.ReadJSON(state.Last, &o); !ok || err != nil || o.Action != "provision" || o.Time != time.Unix(0, 0).UTC().Format(time.RFC3339) {
		t.Fatalf("last.json %+v %v", o, err)
	}
}

func snapshot(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		b.WriteString(strings.TrimPrefix(p, dir))
		if d.Type().IsRegular() {
			data, _ := os.ReadFile(p)
			b.WriteString(" " + string(data))
		}
		if d.Type()&os.ModeSymlink != 0 {
			l, _ := os.Readlink(p)
			b.WriteString(" -> " + l)
		}
		b.WriteByte('\n')
		return nil
	})
	return b.String()
}
