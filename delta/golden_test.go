package delta_test

import (
	"bytes"
	"context"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/otter-fleet/otter/bundle"
	"github.com/otter-fleet/otter/delta"
	"github.com/otter-fleet/otter/internal/demo"
	"github.com/otter-fleet/otter/internal/testutil"
)

var update = flag.Bool("update", false, "rewrite testdata/delta")

func demoRelease(t testing.TB, n int) (delta.Release, string) {
	store := testutil.TempStore(t)
	c, err := demo.WriteRelease(store, n)
	if err != nil {
		t.Fatal(err)
	}
	b, err := bundle.Build(context.Background(), c, store)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return delta.Release{Image: b, Config: b.Config}, store
}

// TestDemoPatch makes the patch from demo release 1 to 2: the greeting
// changes and renames its dependents. The patch is reproducible byte for
// byte, kept as testdata/delta/demo-1-2.patch (the fuzz seed; remake it
// with go test ./delta -run TestDemoPatch -update), and applies.
func TestDemoPatch(t *testing.T) {
	r1, store := demoRelease(t, 1)
	r2, _ := demoRelease(t, 2)
	var a, b bytes.Buffer
	st, err := delta.Diff(context.Background(), r1, r2, &a, delta.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := delta.Diff(context.Background(), r1, r2, &b, delta.Options{Jobs: 1}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Fatal("two runs made different patches")
	}
	if st.DerivedPaths != 3 {
		t.Fatalf("stats %+v: every path should derive from its release-1 version", st)
	}
	// Per path: derived, something listed (the greeting changed, the
	// others name it), and a share of the streams.
	var share int64
	for _, p := range st.Paths {
		if p.Base == "" || p.Entries == 0 || p.Bytes < 0 {
			t.Fatalf("path stats %+v", p)
		}
		share += p.Bytes
	}
	if len(st.Paths) != 3 || share <= 0 || share > st.Size {
		t.Fatalf("path stats %+v for a %d-byte patch", st.Paths, st.Size)
	}
	golden := filepath.Join("..", "testdata", "delta", "demo-1-2.patch")
	if *update {
		os.WriteFile(golden, a.Bytes(), 0o644)
	}
	want, err := os.ReadFile(golden)
	if err != nil || !bytes.Equal(want, a.Bytes()) {
		t.Fatalf("the patch differs from %s (%v); remake it with -update if the format changed", golden, err)
	}
	res, err := delta.Apply(context.Background(), golden, store, delta.ApplyOptions{NoFsync: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Built) != 3 {
		t.Fatalf("built %v", res.Built)
	}
	testutil.VerifyStore(t, r2.Config.Closure(), store)
	t.Logf("demo patch: %d bytes for %d NAR bytes", a.Len(), r2.Config.Closure().NarSize())
}
