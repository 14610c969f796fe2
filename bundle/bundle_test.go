package bundle_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/otter-fleet/otter/bundle"
	"github.com/otter-fleet/otter/internal/testutil"
	"github.com/otter-fleet/otter/nix"
)

// build and digest are testutil's, under short names.
var (
	build  = testutil.BuildBundle
	digest = testutil.Digest
)

func TestDemoRoundTrip(t *testing.T) {
	ctx := context.Background()
	c, store := testutil.DemoStore(t)
	b := build(t, c, store)
	cfg, err := bundle.ReadConfig(b)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Root != c.Root || len(cfg.Paths) != len(c.Paths) || cfg.System != "aarch64-linux" {
		t.Fatalf("config %+v does not describe the closure", cfg)
	}
	out := testutil.TempStore(t)
	res, err := bundle.Extract(ctx, b, cfg, out)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Extracted) != len(c.Paths) || len(res.Present) != 0 {
		t.Fatalf("first extract: %+v", res)
	}
	testutil.VerifyStore(t, c, out)
	testutil.AssertOnlyStorePaths(t, out, c)
	fi, err := os.Lstat(filepath.Join(out, nix.BaseName(c.Root), "release.json"))
	if err != nil || fi.Mode().Perm() != 0o444 || fi.ModTime().Unix() != 1 {
		t.Fatalf("release.json: %v %v", fi.Mode(), err)
	}
	res, err = bundle.Extract(ctx, b, cfg, out)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Present) != len(c.Paths) || len(res.Extracted) != 0 {
		t.Fatalf("second extract should find everything present: %+v", res)
	}
}

func TestReproducible(t *testing.T) {
	c, store := testutil.DemoStore(t)
	a := build(t, c, store, bundle.WithJobs(1))
	b := build(t, c, store, bundle.WithJobs(4))
	if digest(t, a) != digest(t, b) {
		t.Fatalf("two builds differ: %s %s", digest(t, a), digest(t, b))
	}
	// The creation time is part of the bundle, and SOURCE_DATE_EPOCH's way in.
	d := build(t, c, store, bundle.WithCreated(time.Unix(1700000000, 0)))
	if digest(t, d) == digest(t, a) {
		t.Fatal("creation time does not change the digest")
	}
	if d.Config.Created != "2023-11-14T22:13:20Z" || a.Config.Created != "1970-01-01T00:00:00Z" {
		t.Fatalf("created %q / %q", d.Config.Created, a.Config.Created)
	}
}

func TestCorpusReproducible(t *testing.T) {
	c, store := testutil.CorpusClosure(t, "r1")
	a := build(t, c, store)
	b := build(t, c, store, bundle.WithJobs(1))
	if digest(t, a) != digest(t, b) {
		t.Fatalf("r1 bundled twice gives %s and %s", digest(t, a), digest(t, b))
	}
	out := testutil.TempStore(t)
	if _, err := bundle.Extract(context.Background(), a, a.Config, out); err != nil {
		t.Fatal(err)
	}
	testutil.VerifyStore(t, c, out)
	t.Logf("r1: %d paths, digest %s", len(c.Paths), digest(t, a))
}

// damagedDemo writes the demo store, makes it writable and damages it.
func damagedDemo(t *testing.T, damage func(store string, c *nix.Closure)) (*nix.Closure, string) {
	c, store := testutil.DemoStore(t)
	filepath.WalkDir(store, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			os.Chmod(p, 0o755)
		}
		return nil
	})
	damage(store, c)
	return c, store
}

func TestBuildRefusesBadInput(t *testing.T) {
	ctx := context.Background()
	t.Run("nar hash mismatch", func(t *testing.T) {
		c, store := damagedDemo(t, func(store string, c *nix.Closure) {
			p := filepath.Join(store, nix.BaseName(c.Root), "release.json")
			os.Chmod(p, 0o644)
			if err := os.WriteFile(p, []byte(`{"release":2}`), 0o444); err != nil {
				t.Fatal(err)
			}
		})
		_, err := bundle.Build(ctx, c, store)
		var nh *bundle.NarHashError
		if !errors.As(err, &nh) || !errors.Is(err, bundle.ErrNarHashMismatch) || nh.Path != c.Root {
			t.Fatalf("want a NarHashError naming %s, got %v", c.Root, err)
		}
	})
	t.Run("missing path", func(t *testing.T) {
		c, store := damagedDemo(t, func(store string, c *nix.Closure) {
			testutil.RemoveAll(filepath.Join(store, nix.BaseName(c.Paths[0].Path)))
		})
		_, err := bundle.Build(ctx, c, store)
		if !errors.Is(err, bundle.ErrMissingPath) {
			t.Fatalf("want ErrMissingPath, got %v", err)
		}
	})
	t.Run("unsupported file type", func(t *testing.T) {
		c, store := damagedDemo(t, func(store string, c *nix.Closure) {
			if err := mkfifo(filepath.Join(store, nix.BaseName(c.Root), "fifo")); err != nil {
				t.Skip(err)
			}
		})
		_, err := bundle.Build(ctx, c, store)
		if err == nil || !contains(err.Error(), "unsupported file type") {
			t.Fatalf("want an unsupported file type error, got %v", err)
		}
	})
	t.Run("cancelled", func(t *testing.T) {
		c, store := testutil.DemoStore(t)
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if _, err := bundle.Build(cctx, c, store); !errors.Is(err, context.Canceled) {
			t.Fatalf("want context.Canceled, got %v", err)
		}
	})
}
