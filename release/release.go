// Package release is a signed release: how a device (and otter verify,
// otter image and the pipeline) decides that a bundle is one to install,
// and how a release and its patches are published signed. It is the one
// place for both rules; oci moves the bytes and sign checks them.
//
// Verify is the device's rule: a release statement attached to the
// bundle that passes the policy (docs/signing.md §6). A cosign signature
// alone is not enough for a device; VerifyCosign checks one for
// interoperability (otter verify --cosign). Halted finds a signed halt
// of a staged rollout. FindPatch finds a signed
// patch from the installed release. Signer publishes; Worthwhile is the
// max-share rule for patches.
package release

import (
	"context"
	"errors"
	"fmt"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/otter-fleet/otter/bundle"
	"github.com/otter-fleet/otter/delta"
	"github.com/otter-fleet/otter/oci"
	"github.com/otter-fleet/otter/sign"
)

// AttachmentTypes are the signed statements that travel with a bundle.
var AttachmentTypes = []string{sign.ReleaseType, sign.PatchType, sign.HaltType}

// Statements returns the statements of the given type attached to the
// bundle digest at ref, each bounded by sign.MaxEnvelopeSize (an
// oversized one is sign.ErrOversized).
func Statements(ctx context.Context, ref oci.Ref, digest v1.Hash, typ string, opts ...oci.IOOption) ([][]byte, error) {
	envs, err := oci.Attached(ctx, ref, digest, typ, sign.MaxEnvelopeSize, opts...)
	if errors.Is(err, oci.ErrTooLarge) {
		return nil, fmt.Errorf("%w: %v", sign.ErrOversized, err)
	}
	return envs, err
}

// Verify returns the first release statement attached to the bundle
// digest that passes the policy, with its envelope; else the refusal
// sign.VerifyReleases finds most telling (sign.ErrNotSigned when there is
// none).
func Verify(ctx context.Context, ref oci.Ref, digest v1.Hash, p sign.Policy, opts ...oci.IOOption) ([]byte, *sign.Release, error) {
	envs, err := Statements(ctx, ref, digest, sign.ReleaseType, opts...)
	if err != nil {
		return nil, nil, err
	}
	e, r, err := sign.VerifyReleases(envs, p)
	if err != nil {
		return nil, nil, fmt.Errorf("release %s: %w", digest, err)
	}
	return e, r, nil
}

// Halted returns the halt in force for the bundle digest at ref under
// the policy (sign.HaltInForce), or nil.
func Halted(ctx context.Context, ref oci.Ref, digest v1.Hash, p sign.Policy, opts ...oci.IOOption) (*sign.Halt, error) {
	envs, err := Statements(ctx, ref, digest, sign.HaltType, opts...)
	if err != nil {
		return nil, err
	}
	p.Digest = digest.String()
	return sign.HaltInForce(envs, p), nil
}

// VerifyCosign checks the cosign signatures of the bundle digest at ref
// against the policy, with the version and system of its config. Not
// what a device accepts: see the package doc.
func VerifyCosign(ctx context.Context, ref oci.Ref, digest v1.Hash, cfg *bundle.Config, p sign.Policy, opts ...oci.IOOption) (*sign.Claim, error) {
	layers, err := oci.CosignSignatures(ctx, ref, digest, opts...)
	if err != nil {
		return nil, err
	}
	sigs := make([]sign.CosignSignature, len(layers))
	for i, l := range layers {
		sigs[i] = sign.CosignSignature{Payload: l.Payload, Signature: l.Signature}
	}
	return sign.VerifyCosign(sigs, cfg.Version, cfg.System, p)
}

// FindPatch returns the blob of a signed patch from the bundle base to
// target, if ref's repository has one: an artifact of the target
// annotated with the base whose blob a patch statement passing the
// policy names (p.Digest is ignored: each candidate's blob is checked).
func FindPatch(ctx context.Context, ref oci.Ref, target v1.Hash, base string, p sign.Policy, opts ...oci.IOOption) (*v1.Descriptor, error) {
	descs, err := oci.Referrers(ctx, ref, target, delta.ArtifactType, opts...)
	if err != nil {
		return nil, err
	}
	var stmts [][]byte
	for _, desc := range descs {
		if b, ok := desc.Annotations[delta.AnnotationBase]; ok && b != base {
			continue
		}
		m, err := oci.ArtifactManifest(ctx, ref, target, desc.Digest, delta.ArtifactType, opts...)
		if oci.IsNotOurs(err) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if m.Annotations[delta.AnnotationBase] != base {
			continue
		}
		if stmts == nil {
			if stmts, err = Statements(ctx, ref, target, sign.PatchType, opts...); err != nil {
				return nil, err
			}
		}
		blob := m.Layers[0]
		pp := p
		pp.Digest = blob.Digest.String()
		for _, s := range stmts {
			if st, err := sign.VerifyPatch(s, base, pp); err == nil && st.Target == target.String() && st.PatchSize == blob.Size {
				return &blob, nil
			}
		}
	}
	return nil, nil
}

// Copy writes the bundle img, read from src, to dst with its signed
// statements and cosign signatures (oci.Copy).
func Copy(ctx context.Context, img v1.Image, src, dst oci.Ref, opts ...oci.IOOption) (*oci.CopyResult, error) {
	return oci.Copy(ctx, img, src, dst, AttachmentTypes, sign.MaxEnvelopeSize, opts...)
}
