package sign

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// HaltType is the payload type of a halt statement.
const HaltType = "application/vnd.otter.halt.v1+json"

// Parts is the denominator of a rollout fraction: fractions are whole
// parts per ten thousand (basis points), so that statements carry
// integers only.
const Parts = 10000

// MaxRolloutDuration bounds a rollout's duration: ten years.
const MaxRolloutDuration = 10 * 365 * 24 * 3600

// Rollout is a release's signed rollout schedule: at Start a device is
// offered the release when its wariness is below Fraction/Parts; the
// fraction then grows linearly to 1 over Duration seconds.
type Rollout struct {
	Start    string `json:"start"`
	Fraction uint64 `json:"fraction"`
	Duration uint64 `json:"duration"`
}

// Validate checks the schedule's form.
func (r *Rollout) Validate() error {
	if _, err := parseTime("rollout start", r.Start); err != nil {
		return err
	}
	if r.Fraction > Parts {
		return fmt.Errorf("%w: rollout fraction %d is more than %d", ErrMalformed, r.Fraction, Parts)
	}
	if r.Duration == 0 || r.Duration > MaxRolloutDuration {
		return fmt.Errorf("%w: rollout duration %d s is not in 1…%d", ErrMalformed, r.Duration, MaxRolloutDuration)
	}
	return nil
}

// FractionAt is the share of devices offered the release at t, in [0,1]:
// 0 before the start, Fraction/Parts at the start, growing linearly to 1
// at the start plus the duration.
func (r *Rollout) FractionAt(t time.Time) float64 {
	start, err := parseTime("rollout start", r.Start)
	if err != nil || t.Before(start) {
		return 0
	}
	elapsed := t.Sub(start).Seconds()
	if elapsed >= float64(r.Duration) {
		return 1
	}
	f0 := float64(min(r.Fraction, Parts)) / Parts
	return f0 + (1-f0)*elapsed/float64(r.Duration)
}

// Offered says whether a device of the given wariness is offered the
// release at t: its wariness is below the fraction then. A release
// without a schedule is offered to every device.
func (r *Rollout) Offered(wariness float64, t time.Time) bool {
	if r == nil {
		return true
	}
	return wariness < r.FractionAt(t)
}

// OfferedAt is the first whole second at which a device of the given
// wariness is offered the release: when FractionAt passes it.
func (r *Rollout) OfferedAt(wariness float64) time.Time {
	start, err := parseTime("rollout start", r.Start)
	if err != nil {
		return time.Time{}
	}
	f0 := float64(min(r.Fraction, Parts)) / Parts
	if wariness < f0 {
		return start
	}
	if f0 >= 1 {
		return start
	}
	s := math.Floor(float64(r.Duration)*(wariness-f0)/(1-f0)) + 1
	return start.Add(time.Duration(min(s, float64(r.Duration))) * time.Second)
}

// String gives the schedule as --rollout reads it.
func (r *Rollout) String() string {
	pct := strconv.FormatFloat(float64(r.Fraction)/100, 'f', -1, 64)
	return fmt.Sprintf("%s%%:%s@%s", pct, time.Duration(r.Duration)*time.Second, r.Start)
}

var rolloutRE = regexp.MustCompile(`^([0-9]{1,3}(?:\.[0-9]{1,2})?)%:([0-9]+[a-z]+(?:[0-9]+[a-z]+)*)(?:@(.+))?$`)

// ParseRollout reads a schedule as --rollout gives it: PERCENT%:DURATION,
// optionally @START (RFC 3339; default now). DURATION is a Go duration or
// a whole number of days (2d). For example 10%:48h or 0.5%:7d@2026-12-01T00:00:00Z.
func ParseRollout(s string, now time.Time) (*Rollout, error) {
	m := rolloutRE.FindStringSubmatch(s)
	if m == nil {
		return nil, fmt.Errorf("rollout %q: want PERCENT%%:DURATION[@START], e.g. 10%%:48h", s)
	}
	pct, err := strconv.ParseFloat(m[1], 64)
	if err != nil || pct > 100 {
		return nil, fmt.Errorf("rollout %q: %s%% is not a percentage", s, m[1])
	}
	var d time.Duration
	if days, ok := strings.CutSuffix(m[2], "d"); ok {
		n, err := strconv.Atoi(days)
		if err != nil {
			return nil, fmt.Errorf("rollout %q: duration %q", s, m[2])
		}
		d = time.Duration(n) * 24 * time.Hour
	} else if d, err = time.ParseDuration(m[2]); err != nil {
		return nil, fmt.Errorf("rollout %q: duration %q", s, m[2])
	}
	start := now
	if m[3] != "" {
		if start, err = time.Parse(time.RFC3339, m[3]); err != nil {
			return nil, fmt.Errorf("rollout %q: start %q is not an RFC 3339 time", s, m[3])
		}
	}
	r := &Rollout{Start: FormatTime(start), Fraction: uint64(math.Round(pct * 100)), Duration: uint64(d / time.Second)}
	if err := r.Validate(); err != nil {
		return nil, fmt.Errorf("rollout %q: %w", s, err)
	}
	return r, nil
}

// Wariness is a device's default wariness, in [0,1): the first 53 bits of
// SHA-256("otter wariness v1\n" || machine id) over 2^53. The same machine
// id always gives the same wariness, so the same devices go first in
// every rollout.
func Wariness(machineID string) float64 {
	h := sha256.Sum256([]byte("otter wariness v1\n" + strings.TrimSpace(machineID)))
	// 53 bits: exactly representable, and never rounds up to 1.
	return float64(binary.BigEndian.Uint64(h[:8])>>11) / (1 << 53)
}

// MaxReasonLength bounds a halt's reason, in bytes.
const MaxReasonLength = 256

// Halt is what a release key says to stop a rollout: devices not yet on
// the release Digest (Version on Channel for System) do not install it
// while the halt is in force, from Created until Expires.
type Halt struct {
	Digest  string `json:"digest"`
	Version uint64 `json:"version"`
	Channel string `json:"channel"`
	System  string `json:"system"`
	Reason  string `json:"reason"`
	Created string `json:"created"`
	Expires string `json:"expires"`
	KeyID   string `json:"keyid"`
}

// Validate checks every field's form.
func (h *Halt) Validate() error {
	if !digestRE.MatchString(h.Digest) {
		return fmt.Errorf("%w: digest %q", ErrMalformed, h.Digest)
	}
	if len(h.Reason) > MaxReasonLength || !utf8.ValidString(h.Reason) || strings.ContainsFunc(h.Reason, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return fmt.Errorf("%w: reason is not one line of at most %d bytes of UTF-8", ErrMalformed, MaxReasonLength)
	}
	return checkCommon(h.Version, h.Channel, h.System, h.Created, h.Expires, h.KeyID)
}

// Marshal gives a statement's canonical encoding after validating it.
func (h *Halt) Marshal() ([]byte, error) {
	if err := h.Validate(); err != nil {
		return nil, err
	}
	return canonicalJSON(h)
}

// ParseHalt reads a halt statement.
func ParseHalt(data []byte) (*Halt, error) {
	var h Halt
	if err := parseStatement(data, &h); err != nil {
		return nil, err
	}
	return &h, nil
}

// ErrHaltNotYet is a halt whose created time is after the device's
// clock by more than HaltSkew.
var ErrHaltNotYet = errors.New("sign: halt not yet in force")

// HaltSkew is how far a halt's created time may be ahead of a device's
// clock and still be in force: halts are urgent, and device clocks drift.
const HaltSkew = 10 * time.Minute

// VerifyHalt checks a halt statement's envelope: p.Digest is the release
// it must name, and the device's system and channel must be its own. It
// returns the halt when it is in force at p.Now; an expired halt is
// ErrExpired (the rollout resumes), a well-formed one from the future
// ErrHaltNotYet. The installed version plays no part.
func VerifyHalt(envelope []byte, p Policy) (*Halt, error) {
	e, signers, err := openEnvelope(envelope, HaltType, p.Trust)
	if err != nil {
		return nil, err
	}
	h, err := ParseHalt(e.Payload)
	if err != nil {
		return nil, err
	}
	if err := signedBy(signers, h.KeyID); err != nil {
		return nil, err
	}
	if h.Digest != p.Digest {
		return nil, fmt.Errorf("%w: halt names %s, the release is %s", ErrDigestMismatch, h.Digest, p.Digest)
	}
	p.HasInstalled = false
	if err := p.check(h.Version, h.Channel, h.System, h.Expires); err != nil {
		return nil, err
	}
	if c, _ := parseTime("created", h.Created); c.After(p.Now.Add(HaltSkew)) {
		return nil, fmt.Errorf("%w: created %s, now %s", ErrHaltNotYet, h.Created, FormatTime(p.Now))
	}
	return h, nil
}

// HaltInForce returns the first of the envelopes that is a halt in force
// for p.Digest at p.Now, or nil. Envelopes that are not (junk, other
// keys, expired halts) are ignored: a halt only ever keeps a device where
// it is, so nothing but a valid one counts.
func HaltInForce(envelopes [][]byte, p Policy) *Halt {
	for _, e := range envelopes {
		if h, err := VerifyHalt(e, p); err == nil {
			return h
		}
	}
	return nil
}
