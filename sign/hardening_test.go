package sign_test

import (
	"errors"
	"testing"
	"time"

	"github.com/otter-fleet/otter/sign"
)

// TestKeyIDMustNameASigner: a statement whose keyid names a trusted key
// that did not sign it is refused, even though another trusted key did.
func TestKeyIDMustNameASigner(t *testing.T) {
	a, b := key(t, sign.Ed25519), key(t, sign.Ed25519)
	r := release(b) // says "signed by b"
	env := sealRelease(t, r, a)
	if _, err := sign.VerifyRelease(env, policy(trust(t, 1, a, b))); !errors.Is(err, sign.ErrBadSignature) {
		t.Fatalf("keyid naming a key that did not sign: want ErrBadSignature, got %v", err)
	}
	if _, err := sign.VerifyRelease(sealRelease(t, release(a), a), policy(trust(t, 1, a, b))); err != nil {
		t.Fatalf("a statement naming its signer: %v", err)
	}
}

// TestVerifyReleasesReportsTheTellingRefusal: junk attached before the
// real statement does not hide why the real one was refused.
func TestVerifyReleasesReportsTheTellingRefusal(t *testing.T) {
	k, other := key(t, sign.Ed25519), key(t, sign.Ed25519)
	expired := release(k)
	expired.Expires = sign.FormatTime(now.Add(-time.Minute))
	junk := []byte(`{"payloadType":"x"`)
	for _, tc := range []struct {
		name string
		envs [][]byte
		want error
	}{
		{"junk, then expired", [][]byte{junk, sealRelease(t, expired, k)}, sign.ErrExpired},
		{"unknown key, then expired", [][]byte{sealRelease(t, release(other), other), sealRelease(t, expired, k)}, sign.ErrExpired},
		{"expired, then junk", [][]byte{sealRelease(t, expired, k), junk}, sign.ErrExpired},
		{"junk, then unknown key", [][]byte{junk, sealRelease(t, release(other), other)}, sign.ErrUnknownKey},
		{"nothing", nil, sign.ErrNotSigned},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, _, err := sign.VerifyReleases(tc.envs, policy(trust(t, 1, k))); !errors.Is(err, tc.want) {
				t.Fatalf("want %v, got %v", tc.want, err)
			}
		})
	}
	good := sealRelease(t, release(k), k)
	if e, r, err := sign.VerifyReleases([][]byte{junk, good}, policy(trust(t, 1, k))); err != nil || r.Version != 5 || string(e) != string(good) {
		t.Fatalf("junk then a good statement: %v", err)
	}
}

// TestCosignUnknownKey: a cosign signature that no trusted key verifies
// was made by a key the trust file does not hold (11), not a bad one.
func TestCosignUnknownKey(t *testing.T) {
	k, other := key(t, sign.ECDSAP256), key(t, sign.ECDSAP256)
	payload, err := sign.CosignPayload("registry.example/fleet", digestA, map[string]string{sign.AnnotationExpires: sign.FormatTime(now.Add(time.Hour)), sign.AnnotationChannel: "stable"})
	if err != nil {
		t.Fatal(err)
	}
	sig, err := sign.SignCosign(other, payload)
	if err != nil {
		t.Fatal(err)
	}
	_, err = sign.VerifyCosign([]sign.CosignSignature{{Payload: payload, Signature: sig}}, 5, "aarch64-linux", policy(trust(t, 1, k)))
	if !errors.Is(err, sign.ErrUnknownKey) {
		t.Fatalf("want ErrUnknownKey, got %v", err)
	}
}
