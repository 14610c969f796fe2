package nixdb_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/otter-fleet/otter/internal/demo"
	"github.com/otter-fleet/otter/internal/testutil"
	"github.com/otter-fleet/otter/nix"
	"github.com/otter-fleet/otter/nixdb"
)

// chrootStore is a chroot store whose database nixdb detects.
func chrootStore(t *testing.T) (root, store string) {
	t.Helper()
	root, store = testutil.NixChrootStore(t)
	if !nixdb.Detect(store) {
		t.Fatal("a chroot store's database was not detected")
	}
	return root, store
}

func TestRegisterAndCollect(t *testing.T) {
	ctx := context.Background()
	root, store := chrootStore(t)
	if nixdb.Detect(testutil.TempStore(t)) {
		t.Fatal("a plain directory was taken for a Nix store")
	}
	c, err := demo.WriteRelease(store, 1)
	if err != nil {
		t.Fatal(err)
	}
	db, err := nixdb.Open(store)
	if err != nil {
		t.Fatal(err)
	}
	if v, err := db.Valid(ctx, []string{c.Root}); err != nil || len(v) != 0 {
		t.Fatalf("before registration: %v %v", v, err)
	}
	if err := db.Register(ctx, c); err != nil {
		t.Fatal(err)
	}
	v, err := db.Valid(ctx, []string{c.Paths[0].Path, c.Paths[1].Path, c.Paths[2].Path})
	if err != nil || len(v) != 3 {
		t.Fatalf("after registration: %v %v", v, err)
	}
	for _, p := range c.Paths {
		if v[p.Path] != p.NarHash {
			t.Fatalf("%s registered as %s, want %s", p.Path, v[p.Path], p.NarHash)
		}
	}
	if out, err := exec.Command("nix-store", "--store", root, "--verify", "--check-contents").CombinedOutput(); err != nil {
		t.Fatalf("nix-store --verify --check-contents: %v %s", err, out)
	}
	// Registering again changes nothing.
	if err := db.Register(ctx, c); err != nil {
		t.Fatal(err)
	}
	// A release that says another NAR hash for a valid path is refused.
	other := *c
	other.Paths = append([]nix.PathInfo{}, c.Paths...)
	other.Paths[0].NarHash[0] ^= 1
	if err := db.Check(ctx, &other); !errors.Is(err, nixdb.ErrConflict) {
		t.Fatalf("a conflicting NAR hash: %v", err)
	}
	// A profile generation keeps the closure; deleting it lets Nix collect.
	profile := db.ProfilePath("otter")
	if err := db.Set(ctx, profile, c.Root); err != nil {
		t.Fatal(err)
	}
	gens, err := db.Generations(profile)
	if err != nil || len(gens) != 1 || gens[0].Number != 1 || gens[0].Path != c.Root {
		t.Fatalf("generations %v %v", gens, err)
	}
	var all []string
	for _, p := range c.Paths {
		all = append(all, p.Path)
	}
	if del, err := db.Delete(ctx, all); err != nil || len(del) != 0 {
		t.Fatalf("deleted rooted paths: %v %v", del, err)
	}
	// A second release, then the first generation goes: its paths only.
	c2, err := demo.WriteRelease(store, 2)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Register(ctx, c2); err != nil {
		t.Fatal(err)
	}
	if err := db.Set(ctx, profile, c2.Root); err != nil {
		t.Fatal(err)
	}
	if err := db.DeleteGenerations(ctx, profile, []int{1}); err != nil {
		t.Fatal(err)
	}
	del, err := db.Delete(ctx, all)
	if err != nil || len(del) != 3 {
		t.Fatalf("collected %v %v, want release 1's three paths", del, err)
	}
	for _, p := range c.Paths {
		if _, err := os.Lstat(filepath.Join(store, nix.BaseName(p.Path))); err == nil {
			t.Fatalf("%s is still on disk", p.Path)
		}
	}
	if out, err := exec.Command("nix-store", "--store", root, "--verify", "--check-contents").CombinedOutput(); err != nil {
		t.Fatalf("after deleting: %v %s", err, out)
	}
}

// TestBusy: a database another Nix process holds (here: its big lock,
// held exclusively) makes otter wait the timeout, then stop.
func TestBusy(t *testing.T) {
	root, store := chrootStore(t)
	lock, err := os.OpenFile(filepath.Join(root, "nix", "var", "nix", "db", "big-lock"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	db, err := nixdb.Open(store)
	if err != nil {
		t.Fatal(err)
	}
	db.Timeout = 2 * time.Second
	c, err := demo.WriteRelease(store, 1)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := db.Register(context.Background(), c); !errors.Is(err, nixdb.ErrBusy) {
		t.Fatalf("a held database: %v", err)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Fatalf("waited %v for a 2 s timeout", took)
	}
}
