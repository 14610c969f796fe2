package bundle_test

import (
	"context"
	"testing"

	"github.com/otter-fleet/otter/bundle"
	"github.com/otter-fleet/otter/internal/testutil"
)

// BenchmarkBuildCorpusR1 packs corpus r1 (about 110 MB of NAR) into a
// spooled bundle: NAR hashing, tar, zstd, digests.
//
//	OTTER_CORPUS=… go test ./bundle -run '^$' -bench BuildCorpus -benchmem
func BenchmarkBuildCorpusR1(b *testing.B) {
	c, store := testutil.CorpusClosure(b, "r1")
	b.SetBytes(c.NarSize())
	b.ReportAllocs()
	for b.Loop() {
		bb, err := bundle.Build(context.Background(), c, store)
		if err != nil {
			b.Fatal(err)
		}
		bb.Close()
	}
}

// BenchmarkExtractCorpusR1 unpacks corpus r1 into an empty store, with and
// without fsync.
func BenchmarkExtractCorpusR1(b *testing.B) {
	c, store := testutil.CorpusClosure(b, "r1")
	bb, err := bundle.Build(context.Background(), c, store)
	if err != nil {
		b.Fatal(err)
	}
	defer bb.Close()
	for _, fsync := range []bool{true, false} {
		name := "fsync"
		if !fsync {
			name = "no-fsync"
		}
		b.Run(name, func(b *testing.B) {
			b.SetBytes(c.NarSize())
			for b.Loop() {
				b.StopTimer()
				out := testutil.TempStore(b)
				b.StartTimer()
				if _, err := bundle.Extract(context.Background(), bb, bb.Config, out, bundle.WithFsync(fsync)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
