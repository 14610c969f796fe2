package oci_test

import (
	"testing"

	"github.com/otter-fleet/otter/internal/testutil"
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
