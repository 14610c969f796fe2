package device

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/otter-fleet/otter/internal/fsutil"
	"github.com/otter-fleet/otter/nix"
	"github.com/otter-fleet/otter/state"
)

// Phases of an update, as the journal records them (docs/device.md).
const (
	// Before the switch: current still names the old generation.
	phaseFetch = "fetch"
	phaseApply = "apply"
	// The new generation exists and current may name it; the health
	// check has not passed.
	phaseSwitch = "switch"
	// The health check passed; what is left is cleaning up.
	phaseCommit = "commit"
)

// journal is what an update in progress has done so far.
type journal struct {
	Phase  string `json:"phase"`
	Target string `json:"target"`
	From   int    `json:"from"`
	To     int    `json:"to,omitempty"`
	// Paths, on a Nix store, are the new release's paths with their NAR
	// hashes and references, written before any is renamed into the
	// store: recovery registers those it finds complete.
	Paths []nix.PathInfo `json:"paths,omitempty"`
}

func (d *Device) setPhase(j *journal, phase string) error {
	j.Phase = phase
	if err := d.st.WriteJSON(state.Journal, j); err != nil {
		return err
	}
	crashPoint("phase-" + phase)
	return nil
}

// Recovery says what Open found and did.
type Recovery struct {
	Phase  string `json:"phase"`
	Target string `json:"target"`
	Action string `json:"action"` // discarded, rolled-back, completed; for a trial: trying, staged, boot-failed
	Reason string `json:"reason,omitempty"`
}

// recover finishes or undoes an interrupted update so the device is on
// exactly one release: before the switch, the update is forgotten
// (downloads stay for the next try); after the switch but before the
// health check passed, current goes back to the old generation; after
// it passed, the clean-up is finished.
func (d *Device) recover(ctx context.Context) (*Recovery, error) {
	rec, err := d.recoverJournal(ctx)
	if err != nil {
		return nil, err
	}
	// Then a tried boot (docs/device.md §11).
	trec, err := d.recoverTrial()
	if err != nil || trec == nil {
		return rec, err
	}
	return trec, nil
}

func (d *Device) recoverJournal(ctx context.Context) (*Recovery, error) {
	d.removeLeftovers()
	var j journal
	ok, err := d.st.ReadJSON(state.Journal, &j)
	if err != nil || !ok {
		return nil, err
	}
	rec := &Recovery{Phase: j.Phase, Target: j.Target}
	switch j.Phase {
	case phaseFetch, phaseApply:
		rec.Action = "discarded"
		// A power loss between renaming a path into a Nix store and
		// registering it leaves it complete but invalid: the journal names
		// it, so it is registered (after its NAR hash is checked).
		if err := d.nixRegisterPresent(ctx, j.Paths); err != nil {
			return nil, err
		}
		if j.To > 0 {
			if err := d.st.Drop(j.To); err != nil {
				return nil, err
			}
			if err := d.syncProfile(ctx); err != nil {
				return nil, err
			}
		}
		err = d.record(Outcome{Action: "update", Target: j.Target, From: j.From, To: j.From, Result: "interrupted",
			Reason: fmt.Sprintf("interrupted while in phase %q; still on generation %d; downloads kept", j.Phase, j.From)})
	case phaseSwitch:
		rec.Action = "rolled-back"
		cur, err := d.st.Current()
		if err != nil {
			return nil, err
		}
		if cur != j.From {
			if err := d.st.Switch(j.From); err != nil {
				return nil, err
			}
			if j.From > 0 {
				_ = d.activate(ctx, j.From) // the old release was working before
			}
		}
		if d.c.Boot != nil {
			// An activation's entry may have been written: it goes.
			if err := d.unstage(j.To); err != nil {
				return nil, err
			}
		}
		if err := d.st.Drop(j.To); err != nil {
			return nil, err
		}
		if err := d.syncProfile(ctx); err != nil {
			return nil, err
		}
		err = d.record(Outcome{Action: "update", Target: j.Target, From: j.From, To: j.From, Result: "interrupted",
			Reason: fmt.Sprintf("interrupted before generation %d passed its health check; back on generation %d", j.To, j.From)})
	case phaseCommit:
		rec.Action = "completed"
		if _, err := d.gc(ctx); err != nil {
			return nil, err
		}
		err = d.record(Outcome{Action: "update", Target: j.Target, From: j.From, To: j.To, Result: "ok"})
	default:
		return nil, fmt.Errorf("%w: journal phase %q", ErrState, j.Phase)
	}
	if err != nil {
		return nil, err
	}
	return rec, d.st.Remove(state.Journal)
}

// removeLeftovers deletes half-made things no journal needs: in the
// state directory, and staging or half-removed paths in the store.
func (d *Device) removeLeftovers() {
	d.st.RemoveLeftovers()
	ents, _ := os.ReadDir(d.c.Store)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".otter-") {
			fsutil.RemoveAll(filepath.Join(d.c.Store, e.Name()))
		}
	}
}

// testHook, when set, runs at every named point of an update and a gc.
var testHook func(point string)

// SetTestHook makes fn run at each named point of an update or a gc
// (docs/device.md: phase-fetch, fetched, …, committed, renamed.otter-gc-),
// for power-loss tests that kill the process there. nil, the default,
// does nothing; the otter binary never sets it.
func SetTestHook(fn func(point string)) { testHook, state.Hook = fn, fn }

func crashPoint(name string) {
	if testHook != nil {
		testHook(name)
	}
}
