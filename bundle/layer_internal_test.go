package bundle

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/klauspost/compress/zstd"

	"github.com/otter-fleet/otter/internal/fsutil"
	"github.com/otter-fleet/otter/nix"
)

const evilPath = "/nix/store/00000000000000000000000000000000-evil-1.0"

// craftedBundle makes a one-path bundle whose layer holds the given tar
// entries (content for regular files in Linkname's place is not needed:
// regular files get the bytes in body).
func craftedBundle(t *testing.T, entries []*tar.Header, body map[string]string) (v1.Image, *Config) {
	t.Helper()
	var tarBuf bytes.Buffer
	tw := tar.NewWriter(&tarBuf)
	for _, h := range entries {
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(body[h.Name]))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			tw.Write([]byte(body[h.Name]))
		}
	}
	tw.Close()
	var zBuf bytes.Buffer
	enc, _ := zstd.NewWriter(&zBuf)
	enc.Write(tarBuf.Bytes())
	enc.Close()
	spool := t.TempDir()
	f := filepath.Join(spool, "layer")
	if err := os.WriteFile(f, zBuf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	sum := func(b []byte) v1.Hash {
		s := sha256.Sum256(b)
		return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(s[:])}
	}
	l := &spooledLayer{file: f, digest: sum(zBuf.Bytes()), size: int64(zBuf.Len()), diffID: sum(tarBuf.Bytes()), title: nix.BaseName(evilPath)}
	cfg := &Config{
		SchemaVersion: SchemaVersion, System: "aarch64-linux", Created: "1970-01-01T00:00:00Z", Root: evilPath,
		Paths:  []Path{{Path: evilPath, NarHash: nix.Hash{1}, NarSize: 8, References: []string{}}},
		RootFS: RootFS{Type: "layers", DiffIDs: []v1.Hash{l.diffID}},
	}
	img, err := newImage(cfg, []*spooledLayer{l})
	if err != nil {
		t.Fatal(err)
	}
	return img, cfg
}

func TestExtractRefusesMaliciousLayers(t *testing.T) {
	base := "nix/store/" + nix.BaseName(evilPath)
	dir := func(name string) *tar.Header {
		return &tar.Header{Name: name + "/", Typeflag: tar.TypeDir, Mode: 0o555}
	}
	reg := func(name string) *tar.Header { return &tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o444} }
	for _, tc := range []struct {
		name    string
		entries []*tar.Header
		want    error
	}{
		{"path traversal", []*tar.Header{dir(base), reg(base + "/../../../escaped")}, ErrLayerFormat},
		{"another store path", []*tar.Header{dir(base), reg("nix/store/11111111111111111111111111111111-other/x")}, ErrLayerFormat},
		{"absolute name", []*tar.Header{reg("/etc/escaped")}, ErrLayerFormat},
		{"hard link", []*tar.Header{dir(base), {Name: base + "/link", Typeflag: tar.TypeLink, Linkname: "/etc/passwd"}}, ErrLayerFormat},
		{"device", []*tar.Header{dir(base), {Name: base + "/dev", Typeflag: tar.TypeChar, Devmajor: 1, Devminor: 3}}, ErrLayerFormat},
		{"through a symlink", []*tar.Header{dir(base), {Name: base + "/a", Typeflag: tar.TypeSymlink, Linkname: "/tmp"}, reg(base + "/a/escaped")}, ErrLayerFormat},
		{"out of order", []*tar.Header{dir(base), reg(base + "/b"), reg(base + "/a")}, ErrLayerFormat},
		{"duplicate", []*tar.Header{dir(base), reg(base + "/a"), reg(base + "/a")}, ErrLayerFormat},
		{"child before parent", []*tar.Header{reg(base + "/sub/x")}, ErrLayerFormat},
		{"empty", nil, ErrLayerFormat},
		{"wrong content", []*tar.Header{dir(base), reg(base + "/a")}, ErrNarHashMismatch},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img, cfg := craftedBundle(t, tc.entries, map[string]string{base + "/a": "hello", base + "/b": "x", base + "/a/escaped": "x"})
			parent := t.TempDir()
			store := filepath.Join(parent, "store")
			t.Cleanup(func() { fsutil.RemoveAll(parent) })
			_, err := Extract(context.Background(), img, cfg, store)
			if !errors.Is(err, tc.want) {
				t.Fatalf("want %v, got %v", tc.want, err)
			}
			if entries, _ := os.ReadDir(store); len(entries) != 0 {
				t.Fatalf("refused layer left %v in the store", entries)
			}
			for _, p := range []string{filepath.Join(parent, "escaped"), "/tmp/escaped", "/etc/escaped"} {
				if _, err := os.Lstat(p); err == nil {
					t.Fatalf("wrote outside the store: %s", p)
				}
			}
		})
	}
}
