package oci_test

import (
	"bytes"
	"context"
	"errors"
	"math/rand"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/otter-fleet/otter/bundle"
	"github.com/otter-fleet/otter/internal/testutil"
	"github.com/otter-fleet/otter/oci"
)

// pushBlob puts size random bytes into repo on host and returns them and
// their descriptor.
func pushBlob(t *testing.T, host, repo string, size int) ([]byte, v1.Descriptor) {
	t.Helper()
	data := make([]byte, size)
	rand.New(rand.NewSource(int64(size))).Read(data)
	l := static.NewLayer(data, types.MediaType("application/octet-stream"))
	r, err := name.NewRepository(host+"/"+repo, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteLayer(r, l); err != nil {
		t.Fatal(err)
	}
	d, _ := l.Digest()
	return data, v1.Descriptor{Digest: d, Size: int64(size)}
}

func fetchRef(t *testing.T, host, repo string) oci.Ref {
	t.Helper()
	ref, err := oci.ParseRef(host+"/"+repo+":x", true)
	if err != nil {
		t.Fatal(err)
	}
	return ref
}

// TestFetchBlobBadLink: a link that drops every 300 KB still delivers the
// blob, resuming where it stopped, with little more than the blob's bytes.
func TestFetchBlobBadLink(t *testing.T) {
	for _, reg := range []struct {
		name string
		host func(t *testing.T) string
	}{
		{"go-containerregistry", func(t *testing.T) string { return testutil.Registry(t) }},
		{"docker-registry", func(t *testing.T) string { return testutil.RealRegistry(t) }},
	} {
		t.Run(reg.name, func(t *testing.T) {
			host, repo := reg.host(t), testutil.Repository(t)
			data, d := pushBlob(t, host, repo, 3<<20)
			link := testutil.NewBadLink(t, host, 300<<10, time.Millisecond)
			dst := filepath.Join(t.TempDir(), "blob")
			res, err := oci.FetchBlob(context.Background(), fetchRef(t, link.Addr, repo), d, dst, 3)
			if err != nil {
				t.Fatal(err)
			}
			got, _ := os.ReadFile(dst)
			if !bytes.Equal(got, data) {
				t.Fatal("fetched blob differs")
			}
			if link.Cuts.Load() < 5 || res.Requests < 6 {
				t.Errorf("%d cuts, %d requests: the link did not drop as it should", link.Cuts.Load(), res.Requests)
			}
			if r := float64(link.Received.Load()) / float64(d.Size); r > 1.1 {
				t.Errorf("%d bytes crossed the link for a %d-byte blob (%.2fx)", link.Received.Load(), d.Size, r)
			}
			if _, err := os.Stat(dst + ".part"); !os.IsNotExist(err) {
				t.Error("partial file left behind")
			}
		})
	}
}

// TestFetchBlobResumesAcrossCalls: a fetch interrupted (the process
// stopped, the registry vanished) leaves its bytes in .part; the next call
// asks only for the rest.
func TestFetchBlobResumesAcrossCalls(t *testing.T) {
	host, repo := testutil.Registry(t), testutil.Repository(t)
	data, d := pushBlob(t, host, repo, 2<<20)
	link := testutil.NewBadLink(t, host, 700<<10, 0)
	dst := filepath.Join(t.TempDir(), "blob")
	// The link goes down for good, and the process stops, once half a
	// MiB has been written: decided on the fetching side, so that the
	// test does not race the client's reads against the proxy's cut.
	ctx, cancel := context.WithCancel(context.Background())
	stop := oci.WithIOProgress(func(have, _ int64) {
		if have >= 512<<10 {
			link.Down.Store(true)
			cancel()
		}
	})
	_, err := oci.FetchBlob(ctx, fetchRef(t, link.Addr, repo), d, dst, 2, stop)
	if err == nil {
		t.Fatal("fetch through a dead link succeeded")
	}
	if _, err := os.Stat(dst); !os.IsNotExist(err) {
		t.Fatal("the blob took its name before it was complete")
	}
	fi, err := os.Stat(dst + ".part")
	if err != nil || fi.Size() == 0 || fi.Size() >= d.Size {
		t.Fatalf("partial download: %v %v", fi, err)
	}
	res, err := oci.FetchBlob(context.Background(), fetchRef(t, host, repo), d, dst, 2)
	if err != nil {
		t.Fatal(err)
	}
	if res.Resumed != fi.Size() || res.Transferred != d.Size-fi.Size() {
		t.Errorf("resumed at %d, moved %d; want %d and %d", res.Resumed, res.Transferred, fi.Size(), d.Size-fi.Size())
	}
	if got, _ := os.ReadFile(dst); !bytes.Equal(got, data) {
		t.Fatal("resumed blob differs")
	}
	// Done is done: a further call moves nothing.
	if res, err := oci.FetchBlob(context.Background(), fetchRef(t, host, repo), d, dst, 2); err != nil || res.Transferred != 0 {
		t.Fatalf("refetch: %+v %v", res, err)
	}
}

// TestFetchBlobCorruptPart: bytes in .part that are not the blob's are
// caught by the digest check; the blob is not installed and the next
// call starts over.
func TestFetchBlobCorruptPart(t *testing.T) {
	host, repo := testutil.Registry(t), testutil.Repository(t)
	data, d := pushBlob(t, host, repo, 1<<20)
	dst := filepath.Join(t.TempDir(), "blob")
	if err := os.WriteFile(dst+".part", bytes.Repeat([]byte{0xAA}, 1000), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := oci.FetchBlob(context.Background(), fetchRef(t, host, repo), d, dst, 2)
	if !errors.Is(err, bundle.ErrLayerDigest) {
		t.Fatalf("got %v, want a digest mismatch", err)
	}
	for _, p := range []string{dst, dst + ".part"} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s left behind", p)
		}
	}
	if _, err := oci.FetchBlob(context.Background(), fetchRef(t, host, repo), d, dst, 2); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(dst); !bytes.Equal(got, data) {
		t.Fatal("blob differs")
	}
}

// TestFetchBlobMissing: a blob the registry lacks is ErrNotFound, not an
// endless retry.
func TestFetchBlobMissing(t *testing.T) {
	host, repo := testutil.Registry(t), testutil.Repository(t)
	_, d := pushBlob(t, host, repo, 1000)
	d.Digest.Hex = "0000000000000000000000000000000000000000000000000000000000000000"
	_, err := oci.FetchBlob(context.Background(), fetchRef(t, host, repo), d, filepath.Join(t.TempDir(), "b"), 1)
	if !errors.Is(err, oci.ErrNotFound) {
		t.Fatalf("got %v, want not found", err)
	}
}
