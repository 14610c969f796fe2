package oci_test

import (
	"os"
	"testing"

	"github.com/otter-fleet/otter/internal/testutil"
	"github.com/otter-fleet/otter/nix"
	"github.com/otter-fleet/otter/oci"
)

// build and digest are testutil's, under short names.
var (
	build  = testutil.BuildBundle
	digest = testutil.Digest
)

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
