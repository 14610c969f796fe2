package sign_test

import (
	"bytes"
	"crypto"
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/otter-fleet/otter/sign"
)

func TestParseRollout(t *testing.T) {
	for _, c := range []struct {
		in   string
		want sign.Rollout
	}{
		{"10%:48h", sign.Rollout{Start: sign.FormatTime(now), Fraction: 1000, Duration: 48 * 3600}},
		{"0.5%:7d@2026-12-01T00:00:00Z", sign.Rollout{Start: "2026-12-01T00:00:00Z", Fraction: 50, Duration: 7 * 86400}},
		{"100%:1s", sign.Rollout{Start: sign.FormatTime(now), Fraction: 10000, Duration: 1}},
		{"0%:1h30m", sign.Rollout{Start: sign.FormatTime(now), Fraction: 0, Duration: 5400}},
	} {
		got, err := sign.ParseRollout(c.in, now)
		if err != nil || *got != c.want {
			t.Errorf("ParseRollout(%q) = %+v, %v; want %+v", c.in, got, err, c.want)
		}
		if err == nil {
			again, err := sign.ParseRollout(got.String(), time.Time{})
			if err != nil || *again != *got {
				t.Errorf("ParseRollout(%q.String() = %q) = %+v, %v", c.in, got.String(), again, err)
			}
		}
	}
	for _, bad := range []string{"", "10%", "10:48h", "101%:1h", "10%:0s", "10%:-1h", "10%:48h@tomorrow", "10%:48x", "1.234%:1h", "10%:100000d"} {
		if r, err := sign.ParseRollout(bad, now); err == nil {
			t.Errorf("ParseRollout(%q) = %+v, want an error", bad, r)
		}
	}
}

func TestRolloutFraction(t *testing.T) {
	r := &sign.Rollout{Start: sign.FormatTime(now), Fraction: 2000, Duration: 100}
	for _, c := range []struct {
		at   time.Duration
		want float64
	}{
		{-time.Second, 0}, {0, 0.2}, {50 * time.Second, 0.6}, {100 * time.Second, 1}, {time.Hour, 1},
	} {
		if got := r.FractionAt(now.Add(c.at)); math.Abs(got-c.want) > 1e-9 {
			t.Errorf("FractionAt(start%+v) = %v, want %v", c.at, got, c.want)
		}
	}
	// A canary (wariness 0) gets it at the start; the most cautious
	// device only at the end; nobody before the start.
	if !r.Offered(0, now) || r.Offered(0, now.Add(-time.Second)) || r.Offered(0.99, now.Add(90*time.Second)) || !r.Offered(0.99, now.Add(100*time.Second)) {
		t.Error("Offered does not follow the schedule")
	}
	// OfferedAt is the first second the fraction passes the wariness.
	for _, w := range []float64{0, 0.1, 0.2, 0.5, 0.999} {
		at := r.OfferedAt(w)
		if !r.Offered(w, at) || (at.After(now) && r.Offered(w, at.Add(-time.Second))) {
			t.Errorf("OfferedAt(%v) = start%+v: not the first second offered", w, at.Sub(now))
		}
	}
	var none *sign.Rollout
	if !none.Offered(0.999, now) {
		t.Error("a release without a schedule must be offered to every device")
	}
}

func TestWariness(t *testing.T) {
	if sign.Wariness("0123") != sign.Wariness("0123\n") {
		t.Error("the machine id's trailing newline changes the wariness")
	}
	// Spread: 10,000 machine ids fill ten buckets evenly (±20%).
	var buckets [10]int
	for i := range 10000 {
		w := sign.Wariness(fmt.Sprintf("%032x", i))
		if w < 0 || w >= 1 {
			t.Fatalf("wariness %v out of [0,1)", w)
		}
		buckets[int(w*10)]++
	}
	for i, n := range buckets {
		if n < 800 || n > 1200 {
			t.Errorf("bucket %d holds %d of 10000 machine ids", i, n)
		}
	}
}

func TestReleaseWithRollout(t *testing.T) {
	k := key(t, sign.ECDSAP256)
	plain := release(k)
	b, err := plain.Marshal()
	if err != nil || bytes.Contains(b, []byte("rollout")) {
		t.Fatalf("a statement without a schedule changed: %s %v", b, err)
	}
	r := release(k)
	r.Rollout = &sign.Rollout{Start: sign.FormatTime(now), Fraction: 1000, Duration: 3600}
	b, err = r.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(b, []byte(`"expires":"2026-12-22T12:00:00Z","rollout":{"start":"2026-11-22T12:00:00Z","fraction":1000,"duration":3600},"keyid"`)) {
		t.Errorf("rollout not where the spec puts it: %s", b)
	}
	got, err := sign.VerifyRelease(seal(t, sign.ReleaseType, b, k), policy(trust(t, 1, k)))
	if err != nil || *got.Rollout != *r.Rollout {
		t.Fatalf("VerifyRelease: %+v, %v", got, err)
	}
	for name, bad := range map[string]*sign.Rollout{
		"fraction":      {Start: r.Rollout.Start, Fraction: 10001, Duration: 1},
		"duration":      {Start: r.Rollout.Start, Fraction: 10, Duration: 0},
		"start":         {Start: "2026-11-22 12:00:00", Fraction: 10, Duration: 1},
		"after expires": {Start: r.Expires, Fraction: 10, Duration: 1},
	} {
		r.Rollout = bad
		if _, err := r.Marshal(); !errors.Is(err, sign.ErrMalformed) {
			t.Errorf("%s: %v, want ErrMalformed", name, err)
		}
	}
}

func halt(k crypto.Signer) *sign.Halt {
	return &sign.Halt{
		Digest: digestA, Version: 5, Channel: "stable", System: "aarch64-linux", Reason: "health checks fail on 2 devices",
		Created: sign.FormatTime(now.Add(-time.Minute)), Expires: sign.FormatTime(now.Add(7 * 24 * time.Hour)), KeyID: keyID(k),
	}
}

func sealHalt(t testing.TB, h *sign.Halt, keys ...crypto.Signer) []byte {
	t.Helper()
	p, err := h.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return seal(t, sign.HaltType, p, keys...)
}

func TestHalt(t *testing.T) {
	k, other := key(t, sign.ECDSAP256), key(t, sign.Ed25519)
	tr := trust(t, 1, k)
	p := policy(tr)
	p.Installed = 9 // a halt is not refused as a rollback
	good := sealHalt(t, halt(k), k)
	if h, err := sign.VerifyHalt(good, p); err != nil || h.Reason != halt(k).Reason {
		t.Fatalf("VerifyHalt: %+v, %v", h, err)
	}
	mod := func(f func(*sign.Halt)) *sign.Halt { h := halt(k); f(h); return h }
	for name, c := range map[string]struct {
		env  []byte
		want error
	}{
		"expired": {sealHalt(t, mod(func(h *sign.Halt) { h.Expires = sign.FormatTime(now) }), k), sign.ErrExpired},
		"from the future": {sealHalt(t, mod(func(h *sign.Halt) {
			h.Created = sign.FormatTime(now.Add(sign.HaltSkew + time.Minute))
		}), k), sign.ErrHaltNotYet},
		"another release": {sealHalt(t, mod(func(h *sign.Halt) { h.Digest = digestB }), k), sign.ErrDigestMismatch},
		"another channel": {sealHalt(t, mod(func(h *sign.Halt) { h.Channel = "beta" }), k), sign.ErrWrongChannel},
		"untrusted key":   {sealHalt(t, mod(func(h *sign.Halt) { h.KeyID = keyID(other) }), other), sign.ErrUnknownKey},
		"a release":       {sealRelease(t, release(k), k), sign.ErrWrongType},
	} {
		if _, err := sign.VerifyHalt(c.env, p); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", name, err, c.want)
		}
		if sign.HaltInForce([][]byte{c.env}, p) != nil {
			t.Errorf("%s: counted as a halt in force", name)
		}
	}
	// Junk in front does not hide a valid halt.
	if h := sign.HaltInForce([][]byte{[]byte("junk"), sealRelease(t, release(k), k), good}, p); h == nil {
		t.Error("the valid halt after junk was not found")
	}
	for _, bad := range []string{strings.Repeat("x", sign.MaxReasonLength+1), "two\nlines", "\xff"} {
		if _, err := mod(func(h *sign.Halt) { h.Reason = bad }).Marshal(); !errors.Is(err, sign.ErrMalformed) {
			t.Errorf("reason %q: %v", bad, err)
		}
	}
}

func FuzzParseHalt(f *testing.F) {
	k := vectorKey()
	b, _ := halt(k).Marshal()
	f.Add(b)
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := sign.ParseHalt(data)
		if err != nil {
			return
		}
		again, err := h.Marshal()
		if err != nil || !bytes.Equal(again, data) {
			t.Fatalf("parse then marshal changed the bytes (%v):\n%q\n%q", err, data, again)
		}
	})
}
