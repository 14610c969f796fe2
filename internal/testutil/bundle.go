package testutil

import (
	"context"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/otter-fleet/otter/bundle"
	"github.com/otter-fleet/otter/nix"
)

// BuildBundle packs a closure into a bundle, checks it with
// go-containerregistry's validate.Image, and removes it after the test.
func BuildBundle(t testing.TB, c *nix.Closure, store string, opts ...bundle.BuildOption) *bundle.Bundle {
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

// Digest is an image's manifest digest.
func Digest(t testing.TB, img v1.Image) v1.Hash {
	t.Helper()
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}
