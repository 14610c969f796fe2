package bundle

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"

	"github.com/otter-fleet/otter/internal/fsutil"
	"github.com/otter-fleet/otter/internal/testutil/touch"
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
		if h.Typeflag == tar.TypeReg && h.Size == 0 {
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
	return craftedLayer(t, tarBuf.Bytes(), 4096)
}

// craftedLayer makes a one-path bundle of NAR size narSize whose layer
// decompresses to raw, with the digest and DiffID of its bytes.
func craftedLayer(t *testing.T, raw []byte, narSize int64) (v1.Image, *Config) {
	t.Helper()
	var zBuf bytes.Buffer
	enc, _ := zstd.NewWriter(&zBuf)
	enc.Write(raw)
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
	l := &spooledLayer{file: f, digest: sum(zBuf.Bytes()), size: int64(zBuf.Len()), diffID: sum(raw), title: nix.BaseName(evilPath)}
	cfg := &Config{
		SchemaVersion: SchemaVersion, System: "aarch64-linux", Created: "1970-01-01T00:00:00Z", Root: evilPath,
		Paths:  []Path{{Path: evilPath, NarHash: nix.Hash{1}, NarSize: narSize, References: []string{}}},
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

// TestExtractBoundsLayers: what a layer writes is bounded by its path's
// NAR size from the config before any byte is written, sparse entries are
// refused, and the DiffID covers every decompressed byte: zero padding
// after the end of the archive is fine, anything else there is not.
func TestExtractBoundsLayers(t *testing.T) {
	base := "nix/store/" + nix.BaseName(evilPath)
	tarOf := func(f func(tw *tar.Writer)) []byte {
		var b bytes.Buffer
		tw := tar.NewWriter(&b)
		tw.WriteHeader(&tar.Header{Name: base + "/", Typeflag: tar.TypeDir, Mode: 0o555})
		f(tw)
		tw.Close()
		return b.Bytes()
	}
	hello := tarOf(func(tw *tar.Writer) {
		tw.WriteHeader(&tar.Header{Name: base + "/a", Typeflag: tar.TypeReg, Mode: 0o444, Size: 5})
		tw.Write([]byte("hello"))
	})
	// A file far larger than the path's NAR size: zeros compress to
	// almost nothing.
	bomb := tarOf(func(tw *tar.Writer) {
		tw.WriteHeader(&tar.Header{Name: base + "/a", Typeflag: tar.TypeReg, Mode: 0o444, Size: 64 << 20})
		tw.Write(make([]byte, 64<<20))
	})
	// A PAX sparse (0.1) entry of 64 MiB holding 5 bytes: Go's writer
	// will not write one, so the records are renamed after.
	sparse := tarOf(func(tw *tar.Writer) {
		tw.WriteHeader(&tar.Header{Name: base + "/a", Typeflag: tar.TypeReg, Mode: 0o444, Size: 5, Format: tar.FormatPAX,
			PAXRecords: map[string]string{"XXX.sparse.numblocks": "1", "XXX.sparse.map": "0,5", "XXX.sparse.size": "67108864"}})
		tw.Write([]byte("hello"))
	})
	sparse = bytes.ReplaceAll(sparse, []byte("XXX.sparse."), []byte("GNU.sparse."))
	padded := append(append([]byte{}, hello...), make([]byte, 10240-len(hello)%10240)...)
	garbage := append(append([]byte{}, hello...), []byte("not zeros")...)
	zeroBomb := append(append([]byte{}, hello...), make([]byte, 64<<20)...)

	// The real NAR hash and size of the one-file path.
	tree := t.TempDir()
	os.Mkdir(filepath.Join(tree, "p"), 0o755)
	os.WriteFile(filepath.Join(tree, "p", "a"), []byte("hello"), 0o444)
	narHash, narSize, err := nix.HashPath(filepath.Join(tree, "p"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		raw  []byte
		want error // nil: extracted
	}{
		{"file over the NAR size", bomb, ErrLayerFormat},
		{"PAX sparse entry", sparse, ErrLayerFormat},
		{"garbage after the end", garbage, ErrLayerFormat},
		{"zeros past the bound after the end", zeroBomb, ErrLayerFormat},
		{"record padding (GNU tar)", padded, nil},
		{"no padding", hello, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img, cfg := craftedLayer(t, tc.raw, narSize)
			cfg.Paths[0].NarHash = narHash
			parent := t.TempDir()
			store := filepath.Join(parent, "store")
			t.Cleanup(func() { fsutil.RemoveAll(parent) })
			_, err := Extract(context.Background(), img, cfg, store)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("a valid layer was refused: %v", err)
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("want %v, got %v", tc.want, err)
			}
			if entries, _ := os.ReadDir(store); len(entries) != 0 {
				t.Fatalf("refused layer left %v in the store", entries)
			}
		})
	}
}

// FuzzExtract: whatever tar a layer holds, extraction creates, changes
// and reads nothing outside the store, leaves nothing in the store unless
// it took the path whole, and writes no more than the path's NAR size.
func FuzzExtract(f *testing.F) {
	base := "nix/store/" + nix.BaseName(evilPath)
	seed := func(entries ...*tar.Header) []byte {
		var b bytes.Buffer
		tw := tar.NewWriter(&b)
		for _, h := range entries {
			tw.WriteHeader(h)
			if h.Typeflag == tar.TypeReg {
				tw.Write(bytes.Repeat([]byte("x"), int(h.Size)))
			}
		}
		tw.Close()
		return b.Bytes()
	}
	dir := &tar.Header{Name: base + "/", Typeflag: tar.TypeDir, Mode: 0o555}
	reg := func(name string, size int64) *tar.Header {
		return &tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o444, Size: size}
	}
	// Relative links from the staging directory in the store to "outside".
	outside := "../../../outside"
	f.Add(seed(dir, reg(base+"/a", 5)))
	f.Add(seed(dir, &tar.Header{Name: base + "/l", Typeflag: tar.TypeSymlink, Linkname: outside}, reg(base+"/l/x", 1)))
	f.Add(seed(&tar.Header{Name: base, Typeflag: tar.TypeSymlink, Linkname: "../../outside"}, reg(base+"/x", 1)))
	f.Add(seed(dir, reg(base+"/../../outside/x", 1)))
	f.Add(seed(dir, &tar.Header{Name: base + "/h", Typeflag: tar.TypeLink, Linkname: outside + "/secret"}))
	f.Add(seed(dir, reg(base+"/big", 1<<16)))
	f.Add(bytes.ReplaceAll(seed(dir, &tar.Header{Name: base + "/a", Typeflag: tar.TypeReg, Size: 5, Format: tar.FormatPAX,
		PAXRecords: map[string]string{"XXX.sparse.numblocks": "1", "XXX.sparse.map": "0,5", "XXX.sparse.size": "1099511627776"}}),
		[]byte("XXX.sparse."), []byte("GNU.sparse.")))
	f.Add(append(seed(dir, reg(base+"/a", 5)), "trailing"...))
	f.Fuzz(func(t *testing.T, raw []byte) {
		if len(raw) > 1<<20 {
			return
		}
		img, cfg := craftedLayer(t, raw, 8192)
		parent := t.TempDir()
		store := filepath.Join(parent, "store")
		out := filepath.Join(parent, "outside")
		os.MkdirAll(filepath.Join(out, "sub"), 0o755)
		os.WriteFile(filepath.Join(out, "secret"), []byte("secret"), 0o644)
		os.MkdirAll(store, 0o755)
		t.Cleanup(func() { fsutil.RemoveAll(parent) })
		before := touch.Snapshot(t, out)
		events := touch.Watch(t, touch.Touches, out, filepath.Join(out, "sub"))
		beside := touch.Watch(t, unix.IN_CREATE|unix.IN_MOVED_TO, parent)
		_, err := Extract(context.Background(), img, cfg, store, WithFsync(false))
		if ev := append(events(), beside()...); len(ev) > 0 {
			t.Fatalf("extract touched things outside the store (%v): %v", err, ev)
		}
		if after := touch.Snapshot(t, out); after != before {
			t.Fatalf("extract changed the directory outside the store (%v)", err)
		}
		ents, _ := os.ReadDir(store)
		if err != nil && len(ents) != 0 {
			t.Fatalf("a refused layer left %v in the store: %v", ents, err)
		}
		var size int64
		filepath.WalkDir(store, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.Type().IsRegular() {
				fi, _ := d.Info()
				size += fi.Size()
			}
			return nil
		})
		if size > 8192 {
			t.Fatalf("extract wrote %d bytes for a path of NAR size 8192", size)
		}
	})
}
