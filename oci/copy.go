package oci

import (
	"context"
	"fmt"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// CopyResult says what Copy moved.
type CopyResult struct {
	Manifest   v1.Descriptor `json:"manifest"`
	Statements int           `json:"statements"`
	Cosign     int           `json:"cosignSignatures"`
}

// Copy writes the bundle img, read from src, to dst together with what is
// attached to it: the artifacts of the given types (of at most max bytes
// each: signed statements) and cosign signatures. The bundle goes first,
// so dst never holds a signature without its bundle.
func Copy(ctx context.Context, img v1.Image, src, dst Ref, types []string, max int64, opts ...IOOption) (*CopyResult, error) {
	desc, err := Write(ctx, img, dst, opts...)
	if err != nil {
		return nil, err
	}
	res := &CopyResult{Manifest: desc}
	// Reading attachments uses the source's options minus progress.
	for _, typ := range types {
		envs, err := Attached(ctx, src, desc.Digest, typ, max, opts...)
		if err != nil {
			return res, fmt.Errorf("copying signatures: %w", err)
		}
		for _, e := range envs {
			if _, err := Attach(ctx, dst, desc, typ, e, opts...); err != nil {
				return res, fmt.Errorf("copying signatures: %w", err)
			}
			res.Statements++
		}
	}
	sigs, err := CosignSignatures(ctx, src, desc.Digest, opts...)
	if err != nil {
		return res, fmt.Errorf("copying cosign signatures: %w", err)
	}
	for _, s := range sigs {
		if err := AttachCosign(ctx, dst, desc.Digest, s, opts...); err != nil {
			return res, fmt.Errorf("copying cosign signatures: %w", err)
		}
		res.Cosign++
	}
	return res, nil
}
