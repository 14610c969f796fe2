// Package state is a device's state directory (docs/device.md §1): the
// numbered generations of installed releases, the current link, the
// journal of an update in progress, how the last one ended, and the
// releases that failed here. It is what an SD-card image carries
// (Provision) and what the device updater reads and changes.
//
// Every change is atomic: a generation is written under a temporary name,
// synced and renamed; current is switched by renaming a new link over it;
// JSON files are replaced whole. Files are never opened through a
// symlink. The package knows nothing of registries, patches or
// signatures: a generation's signed statement is kept as the bytes it
// was verified as.
package state

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/otter-fleet/otter/bundle"
	"github.com/otter-fleet/otter/internal/fsutil"
)

// ErrDamaged is returned for a state directory whose files are not what
// otter writes: a missing or unreadable generation file, a current link
// that names no generation, a symlinked state file.
var ErrDamaged = errors.New("state: state directory is damaged")

// File names in the state directory.
const (
	Journal = "journal.json"
	Last    = "last.json"
	Failed  = "failed.json"
	// Held names the release a staged rollout or a halt holds back, and
	// until when: the agent's cheap check skips it until then.
	Held = "held.json"
	// Trial is a generation staged for a tried boot, until otter confirm
	// (or the boot after a failed try) settles it.
	Trial = "boot-trial.json"
)

// Dir is a state directory.
type Dir struct {
	root    string
	noFsync bool
}

// Open makes sure the state directory root and its generations and
// downloads directories exist. With noFsync nothing is synced (scratch
// devices in tests and benchmarks).
func Open(root string, noFsync bool) (*Dir, error) {
	for _, dir := range []string{root, filepath.Join(root, "generations"), filepath.Join(root, "downloads")} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
	}
	return &Dir{root: root, noFsync: noFsync}, nil
}

// Root is the state directory.
func (s *Dir) Root() string { return s.root }

// Path names p inside the state directory.
func (s *Dir) Path(p ...string) string { return filepath.Join(append([]string{s.root}, p...)...) }

// Generation is one installed release, as its files say.
type Generation struct {
	Number int
	// Digest is the bundle's manifest digest (manifest.json hashes to it).
	Digest string
	// Root is the release's root store path; Config the bundle config.
	Root   string
	Config *bundle.Config
	// Manifest, RawConfig and Envelope are the files as written: the
	// bundle's manifest and config and the signed release statement.
	Manifest, RawConfig, Envelope []byte
}

func (s *Dir) genDir(n int) string { return s.Path("generations", strconv.Itoa(n)) }

// Generations lists the complete generations, oldest first.
func (s *Dir) Generations() ([]int, error) {
	ents, err := os.ReadDir(s.Path("generations"))
	if err != nil {
		return nil, err
	}
	var out []int
	for _, e := range ents {
		if n, err := strconv.Atoi(e.Name()); err == nil && n > 0 && strconv.Itoa(n) == e.Name() {
			out = append(out, n)
		}
	}
	sort.Ints(out)
	return out, nil
}

// Load reads generation n. Its files were checked when it was made; they
// are read back as they are.
func (s *Dir) Load(n int) (*Generation, error) {
	dir := s.genDir(n)
	g := &Generation{Number: n}
	for _, f := range []struct {
		name string
		dst  *[]byte
	}{{"manifest.json", &g.Manifest}, {"config.json", &g.RawConfig}, {"release.json", &g.Envelope}} {
		b, err := ReadFile(filepath.Join(dir, f.name))
		if err != nil {
			return nil, fmt.Errorf("%w: generation %d: %v", ErrDamaged, n, err)
		}
		*f.dst = b
	}
	cfg, err := bundle.ParseConfig(g.RawConfig)
	if err != nil {
		return nil, fmt.Errorf("%w: generation %d: %v", ErrDamaged, n, err)
	}
	digest, _, err := v1.SHA256(bytes.NewReader(g.Manifest))
	if err != nil {
		return nil, err
	}
	g.Digest, g.Root, g.Config = digest.String(), cfg.Root, cfg
	return g, nil
}

// Write makes generation n: manifest, config, signed statement and a
// root link into store (where the device sees its store), written under
// a temporary name, synced, then renamed.
func (s *Dir) Write(n int, store string, manifest, config, envelope []byte) error {
	cfg, err := bundle.ParseConfig(config)
	if err != nil {
		return err
	}
	tmp := s.Path("generations", ".new-"+strconv.Itoa(n))
	if err := fsutil.RemoveAll(tmp); err != nil {
		return err
	}
	if err := os.Mkdir(tmp, 0o755); err != nil {
		return err
	}
	for name, data := range map[string][]byte{"manifest.json": manifest, "config.json": config, "release.json": envelope} {
		if err := fsutil.AtomicWrite(filepath.Join(tmp, name), data, 0o644); err != nil {
			return err
		}
	}
	if err := os.Symlink(filepath.Join(store, filepath.Base(cfg.Root)), filepath.Join(tmp, "root")); err != nil {
		return err
	}
	if err := s.sync(tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, s.genDir(n)); err != nil {
		return err
	}
	return s.sync(s.Path("generations"))
}

// Drop removes generation n unless current names it, by renaming it out
// of the way first (RemoveRenamed).
func (s *Dir) Drop(n int) error {
	if cur, err := s.Current(); err != nil || cur == n {
		return err
	}
	err := RemoveRenamed(s.Path("generations"), strconv.Itoa(n), ".gc-")
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	return s.sync(s.Path("generations"))
}

// Current is the generation the current link names; 0 when none.
func (s *Dir) Current() (int, error) {
	t, err := os.Readlink(s.Path("current"))
	if os.IsNotExist(err) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(filepath.Base(t))
	if err != nil || t != filepath.Join("generations", strconv.Itoa(n)) {
		return 0, fmt.Errorf("%w: current points at %q", ErrDamaged, t)
	}
	return n, nil
}

// Switch points current at generation n (0: no current) atomically: a
// new link renamed over the old one, then the directory synced.
func (s *Dir) Switch(n int) error {
	if n == 0 {
		if err := os.Remove(s.Path("current")); err != nil && !os.IsNotExist(err) {
			return err
		}
		return s.sync(s.root)
	}
	tmp := s.Path(".current.tmp")
	os.Remove(tmp)
	if err := os.Symlink(filepath.Join("generations", strconv.Itoa(n)), tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, s.Path("current")); err != nil {
		return err
	}
	return s.sync(s.root)
}

// RemoveLeftovers deletes what a command cut short left: a generation
// being written or removed, the temporary current link.
func (s *Dir) RemoveLeftovers() {
	ents, _ := os.ReadDir(s.Path("generations"))
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".new-") || strings.HasPrefix(e.Name(), ".gc-") {
			fsutil.RemoveAll(s.Path("generations", e.Name()))
		}
	}
	os.Remove(s.Path(".current.tmp"))
}

func (s *Dir) sync(dir string) error {
	if s.noFsync {
		return nil
	}
	return fsutil.SyncDir(dir)
}

// WriteJSON replaces the state file name atomically.
func (s *Dir) WriteJSON(name string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return fsutil.AtomicWrite(s.Path(name), append(b, '\n'), 0o644)
}

// ReadJSON reads the state file name into v; false when it does not exist.
func (s *Dir) ReadJSON(name string, v any) (bool, error) {
	b, err := ReadFile(s.Path(name))
	if os.IsNotExist(err) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return false, fmt.Errorf("%w: %s: %v", ErrDamaged, name, err)
	}
	return true, nil
}

// Remove removes the state file name, if there.
func (s *Dir) Remove(name string) error {
	if err := os.Remove(s.Path(name)); err != nil && !os.IsNotExist(err) {
		return err
	}
	return s.sync(s.root)
}

// MaxFile bounds what otter reads of one state file.
const MaxFile = 64 << 20

// ReadFile reads a state file, never through a symlink.
func ReadFile(p string) ([]byte, error) {
	f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return nil, fmt.Errorf("%w: %s is a symlink", ErrDamaged, p)
		}
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, MaxFile))
}

// RemoveRenamed removes dir/name by first renaming it to dir/prefix+name,
// out of the names anything reads, then removing that: a removal cut
// short leaves no half-deleted tree under its real name, and the next
// RemoveLeftovers (or the store's) finishes it. hook, if set, runs
// between the two steps (a test's crash point).
func RemoveRenamed(dir, name, prefix string) error {
	tmp := filepath.Join(dir, prefix+name)
	if err := os.Rename(filepath.Join(dir, name), tmp); err != nil {
		return err
	}
	if Hook != nil {
		Hook("renamed" + prefix)
	}
	return fsutil.RemoveAll(tmp)
}

// Hook, when set, runs at the named points of a removal; tests set it to
// kill the process there. The otter binary never sets it.
var Hook func(point string)

// Outcome is how the last update (or rollback) ended: last.json.
type Outcome struct {
	Action string `json:"action"` // update, rollback, recover, provision
	Target string `json:"target,omitempty"`
	From   int    `json:"from"`
	To     int    `json:"to"`
	Result string `json:"result"` // ok, failed, interrupted, rolled-back
	Reason string `json:"reason,omitempty"`
	Time   string `json:"time"`
}

// Record writes o, at time now, as last.json.
func (s *Dir) Record(o Outcome, now time.Time) error {
	o.Time = now.UTC().Truncate(time.Second).Format(time.RFC3339)
	return s.WriteJSON(Last, o)
}

// Provision writes a state directory holding one release as generation
// 1, current: what an SD-card image carries. storeOnDevice is where the
// device will see the store (the generation's root link points there);
// envelope is the release's signed statement. The bundle's own creation
// time is the recorded time, so the same bundle gives the same state.
func Provision(root, storeOnDevice string, manifest, config, envelope []byte) error {
	s, err := Open(root, true)
	if err != nil {
		return err
	}
	cfg, err := bundle.ParseConfig(config)
	if err != nil {
		return err
	}
	created, err := cfg.CreatedTime()
	if err != nil {
		return err
	}
	if err := s.Write(1, storeOnDevice, manifest, config, envelope); err != nil {
		return err
	}
	if err := s.Switch(1); err != nil {
		return err
	}
	return s.Record(Outcome{Action: "provision", From: 0, To: 1, Result: "ok"}, created)
}
