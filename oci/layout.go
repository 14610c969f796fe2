package oci

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/sync/errgroup"

	"github.com/otter-fleet/otter/bundle"
	"github.com/otter-fleet/otter/internal/fsutil"
	"github.com/otter-fleet/otter/internal/iox"
)

// refNameAnnotation names a manifest in an OCI layout's index.json.
const refNameAnnotation = "org.opencontainers.image.ref.name"

// Bounds on what otter reads whole from a layout or an archive, as
// go-containerregistry bounds what it reads from a registry: an index or
// manifest of at most MaxManifestSize bytes (a bundle of bundle.MaxLayers
// layers takes about 4 MiB).
const MaxManifestSize = 8 << 20

// ErrTooLarge is returned for an index or manifest over its bound, or a
// blob whose file is not the size its descriptor says.
var ErrTooLarge = errors.New("oci: index or manifest over its size bound")

// checkLayoutBlob refuses a descriptor over max bytes, and a layout blob
// whose file is not the size its descriptor says, before anything reads it.
func checkLayoutBlob(dir string, d v1.Descriptor, max int64) error {
	if d.Size < 0 || d.Size > max {
		return fmt.Errorf("%w: %s declares %d bytes, at most %d", ErrTooLarge, d.Digest, d.Size, max)
	}
	fi, err := os.Lstat(filepath.Join(dir, "blobs", d.Digest.Algorithm, d.Digest.Hex))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%w: blob %s in %s", ErrNotFound, d.Digest, dir)
		}
		return err
	}
	if !fi.Mode().IsRegular() || fi.Size() != d.Size {
		return fmt.Errorf("%w: blob %s in %s is %d bytes, its descriptor says %d", bundle.ErrLayerDigest, d.Digest, dir, fi.Size(), d.Size)
	}
	return nil
}

// layoutIndex reads a layout's index.json, bounded.
func layoutIndex(dir string) (v1.ImageIndex, error) {
	fi, err := os.Stat(filepath.Join(dir, "index.json"))
	if err != nil {
		return nil, err
	}
	if fi.Size() > MaxManifestSize {
		return nil, fmt.Errorf("%w: %s/index.json is %d bytes, at most %d", ErrTooLarge, dir, fi.Size(), MaxManifestSize)
	}
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		return nil, err
	}
	if _, err := idx.IndexManifest(); err != nil {
		return nil, fmt.Errorf("%w: %s/index.json: %v", bundle.ErrNotBundle, dir, err)
	}
	return idx, nil
}

// boundedImage is a layout image whose config is checked against its
// descriptor's size bound before it is read.
type boundedImage struct {
	v1.Image
	dir string
}

func (b *boundedImage) RawConfigFile() ([]byte, error) {
	m, err := b.Manifest()
	if err != nil {
		return nil, err
	}
	if err := checkLayoutBlob(b.dir, m.Config, bundle.MaxConfigSize); err != nil {
		return nil, err
	}
	return b.Image.RawConfigFile()
}

// layoutImage opens the manifest desc of a layout, bounded.
func layoutImage(dir string, idx v1.ImageIndex, desc v1.Descriptor) (v1.Image, error) {
	if err := checkLayoutBlob(dir, desc, MaxManifestSize); err != nil {
		return nil, err
	}
	img, err := idx.Image(desc.Digest)
	if err != nil {
		return nil, err
	}
	if _, err := img.Manifest(); err != nil {
		return nil, fmt.Errorf("%w: manifest %s in %s: %v", bundle.ErrNotBundle, desc.Digest, dir, err)
	}
	return &boundedImage{Image: img, dir: dir}, nil
}

// openLayout finds the image ref names in its layout.
func openLayout(ref Ref) (v1.Image, error) {
	idx, err := layoutIndex(ref.Layout)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w: no OCI layout at %s", ErrNotFound, ref.Layout)
		}
		return nil, err
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, err
	}
	var found []v1.Descriptor
	var tags []string
	for _, d := range im.Manifests {
		tag := d.Annotations[refNameAnnotation]
		tags = append(tags, tag)
		switch {
		case ref.Digest != nil && d.Digest == *ref.Digest,
			ref.Tag != "" && tag == ref.Tag,
			ref.Digest == nil && ref.Tag == "":
			found = append(found, d)
		}
	}
	switch {
	case len(found) == 0:
		return nil, fmt.Errorf("%w: %s (the layout has %s)", ErrNotFound, ref, strings.Join(tags, ", "))
	case len(found) > 1 && ref.Tag == "" && ref.Digest == nil:
		return nil, fmt.Errorf("%w: %s holds %d manifests; name one as oci:DIR:TAG (%s)", ErrRef, ref, len(found), strings.Join(tags, ", "))
	}
	if !found[0].MediaType.IsImage() {
		return nil, fmt.Errorf("%w: %s is a %s", bundle.ErrNotBundle, ref, found[0].MediaType)
	}
	return layoutImage(ref.Layout, idx, found[0])
}

// writeLayout writes img into the layout ref names, under ref.Tag
// (default "latest"), replacing what that tag named before.
func writeLayout(ctx context.Context, img v1.Image, ref Ref, o *ioOptions) (v1.Descriptor, error) {
	if ref.Digest != nil {
		return v1.Descriptor{}, fmt.Errorf("%w: cannot write to a digest (%s); give a tag", ErrRef, ref)
	}
	desc, err := writeImageBlobs(ctx, img, ref.Layout, o)
	if err != nil {
		return desc, err
	}
	return desc, tagLayout(ref, desc)
}

// tagLayout points ref's tag (default "latest") at desc in index.json.
func tagLayout(ref Ref, desc v1.Descriptor) error {
	tag := ref.Tag
	if tag == "" {
		tag = "latest"
	}
	tagged := desc
	tagged.Annotations = map[string]string{refNameAnnotation: tag}
	if err := updateIndex(ref.Layout, tag, tagged); err != nil {
		return fmt.Errorf("writing layout %s: %w", ref.Layout, err)
	}
	return nil
}

// writeImageBlobs writes img's layers, config and manifest into the
// layout dir, each atomically, and returns the manifest's descriptor. It
// names nothing in index.json.
func writeImageBlobs(ctx context.Context, img v1.Image, dir string, o *ioOptions) (v1.Descriptor, error) {
	desc, err := DescriptorOf(img)
	if err != nil {
		return desc, err
	}
	if err := os.MkdirAll(filepath.Join(dir, "blobs", "sha256"), 0o755); err != nil {
		return desc, fmt.Errorf("writing layout %s: %w", dir, err)
	}
	if err := ensureFile(filepath.Join(dir, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`)); err != nil {
		return desc, fmt.Errorf("writing layout %s: %w", dir, err)
	}
	layers, err := img.Layers()
	if err != nil {
		return desc, err
	}
	var total, done atomic.Int64
	for _, l := range layers {
		n, err := l.Size()
		if err != nil {
			return desc, err
		}
		total.Add(n)
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(o.jobs)
	for _, l := range layers {
		g.Go(func() error {
			d, err := l.Digest()
			if err != nil {
				return err
			}
			n, err := l.Size()
			if err != nil {
				return err
			}
			err = writeBlob(gctx, dir, d, n, l.Compressed)
			if o.progress != nil {
				o.progress(done.Add(n), total.Load())
			}
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return desc, fmt.Errorf("writing layout %s: %w", dir, err)
	}
	rawCfg, err := img.RawConfigFile()
	if err != nil {
		return desc, err
	}
	rawManifest, err := img.RawManifest()
	if err != nil {
		return desc, err
	}
	return desc, writeRawBlobs(ctx, dir, rawCfg, rawManifest)
}

// writeRawBlobs stores small in-memory blobs under their digests.
func writeRawBlobs(ctx context.Context, dir string, blobs ...[]byte) error {
	for _, raw := range blobs {
		h, n, err := v1.SHA256(bytes.NewReader(raw))
		if err != nil {
			return err
		}
		open := func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(raw)), nil }
		if err := writeBlob(ctx, dir, h, n, open); err != nil {
			return fmt.Errorf("writing layout %s: %w", dir, err)
		}
	}
	return nil
}

// layoutIndexAt returns the image index tagged in a layout, or an empty
// OCI index when the tag does not exist.
func layoutIndexAt(ref Ref) (v1.ImageIndex, error) {
	emptyIdx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	idx, err := layoutIndex(ref.Layout)
	if errors.Is(err, fs.ErrNotExist) {
		return emptyIdx, nil
	}
	if err != nil {
		return nil, err
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, err
	}
	for _, d := range im.Manifests {
		if d.Annotations[refNameAnnotation] == ref.Tag {
			if !d.MediaType.IsIndex() {
				return nil, fmt.Errorf("%w: %s is a %s, not an index", bundle.ErrNotBundle, ref, d.MediaType)
			}
			if err := checkLayoutBlob(ref.Layout, d, MaxManifestSize); err != nil {
				return nil, err
			}
			return idx.ImageIndex(d.Digest)
		}
	}
	return emptyIdx, nil
}

// writeLayoutIndex writes an index whose manifests are already in the
// layout, and tags it.
func writeLayoutIndex(ctx context.Context, idx v1.ImageIndex, ref Ref) error {
	raw, err := idx.RawManifest()
	if err != nil {
		return err
	}
	if err := writeRawBlobs(ctx, ref.Layout, raw); err != nil {
		return err
	}
	d, n, _ := v1.SHA256(bytes.NewReader(raw))
	mt, err := idx.MediaType()
	if err != nil {
		return err
	}
	return tagLayout(ref, v1.Descriptor{MediaType: mt, Size: n, Digest: d})
}

// writeBlob stores a blob under its digest, unless a blob with that
// digest and size is there and hashes right. The content goes to a
// temporary file, is checked against the digest, synced and renamed.
func writeBlob(ctx context.Context, dir string, h v1.Hash, size int64, open func() (io.ReadCloser, error)) error {
	if h.Algorithm != "sha256" {
		return fmt.Errorf("blob %s: only sha256 digests are supported", h)
	}
	final := filepath.Join(dir, "blobs", "sha256", h.Hex)
	if fi, err := os.Stat(final); err == nil && fi.Size() == size {
		if got, err := hashFile(final); err == nil && got == h.Hex {
			return nil
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	rc, err := open()
	if err != nil {
		return err
	}
	defer rc.Close()
	tmp, err := os.CreateTemp(filepath.Dir(final), ".tmp-"+h.Hex[:12]+"-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	d := sha256.New()
	n, err := io.Copy(io.MultiWriter(tmp, d), iox.ContextReader{Ctx: ctx, R: rc})
	if err != nil {
		return fmt.Errorf("blob %s: %w", h, err)
	}
	if got := hex.EncodeToString(d.Sum(nil)); got != h.Hex || n != size {
		return fmt.Errorf("%w: blob %s has %d bytes hashing to sha256:%s", bundle.ErrLayerDigest, h, n, got)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("blob %s: %w", h, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("blob %s: %w", h, err)
	}
	return os.Rename(tmp.Name(), final)
}

func hashFile(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	d := sha256.New()
	if _, err := io.Copy(d, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(d.Sum(nil)), nil
}

// updateIndex points tag at desc in the layout's index.json, replacing the
// file atomically.
func updateIndex(dir, tag string, desc v1.Descriptor) error {
	p := filepath.Join(dir, "index.json")
	im := v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex}
	if raw, err := os.ReadFile(p); err == nil {
		if err := json.Unmarshal(raw, &im); err != nil {
			return fmt.Errorf("reading %s: %w", p, err)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	kept := im.Manifests[:0]
	for _, d := range im.Manifests {
		if d.Annotations[refNameAnnotation] != tag {
			kept = append(kept, d)
		}
	}
	im.Manifests = append(kept, desc)
	sort.SliceStable(im.Manifests, func(i, j int) bool {
		return im.Manifests[i].Annotations[refNameAnnotation] < im.Manifests[j].Annotations[refNameAnnotation]
	})
	raw, err := json.Marshal(im)
	if err != nil {
		return err
	}
	return fsutil.AtomicWrite(p, raw, 0o644)
}

// ensureFile writes p with content unless it already exists.
func ensureFile(p string, content []byte) error {
	if _, err := os.Stat(p); err == nil {
		return nil
	}
	return fsutil.AtomicWrite(p, content, 0o644)
}
