package sign_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/sha256"
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/otter-fleet/otter/internal/testutil"
	"github.com/otter-fleet/otter/sign"
)

var update = flag.Bool("update", false, "rewrite the test vectors in testdata/sign")

// vectorKey is the Ed25519 test-vector key: its seed is the SHA-256 of
// "otter test vector key". Ed25519 signatures are deterministic, so the
// vector's envelope is reproduced byte for byte.
func vectorKey() ed25519.PrivateKey {
	seed := sha256.Sum256([]byte("otter test vector key"))
	return ed25519.NewKeyFromSeed(seed[:])
}

func vectorStatement(keyid string) *sign.Release {
	return &sign.Release{
		Digest:  "sha256:53718f2b1291479bad0a7cf7fd6ac23d0b29587b77c27423e152d83cdd92784c",
		Version: 1, Channel: "stable", System: "aarch64-linux",
		Root:    "/nix/store/6qryxh88qwwqf69frzvg8929ixj23v9k-otter-demo-release-1",
		Created: "2026-11-22T00:00:00Z", Expires: "2026-12-22T00:00:00Z", KeyID: keyid,
	}
}

func vectorPath(name string) string { return filepath.Join("..", "testdata", "sign", name) }

// The test vectors of docs/signing.md, made by this test with -update:
//
//	go test ./sign -run TestVectors -update
func TestVectors(t *testing.T) {
	k := vectorKey()
	id, _ := sign.KeyID(k.Public())
	payload, err := vectorStatement(id).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	env := seal(t, sign.ReleaseType, payload, k)
	pub, _ := sign.MarshalPublicKey(k.Public())
	files := map[string][]byte{
		"vector-ed25519.pub":       pub,
		"vector-statement.json":    payload,
		"vector-pae.txt":           sign.PAE(sign.ReleaseType, payload),
		"vector-ed25519.dsse.json": env,
	}
	if *update {
		// The ECDSA vector is signed once (ECDSA signatures are randomised) and kept.
		ek := key(t, sign.ECDSAP256)
		files["vector-ecdsa.dsse.json"] = seal(t, sign.ReleaseType, mustMarshal(t, vectorStatement(keyID(ek))), ek)
		files["vector-ecdsa.pub"], _ = sign.MarshalPublicKey(ek.Public())
		for name, data := range files {
			if err := os.WriteFile(vectorPath(name), data, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	for name, want := range files {
		got, err := os.ReadFile(vectorPath(name))
		if err != nil {
			t.Fatalf("%v (make the vectors with -update)", err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s differs from what otter makes now:\n got %s\nwant %s", name, got, want)
		}
	}
	// Both vectors verify against their public keys as of the statement's time.
	for _, v := range []string{"ed25519", "ecdsa"} {
		pubPEM, err := os.ReadFile(vectorPath("vector-" + v + ".pub"))
		if err != nil {
			t.Fatal(err)
		}
		pk, err := sign.ParsePublicKey(pubPEM)
		if err != nil {
			t.Fatal(err)
		}
		switch pk.(type) {
		case ed25519.PublicKey, *ecdsa.PublicKey:
		default:
			t.Fatalf("%s: %T", v, pk)
		}
		tr, _ := sign.NewTrust(1, 1, pk)
		envelope, _ := os.ReadFile(vectorPath("vector-" + v + ".dsse.json"))
		p := sign.Policy{Trust: tr, Now: time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC), Digest: vectorStatement("").Digest, System: "aarch64-linux", Channel: "stable"}
		if _, err := sign.VerifyRelease(envelope, p); err != nil {
			t.Fatalf("%s vector: %v", v, err)
		}
	}
}

func FuzzParseEnvelope(f *testing.F) {
	testutil.AddSeeds(f, vectorPath("vector-*.dsse.json"))
	f.Fuzz(func(t *testing.T, data []byte) {
		e, err := sign.ParseEnvelope(data)
		if err != nil {
			return
		}
		again, err := e.Marshal()
		if err != nil || !bytes.Equal(again, data) {
			t.Fatalf("parse then marshal changed the bytes (%v):\n%q\n%q", err, data, again)
		}
	})
}

func FuzzParseRelease(f *testing.F) {
	testutil.AddSeeds(f, vectorPath("vector-statement.json"))
	r := release(vectorKey())
	r.Rollout = &sign.Rollout{Start: r.Created, Fraction: 1000, Duration: 172800}
	staged, _ := r.Marshal()
	f.Add(staged)
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := sign.ParseRelease(data)
		if err != nil {
			return
		}
		again, err := r.Marshal()
		if err != nil || !bytes.Equal(again, data) {
			t.Fatalf("parse then marshal changed the bytes (%v):\n%q\n%q", err, data, again)
		}
	})
}

func FuzzParseTrust(f *testing.F) {
	k := vectorKey()
	tr, _ := sign.NewTrust(1, 1, k.Public())
	seed, _ := tr.Marshal()
	f.Add(seed)
	f.Fuzz(func(t *testing.T, data []byte) {
		tr, err := sign.ParseTrust(data)
		if err != nil {
			return
		}
		again, err := tr.Marshal()
		if err != nil || !bytes.Equal(again, data) {
			t.Fatalf("parse then marshal changed the bytes (%v)", err)
		}
	})
}
