package oci_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/otter-fleet/otter/bundle"
	"github.com/otter-fleet/otter/internal/meter"
	"github.com/otter-fleet/otter/internal/testutil"
	"github.com/otter-fleet/otter/oci"
)

// privateOrigin asks for fleet:secret, as a private origin does; the
// mirror stand-in has its own way in (X-Mirror), as a pull-through cache
// has its own credentials.
func privateOrigin(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !(ok && u == "fleet" && p == "secret") && r.Header.Get("X-Mirror") != "1" {
			w.Header().Set("WWW-Authenticate", `Basic realm="origin"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// mirrorOf is a pull-through stand-in for the origin: a reverse proxy
// whose answers mangle may change.
func mirrorOf(t *testing.T, origin string, mangle func(r *http.Request, body []byte) []byte, auth *atomic.Int64) string {
	t.Helper()
	u, _ := url.Parse("http://" + origin)
	p := httputil.NewSingleHostReverseProxy(u)
	if mangle != nil {
		p.ModifyResponse = func(resp *http.Response) error {
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				return err
			}
			resp.Body.Close()
			body = mangle(resp.Request, body)
			resp.Body = io.NopCloser(bytes.NewReader(body))
			resp.ContentLength = int64(len(body))
			resp.Header.Set("Content-Length", strconv.Itoa(len(body)))
			return nil
		}
	}
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if auth != nil && r.Header.Get("Authorization") != "" {
			auth.Add(1)
		}
		r.Header.Set("X-Mirror", "1")
		p.ServeHTTP(w, r)
	}))
	t.Cleanup(s.Close)
	return strings.TrimPrefix(s.URL, "http://")
}

func deadHost(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// TestMirrors: reads go to the first mirror that answers well; a mirror
// that is down, stalls, or serves bytes that do not match their digest is
// passed over for the next one or the origin, and the blob arrives intact
// either way.
func TestMirrors(t *testing.T) {
	// The origin counts the blob bytes it sends straight to a client.
	origin := &meter.Handler{
		H:     privateOrigin(registry.New(registry.Logger(log.New(io.Discard, "", 0)))),
		Match: func(r *http.Request) bool { return meter.BlobGets(r) && r.Header.Get("X-Mirror") != "1" },
	}
	srv := httptest.NewServer(origin)
	t.Cleanup(srv.Close)
	host := strings.TrimPrefix(srv.URL, "http://")
	data, d := pushBlob(t, mirrorOf(t, host, nil, nil), "fleet/app", 600<<10)
	keys := oci.WithKeychain(staticKeychain{&authn.Basic{Username: "fleet", Password: "secret"}})
	ref := fetchRef(t, host, "fleet/app")
	path := "/v2/fleet/app/blobs/" + d.Digest.String()

	var authSeen atomic.Int64
	good := mirrorOf(t, host, nil, &authSeen)
	corrupt := mirrorOf(t, host, func(r *http.Request, body []byte) []byte {
		if strings.Contains(r.URL.Path, "/blobs/") && len(body) > 100 {
			body = append([]byte(nil), body...)
			body[100] ^= 0xff
		}
		return body
	}, nil)
	stalled := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(20 * time.Second):
		}
	}))
	t.Cleanup(stalled.Close)
	stalledHost := strings.TrimPrefix(stalled.URL, "http://")

	for _, tc := range []struct {
		name    string
		mirrors []string
		// served is which mirror serves the blob ("" the origin); down
		// the mirrors passed over afterwards.
		served     string
		originRead bool
	}{
		{"good mirror", []string{good}, good, false},
		{"down then good", []string{deadHost(t), good}, good, false},
		{"down only", []string{deadHost(t)}, "", true},
		{"corrupt", []string{corrupt}, "", true},
		{"stalled then good", []string{stalledHost, good}, good, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := oci.NewMirrors(tc.mirrors, true, time.Second)
			if err != nil {
				t.Fatal(err)
			}
			before := origin.Bytes()
			dst := filepath.Join(t.TempDir(), "blob")
			start := time.Now()
			if _, err := oci.FetchBlob(context.Background(), ref, d, dst, 3, oci.WithInsecure(true), oci.WithMirrors(m), keys); err != nil {
				t.Fatal(err)
			}
			if got, err := readFile(dst); err != nil || !bytes.Equal(got, data) {
				t.Fatalf("fetched blob differs (%v)", err)
			}
			if got := m.Served(path); got != tc.served {
				t.Errorf("served by %q, want %q", got, tc.served)
			}
			if read := origin.Bytes() - before; (read > 0) != tc.originRead {
				t.Errorf("origin served %d blob bytes; want some: %v", read, tc.originRead)
			}
			if time.Since(start) > 15*time.Second {
				t.Errorf("took %v: a stalled mirror was waited for", time.Since(start))
			}
		})
	}
	// A manifest read by tag through go-containerregistry goes through the
	// mirror as well, without the origin's credentials.
	m, err := oci.NewMirrors([]string{good}, true, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	img, err := random.Image(1024, 1)
	if err != nil {
		t.Fatal(err)
	}
	tagged, err := name.ParseReference(host+"/fleet/app:x", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(tagged, img, remote.WithAuth(&authn.Basic{Username: "fleet", Password: "secret"})); err != nil {
		t.Fatal(err)
	}
	if _, err := oci.Head(context.Background(), fetchRef(t, host, "fleet/app"), oci.WithInsecure(true), oci.WithMirrors(m), keys); err != nil {
		t.Fatal(err)
	}
	if got := m.Served("/v2/fleet/app/manifests/x"); got != good {
		t.Errorf("the tag was resolved by %q, want the mirror %s", got, good)
	}
	// A mirror that serves a wrong manifest for a digest is passed over
	// within the same request.
	badManifests := mirrorOf(t, host, func(r *http.Request, body []byte) []byte {
		if strings.Contains(r.URL.Path, "/manifests/") {
			return bytes.Replace(body, []byte(`"size"`), []byte(`"Size"`), 1)
		}
		return body
	}, nil)
	m2, err := oci.NewMirrors([]string{badManifests, good}, true, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	dg, _ := img.Digest()
	byDigest, err := oci.ParseRef(host+"/fleet/app@"+dg.String(), true)
	if err != nil {
		t.Fatal(err)
	}
	// (A random image is no bundle: read, then refused for what it is.)
	if _, err := oci.OpenManifest(context.Background(), byDigest, oci.WithInsecure(true), oci.WithMirrors(m2), keys); !errors.Is(err, bundle.ErrNotBundle) {
		t.Fatal(err)
	}
	if got := m2.Served("/v2/fleet/app/manifests/" + dg.String()); got != good {
		t.Errorf("the manifest came from %q, want %s after the bad mirror", got, good)
	}
	if authSeen.Load() != 0 {
		t.Errorf("the mirror saw %d requests with credentials", authSeen.Load())
	}
}

// TestMirrorWhileOriginDown: a cache that holds the blob serves it while
// no connection to the origin can be made (an origin restarting); the
// version check, which goes to the origin first, falls back to it too.
func TestMirrorWhileOriginDown(t *testing.T) {
	cache := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(cache.Close)
	cacheHost := strings.TrimPrefix(cache.URL, "http://")
	data, d := pushBlob(t, cacheHost, "fleet/app", 300<<10)
	origin := deadHost(t)
	m, err := oci.NewMirrors([]string{cacheHost}, true, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), "blob")
	if _, err := oci.FetchBlob(context.Background(), fetchRef(t, origin, "fleet/app"), d, dst, 2, oci.WithInsecure(true), oci.WithMirrors(m)); err != nil {
		t.Fatal(err)
	}
	if got, err := readFile(dst); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("fetched blob differs (%v)", err)
	}
	// Without the mirror the same fetch fails: the origin is really down.
	if _, err := oci.FetchBlob(context.Background(), fetchRef(t, origin, "fleet/app"), d, filepath.Join(t.TempDir(), "b"), 1, oci.WithInsecure(true), oci.WithRetry(1, time.Millisecond, 1)); err == nil {
		t.Fatal("fetched from a dead origin")
	}
}

// TestNewMirrorsRefuses: bad mirror lists are refused with the reason.
func TestNewMirrorsRefuses(t *testing.T) {
	for _, tc := range []struct {
		hosts []string
		stall time.Duration
		want  string
	}{
		{[]string{"cache.local:5000/fleet"}, time.Minute, "HOST[:PORT]"},
		{[]string{""}, time.Minute, "HOST[:PORT]"},
		{[]string{"a:5000", "http://a:5000"}, time.Minute, "twice"},
		{[]string{"a:5000"}, time.Millisecond, "under a second"},
	} {
		if _, err := oci.NewMirrors(tc.hosts, false, tc.stall); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("NewMirrors(%q, %v): %v, want %q", tc.hosts, tc.stall, err, tc.want)
		}
	}
	if m, err := oci.NewMirrors([]string{"cache.local:5000", "https://10.0.0.2"}, false, time.Minute); err != nil || m == nil {
		t.Errorf("good mirrors refused: %v", err)
	}
}

func readFile(p string) ([]byte, error) { return os.ReadFile(p) }

// TestMirrorOverACutLink: a site cache reached over a link that cuts
// every connection after 100 KB is not passed over for the cuts: the
// download resumes from it, and the origin serves no blob bytes.
func TestMirrorOverACutLink(t *testing.T) {
	origin := &meter.Handler{
		H:     registry.New(registry.Logger(log.New(io.Discard, "", 0))),
		Match: func(r *http.Request) bool { return meter.BlobGets(r) && r.Header.Get("X-Mirror") != "1" },
	}
	srv := httptest.NewServer(origin)
	t.Cleanup(srv.Close)
	host := strings.TrimPrefix(srv.URL, "http://")
	data, d := pushBlob(t, host, "fleet/app", 600<<10)
	link := testutil.NewBadLink(t, mirrorOf(t, host, nil, nil), 100<<10, 0)
	m, err := oci.NewMirrors([]string{link.Addr}, true, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), "blob")
	if _, err := oci.FetchBlob(context.Background(), fetchRef(t, host, "fleet/app"), d, dst, 3, oci.WithInsecure(true), oci.WithMirrors(m)); err != nil {
		t.Fatal(err)
	}
	if got, err := readFile(dst); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("fetched blob differs (%v)", err)
	}
	if n := origin.Bytes(); n != 0 {
		t.Fatalf("the origin served %d blob bytes: the cut mirror was passed over", n)
	}
	if n := link.Cuts.Load(); n < 5 {
		t.Fatalf("the link cut %d times, want at least 5", n)
	}
}
