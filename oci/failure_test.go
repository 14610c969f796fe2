package oci_test

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/otter-fleet/otter/bundle"
	"github.com/otter-fleet/otter/internal/testutil"
	"github.com/otter-fleet/otter/nix"
	"github.com/otter-fleet/otter/oci"
)

func serve(t *testing.T, h http.Handler) string {
	s := httptest.NewServer(h)
	t.Cleanup(s.Close)
	u, _ := url.Parse(s.URL)
	return u.Host
}

// bigClosure makes a one-path closure holding an incompressible file of n bytes.
func bigClosure(t *testing.T, n int) (*nix.Closure, string) {
	store := testutil.TempStore(t)
	p := nix.StoreDir + "/" + strings.Repeat("a", 32) + "-big-1.0"
	dir := filepath.Join(store, nix.BaseName(p))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	data := make([]byte, n)
	rand.Read(data)
	if err := os.WriteFile(filepath.Join(dir, "blob"), data, 0o444); err != nil {
		t.Fatal(err)
	}
	h, size, err := nix.HashPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	c, err := nix.NewClosure(p, []nix.PathInfo{{Path: p, NarHash: h, NarSize: size, References: []string{}}})
	if err != nil {
		t.Fatal(err)
	}
	return c, store
}

func TestPushSurvivesDroppedConnections(t *testing.T) {
	ctx := context.Background()
	c, store := bigClosure(t, 1<<20)
	b := build(t, c, store)
	reg := registry.New()
	var drops atomic.Int64
	host := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPatch && strings.Contains(r.URL.Path, "/blobs/uploads") && drops.Load() < 3 {
			drops.Add(1)
			io.CopyN(io.Discard, r.Body, 64<<10) // part of the layer arrives, then the link drops
			conn, _, err := w.(http.Hijacker).Hijack()
			if err == nil {
				conn.Close()
			}
			return
		}
		reg.ServeHTTP(w, r)
	}))
	ref := mustRef(t, host+"/flaky/bundle:v1")
	desc, err := oci.Write(ctx, b, ref, oci.WithRetry(5, 10e6, 2))
	if err != nil {
		t.Fatalf("push over a dropping link: %v", err)
	}
	if drops.Load() != 3 {
		t.Fatalf("the link dropped %d times, want 3", drops.Load())
	}
	img, _, err := oci.Open(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Image(img); err != nil {
		t.Fatal(err)
	}
	if digest(t, img) != desc.Digest {
		t.Fatalf("registry has %s, pushed %s", digest(t, img), desc.Digest)
	}
}

func TestRegistryCredentials(t *testing.T) {
	ctx := context.Background()
	c, store := testutil.DemoStore(t)
	b := build(t, c, store)
	reg := registry.New()
	host := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != "fleet" || p != "s3cret" {
			w.Header().Set("WWW-Authenticate", `Basic realm="otter-test"`)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		reg.ServeHTTP(w, r)
	}))
	ref := mustRef(t, host+"/private/bundle:v1")

	wrong := authn.NewMultiKeychain(staticKeychain{authn.FromConfig(authn.AuthConfig{Username: "fleet", Password: "guess"})})
	_, err := oci.Write(ctx, b, ref, oci.WithKeychain(wrong))
	if !errors.Is(err, oci.ErrUnauthorized) {
		t.Fatalf("wrong password: want ErrUnauthorized, got %v", err)
	}
	if _, _, err := oci.Open(ctx, ref, oci.WithKeychain(wrong)); !errors.Is(err, oci.ErrUnauthorized) {
		t.Fatalf("wrong password on read: want ErrUnauthorized, got %v", err)
	}

	// The default keychain reads the Docker config.
	cfgDir := t.TempDir()
	auth := base64.StdEncoding.EncodeToString([]byte("fleet:s3cret"))
	cfg, _ := json.Marshal(map[string]any{"auths": map[string]any{host: map[string]string{"auth": auth}}})
	if err := os.WriteFile(filepath.Join(cfgDir, "config.json"), cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("DOCKER_CONFIG", cfgDir)
	if _, err := oci.Write(ctx, b, ref); err != nil {
		t.Fatalf("with credentials from DOCKER_CONFIG: %v", err)
	}
	if _, _, err := oci.Open(ctx, ref); err != nil {
		t.Fatal(err)
	}
}

type staticKeychain struct{ a authn.Authenticator }

func (k staticKeychain) Resolve(authn.Resource) (authn.Authenticator, error) { return k.a, nil }

func TestLayoutFullDisk(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	testutil.Require(t, os.Getuid() == 0, "root, to mount a small tmpfs")
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=512k", "otter-test", dir).CombinedOutput(); err != nil {
		testutil.Require(t, false, "mounting a tmpfs ("+strings.TrimSpace(string(out))+")")
	}
	t.Cleanup(func() { exec.Command("umount", dir).Run() })
	small, smallStore := testutil.DemoStore(t)
	layout := filepath.Join(dir, "layout")
	old := build(t, small, smallStore)
	if _, err := oci.Write(ctx, old, layoutRef(t, layout, "old")); err != nil {
		t.Fatal(err)
	}
	index, err := os.ReadFile(filepath.Join(layout, "index.json"))
	if err != nil {
		t.Fatal(err)
	}
	c, store := bigClosure(t, 1<<20)
	big := build(t, c, store)
	_, err = oci.Write(ctx, big, layoutRef(t, layout, "new"))
	if err == nil || !strings.Contains(err.Error(), "no space left") {
		t.Fatalf("want a no-space error, got %v", err)
	}
	if !strings.Contains(err.Error(), layout) {
		t.Errorf("error %q does not name the layout", err)
	}
	after, err := os.ReadFile(filepath.Join(layout, "index.json"))
	if err != nil || string(after) != string(index) {
		t.Fatalf("index.json changed by a failed write: %v\n%s", err, after)
	}
	if _, _, err := oci.Open(ctx, layoutRef(t, layout, "new")); !errors.Is(err, oci.ErrNotFound) {
		t.Fatalf("the failed bundle is visible: %v", err)
	}
	if _, _, err := oci.Open(ctx, layoutRef(t, layout, "old")); err != nil {
		t.Fatalf("the old bundle was lost: %v", err)
	}
	blobs, _ := os.ReadDir(filepath.Join(layout, "blobs", "sha256"))
	for _, e := range blobs {
		if strings.HasPrefix(e.Name(), ".") {
			t.Errorf("temporary file %s left behind", e.Name())
		}
	}
}

func TestExtractRefusesTamperedLayers(t *testing.T) {
	ctx := context.Background()
	c, store := bigClosure(t, 256<<10)
	b := build(t, c, store)
	for _, tc := range []struct {
		name   string
		damage func([]byte) []byte
	}{
		{"flipped byte", func(b []byte) []byte { b[len(b)/2] ^= 0x40; return b }},
		{"truncated", func(b []byte) []byte { return b[:len(b)-100] }},
		{"appended", func(b []byte) []byte { return append(b, 0) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			layout := filepath.Join(t.TempDir(), "layout")
			ref := layoutRef(t, layout, "v1")
			if _, err := oci.Write(ctx, b, ref); err != nil {
				t.Fatal(err)
			}
			m, _ := b.Manifest()
			blob := filepath.Join(layout, "blobs", "sha256", m.Layers[0].Digest.Hex)
			data, err := os.ReadFile(blob)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(blob, tc.damage(data), 0o644); err != nil {
				t.Fatal(err)
			}
			img, cfg, err := oci.Open(ctx, ref)
			if err != nil {
				t.Fatal(err)
			}
			out := testutil.TempStore(t)
			_, err = bundle.Extract(ctx, img, cfg, out)
			if !errors.Is(err, bundle.ErrLayerDigest) {
				t.Fatalf("want ErrLayerDigest, got %v", err)
			}
			if !strings.Contains(err.Error(), c.Root) {
				t.Errorf("error %q does not name the store path", err)
			}
			if entries, _ := os.ReadDir(out); len(entries) != 0 {
				t.Fatalf("a refused layer left %v in the store", entries)
			}
		})
	}
}

func TestExtractCorruptPresentPath(t *testing.T) {
	ctx := context.Background()
	c, store := testutil.DemoStore(t)
	b := build(t, c, store)
	out := testutil.TempStore(t)
	if _, err := bundle.Extract(ctx, b, b.Config, out); err != nil {
		t.Fatal(err)
	}
	victim := filepath.Join(out, nix.BaseName(c.Root))
	os.Chmod(victim, 0o755)
	if err := os.Remove(filepath.Join(victim, "release.json")); err != nil {
		t.Fatal(err)
	}
	if _, err := bundle.Extract(ctx, b, b.Config, out); !errors.Is(err, bundle.ErrCorruptPath) {
		t.Fatalf("want ErrCorruptPath, got %v", err)
	}
	res, err := bundle.Extract(ctx, b, b.Config, out, bundle.WithRepair(true))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Repaired) != 1 || res.Repaired[0] != c.Root {
		t.Fatalf("repaired %v, want the root", res.Repaired)
	}
	testutil.VerifyStore(t, c, out)
	testutil.AssertOnlyStorePaths(t, out, c)
}
