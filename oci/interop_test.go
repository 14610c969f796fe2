package oci_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/otter-fleet/otter/bundle"
	"github.com/otter-fleet/otter/internal/testutil"
	"github.com/otter-fleet/otter/nix"
	"github.com/otter-fleet/otter/oci"
)

// TestStandardClientsPull pushes a bundle to the docker-registry and pulls
// it with crane, skopeo and oras: each gets the same digest, and what crane
// and skopeo write is a layout otter extracts with every NAR hash right.
func TestStandardClientsPull(t *testing.T) {
	ctx := context.Background()
	host := testutil.RealRegistry(t)
	c, store := testutil.DemoStore(t)
	b := build(t, c, store)
	remote := host + "/" + testutil.Repository(t) + ":v1"
	desc, err := oci.Write(ctx, b, mustRef(t, remote))
	if err != nil {
		t.Fatal(err)
	}
	run := func(name string, args ...string) {
		t.Helper()
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %v: %v\n%s", filepath.Base(name), args, err, out)
		}
	}
	extractLayout := func(dir string) {
		t.Helper()
		img, cfg, err := oci.Open(ctx, layoutRef(t, dir, "v1"))
		if err != nil {
			// crane writes no tag; the layout holds one manifest.
			img, cfg, err = oci.Open(ctx, mustRef(t, "oci:"+dir))
		}
		if err != nil {
			t.Fatal(err)
		}
		if d := digest(t, img); d != desc.Digest {
			t.Fatalf("pulled %s, pushed %s", d, desc.Digest)
		}
		out := testutil.TempStore(t)
		if _, err := bundle.Extract(ctx, img, cfg, out); err != nil {
			t.Fatal(err)
		}
		testutil.VerifyStore(t, c, out)
	}

	t.Run("crane", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "crane")
		run(testutil.Tool(t, "crane"), "pull", "--format=oci", remote, dir)
		extractLayout(dir)
	})
	t.Run("skopeo", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "skopeo")
		run(testutil.Tool(t, "skopeo"), "copy", "--src-tls-verify=false", "docker://"+remote, "oci:"+dir+":v1")
		extractLayout(dir)
	})
	t.Run("oras", func(t *testing.T) {
		dir := t.TempDir()
		run(testutil.Tool(t, "oras"), "pull", "--plain-http", remote, "-o", dir)
		m, _ := b.Manifest()
		for i, l := range m.Layers {
			p := filepath.Join(dir, nix.BaseName(b.Config.Paths[i].Path))
			f, err := os.Open(p)
			if err != nil {
				t.Fatalf("oras did not write layer %d: %v", i, err)
			}
			h, _, err := v1.SHA256(f)
			f.Close()
			if err != nil || h != l.Digest {
				t.Fatalf("%s: %s, want %s", p, h, l.Digest)
			}
		}
	})
}
