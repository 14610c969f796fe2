package oci_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"

	"github.com/otter-fleet/otter/bundle"
	"github.com/otter-fleet/otter/internal/testutil"
	"github.com/otter-fleet/otter/oci"
)

// TestFetchBlobShortFromRegistry: a registry that serves a blob shorter
// than its descriptor (a complete response, cleanly ended) gives a damaged
// blob (bundle.ErrLayerDigest, exit 6), not a network error (exit 1).
func TestFetchBlobShortFromRegistry(t *testing.T) {
	reg := registry.New()
	short := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.Contains(r.URL.Path, "/blobs/") || r.Method != http.MethodGet {
			reg.ServeHTTP(w, r)
			return
		}
		rec := httptest.NewRecorder()
		reg.ServeHTTP(rec, r)
		body := rec.Body.Bytes()
		body = body[:len(body)/2]
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.WriteHeader(rec.Code)
		w.Write(body)
	}))
	t.Cleanup(short.Close)
	u, _ := url.Parse(short.URL)
	repo := testutil.Repository(t)
	_, d := pushBlob(t, u.Host, repo, 200<<10)
	dst := filepath.Join(t.TempDir(), "blob")
	_, err := oci.FetchBlob(context.Background(), fetchRef(t, u.Host, repo), d, dst, 1)
	if !errors.Is(err, bundle.ErrLayerDigest) {
		t.Fatalf("a blob served short: want ErrLayerDigest, got %v", err)
	}
	if _, err := os.Stat(dst); !os.IsNotExist(err) {
		t.Fatal("the short blob took its name")
	}
}

// TestFetchBlobFullDisk: a full disk ends the download at once with
// ENOSPC, not after the retries a dropping link gets, and not as a digest
// mismatch.
func TestFetchBlobFullDisk(t *testing.T) {
	testutil.Require(t, os.Geteuid() == 0, "root, to mount a small tmpfs")
	host, repo := testutil.Registry(t), testutil.Repository(t)
	_, d := pushBlob(t, host, repo, 1<<20)
	small := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", small).CombinedOutput(); err != nil {
		t.Fatalf("mount: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", small).Run() })
	start := time.Now()
	res, err := oci.FetchBlob(context.Background(), fetchRef(t, host, repo), d, filepath.Join(small, "blob"), 8)
	if !errors.Is(err, syscall.ENOSPC) || errors.Is(err, bundle.ErrLayerDigest) {
		t.Fatalf("want ENOSPC, got %v", err)
	}
	if res.Requests != 1 || time.Since(start) > 5*time.Second {
		t.Fatalf("a full disk was retried: %d requests in %v", res.Requests, time.Since(start))
	}
}

// TestFetchBlobRechecksFinished: a finished download that no longer
// hashes to its digest is fetched again, not trusted by its size.
func TestFetchBlobRechecksFinished(t *testing.T) {
	host, repo := testutil.Registry(t), testutil.Repository(t)
	data, d := pushBlob(t, host, repo, 100<<10)
	dst := filepath.Join(t.TempDir(), "blob")
	os.WriteFile(dst, make([]byte, len(data)), 0o644)
	res, err := oci.FetchBlob(context.Background(), fetchRef(t, host, repo), d, dst, 1)
	if err != nil || res.Transferred != d.Size {
		t.Fatalf("refetch over a corrupt finished download: %+v %v", res, err)
	}
	if got, _ := os.ReadFile(dst); string(got) != string(data) {
		t.Fatal("the corrupt download was kept")
	}
}
