package sign

import (
	"errors"
	"fmt"
	"time"
)

// Errors of verification, one for each way a statement is refused.
var (
	ErrBadSignature   = errors.New("sign: bad signature")
	ErrUnknownKey     = errors.New("sign: signed by an unknown key")
	ErrThreshold      = errors.New("sign: not enough trusted signatures")
	ErrExpired        = errors.New("sign: statement expired")
	ErrRollback       = errors.New("sign: version lower than the installed one")
	ErrWrongSystem    = errors.New("sign: statement for another system")
	ErrWrongChannel   = errors.New("sign: statement for another channel")
	ErrDigestMismatch = errors.New("sign: statement for another artifact")
	ErrWrongType      = errors.New("sign: wrong kind of statement")
	ErrNotSigned      = errors.New("sign: no signature found")
)

// Policy is what a device requires of a statement, besides trusted
// signatures.
type Policy struct {
	Trust   *Trust
	Now     time.Time // required: the device's clock
	Digest  string    // the artifact being installed, sha256:<hex>
	System  string    // the device's system, e.g. aarch64-linux
	Channel string    // the channel the device follows
	// Installed is the version of the installed release, if any.
	Installed      uint64
	HasInstalled   bool
	AllowDowngrade bool
}

// VerifyRelease checks a release statement's envelope against the policy
// and returns the statement. Each refusal is its own error.
func VerifyRelease(envelope []byte, p Policy) (*Release, error) {
	e, signers, err := openEnvelope(envelope, ReleaseType, p.Trust)
	if err != nil {
		return nil, err
	}
	r, err := ParseRelease(e.Payload)
	if err != nil {
		return nil, err
	}
	if err := signedBy(signers, r.KeyID); err != nil {
		return nil, err
	}
	if r.Digest != p.Digest {
		return nil, fmt.Errorf("%w: statement names %s, the bundle is %s", ErrDigestMismatch, r.Digest, p.Digest)
	}
	return r, p.check(r.Version, r.Channel, r.System, r.Expires)
}

// VerifyPatch checks a patch statement's envelope: p.Digest is the
// patch's digest, base the installed bundle's.
func VerifyPatch(envelope []byte, base string, p Policy) (*Patch, error) {
	e, signers, err := openEnvelope(envelope, PatchType, p.Trust)
	if err != nil {
		return nil, err
	}
	s, err := ParsePatch(e.Payload)
	if err != nil {
		return nil, err
	}
	if err := signedBy(signers, s.KeyID); err != nil {
		return nil, err
	}
	if s.Patch != p.Digest {
		return nil, fmt.Errorf("%w: statement names patch %s, this patch is %s", ErrDigestMismatch, s.Patch, p.Digest)
	}
	if s.Base != base {
		return nil, fmt.Errorf("%w: patch applies to %s, the installed bundle is %s", ErrDigestMismatch, s.Base, base)
	}
	return s, p.check(s.Version, s.Channel, s.System, s.Expires)
}

// signedBy refuses a statement whose keyid names a key that did not
// sign it (§6 step 3).
func signedBy(signers map[string]bool, keyid string) error {
	if !signers[keyid] {
		return fmt.Errorf("%w: the statement names key %s, which did not sign it", ErrBadSignature, keyid)
	}
	return nil
}

func openEnvelope(data []byte, payloadType string, t *Trust) (*Envelope, map[string]bool, error) {
	if t == nil {
		return nil, nil, fmt.Errorf("%w: no trust root", ErrTrust)
	}
	e, err := ParseEnvelope(data)
	if err != nil {
		return nil, nil, err
	}
	if e.PayloadType != payloadType {
		return nil, nil, fmt.Errorf("%w: payload type %q, want %q", ErrWrongType, e.PayloadType, payloadType)
	}
	signers, err := t.signers(e)
	if err != nil {
		return nil, nil, err
	}
	return e, signers, nil
}

// VerifyReleases returns the first of the release statements (envelopes
// attached to one bundle) that passes the policy, with its envelope. When
// none does, it returns the refusal that tells most: a statement whose
// signatures hold but that the policy refuses (expired, rollback, another
// system or channel) over one for another artifact, over too few, bad or
// unknown signatures, over junk; ErrNotSigned when there is none at all.
// A junk statement attached first cannot hide why the real one failed.
func VerifyReleases(envelopes [][]byte, p Policy) ([]byte, *Release, error) {
	var best error
	for _, e := range envelopes {
		r, err := VerifyRelease(e, p)
		if err == nil {
			return e, r, nil
		}
		if best == nil || relevance(err) > relevance(best) {
			best = err
		}
	}
	if best == nil {
		best = ErrNotSigned
	}
	return nil, nil, best
}

// relevance ranks refusals by how far the statement got.
func relevance(err error) int {
	switch {
	case errors.Is(err, ErrExpired), errors.Is(err, ErrRollback), errors.Is(err, ErrWrongSystem), errors.Is(err, ErrWrongChannel):
		return 6
	case errors.Is(err, ErrDigestMismatch):
		return 5
	case errors.Is(err, ErrThreshold):
		return 4
	case errors.Is(err, ErrBadSignature):
		return 3
	case errors.Is(err, ErrUnknownKey):
		return 2
	case errors.Is(err, ErrWrongType):
		return 1
	}
	return 0 // malformed, oversized
}

// check applies the policy to a verified statement's fields.
func (p Policy) check(version uint64, channel, system, expires string) error {
	if p.Now.IsZero() {
		return errors.New("sign: policy has no current time")
	}
	if system != p.System {
		return fmt.Errorf("%w: statement is for %s, this device is %s", ErrWrongSystem, system, p.System)
	}
	if channel != p.Channel {
		return fmt.Errorf("%w: statement is for channel %q, this device follows %q", ErrWrongChannel, channel, p.Channel)
	}
	exp, err := parseTime("expires", expires)
	if err != nil {
		return err
	}
	if !p.Now.Before(exp) {
		return fmt.Errorf("%w at %s (now %s): the release stream may be frozen", ErrExpired, expires, FormatTime(p.Now))
	}
	if p.HasInstalled && version < p.Installed && !p.AllowDowngrade {
		return fmt.Errorf("%w: release %d, installed %d (--allow-downgrade to install it anyway)", ErrRollback, version, p.Installed)
	}
	return nil
}
