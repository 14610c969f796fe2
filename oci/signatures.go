package oci

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/otter-fleet/otter/bundle"
)

// Media types of what is attached to a bundle.
const (
	// EnvelopeMediaType is the layer holding a DSSE envelope.
	EnvelopeMediaType types.MediaType = "application/vnd.dsse.envelope.v1+json"
	// EmptyMediaType is the OCI empty descriptor's media type; its blob is "{}".
	EmptyMediaType types.MediaType = "application/vnd.oci.empty.v1+json"
	// MaxAttachments bounds how many referrers otter reads for one subject.
	MaxAttachments = 256
)

var emptyJSON = []byte("{}")

// artifact is an OCI 1.1 artifact manifest with blobs held in memory.
type artifact struct {
	manifest []byte
	blobs    map[v1.Hash]v1.Layer
}

var _ partial.CompressedImageCore = (*artifact)(nil)

func (a *artifact) RawConfigFile() ([]byte, error)      { return emptyJSON, nil }
func (a *artifact) MediaType() (types.MediaType, error) { return types.OCIManifestSchema1, nil }
func (a *artifact) RawManifest() ([]byte, error)        { return a.manifest, nil }
func (a *artifact) LayerByDigest(h v1.Hash) (partial.CompressedLayer, error) {
	if l, ok := a.blobs[h]; ok {
		return l, nil
	}
	return nil, fmt.Errorf("oci: no blob %s", h)
}

// NewArtifact makes an OCI 1.1 artifact of artifactType holding one blob
// of media type mt, whose subject is the given manifest.
func NewArtifact(artifactType string, blob []byte, mt types.MediaType, subject v1.Descriptor, annotations map[string]string) (v1.Image, error) {
	cd, cs, err := v1.SHA256(bytes.NewReader(emptyJSON))
	if err != nil {
		return nil, err
	}
	layer := static.NewLayer(blob, mt)
	ld, err := layer.Digest()
	if err != nil {
		return nil, err
	}
	subject = v1.Descriptor{MediaType: subject.MediaType, Size: subject.Size, Digest: subject.Digest}
	m := v1.Manifest{
		SchemaVersion: 2,
		MediaType:     types.OCIManifestSchema1,
		ArtifactType:  artifactType,
		Config:        v1.Descriptor{MediaType: EmptyMediaType, Size: cs, Digest: cd, Data: emptyJSON},
		Layers:        []v1.Descriptor{{MediaType: mt, Size: int64(len(blob)), Digest: ld}},
		Annotations:   annotations,
		Subject:       &subject,
	}
	raw, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	return partial.CompressedToImage(&artifact{manifest: raw, blobs: map[v1.Hash]v1.Layer{ld: layer}})
}

// fallbackTag is the OCI 1.1 referrers tag schema: sha256-<hex>.
func fallbackTag(h v1.Hash) string { return h.Algorithm + "-" + h.Hex }

// cosignTag is where cosign keeps signatures: sha256-<hex>.sig.
func cosignTag(h v1.Hash) string { return fallbackTag(h) + ".sig" }

// Attach stores a signed statement (a DSSE envelope) as an OCI 1.1
// referrer of the bundle subject in the repository or layout of ref. A
// registry without the referrers API gets the sha256-<hex> tag fallback;
// a layout always does.
func Attach(ctx context.Context, ref Ref, subject v1.Descriptor, artifactType string, envelope []byte, opts ...IOOption) (v1.Descriptor, error) {
	img, err := NewArtifact(artifactType, envelope, EnvelopeMediaType, subject, nil)
	if err != nil {
		return v1.Descriptor{}, err
	}
	return AttachArtifact(ctx, ref, subject, img, opts...)
}

// AttachArtifact stores an artifact whose subject is the bundle subject,
// as Attach does.
func AttachArtifact(ctx context.Context, ref Ref, subject v1.Descriptor, img v1.Image, opts ...IOOption) (v1.Descriptor, error) {
	desc, err := DescriptorOf(img)
	if err != nil {
		return desc, err
	}
	if ref.Remote != nil {
		o, err := makeIOOptions(opts)
		if err != nil {
			return desc, err
		}
		dst := ref.Remote.Context().Digest(desc.Digest.String())
		if err := remote.Write(dst, img, o.remote(ctx)...); err != nil {
			return desc, fmt.Errorf("attaching to %s: %w", ref, classify(err))
		}
		return desc, nil
	}
	// A layout: the artifact's blobs, then the fallback index names it.
	tagRef := Ref{Layout: ref.Layout, Tag: fallbackTag(subject.Digest)}
	o, err := makeIOOptions(opts)
	if err != nil {
		return desc, err
	}
	if _, err := writeImageBlobs(ctx, img, ref.Layout, o); err != nil {
		return desc, err
	}
	idx, err := layoutIndexAt(tagRef)
	if err != nil {
		return desc, err
	}
	m, err := img.Manifest()
	if err != nil {
		return desc, err
	}
	desc.Annotations = m.Annotations
	idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: desc})
	return desc, writeLayoutIndex(ctx, idx, tagRef)
}

// Attached returns the blobs of the referrers of subject with the given
// artifact type, in the repository or layout of ref; a blob of more than
// max bytes is ErrTooLarge.
func Attached(ctx context.Context, ref Ref, subject v1.Hash, artifactType string, max int64, opts ...IOOption) ([][]byte, error) {
	descs, err := Referrers(ctx, ref, subject, artifactType, opts...)
	if err != nil {
		return nil, err
	}
	var out [][]byte
	for _, d := range descs {
		blob, err := ArtifactBlob(ctx, ref, subject, d.Digest, artifactType, max, opts...)
		if errors.Is(err, errNotOurs) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, blob)
	}
	return out, nil
}

var errNotOurs = errors.New("oci: not an artifact of that kind for this subject")

// Referrers lists the artifacts of artifactType whose subject is subject,
// with their annotations, in the repository or layout of ref.
func Referrers(ctx context.Context, ref Ref, subject v1.Hash, artifactType string, opts ...IOOption) ([]v1.Descriptor, error) {
	o, err := makeIOOptions(opts)
	if err != nil {
		return nil, err
	}
	var idx v1.ImageIndex
	if ref.Remote != nil {
		idx, err = remote.Referrers(ref.Remote.Context().Digest(subject.String()), o.remote(ctx)...)
	} else {
		idx, err = layoutIndexAt(Ref{Layout: ref.Layout, Tag: fallbackTag(subject)})
	}
	if err != nil {
		return nil, fmt.Errorf("listing what is attached to %s: %w", subject, classify(err))
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, err
	}
	var out []v1.Descriptor
	for i, d := range im.Manifests {
		if i >= MaxAttachments {
			break
		}
		// Some registries (go-containerregistry's own) report the config's
		// media type instead of the manifest's artifactType: ArtifactBlob
		// looks inside.
		if d.ArtifactType == artifactType || d.ArtifactType == string(EmptyMediaType) || d.ArtifactType == "" {
			d.ArtifactType = artifactType
			out = append(out, d)
		}
	}
	return out, nil
}

// ArtifactBlob reads the one blob of the artifact manifest h, checking that
// it is an artifact of artifactType for subject and that the blob is at
// most max bytes.
func ArtifactBlob(ctx context.Context, ref Ref, subject, h v1.Hash, artifactType string, max int64, opts ...IOOption) ([]byte, error) {
	img, m, err := readArtifact(ctx, ref, subject, h, artifactType, opts)
	if err != nil {
		return nil, err
	}
	if m.Layers[0].Size > max {
		return nil, fmt.Errorf("%w: attachment %s holds %d bytes, more than %d", ErrTooLarge, h, m.Layers[0].Size, max)
	}
	l, err := img.LayerByDigest(m.Layers[0].Digest)
	if err != nil {
		return nil, err
	}
	blob, err := readBlob(l, max)
	if err != nil {
		return nil, fmt.Errorf("reading attachment %s: %w", h, err)
	}
	return blob, nil
}

// ArtifactManifest reads the manifest of artifact h, checking that it is
// an artifact of artifactType for subject with one blob: its Layers[0]
// says where the blob is, for FetchBlob.
func ArtifactManifest(ctx context.Context, ref Ref, subject, h v1.Hash, artifactType string, opts ...IOOption) (*v1.Manifest, error) {
	_, m, err := readArtifact(ctx, ref, subject, h, artifactType, opts)
	return m, err
}

func readArtifact(ctx context.Context, ref Ref, subject, h v1.Hash, artifactType string, opts []IOOption) (v1.Image, *v1.Manifest, error) {
	o, err := makeIOOptions(opts)
	if err != nil {
		return nil, nil, err
	}
	var img v1.Image
	if ref.Remote != nil {
		img, err = remote.Image(ref.Remote.Context().Digest(h.String()), o.remote(ctx)...)
	} else {
		var idx v1.ImageIndex
		if idx, err = layoutIndexAt(Ref{Layout: ref.Layout, Tag: fallbackTag(subject)}); err == nil {
			var im *v1.IndexManifest
			if im, err = idx.IndexManifest(); err == nil {
				err = fmt.Errorf("%w: %s", ErrNotFound, h)
				for _, d := range im.Manifests {
					if d.Digest == h {
						img, err = layoutImage(ref.Layout, idx, d)
						break
					}
				}
			}
		}
	}
	if err != nil {
		return nil, nil, fmt.Errorf("reading attachment %s: %w", h, classify(err))
	}
	m, err := img.Manifest()
	if err != nil {
		return nil, nil, err
	}
	if m.ArtifactType != artifactType || m.Subject == nil || m.Subject.Digest != subject || len(m.Layers) != 1 {
		return nil, nil, errNotOurs
	}
	return img, m, nil
}

// IsNotOurs reports an artifact that is not of the kind asked for.
func IsNotOurs(err error) bool { return errors.Is(err, errNotOurs) }

// readBlob reads a layer's bytes, checking their digest and a size bound.
func readBlob(l v1.Layer, max int64) ([]byte, error) {
	rc, err := l.Compressed()
	if err != nil {
		return nil, classify(err)
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > max {
		return nil, fmt.Errorf("%w: blob larger than %d bytes", ErrTooLarge, max)
	}
	want, err := l.Digest()
	if err != nil {
		return nil, err
	}
	if got, _, _ := v1.SHA256(bytes.NewReader(data)); got != want {
		return nil, fmt.Errorf("%w: blob %s hashes to %s", bundle.ErrLayerDigest, want, got)
	}
	return data, nil
}

// cosign's storage of "simple signing" signatures: a layer of the
// manifest tagged sha256-<hex>.sig holds the signed JSON payload, its
// annotation the base64 signature (sign.VerifyCosign checks them).
const (
	SimpleSigningMediaType    = "application/vnd.dev.cosign.simplesigning.v1+json"
	CosignSignatureAnnotation = "dev.cosignproject.cosign/signature"
	// MaxCosignPayload bounds a simple-signing payload otter reads.
	MaxCosignPayload = 16 << 10
)

// CosignLayer is one cosign signature as cosign stores it.
type CosignLayer struct {
	Payload   []byte
	Signature string // base64
}

// AttachCosign adds a cosign simple-signing layer to the signature image
// tagged sha256-<hex>.sig, creating it if needed, unless an identical
// payload and signature is already there.
func AttachCosign(ctx context.Context, ref Ref, subject v1.Hash, s CosignLayer, opts ...IOOption) error {
	tagRef, err := cosignRef(ref, subject)
	if err != nil {
		return err
	}
	base, err := openCosign(ctx, tagRef, opts)
	if err != nil {
		return err
	}
	existing, err := cosignLayers(base)
	if err != nil {
		return err
	}
	for _, e := range existing {
		if bytes.Equal(e.Payload, s.Payload) && e.Signature == s.Signature {
			return nil
		}
	}
	img, err := mutate.Append(base, mutate.Addendum{
		Layer:       static.NewLayer(s.Payload, SimpleSigningMediaType),
		Annotations: map[string]string{CosignSignatureAnnotation: s.Signature},
	})
	if err != nil {
		return err
	}
	_, err = Write(ctx, img, tagRef, opts...)
	return err
}

// CosignSignatures reads the simple-signing layers of the signature image
// of subject (none: an empty list).
func CosignSignatures(ctx context.Context, ref Ref, subject v1.Hash, opts ...IOOption) ([]CosignLayer, error) {
	tagRef, err := cosignRef(ref, subject)
	if err != nil {
		return nil, err
	}
	img, err := openCosign(ctx, tagRef, opts)
	if err != nil {
		return nil, err
	}
	return cosignLayers(img)
}

func cosignRef(ref Ref, subject v1.Hash) (Ref, error) {
	if ref.Remote == nil {
		return Ref{Layout: ref.Layout, Tag: cosignTag(subject)}, nil
	}
	t, err := name.NewTag(ref.Remote.Context().String()+":"+cosignTag(subject), name.WeakValidation)
	if err != nil {
		return Ref{}, err
	}
	return Ref{Remote: t}, nil
}

// openCosign returns the signature image at tagRef, or an empty one.
func openCosign(ctx context.Context, tagRef Ref, opts []IOOption) (v1.Image, error) {
	o, err := makeIOOptions(opts)
	if err != nil {
		return nil, err
	}
	var img v1.Image
	if tagRef.Remote != nil {
		img, err = remote.Image(tagRef.Remote, o.remote(ctx)...)
		err = classify(err)
	} else {
		img, err = openLayout(tagRef)
	}
	if errors.Is(err, ErrNotFound) {
		base := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
		return mutate.ConfigMediaType(base, types.OCIConfigJSON), nil
	}
	return img, err
}

func cosignLayers(img v1.Image) ([]CosignLayer, error) {
	m, err := img.Manifest()
	if err != nil {
		return nil, classify(err)
	}
	var out []CosignLayer
	for i, d := range m.Layers {
		if i >= MaxAttachments {
			break
		}
		if d.MediaType != SimpleSigningMediaType || d.Size > MaxCosignPayload {
			continue
		}
		l, err := img.LayerByDigest(d.Digest)
		if err != nil {
			return nil, err
		}
		payload, err := readBlob(l, MaxCosignPayload)
		if err != nil {
			return nil, err
		}
		out = append(out, CosignLayer{Payload: payload, Signature: d.Annotations[CosignSignatureAnnotation]})
	}
	return out, nil
}

// Repository names the repository of a registry ref for cosign's
// docker-reference claim.
func (r Ref) Repository() string {
	if r.Remote == nil {
		return strings.TrimSuffix(r.Layout, "/")
	}
	return r.Remote.Context().Name()
}
