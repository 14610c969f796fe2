package release

import (
	"bytes"
	"context"
	"crypto"
	"fmt"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/otter-fleet/otter/bundle"
	"github.com/otter-fleet/otter/delta"
	"github.com/otter-fleet/otter/oci"
	"github.com/otter-fleet/otter/sign"
)

// Signer signs statements with its keys, valid from Now until Expires.
// Rollout, when set, stages the releases it signs.
type Signer struct {
	Keys         []crypto.Signer
	Now, Expires time.Time
	Rollout      *sign.Rollout
	IO           []oci.IOOption
}

// Seal signs a statement with every key into a canonical DSSE envelope.
func (s Signer) Seal(payloadType string, payload []byte) ([]byte, error) {
	env, err := sign.Seal(payloadType, payload, s.Keys...)
	if err != nil {
		return nil, err
	}
	return env.Marshal()
}

// keyID is the key id statements name: the first key's.
func (s Signer) keyID() (string, error) { return sign.KeyID(s.Keys[0].Public()) }

// attach seals a statement's payload and attaches it to the bundle desc
// at ref.
func (s Signer) attach(ctx context.Context, ref oci.Ref, desc v1.Descriptor, payloadType string, payload []byte) (v1.Descriptor, error) {
	env, err := s.Seal(payloadType, payload)
	if err != nil {
		return v1.Descriptor{}, err
	}
	return oci.Attach(ctx, ref, desc, payloadType, env, s.IO...)
}

// Statement is the release statement for a bundle.
func (s Signer) Statement(desc v1.Descriptor, cfg *bundle.Config, version uint64, channel string) (*sign.Release, error) {
	keyid, err := s.keyID()
	if err != nil {
		return nil, err
	}
	st := &sign.Release{
		Digest: desc.Digest.String(), Version: version, Channel: channel, System: cfg.System,
		Root: cfg.Root, Created: sign.FormatTime(s.Now), Expires: sign.FormatTime(s.Expires), Rollout: s.Rollout, KeyID: keyid,
	}
	return st, st.Validate()
}

// Halt signs a halt of the release st names (its digest, version,
// channel and system), in force from s.Now until s.Expires, and attaches
// it to the bundle desc at ref. It returns the halt and the attached
// artifact's descriptor.
func (s Signer) Halt(ctx context.Context, ref oci.Ref, desc v1.Descriptor, version uint64, channel, system, reason string) (*sign.Halt, v1.Descriptor, error) {
	keyid, err := s.keyID()
	if err != nil {
		return nil, v1.Descriptor{}, err
	}
	h := &sign.Halt{
		Digest: desc.Digest.String(), Version: version, Channel: channel, System: system, Reason: reason,
		Created: sign.FormatTime(s.Now), Expires: sign.FormatTime(s.Expires), KeyID: keyid,
	}
	payload, err := h.Marshal()
	if err != nil {
		return nil, v1.Descriptor{}, err
	}
	att, err := s.attach(ctx, ref, desc, sign.HaltType, payload)
	return h, att, err
}

// AttachRelease attaches a sealed release statement to the bundle at ref
// and, with cosign, a cosign signature from each ECDSA key. It returns
// the statement artifact's descriptor and how many cosign signatures it
// wrote.
func (s Signer) AttachRelease(ctx context.Context, ref oci.Ref, desc v1.Descriptor, st *sign.Release, envelope []byte, cosign bool) (v1.Descriptor, int, error) {
	att, err := oci.Attach(ctx, ref, desc, sign.ReleaseType, envelope, s.IO...)
	if err != nil || !cosign {
		return att, 0, err
	}
	payload, err := sign.CosignPayload(ref.Repository(), desc.Digest.String(), sign.CosignOptional(st))
	if err != nil {
		return att, 0, err
	}
	n := 0
	for _, k := range s.Keys {
		if alg, _ := sign.AlgorithmOf(k.Public()); alg != sign.ECDSAP256 {
			continue
		}
		sig, err := sign.SignCosign(k, payload)
		if err != nil {
			return att, n, err
		}
		if err := oci.AttachCosign(ctx, ref, desc.Digest, oci.CosignLayer{Payload: payload, Signature: sig}, s.IO...); err != nil {
			return att, n, err
		}
		n++
	}
	return att, n, nil
}

// PublishPatch publishes a patch from base to the bundle toDesc at toRef:
// an artifact whose subject is the target, annotated with the base, and,
// with keys, a signed patch statement attached to the target. digest is
// the patch file's.
func (s Signer) PublishPatch(ctx context.Context, toRef oci.Ref, toDesc v1.Descriptor, base v1.Hash, patch []byte, digest string, channel string, version uint64, system string) (v1.Descriptor, *sign.Patch, error) {
	art, err := oci.NewArtifact(delta.ArtifactType, patch, types.MediaType(delta.LayerMediaType), toDesc,
		map[string]string{delta.AnnotationBase: base.String(), delta.AnnotationTarget: toDesc.Digest.String()})
	if err != nil {
		return v1.Descriptor{}, nil, err
	}
	ad, err := oci.AttachArtifact(ctx, toRef, toDesc, art, s.IO...)
	if err != nil || len(s.Keys) == 0 {
		return ad, nil, err
	}
	keyid, err := s.keyID()
	if err != nil {
		return ad, nil, err
	}
	h, _, err := delta.ParseHeader(bytes.NewReader(patch))
	if err != nil {
		return ad, nil, err
	}
	st := &sign.Patch{
		Base: base.String(), Target: toDesc.Digest.String(), Patch: digest,
		BaseSize: h.BaseSize, TargetSize: h.TargetSize, PatchSize: int64(len(patch)),
		Version: version, Channel: channel, System: system,
		Created: sign.FormatTime(s.Now), Expires: sign.FormatTime(s.Expires), KeyID: keyid,
	}
	payload, err := st.Marshal()
	if err != nil {
		return ad, nil, fmt.Errorf("patch statement: %w", err)
	}
	if _, err := s.attach(ctx, toRef, toDesc, sign.PatchType, payload); err != nil {
		return ad, nil, err
	}
	return ad, st, nil
}

// Worthwhile is the max-share rule of publishing: a patch of patchSize
// bytes is published only when it is at most maxShare of the full
// bundle's fullSize bytes; above that, devices fetch the missing layers.
// It returns the patch's share either way.
func Worthwhile(patchSize, fullSize int64, maxShare float64) (share float64, ok bool) {
	share = float64(patchSize) / float64(max(fullSize, 1))
	return share, share <= maxShare
}
