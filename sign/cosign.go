package sign

import (
	"crypto"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"time"
)

// cosign's "simple signing" format, the one `cosign sign --key` writes and
// `cosign verify --key` checks: a JSON payload naming the image digest,
// signed as is (ECDSA over its SHA-256). Where cosign stores it (a layer
// of the manifest tagged sha256-<hex>.sig, the base64 signature in an
// annotation) is the oci package's business.
const cosignType = "cosign container image signature"

// Annotations otter reads from a cosign signature's optional claims
// (cosign sign -a KEY=VALUE) and writes into its own.
const (
	AnnotationChannel = "otter.dev/channel"
	AnnotationExpires = "otter.dev/expires"
	AnnotationVersion = "otter.dev/version"
)

type simpleSigning struct {
	Critical struct {
		Identity struct {
			DockerReference string `json:"docker-reference"`
		} `json:"identity"`
		Image struct {
			DockerManifestDigest string `json:"docker-manifest-digest"`
		} `json:"image"`
		Type string `json:"type"`
	} `json:"critical"`
	Optional map[string]any `json:"optional"`
}

// CosignPayload makes the payload cosign signs for an image: repo is the
// repository (HOST/REPO), digest the manifest's.
func CosignPayload(repo, digest string, optional map[string]string) ([]byte, error) {
	var s simpleSigning
	s.Critical.Identity.DockerReference = repo
	s.Critical.Image.DockerManifestDigest = digest
	s.Critical.Type = cosignType
	if len(optional) > 0 {
		s.Optional = map[string]any{}
		for k, v := range optional {
			s.Optional[k] = v
		}
	}
	return canonicalJSON(s)
}

// CosignOptional gives the optional claims otter puts in its cosign
// signatures, mirroring the release statement.
func CosignOptional(r *Release) map[string]string {
	return map[string]string{
		AnnotationChannel: r.Channel,
		AnnotationExpires: r.Expires,
		AnnotationVersion: strconv.FormatUint(r.Version, 10),
	}
}

// SignCosign signs a simple-signing payload and returns the base64
// signature for the layer annotation. Only ECDSA keys: cosign's own
// Ed25519 support is broken.
func SignCosign(k crypto.Signer, payload []byte) (string, error) {
	if alg, _ := AlgorithmOf(k.Public()); alg != ECDSAP256 {
		return "", fmt.Errorf("%w: cosign signatures need an %s key", ErrKey, ECDSAP256)
	}
	sig, err := signBytes(k, payload)
	if err != nil {
		return "", err
	}
	return base64.StdEncoding.EncodeToString(sig), nil
}

// CosignSignature is one simple-signing layer: payload and base64 signature.
type CosignSignature struct {
	Payload   []byte
	Signature string
}

// Claim is what verified cosign signatures say of a bundle, completed with
// what the bundle's own config says (version, system), which the signed
// digest covers.
type Claim struct {
	Digest  string   `json:"digest"`
	Version uint64   `json:"version"`
	Channel string   `json:"channel"`
	System  string   `json:"system"`
	Expires string   `json:"expires"`
	KeyIDs  []string `json:"keyids"`
}

// VerifyCosign checks cosign signatures of the bundle p.Digest, whose
// config records version and system, against the trust root and policy:
// the threshold of trusted keys must have signed a payload for this digest
// whose optional claims carry otter.dev/channel and otter.dev/expires.
func VerifyCosign(sigs []CosignSignature, version uint64, system string, p Policy) (*Claim, error) {
	if p.Trust == nil {
		return nil, fmt.Errorf("%w: no trust root", ErrTrust)
	}
	if len(sigs) == 0 {
		return nil, ErrNotSigned
	}
	type claims struct{ channel, expires string }
	good := map[string]claims{}
	var bad int
	var lastErr error
	for _, s := range sigs {
		if len(s.Payload) > MaxPayloadSize {
			lastErr = fmt.Errorf("%w: cosign payload of %d bytes", ErrOversized, len(s.Payload))
			continue
		}
		raw, err := base64.StdEncoding.DecodeString(s.Signature)
		if err != nil {
			lastErr = fmt.Errorf("%w: signature annotation is not base64", ErrMalformed)
			continue
		}
		var signer string
		for _, k := range p.Trust.Keys {
			if verifyBytes(k.pub, s.Payload, raw) {
				signer = k.KeyID
				break
			}
		}
		if signer == "" {
			bad++
			continue
		}
		var ss simpleSigning
		if err := json.Unmarshal(s.Payload, &ss); err != nil {
			lastErr = fmt.Errorf("%w: %v", ErrMalformed, err)
			continue
		}
		if ss.Critical.Image.DockerManifestDigest != p.Digest {
			lastErr = fmt.Errorf("%w: cosign payload names %s, the bundle is %s", ErrDigestMismatch, ss.Critical.Image.DockerManifestDigest, p.Digest)
			continue
		}
		channel, _ := ss.Optional[AnnotationChannel].(string)
		expires, _ := ss.Optional[AnnotationExpires].(string)
		if expires == "" {
			lastErr = fmt.Errorf("%w: the cosign signature carries no %s claim (cosign sign -a %s=%s)", ErrMalformed, AnnotationExpires, AnnotationExpires, FormatTime(time.Now().AddDate(0, 1, 0)))
			continue
		}
		good[signer] = claims{channel, expires}
	}
	if len(good) < p.Trust.Threshold {
		switch {
		case lastErr != nil:
			return nil, lastErr
		case bad > 0 && len(good) == 0:
			// A cosign signature names no key: one that no trusted key
			// verifies was made by a key the trust file does not hold.
			return nil, fmt.Errorf("%w: no trusted key verifies the %d cosign signature(s)", ErrUnknownKey, bad)
		}
		return nil, fmt.Errorf("%w: %d of %d required signatures", ErrThreshold, len(good), p.Trust.Threshold)
	}
	c := &Claim{Digest: p.Digest, Version: version, System: system}
	for id, cl := range good {
		c.KeyIDs = append(c.KeyIDs, id)
		// Every counted signer must agree; the strictest expiry wins.
		if c.Channel != "" && cl.channel != c.Channel {
			return nil, fmt.Errorf("%w: signers disagree on the channel", ErrWrongChannel)
		}
		c.Channel = cl.channel
		if c.Expires == "" || cl.expires < c.Expires {
			c.Expires = cl.expires
		}
	}
	sort.Strings(c.KeyIDs)
	return c, p.check(c.Version, c.Channel, c.System, c.Expires)
}
