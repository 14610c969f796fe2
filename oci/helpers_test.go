package oci_test

import (
	"context"
	"os"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/otter-fleet/otter/bundle"
	"github.com/otter-fleet/otter/nix"
	"github.com/otter-fleet/otter/oci"
)

func build(t testing.TB, c *nix.Closure, store string, opts ...bundle.BuildOption) *bundle.Bundle {
	t.Helper()
	b, err := bundle.Build(context.Background(), c, store, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	if err := validate.Image(b); err != nil {
		t.Fatalf("validate.Image: %v", err)
	}
	return b
}

func digest(t testing.TB, img v1.Image) v1.Hash {
	t.Helper()
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func mustRef(t testing.TB, s string) oci.Ref {
	t.Helper()
	r, err := oci.ParseRef(s, false)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func layoutRef(t testing.TB, dir, tag string) oci.Ref {
	t.Helper()
	return mustRef(t, "oci:"+dir+":"+tag)
}

// assertOnlyStorePaths fails if store holds anything but c's paths, such
// as a leftover temporary directory.
func assertOnlyStorePaths(t testing.TB, store string, c *nix.Closure) {
	t.Helper()
	entries, err := os.ReadDir(store)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if c.Lookup(nix.StoreDir+"/"+e.Name()) == nil {
			t.Errorf("unexpected entry %s in the store", e.Name())
		}
	}
}
