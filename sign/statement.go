package sign

import (
	"bytes"
	"fmt"
	"regexp"
	"time"

	"github.com/otter-fleet/otter/nix"
)

// Payload types: the versioned media types of otter's statements, and the
// domain separation of their signatures (they are part of DSSE's PAE).
const (
	ReleaseType = "application/vnd.otter.release.v1+json"
	PatchType   = "application/vnd.otter.patch.v1+json"
	TrustType   = "application/vnd.otter.trust.v1+json"
)

var (
	digestRE  = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)
	channelRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)
	systemRE  = regexp.MustCompile(`^[a-z0-9_]+-[a-z0-9_]+$`)
)

// Release is what a release key says of one bundle: this manifest digest
// is release Version on Channel for System, valid until Expires.
type Release struct {
	Digest  string `json:"digest"`
	Version uint64 `json:"version"`
	Channel string `json:"channel"`
	System  string `json:"system"`
	Root    string `json:"root"`
	Created string `json:"created"`
	Expires string `json:"expires"`
	// Rollout, when set, stages the release (Rollout.Offered).
	Rollout *Rollout `json:"rollout,omitempty"`
	KeyID   string   `json:"keyid"`
}

// Patch is what a release key says of one patch: applied to the bundle
// Base it gives the bundle Target, release Version on Channel.
type Patch struct {
	Base       string `json:"base"`
	Target     string `json:"target"`
	Patch      string `json:"patch"`
	BaseSize   int64  `json:"baseSize"`
	TargetSize int64  `json:"targetSize"`
	PatchSize  int64  `json:"patchSize"`
	Version    uint64 `json:"version"`
	Channel    string `json:"channel"`
	System     string `json:"system"`
	Created    string `json:"created"`
	Expires    string `json:"expires"`
	KeyID      string `json:"keyid"`
}

// FormatTime gives t as statements carry it: RFC 3339, UTC, seconds.
func FormatTime(t time.Time) string { return t.UTC().Truncate(time.Second).Format(time.RFC3339) }

func parseTime(field, s string) (time.Time, error) {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil || FormatTime(t) != s {
		return t, fmt.Errorf("%w: %s %q is not an RFC 3339 UTC time in seconds", ErrMalformed, field, s)
	}
	return t, nil
}

func checkCommon(version uint64, channel, system, created, expires, keyid string) error {
	switch {
	case !channelRE.MatchString(channel):
		return fmt.Errorf("%w: channel %q", ErrMalformed, channel)
	case !systemRE.MatchString(system):
		return fmt.Errorf("%w: system %q", ErrMalformed, system)
	case !digestRE.MatchString(keyid):
		return fmt.Errorf("%w: keyid %q", ErrMalformed, keyid)
	}
	c, err := parseTime("created", created)
	if err != nil {
		return err
	}
	e, err := parseTime("expires", expires)
	if err != nil {
		return err
	}
	if !e.After(c) {
		return fmt.Errorf("%w: expires %s is not after created %s", ErrMalformed, expires, created)
	}
	return nil
}

// Validate checks every field's form.
func (r *Release) Validate() error {
	if !digestRE.MatchString(r.Digest) {
		return fmt.Errorf("%w: digest %q", ErrMalformed, r.Digest)
	}
	if err := nix.ValidateStorePath(r.Root); err != nil {
		return fmt.Errorf("%w: root: %v", ErrMalformed, err)
	}
	if r.Rollout != nil {
		if err := r.Rollout.Validate(); err != nil {
			return err
		}
		start, _ := time.Parse(time.RFC3339, r.Rollout.Start)
		if exp, err := time.Parse(time.RFC3339, r.Expires); err == nil && !start.Before(exp) {
			return fmt.Errorf("%w: rollout starts at %s, when the statement has expired", ErrMalformed, r.Rollout.Start)
		}
	}
	return checkCommon(r.Version, r.Channel, r.System, r.Created, r.Expires, r.KeyID)
}

// Validate checks every field's form.
func (p *Patch) Validate() error {
	for name, d := range map[string]string{"base": p.Base, "target": p.Target, "patch": p.Patch} {
		if !digestRE.MatchString(d) {
			return fmt.Errorf("%w: %s %q", ErrMalformed, name, d)
		}
	}
	if p.BaseSize <= 0 || p.TargetSize <= 0 || p.PatchSize <= 0 {
		return fmt.Errorf("%w: sizes must be positive", ErrMalformed)
	}
	return checkCommon(p.Version, p.Channel, p.System, p.Created, p.Expires, p.KeyID)
}

// Marshal gives a statement's canonical encoding after validating it.
func (r *Release) Marshal() ([]byte, error) {
	if err := r.Validate(); err != nil {
		return nil, err
	}
	return canonicalJSON(r)
}

// Marshal gives a statement's canonical encoding after validating it.
func (p *Patch) Marshal() ([]byte, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return canonicalJSON(p)
}

// statement is what ParseStatement reads.
type statement interface {
	Validate() error
	Marshal() ([]byte, error)
}

// parseStatement reads data into s, accepting only a valid statement in
// canonical encoding.
func parseStatement(data []byte, s statement) error {
	if len(data) > MaxPayloadSize {
		return fmt.Errorf("%w: statement of %d bytes", ErrOversized, len(data))
	}
	if err := strictUnmarshal(data, s); err != nil {
		return err
	}
	again, err := s.Marshal()
	if err != nil {
		return err
	}
	if !bytes.Equal(again, data) {
		return fmt.Errorf("%w: statement is not in canonical form", ErrMalformed)
	}
	return nil
}

// ParseRelease reads a release statement.
func ParseRelease(data []byte) (*Release, error) {
	var r Release
	if err := parseStatement(data, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// ParsePatch reads a patch statement.
func ParsePatch(data []byte) (*Patch, error) {
	var p Patch
	if err := parseStatement(data, &p); err != nil {
		return nil, err
	}
	return &p, nil
}
