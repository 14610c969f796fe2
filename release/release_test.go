package release_test

import (
	"context"
	"crypto"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/otter-fleet/otter/internal/testutil"
	"github.com/otter-fleet/otter/oci"
	"github.com/otter-fleet/otter/release"
	"github.com/otter-fleet/otter/sign"
)

func TestWorthwhile(t *testing.T) {
	for _, tc := range []struct {
		patch, full int64
		max         float64
		ok          bool
	}{
		{60, 100, 0.6, true}, {61, 100, 0.6, false}, {0, 100, 0.6, true}, {5, 0, 0.6, false},
	} {
		if share, ok := release.Worthwhile(tc.patch, tc.full, tc.max); ok != tc.ok || share < 0 {
			t.Errorf("Worthwhile(%d, %d, %v) = %v, %v", tc.patch, tc.full, tc.max, share, ok)
		}
	}
}

// TestVerify publishes the demo bundle to a layout with a junk statement
// first and a signed one after: Verify finds the signed one, and with
// another trust root reports the telling refusal.
func TestVerify(t *testing.T) {
	ctx := context.Background()
	c, store := testutil.DemoStore(t)
	b := testutil.BuildBundle(t, c, store)
	ref, err := oci.ParseRef("oci:"+filepath.Join(t.TempDir(), "l")+":r1", false)
	if err != nil {
		t.Fatal(err)
	}
	desc, err := oci.Write(ctx, b, ref)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := oci.Attach(ctx, ref, desc, sign.ReleaseType, []byte(`{"junk"`)); err != nil {
		t.Fatal(err)
	}
	key, _ := sign.GenerateKey(sign.Ed25519)
	other, _ := sign.GenerateKey(sign.Ed25519)
	signer := release.Signer{Keys: []crypto.Signer{key}, Now: time.Now().Add(-time.Hour), Expires: time.Now().Add(time.Hour)}
	st, err := signer.Statement(desc, b.Config, 1, "stable")
	if err != nil {
		t.Fatal(err)
	}
	payload, _ := st.Marshal()
	env, _ := signer.Seal(sign.ReleaseType, payload)
	if _, _, err := signer.AttachRelease(ctx, ref, desc, st, env, false); err != nil {
		t.Fatal(err)
	}
	trust, _ := sign.NewTrust(1, 1, key.Public())
	p := sign.Policy{Trust: trust, Now: time.Now(), Digest: desc.Digest.String(), System: b.Config.System, Channel: "stable"}
	_, r, err := release.Verify(ctx, ref, desc.Digest, p)
	if err != nil || r.Version != 1 {
		t.Fatalf("Verify: %+v %v", r, err)
	}
	p.Trust, _ = sign.NewTrust(1, 1, other.Public())
	if _, _, err := release.Verify(ctx, ref, desc.Digest, p); !errors.Is(err, sign.ErrUnknownKey) {
		t.Fatalf("another trust root: want ErrUnknownKey (not the junk's ErrMalformed), got %v", err)
	}
	p.Trust = trust
	p.Now = time.Now().Add(2 * time.Hour)
	if _, _, err := release.Verify(ctx, ref, desc.Digest, p); !errors.Is(err, sign.ErrExpired) {
		t.Fatalf("later: want ErrExpired, got %v", err)
	}
}
