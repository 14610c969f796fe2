package delta_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/otter-fleet/otter/bundle"
	"github.com/otter-fleet/otter/delta"
	"github.com/otter-fleet/otter/internal/testutil"
)

func release(t testing.TB, name string) delta.Release {
	t.Helper()
	c, store := testutil.CorpusClosure(t, name)
	b, err := bundle.Build(context.Background(), c, store)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return delta.Release{Image: b, Config: b.Config}
}

// deviceStore extracts a release into a new store directory.
func deviceStore(t testing.TB, r delta.Release) string {
	t.Helper()
	store := testutil.TempStore(t)
	if _, err := bundle.Extract(context.Background(), r.Image, r.Config, store, bundle.WithFsync(false)); err != nil {
		t.Fatal(err)
	}
	return store
}

func TestCorpusRoundTrip(t *testing.T) {
	pairs := [][2]string{{"r1", "r2"}, {"r2", "r3"}, {"r3", "r4"}, {"r1", "r4"}}
	rel := map[string]delta.Release{}
	for _, p := range pairs {
		for _, n := range p {
			if _, ok := rel[n]; !ok {
				rel[n] = release(t, n)
			}
		}
	}
	for _, p := range pairs {
		t.Run(p[0]+"-"+p[1], func(t *testing.T) {
			from, to := rel[p[0]], rel[p[1]]
			var buf bytes.Buffer
			st, err := delta.Diff(context.Background(), from, to, &buf, delta.Options{})
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s->%s: %d bytes, %+v", p[0], p[1], buf.Len(), st)
			patch := filepath.Join(t.TempDir(), "patch")
			os.WriteFile(patch, buf.Bytes(), 0o644)
			store := deviceStore(t, from)
			res, err := delta.Apply(context.Background(), patch, store, delta.ApplyOptions{NoFsync: true})
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Built) != st.NewPaths {
				t.Fatalf("built %d paths, the patch has %d", len(res.Built), st.NewPaths)
			}
			testutil.VerifyStore(t, to.Config.Closure(), store)
		})
	}
}
