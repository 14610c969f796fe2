package sign

import (
	"bytes"
	"crypto"
	"errors"
	"fmt"
	"sort"
)

// ErrTrust is returned for a trust root that is not valid.
var ErrTrust = errors.New("sign: invalid trust root")

// Trust is what a device trusts: the release keys and how many of them
// must sign (threshold). Version orders trust roots; a new one replaces
// the current one only through [Trust.Rotate].
type Trust struct {
	Version   uint64       `json:"version"`
	Threshold int          `json:"threshold"`
	Keys      []TrustedKey `json:"keys"`
}

// TrustedKey is a public key and its id.
type TrustedKey struct {
	KeyID     string `json:"keyid"`
	PublicKey string `json:"publicKey"` // PKIX PEM

	pub crypto.PublicKey
}

// NewTrust makes a trust root of the given public keys.
func NewTrust(version uint64, threshold int, pubs ...crypto.PublicKey) (*Trust, error) {
	t := &Trust{Version: version, Threshold: threshold}
	for _, pub := range pubs {
		id, err := KeyID(pub)
		if err != nil {
			return nil, err
		}
		pemBytes, err := MarshalPublicKey(pub)
		if err != nil {
			return nil, err
		}
		t.Keys = append(t.Keys, TrustedKey{KeyID: id, PublicKey: string(pemBytes), pub: pub})
	}
	sort.Slice(t.Keys, func(i, j int) bool { return t.Keys[i].KeyID < t.Keys[j].KeyID })
	return t, t.Validate()
}

// Validate checks the keys parse, match their ids, are unique and sorted,
// and that the threshold is between 1 and the number of keys.
func (t *Trust) Validate() error {
	if len(t.Keys) == 0 {
		return fmt.Errorf("%w: no keys", ErrTrust)
	}
	if t.Threshold < 1 || t.Threshold > len(t.Keys) {
		return fmt.Errorf("%w: threshold %d for %d keys", ErrTrust, t.Threshold, len(t.Keys))
	}
	for i := range t.Keys {
		k := &t.Keys[i]
		pub, err := ParsePublicKey([]byte(k.PublicKey))
		if err != nil {
			return fmt.Errorf("%w: key %d: %v", ErrTrust, i, err)
		}
		id, _ := KeyID(pub)
		if id != k.KeyID {
			return fmt.Errorf("%w: key %d has id %s, its key hashes to %s", ErrTrust, i, k.KeyID, id)
		}
		if i > 0 && k.KeyID <= t.Keys[i-1].KeyID {
			return fmt.Errorf("%w: keys not sorted and unique", ErrTrust)
		}
		k.pub = pub
	}
	return nil
}

// Marshal gives the trust root's canonical encoding.
func (t *Trust) Marshal() ([]byte, error) {
	if err := t.Validate(); err != nil {
		return nil, err
	}
	return canonicalJSON(t)
}

// ParseTrust reads a trust root in canonical encoding.
func ParseTrust(data []byte) (*Trust, error) {
	if len(data) > MaxPayloadSize*4 {
		return nil, fmt.Errorf("%w: %d bytes", ErrOversized, len(data))
	}
	var t Trust
	if err := strictUnmarshal(data, &t); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrTrust, err)
	}
	again, err := t.Marshal()
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(again, data) {
		return nil, fmt.Errorf("%w: not in canonical form", ErrTrust)
	}
	return &t, nil
}

func (t *Trust) key(id string) crypto.PublicKey {
	for _, k := range t.Keys {
		if k.KeyID == id {
			return k.pub
		}
	}
	return nil
}

// checkSignatures counts the distinct trusted keys whose signature over
// the envelope verifies, and fails unless there are Threshold of them.
func (t *Trust) checkSignatures(e *Envelope) error {
	_, err := t.signers(e)
	return err
}

// signers returns the trusted keys whose signatures over the envelope
// verify, or the refusal when they are fewer than the threshold.
func (t *Trust) signers(e *Envelope) (map[string]bool, error) {
	msg := PAE(e.PayloadType, e.Payload)
	good := map[string]bool{}
	var bad, unknown []string
	for _, s := range e.Signatures {
		pub := t.key(s.KeyID)
		switch {
		case pub == nil:
			unknown = append(unknown, s.KeyID)
		case verifyBytes(pub, msg, s.Sig):
			good[s.KeyID] = true
		default:
			bad = append(bad, s.KeyID)
		}
	}
	switch {
	case len(good) >= t.Threshold:
		return good, nil
	case len(bad) > 0:
		return nil, fmt.Errorf("%w by %v", ErrBadSignature, bad)
	case len(good) == 0 && len(unknown) > 0:
		return nil, fmt.Errorf("%w: signed only by %v", ErrUnknownKey, unknown)
	}
	return nil, fmt.Errorf("%w: %d of %d required signatures", ErrThreshold, len(good), t.Threshold)
}

// Rotate accepts a new trust root from an envelope only when the current
// root's threshold of keys signed it, the new root's own threshold of keys
// signed it too (proving they are held), and its version is higher.
func (t *Trust) Rotate(envelope []byte) (*Trust, error) {
	e, err := ParseEnvelope(envelope)
	if err != nil {
		return nil, err
	}
	if e.PayloadType != TrustType {
		return nil, fmt.Errorf("%w: payload type %q, want %q", ErrWrongType, e.PayloadType, TrustType)
	}
	if err := t.checkSignatures(e); err != nil {
		return nil, fmt.Errorf("new trust root, by the current keys: %w", err)
	}
	next, err := ParseTrust(e.Payload)
	if err != nil {
		return nil, err
	}
	if err := next.checkSignatures(e); err != nil {
		return nil, fmt.Errorf("new trust root, by its own keys: %w", err)
	}
	if next.Version <= t.Version {
		return nil, fmt.Errorf("%w: trust root version %d, have %d", ErrRollback, next.Version, t.Version)
	}
	return next, nil
}
