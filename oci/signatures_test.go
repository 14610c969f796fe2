package oci_test

import (
	"bytes"
	"context"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/otter-fleet/otter/internal/testutil"
	"github.com/otter-fleet/otter/oci"
	"github.com/otter-fleet/otter/sign"
)

// TestAttachments stores and reads signed statements and cosign
// signatures on every sink: through the referrers API where the registry
// has it, through the sha256-<hex> tag where it has not.
func TestAttachments(t *testing.T) {
	ctx := context.Background()
	c, store := testutil.DemoStore(t)
	b := build(t, c, store)
	for _, s := range sinks {
		t.Run(s.name, func(t *testing.T) {
			ref := s.open(t)("v1")
			desc, err := oci.Write(ctx, b, ref)
			if err != nil {
				t.Fatal(err)
			}
			envs := [][]byte{[]byte(`{"payloadType":"a"}`), []byte(`{"payloadType":"b"}`)}
			for _, e := range envs {
				if _, err := oci.Attach(ctx, ref, desc, sign.ReleaseType, e); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := oci.Attach(ctx, ref, desc, sign.PatchType, []byte(`{"payloadType":"patch"}`)); err != nil {
				t.Fatal(err)
			}
			got, err := oci.Attached(ctx, ref, desc.Digest, sign.ReleaseType, sign.MaxEnvelopeSize)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 2 || !(bytes.Equal(got[0], envs[0]) && bytes.Equal(got[1], envs[1]) || bytes.Equal(got[0], envs[1]) && bytes.Equal(got[1], envs[0])) {
				t.Fatalf("attached release statements: %q", got)
			}
			if other, _ := oci.Attached(ctx, ref, desc.Digest, sign.PatchType, sign.MaxEnvelopeSize); len(other) != 1 {
				t.Fatalf("patch statements: %q", other)
			}
			// The bundle itself is unchanged and still the tag's target.
			img, _, err := oci.Open(ctx, ref)
			if err != nil || digest(t, img) != desc.Digest {
				t.Fatalf("bundle after attaching: %v", err)
			}
			if ref.Remote != nil {
				// Where the registry keeps them: referrers API or tag fallback.
				_, tagErr := remote.Head(ref.Remote.Context().Tag("sha256-" + desc.Digest.Hex))
				wantTag := s.name != "in-process registry with referrers"
				if (tagErr == nil) != wantTag {
					t.Fatalf("fallback tag present: %v, want %v (%v)", tagErr == nil, wantTag, tagErr)
				}
			}

			sig := oci.CosignLayer{Payload: []byte(`{"critical":{}}`), Signature: "c2ln"}
			for i := 0; i < 2; i++ { // the second is a no-op
				if err := oci.AttachCosign(ctx, ref, desc.Digest, sig); err != nil {
					t.Fatal(err)
				}
			}
			sigs, err := oci.CosignSignatures(ctx, ref, desc.Digest)
			if err != nil || len(sigs) != 1 || sigs[0].Signature != "c2ln" || !bytes.Equal(sigs[0].Payload, sig.Payload) {
				t.Fatalf("cosign signatures %+v %v", sigs, err)
			}
		})
	}
}
