package oci_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/otter-fleet/otter/bundle"
	"github.com/otter-fleet/otter/internal/testutil"
	"github.com/otter-fleet/otter/oci"
)

// countingTransport counts the request body bytes sent to blob uploads.
type countingTransport struct {
	inner     http.RoundTripper
	blobBytes atomic.Int64
}

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Body != nil && strings.Contains(r.URL.Path, "/blobs/uploads") {
		r.Body = countingBody{r.Body, &c.blobBytes}
	}
	return c.inner.RoundTrip(r)
}

type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (b countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}

// sinks are the places a bundle can go; every test in TestSinks runs
// against each. open starts a fresh one and returns how to name a tag in it.
var sinks = []struct {
	name string
	open func(t *testing.T) func(tag string) oci.Ref
}{
	{"layout", func(t *testing.T) func(string) oci.Ref {
		dir := filepath.Join(t.TempDir(), "layout")
		return func(tag string) oci.Ref { return layoutRef(t, dir, tag) }
	}},
	{"in-process registry", func(t *testing.T) func(string) oci.Ref {
		return remoteRefs(t, testutil.Registry(t))
	}},
	{"in-process registry with referrers", func(t *testing.T) func(string) oci.Ref {
		return remoteRefs(t, testutil.Registry(t, registry.WithReferrersSupport(true)))
	}},
	{"docker-registry", func(t *testing.T) func(string) oci.Ref {
		return remoteRefs(t, testutil.RealRegistry(t))
	}},
}

// remoteRefs names tags in a new repository on host, so that tests sharing
// the docker-registry do not see each other.
func remoteRefs(t *testing.T, host string) func(string) oci.Ref {
	repo := testutil.Repository(t)
	return func(tag string) oci.Ref { return mustRef(t, host+"/"+repo+":"+tag) }
}

func TestSinks(t *testing.T) {
	ctx := context.Background()
	c, store := testutil.DemoStore(t)
	b := build(t, c, store)
	other := build(t, c, store, bundle.WithVersion(2))
	for _, s := range sinks {
		t.Run(s.name, func(t *testing.T) {
			t.Run("write, read back, extract", func(t *testing.T) {
				ref := s.open(t)("v1")
				desc, err := oci.Write(ctx, b, ref)
				if err != nil {
					t.Fatal(err)
				}
				img, cfg, err := oci.Open(ctx, ref)
				if err != nil {
					t.Fatal(err)
				}
				if err := validate.Image(img); err != nil {
					t.Fatalf("validate.Image: %v", err)
				}
				if d := digest(t, img); d != desc.Digest || d != digest(t, b) {
					t.Fatalf("read back %s, wrote %s", d, desc.Digest)
				}
				out := testutil.TempStore(t)
				if _, err := bundle.Extract(ctx, img, cfg, out); err != nil {
					t.Fatal(err)
				}
				testutil.VerifyStore(t, c, out)
			})
			t.Run("second write sends no layer bytes", func(t *testing.T) {
				ref := s.open(t)("v1")
				if _, err := oci.Write(ctx, b, ref); err != nil {
					t.Fatal(err)
				}
				ct := &countingTransport{inner: remote.DefaultTransport}
				before := blobTimes(t, ref)
				if _, err := oci.Write(ctx, b, ref, oci.WithTransport(ct)); err != nil {
					t.Fatal(err)
				}
				if n := ct.blobBytes.Load(); n != 0 {
					t.Fatalf("second push uploaded %d blob bytes", n)
				}
				if after := blobTimes(t, ref); ref.Layout != "" && !equalMaps(before, after) {
					t.Fatal("second write rewrote layout blobs")
				}
			})
			t.Run("tag moves to the new bundle", func(t *testing.T) {
				ref := s.open(t)("stable")
				if _, err := oci.Write(ctx, b, ref); err != nil {
					t.Fatal(err)
				}
				if _, err := oci.Write(ctx, other, ref); err != nil {
					t.Fatal(err)
				}
				img, cfg, err := oci.Open(ctx, ref)
				if err != nil {
					t.Fatal(err)
				}
				if digest(t, img) != digest(t, other) || cfg.Version != 2 {
					t.Fatalf("tag names %s (version %d), want %s", digest(t, img), cfg.Version, digest(t, other))
				}
			})
			t.Run("missing tag", func(t *testing.T) {
				refs := s.open(t)
				if _, err := oci.Write(ctx, b, refs("v1")); err != nil {
					t.Fatal(err)
				}
				missing := refs("nosuchtag")
				if _, _, err := oci.Open(ctx, missing); !errors.Is(err, oci.ErrNotFound) {
					t.Fatalf("want ErrNotFound, got %v", err)
				}
			})
		})
	}
}

// blobTimes maps a layout's blob files to their modification times.
func blobTimes(t *testing.T, ref oci.Ref) map[string]int64 {
	m := map[string]int64{}
	if ref.Layout == "" {
		return m
	}
	entries, err := os.ReadDir(filepath.Join(ref.Layout, "blobs", "sha256"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		fi, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		m[e.Name()] = fi.ModTime().UnixNano() + int64(fi.Sys().(*syscall.Stat_t).Ino)<<32
	}
	return m
}

func equalMaps(a, b map[string]int64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}
