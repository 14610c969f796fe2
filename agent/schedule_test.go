package agent_test

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/otter-fleet/otter/agent"
)

func schedule(t *testing.T, window string) agent.Schedule {
	t.Helper()
	_, data := example(t)
	c, err := agent.Parse("device.yaml", data)
	if err != nil {
		t.Fatal(err)
	}
	s := c.Schedule
	s.Window = window
	return s
}

// TestJitterAndBackoff: polls come interval plus a jitter within its
// bounds apart, double after each failure up to the cap, and never
// outside the window.
func TestJitterAndBackoff(t *testing.T) {
	s := schedule(t, "")
	rnd := rand.New(rand.NewPCG(1, 2))
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.Local)
	var lo, hi time.Duration = time.Hour, 0
	for range 2000 {
		d := s.Next(now, 0, rnd).Sub(now)
		if d < 30*time.Minute || d > 40*time.Minute {
			t.Fatalf("a poll %v after the last: outside interval 30m + jitter 10m", d)
		}
		lo, hi = min(lo, d), max(hi, d)
	}
	if hi-lo < 9*time.Minute {
		t.Fatalf("jitter spread only %v..%v", lo, hi)
	}
	for failures, want := range []time.Duration{30 * time.Minute, time.Hour, 2 * time.Hour, 4 * time.Hour, 6 * time.Hour, 6 * time.Hour} {
		d := s.Next(now, failures, rnd).Sub(now)
		if d < want || d > want+10*time.Minute {
			t.Fatalf("after %d failures: %v, want %v plus jitter", failures, d, want)
		}
	}
	// The first poll: afterBoot (5m) after boot, plus jitter.
	boot := now.Add(-time.Minute)
	for range 200 {
		first := s.First(now, boot, rnd)
		if first.Before(boot.Add(5*time.Minute)) || first.After(boot.Add(15*time.Minute)) {
			t.Fatalf("first poll at %v, boot %v", first, boot)
		}
	}
	if first := s.First(now, now.Add(-24*time.Hour), rnd); first.Before(now) || first.After(now.Add(10*time.Minute)) {
		t.Fatalf("long after boot, the first poll at %v", first)
	}
	// A maintenance window moves every poll inside it.
	w := schedule(t, "02:00-04:00")
	for range 200 {
		next := w.Next(now, 0, rnd)
		if next.Hour() < 2 || next.Hour() >= 4 {
			t.Fatalf("a poll at %v, outside 02:00-04:00", next)
		}
	}
}
