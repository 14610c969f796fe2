package sign

import (
	"bytes"
	"crypto"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
)

// Bounds on what a verifier reads. A statement is a few hundred bytes.
const (
	MaxEnvelopeSize = 64 << 10
	MaxPayloadSize  = 16 << 10
	MaxSignatures   = 16
)

var (
	// ErrMalformed is returned for an envelope or statement that does not
	// parse, is not canonical, or misses a field: truncated or forged.
	ErrMalformed = errors.New("sign: malformed statement")
	// ErrOversized is returned for an envelope or statement over the bounds.
	ErrOversized = errors.New("sign: statement too large")
)

// Envelope is a DSSE envelope (github.com/secure-systems-lab/dsse, v1):
// a typed payload and signatures over its pre-authentication encoding.
type Envelope struct {
	PayloadType string      `json:"payloadType"`
	Payload     []byte      `json:"payload"`
	Signatures  []Signature `json:"signatures"`
}

// Signature is one signature in an envelope.
type Signature struct {
	KeyID string `json:"keyid"`
	Sig   []byte `json:"sig"`
}

// PAE is DSSE's pre-authentication encoding, the bytes that are signed:
// "DSSEv1" SP len(type) SP type SP len(payload) SP payload. The payload
// type makes it the domain separation of every otter signature.
func PAE(payloadType string, payload []byte) []byte {
	var b bytes.Buffer
	b.WriteString("DSSEv1 ")
	b.WriteString(strconv.Itoa(len(payloadType)))
	b.WriteByte(' ')
	b.WriteString(payloadType)
	b.WriteByte(' ')
	b.WriteString(strconv.Itoa(len(payload)))
	b.WriteByte(' ')
	b.Write(payload)
	return b.Bytes()
}

// Seal signs payload with each key into a new envelope.
func Seal(payloadType string, payload []byte, keys ...crypto.Signer) (*Envelope, error) {
	e := &Envelope{PayloadType: payloadType, Payload: payload, Signatures: []Signature{}}
	for _, k := range keys {
		if err := e.AddSignature(k); err != nil {
			return nil, err
		}
	}
	return e, nil
}

// AddSignature adds k's signature (a co-signature for thresholds).
func (e *Envelope) AddSignature(k crypto.Signer) error {
	id, err := KeyID(k.Public())
	if err != nil {
		return err
	}
	sig, err := signBytes(k, PAE(e.PayloadType, e.Payload))
	if err != nil {
		return err
	}
	e.Signatures = append(e.Signatures, Signature{KeyID: id, Sig: sig})
	return nil
}

// Marshal gives the canonical encoding: compact JSON, members in the
// order payloadType, payload, signatures; keyid, sig; base64 with padding.
func (e *Envelope) Marshal() ([]byte, error) {
	return canonicalJSON(e)
}

// ParseEnvelope reads an envelope, accepting only its canonical encoding
// within the size bounds. It does not check signatures.
func ParseEnvelope(data []byte) (*Envelope, error) {
	if len(data) > MaxEnvelopeSize {
		return nil, fmt.Errorf("%w: envelope of %d bytes (at most %d)", ErrOversized, len(data), MaxEnvelopeSize)
	}
	var e Envelope
	if err := strictUnmarshal(data, &e); err != nil {
		return nil, err
	}
	switch {
	case e.PayloadType == "":
		return nil, fmt.Errorf("%w: no payloadType", ErrMalformed)
	case len(e.Payload) > MaxPayloadSize:
		return nil, fmt.Errorf("%w: payload of %d bytes (at most %d)", ErrOversized, len(e.Payload), MaxPayloadSize)
	case len(e.Signatures) > MaxSignatures:
		return nil, fmt.Errorf("%w: %d signatures (at most %d)", ErrOversized, len(e.Signatures), MaxSignatures)
	case e.Signatures == nil:
		return nil, fmt.Errorf("%w: no signatures member", ErrMalformed)
	}
	again, err := e.Marshal()
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(again, data) {
		return nil, fmt.Errorf("%w: envelope is not in canonical form", ErrMalformed)
	}
	return &e, nil
}

// canonicalJSON encodes v compactly, without HTML escaping.
func canonicalJSON(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// strictUnmarshal decodes exactly one JSON value with no unknown members.
func strictUnmarshal(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if dec.More() {
		return fmt.Errorf("%w: trailing data", ErrMalformed)
	}
	return nil
}
