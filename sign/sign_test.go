package sign_test

import (
	"bytes"
	"crypto"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/otter-fleet/otter/sign"
)

var (
	now     = time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	digestA = "sha256:" + strings.Repeat("a", 64)
	digestB = "sha256:" + strings.Repeat("b", 64)
	root    = "/nix/store/" + strings.Repeat("0", 32) + "-system"
)

func key(t testing.TB, alg sign.Algorithm) crypto.Signer {
	t.Helper()
	k, err := sign.GenerateKey(alg)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func keyID(k crypto.Signer) string {
	id, _ := sign.KeyID(k.Public())
	return id
}

func release(k crypto.Signer) *sign.Release {
	return &sign.Release{
		Digest: digestA, Version: 5, Channel: "stable", System: "aarch64-linux", Root: root,
		Created: sign.FormatTime(now.Add(-time.Hour)), Expires: sign.FormatTime(now.Add(30 * 24 * time.Hour)), KeyID: keyID(k),
	}
}

func seal(t testing.TB, typ string, payload []byte, keys ...crypto.Signer) []byte {
	t.Helper()
	e, err := sign.Seal(typ, payload, keys...)
	if err != nil {
		t.Fatal(err)
	}
	b, err := e.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func sealRelease(t testing.TB, r *sign.Release, keys ...crypto.Signer) []byte {
	t.Helper()
	p, err := r.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return seal(t, sign.ReleaseType, p, keys...)
}

func trust(t testing.TB, threshold int, keys ...crypto.Signer) *sign.Trust {
	t.Helper()
	var pubs []crypto.PublicKey
	for _, k := range keys {
		pubs = append(pubs, k.Public())
	}
	tr, err := sign.NewTrust(1, threshold, pubs...)
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

func policy(tr *sign.Trust) sign.Policy {
	return sign.Policy{Trust: tr, Now: now, Digest: digestA, System: "aarch64-linux", Channel: "stable", Installed: 4, HasInstalled: true}
}

// TestThreatModel is the table of TUF's attacks that apply to a device
// installing a bundle: each is refused with its own error.
func TestThreatModel(t *testing.T) {
	for _, alg := range []sign.Algorithm{sign.ECDSAP256, sign.Ed25519} {
		t.Run(string(alg), func(t *testing.T) {
			release1 := key(t, alg)
			release2 := key(t, alg)
			attacker := key(t, alg)
			tr := trust(t, 1, release1)
			good := sealRelease(t, release(release1), release1)
			if _, err := sign.VerifyRelease(good, policy(tr)); err != nil {
				t.Fatalf("a good statement is refused: %v", err)
			}
			mutate := func(f func(*sign.Release)) *sign.Release { r := release(release1); f(r); return r }
			for _, tc := range []struct {
				attack   string
				envelope []byte
				policy   func(p *sign.Policy)
				want     error
			}{
				{"arbitrary software: signed by an unknown key", sealRelease(t, release(attacker), attacker), nil, sign.ErrUnknownKey},
				{"arbitrary software: forged signature under a trusted key id", forge(t, release(release1), attacker, keyID(release1)), nil, sign.ErrBadSignature},
				{"arbitrary software: payload changed after signing", tamper(t, good), nil, sign.ErrBadSignature},
				{"wrong key: a key the device no longer trusts", sealRelease(t, release(release2), release2), nil, sign.ErrUnknownKey},
				{"rollback: an older release", sealRelease(t, mutate(func(r *sign.Release) { r.Version = 3 }), release1), nil, sign.ErrRollback},
				{"indefinite freeze: an expired statement", good, func(p *sign.Policy) { p.Now = now.Add(31 * 24 * time.Hour) }, sign.ErrExpired},
				{"mix-and-match: a statement of another bundle", sealRelease(t, mutate(func(r *sign.Release) { r.Digest = digestB }), release1), nil, sign.ErrDigestMismatch},
				{"mix-and-match: a patch statement as a release", seal(t, sign.PatchType, mustMarshal(t, release(release1)), release1), nil, sign.ErrWrongType},
				{"another system", sealRelease(t, mutate(func(r *sign.Release) { r.System = "x86_64-linux" }), release1), nil, sign.ErrWrongSystem},
				{"another channel", sealRelease(t, mutate(func(r *sign.Release) { r.Channel = "beta" }), release1), nil, sign.ErrWrongChannel},
				{"truncated statement", good[:len(good)/2], nil, sign.ErrMalformed},
				{"oversized statement", oversized(t, release1), nil, sign.ErrOversized},
				{"non-canonical envelope", append([]byte(" "), good...), nil, sign.ErrMalformed},
				{"unsigned", seal(t, sign.ReleaseType, mustMarshal(t, release(release1))), nil, sign.ErrThreshold},
			} {
				t.Run(tc.attack, func(t *testing.T) {
					p := policy(tr)
					if tc.policy != nil {
						tc.policy(&p)
					}
					_, err := sign.VerifyRelease(tc.envelope, p)
					if !errors.Is(err, tc.want) {
						t.Fatalf("want %v, got %v", tc.want, err)
					}
				})
			}
			// A downgrade the operator asks for goes through.
			p := policy(tr)
			p.AllowDowngrade = true
			if _, err := sign.VerifyRelease(sealRelease(t, mutate(func(r *sign.Release) { r.Version = 3 }), release1), p); err != nil {
				t.Fatalf("--allow-downgrade: %v", err)
			}
		})
	}
}

func mustMarshal(t testing.TB, r *sign.Release) []byte {
	b, err := r.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// forge signs with attacker but claims the trusted key's id.
func forge(t testing.TB, r *sign.Release, attacker crypto.Signer, claimed string) []byte {
	e, err := sign.Seal(sign.ReleaseType, mustMarshal(t, r), attacker)
	if err != nil {
		t.Fatal(err)
	}
	e.Signatures[0].KeyID = claimed
	b, _ := e.Marshal()
	return b
}

// tamper changes the signed payload (version 5 to 9) and keeps the signature.
func tamper(t testing.TB, envelope []byte) []byte {
	e, err := sign.ParseEnvelope(envelope)
	if err != nil {
		t.Fatal(err)
	}
	e.Payload = bytes.Replace(e.Payload, []byte(`"version":5`), []byte(`"version":9`), 1)
	b, _ := e.Marshal()
	return b
}

func oversized(t testing.TB, k crypto.Signer) []byte {
	r := release(k)
	r.Channel = "stable"
	e, _ := sign.Seal(sign.ReleaseType, mustMarshal(t, r), k)
	e.Payload = append(e.Payload, bytes.Repeat([]byte(" "), sign.MaxEnvelopeSize)...)
	b, _ := e.Marshal()
	return b
}

func TestThreshold(t *testing.T) {
	k1, k2, k3 := key(t, sign.ECDSAP256), key(t, sign.Ed25519), key(t, sign.ECDSAP256)
	tr := trust(t, 2, k1, k2, k3)
	r := release(k1)
	if _, err := sign.VerifyRelease(sealRelease(t, r, k1, k3), policy(tr)); err != nil {
		t.Fatalf("2 of 3: %v", err)
	}
	if _, err := sign.VerifyRelease(sealRelease(t, r, k2), policy(tr)); !errors.Is(err, sign.ErrThreshold) {
		t.Fatalf("1 of 3: %v", err)
	}
	// The same key twice counts once.
	if _, err := sign.VerifyRelease(sealRelease(t, r, k1, k1), policy(tr)); !errors.Is(err, sign.ErrThreshold) {
		t.Fatalf("one key twice: %v", err)
	}
	// A bad signature beside good ones that meet the threshold does not matter.
	e, _ := sign.Seal(sign.ReleaseType, mustMarshal(t, r), k1, k2, k3)
	e.Signatures[2].Sig[10] ^= 1
	b, _ := e.Marshal()
	if _, err := sign.VerifyRelease(b, policy(tr)); err != nil {
		t.Fatalf("2 good of 3: %v", err)
	}
}

func TestKeyRotation(t *testing.T) {
	old1, new1, new2 := key(t, sign.ECDSAP256), key(t, sign.ECDSAP256), key(t, sign.Ed25519)
	cur := trust(t, 1, old1)
	next, err := sign.NewTrust(2, 1, new1.Public(), new2.Public())
	if err != nil {
		t.Fatal(err)
	}
	payload, _ := next.Marshal()
	for _, tc := range []struct {
		name string
		keys []crypto.Signer
		want error
	}{
		{"signed by the new keys only", []crypto.Signer{new1}, sign.ErrUnknownKey},
		{"signed by the old key only", []crypto.Signer{old1}, sign.ErrUnknownKey},
	} {
		if _, err := cur.Rotate(seal(t, sign.TrustType, payload, tc.keys...)); !errors.Is(err, tc.want) {
			t.Fatalf("%s: want %v, got %v", tc.name, tc.want, err)
		}
	}
	rotated, err := cur.Rotate(seal(t, sign.TrustType, payload, old1, new1))
	if err != nil {
		t.Fatal(err)
	}
	if rotated.Version != 2 || len(rotated.Keys) != 2 {
		t.Fatalf("rotated %+v", rotated)
	}
	// The old key is no longer trusted; the new ones are.
	if _, err := sign.VerifyRelease(sealRelease(t, release(old1), old1), policy(rotated)); !errors.Is(err, sign.ErrUnknownKey) {
		t.Fatalf("old key after rotation: %v", err)
	}
	if _, err := sign.VerifyRelease(sealRelease(t, release(new2), new2), policy(rotated)); err != nil {
		t.Fatalf("new key after rotation: %v", err)
	}
	// Rotating back to an older version is refused.
	back, _ := cur.Marshal()
	if _, err := rotated.Rotate(seal(t, sign.TrustType, back, old1, new1)); !errors.Is(err, sign.ErrRollback) {
		t.Fatalf("rotation to version 1: %v", err)
	}
	// A release statement is no rotation.
	if _, err := cur.Rotate(sealRelease(t, release(old1), old1)); !errors.Is(err, sign.ErrWrongType) {
		t.Fatalf("release as rotation: %v", err)
	}
}

func TestKeysRoundTrip(t *testing.T) {
	for _, alg := range []sign.Algorithm{sign.ECDSAP256, sign.Ed25519} {
		k := key(t, alg)
		pemKey, err := sign.MarshalPrivateKey(k, []byte("correct horse"))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(pemKey, []byte("ENCRYPTED SIGSTORE PRIVATE KEY")) {
			t.Fatalf("%s: not in cosign's format:\n%s", alg, pemKey)
		}
		if _, err := sign.ParsePrivateKey(pemKey, []byte("wrong")); !errors.Is(err, sign.ErrPassphrase) {
			t.Fatalf("%s: wrong passphrase: %v", alg, err)
		}
		back, err := sign.ParsePrivateKey(pemKey, []byte("correct horse"))
		if err != nil {
			t.Fatal(err)
		}
		if keyID(back) != keyID(k) {
			t.Fatalf("%s: key changed in a round trip", alg)
		}
		pub, _ := sign.MarshalPublicKey(k.Public())
		p2, err := sign.ParsePublicKey(pub)
		if err != nil {
			t.Fatal(err)
		}
		if id, _ := sign.KeyID(p2); id != keyID(k) {
			t.Fatalf("%s: public key changed in a round trip", alg)
		}
	}
	if _, err := sign.ParsePublicKey([]byte("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")); !errors.Is(err, sign.ErrKey) {
		t.Fatalf("garbage public key: %v", err)
	}
}

func TestPatchStatements(t *testing.T) {
	k := key(t, sign.Ed25519)
	tr := trust(t, 1, k)
	p := &sign.Patch{Base: digestB, Target: digestA, Patch: "sha256:" + strings.Repeat("c", 64), BaseSize: 100, TargetSize: 120, PatchSize: 7,
		Version: 5, Channel: "stable", System: "aarch64-linux", Created: sign.FormatTime(now), Expires: sign.FormatTime(now.Add(time.Hour)), KeyID: keyID(k)}
	payload, err := p.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	env := seal(t, sign.PatchType, payload, k)
	pol := policy(tr)
	pol.Digest = p.Patch
	if _, err := sign.VerifyPatch(env, digestB, pol); err != nil {
		t.Fatal(err)
	}
	if _, err := sign.VerifyPatch(env, digestA, pol); !errors.Is(err, sign.ErrDigestMismatch) {
		t.Fatalf("patch for another base: %v", err)
	}
	if _, err := sign.VerifyRelease(env, policy(tr)); !errors.Is(err, sign.ErrWrongType) {
		t.Fatalf("patch statement as a release: %v", err)
	}
}
