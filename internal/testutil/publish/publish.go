// Package publish puts signed releases and patches where devices read
// them, for tests: what otter release does for one release, without its
// pipeline. (Apart from testutil, which delta's own tests import: this
// package imports delta.)
package publish

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/otter-fleet/otter/bundle"
	"github.com/otter-fleet/otter/delta"
	"github.com/otter-fleet/otter/oci"
	"github.com/otter-fleet/otter/release"
	"github.com/otter-fleet/otter/sign"
)

// Release writes b to ref and attaches its release statement for
// version on channel, signed by s (staged by s.Rollout, if set). It
// returns the bundle's descriptor and the statement's envelope.
func Release(t testing.TB, s release.Signer, b *bundle.Bundle, ref oci.Ref, version uint64, channel string) (v1.Descriptor, []byte) {
	t.Helper()
	ctx := context.Background()
	desc, err := oci.Write(ctx, b, ref)
	if err != nil {
		t.Fatal(err)
	}
	st, err := s.Statement(desc, b.Config, version, channel)
	if err != nil {
		t.Fatal(err)
	}
	payload, err := st.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	env, err := s.Seal(sign.ReleaseType, payload)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.AttachRelease(ctx, ref, desc, st, env, false); err != nil {
		t.Fatal(err)
	}
	return desc, env
}

// Patch publishes the signed patch from the bundle from (digest base) to
// the bundle to (toDesc, at toRef), for version on channel; it returns
// the patch's size.
func Patch(t testing.TB, s release.Signer, from *bundle.Bundle, base v1.Hash, to *bundle.Bundle, toRef oci.Ref, toDesc v1.Descriptor, channel string, version uint64) int {
	t.Helper()
	ctx := context.Background()
	var patch bytes.Buffer
	if _, err := delta.Diff(ctx, delta.Release{Image: from, Config: from.Config}, delta.Release{Image: to, Config: to.Config}, &patch, delta.Options{}); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(patch.Bytes())
	if _, _, err := s.PublishPatch(ctx, toRef, toDesc, base, patch.Bytes(), "sha256:"+hex.EncodeToString(sum[:]), channel, version, to.Config.System); err != nil {
		t.Fatal(err)
	}
	return patch.Len()
}
