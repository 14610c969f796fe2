package device

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/otter-fleet/otter/nix"
	"github.com/otter-fleet/otter/state"
)

// gc keeps the current generation and the newest others, Keep in all, and
// removes every store path none of them uses. It runs only without an
// update in progress before the commit (the caller holds the lock).
func (d *Device) gc(ctx context.Context) ([]string, error) {
	gens, err := d.st.Generations()
	if err != nil {
		return nil, err
	}
	cur, err := d.st.Current()
	if err != nil {
		return nil, err
	}
	// The current generation and the newest others, Keep in all.
	keep := map[int]bool{cur: true}
	for i := len(gens) - 1; i >= 0 && len(keep) < d.c.Keep; i-- {
		keep[gens[i]] = true
	}
	// Boot entries of the generations that go, first: no entry may name
	// a missing init.
	if err := d.pruneBoot(keep); err != nil {
		return nil, err
	}
	live := map[string]bool{}
	var candidates []string // with Nix: the paths of the generations removed
	for _, n := range gens {
		if !keep[n] {
			if d.c.Nix != nil {
				if g, err := d.loadGeneration(n); err == nil {
					for _, p := range g.Config.Paths {
						candidates = append(candidates, p.Path)
					}
				}
			}
			if err := state.RemoveRenamed(d.st.Path("generations"), strconv.Itoa(n), ".gc-"); err != nil {
				return nil, err
			}
			continue
		}
		g, err := d.loadGeneration(n)
		if err != nil {
			return nil, err
		}
		for _, p := range g.Config.Paths {
			live[filepath.Base(p.Path)] = true
		}
	}
	if err := d.syncDir(d.st.Path("generations")); err != nil {
		return nil, err
	}
	if len(live) == 0 {
		return []string{}, nil // nothing installed: collect nothing
	}
	if d.c.Nix != nil {
		return d.nixGC(ctx, candidates, live)
	}
	ents, err := os.ReadDir(d.c.Store)
	if err != nil {
		return nil, err
	}
	collected := []string{}
	for _, e := range ents {
		name := e.Name()
		if live[name] || nix.ValidateStorePath(nix.StoreDir+"/"+name) != nil {
			continue // only store paths; never anything else in the directory
		}
		if err := state.RemoveRenamed(d.c.Store, name, ".otter-gc-"); err != nil {
			return nil, err
		}
		collected = append(collected, nix.StoreDir+"/"+name)
	}
	return collected, d.syncDir(d.c.Store)
}

// GC collects old generations and unused store paths.
func (d *Device) GC(ctx context.Context) ([]string, error) { return d.gc(ctx) }

// Rollback switches to the newest generation older than the current one
// and activates it.
func (d *Device) Rollback(ctx context.Context) (*Outcome, error) {
	cur, err := d.st.Current()
	if err != nil {
		return nil, err
	}
	gens, err := d.st.Generations()
	if err != nil {
		return nil, err
	}
	prev := 0
	for _, n := range gens {
		if n < cur {
			prev = n
		}
	}
	if prev == 0 {
		return nil, fmt.Errorf("%w (current is %d)", ErrNoPrevious, cur)
	}
	g, err := d.loadGeneration(prev)
	if err != nil {
		return nil, err
	}
	if err := d.st.Switch(prev); err != nil {
		return nil, err
	}
	o := Outcome{Action: "rollback", Target: g.Digest, From: cur, To: prev, Result: "ok"}
	if err := d.activate(ctx, prev); err != nil {
		o.Result, o.Reason = "failed", "activation: "+err.Error()
	} else if err := d.nixosCommit(ctx, prev); err != nil {
		o.Result, o.Reason = "failed", "switch-to-configuration: "+err.Error()
	}
	if err := d.syncProfile(ctx); err != nil {
		return nil, err
	}
	if err := d.record(o); err != nil {
		return nil, err
	}
	return &o, nil
}

// Status is what otter status reports.
type Status struct {
	Store string `json:"store"`
	State string `json:"state"`
	// Mode is "nix" when otter registers with the store's Nix database
	// (docs/device.md), else "plain".
	Mode        string        `json:"mode"`
	Current     *Generation   `json:"current"`
	Generations []*Generation `json:"generations"`
	Last        *Outcome      `json:"last,omitempty"`
	Recovered   *Recovery     `json:"recovered,omitempty"`
	// Failed maps releases that failed their health check here to why.
	Failed map[string]string `json:"failed,omitempty"`
	// Downloads are partial downloads kept for resuming.
	Downloads []string `json:"downloads"`
	// Expired says the installed release's signed statement has expired:
	// unless the registry serves a fresher one, update refuses it (13).
	Expired bool `json:"expired"`
	// Trial is the release staged for a tried boot, or being tried, and
	// Booted the generation the running kernel started (devices with a
	// boot loader).
	Trial  *Trial `json:"trial,omitempty"`
	Booted int    `json:"booted,omitempty"`
}

// Status reads the device state.
func (d *Device) Status() (*Status, error) {
	s := &Status{Store: d.c.Store, State: d.c.State, Mode: d.Mode(), Generations: []*Generation{}, Downloads: []string{}}
	gens, err := d.st.Generations()
	if err != nil {
		return nil, err
	}
	cur, err := d.st.Current()
	if err != nil {
		return nil, err
	}
	for _, n := range gens {
		g, err := d.loadGeneration(n)
		if err != nil {
			// Reported, not fatal: status is how a damaged device is
			// looked at.
			g = &Generation{Number: n, Damaged: err.Error()}
		}
		s.Generations = append(s.Generations, g)
		if n == cur {
			s.Current = g
		}
	}
	if cur != 0 && s.Current == nil {
		return nil, fmt.Errorf("%w: current names generation %d, which is missing", ErrState, cur)
	}
	if g := s.Current; g != nil && g.Release != nil {
		// The installed release's own statement: once it has expired, the
		// next update refuses to stay on it (exit 13).
		if exp, err := time.Parse(time.RFC3339, g.Release.Expires); err == nil && !d.c.Now().Before(exp) {
			s.Expired = true
		}
	}
	var last Outcome
	if ok, err := d.st.ReadJSON(state.Last, &last); err != nil {
		return nil, err
	} else if ok {
		s.Last = &last
	}
	if _, err := d.st.ReadJSON(state.Failed, &s.Failed); err != nil {
		return nil, err
	}
	ents, _ := os.ReadDir(d.st.Path("downloads"))
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".part") {
			s.Downloads = append(s.Downloads, e.Name())
		}
	}
	if s.Trial, err = d.Trial(); err != nil {
		return nil, err
	}
	if s.Booted, err = d.Booted(); err != nil {
		return nil, err
	}
	return s, nil
}

// Current returns the current generation, nil when nothing is installed.
func (d *Device) Current() (*Generation, error) {
	cur, err := d.st.Current()
	if err != nil || cur == 0 {
		return nil, err
	}
	return d.loadGeneration(cur)
}
