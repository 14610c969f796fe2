// Package nixdb makes otter a good citizen of a store that Nix owns: a
// store directory with a Nix database beside it (STORE/../var/nix/db, as
// /nix/store has /nix/var/nix/db, and as chroot stores made with
// `nix-store --store ROOT` have). Through Nix's own commands only (it
// never writes Nix's SQLite), it asks which paths are valid, registers the
// paths otter installs (nix-store --load-db, which Nix 2.8 and current
// Nix both accept, also for chroot stores), keeps otter's generations as
// generations of a Nix profile so that Nix's garbage collector keeps them,
// and deletes paths through Nix.
//
// Every command runs under a timeout: a database another Nix process
// holds makes otter wait that long, then stop with ErrBusy.
package nixdb

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/otter-fleet/otter/nix"
)

// Errors of the Nix database.
var (
	// ErrNoNix is returned when a store has a Nix database but no Nix
	// commands can be found to use it.
	ErrNoNix = errors.New("nixdb: the store has a Nix database, but nix-store is not installed")
	// ErrBusy is returned when Nix did not answer within the timeout:
	// another Nix process holds the database.
	ErrBusy = errors.New("nixdb: the Nix database is busy")
	// ErrConflict is returned for a path Nix holds as valid with another
	// NAR hash than the release's: nothing is overwritten.
	ErrConflict = errors.New("nixdb: Nix holds the path with another NAR hash")
	// ErrNix is returned when a Nix command fails.
	ErrNix = errors.New("nixdb: a Nix command failed")
)

// Detect reports whether store has a Nix database beside it.
func Detect(store string) bool {
	fi, err := os.Stat(filepath.Join(store, "..", "var", "nix", "db"))
	return err == nil && fi.IsDir()
}

// DB is the Nix database of one store.
type DB struct {
	store string // the store directory on disk
	root  string // the chroot root, "" when the store is /nix/store
	// Timeout bounds every Nix command (default 2 minutes).
	Timeout time.Duration
}

// Open returns the database of store. store/../var/nix/db must exist
// (Detect) and nix-store be on PATH.
func Open(store string) (*DB, error) {
	abs, err := filepath.Abs(store)
	if err != nil {
		return nil, err
	}
	if _, err := exec.LookPath("nix-store"); err != nil {
		return nil, ErrNoNix
	}
	db := &DB{store: abs, Timeout: 2 * time.Minute}
	if abs != nix.StoreDir {
		if filepath.Base(abs) != "store" || filepath.Base(filepath.Dir(abs)) != "nix" {
			return nil, fmt.Errorf("%w: a chroot store must be ROOT/nix/store, not %s", ErrNix, abs)
		}
		db.root = filepath.Dir(filepath.Dir(abs))
	}
	return db, nil
}

// StateDir is Nix's state directory for this store (/nix/var/nix).
func (db *DB) StateDir() string { return filepath.Join(db.store, "..", "var", "nix") }

// ProfilePath is the path on disk of the profile of the given name in
// Nix's profiles directory.
func (db *DB) ProfilePath(name string) string {
	return filepath.Join(db.StateDir(), "profiles", name)
}

// run runs a Nix command against this store and returns its stdout.
func (db *DB) run(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, db.Timeout)
	defer cancel()
	if db.root != "" {
		args = append([]string{"--store", db.root}, args...)
	}
	cmd := exec.CommandContext(ctx, name, args...)
	// The state directory of a chroot store is its own, so that a
	// profile operation never touches the machine's.
	cmd.Env = append(os.Environ(), "NIX_STATE_DIR="+filepath.Clean(db.StateDir()))
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.WaitDelay = time.Second
	err := cmd.Run()
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return nil, fmt.Errorf("%w: %s %s did not finish within %v (another Nix process holds the database?)", ErrBusy, name, strings.Join(args, " "), db.Timeout)
	}
	if err != nil {
		msg := strings.TrimSpace(errb.String())
		if len(msg) > 800 {
			msg = msg[len(msg)-800:]
		}
		return out.Bytes(), fmt.Errorf("%w: %s %s: %v: %s", ErrNix, name, strings.Join(args, " "), err, msg)
	}
	return out.Bytes(), nil
}

// Valid returns the NAR hashes of those of paths that Nix holds as valid.
func (db *DB) Valid(ctx context.Context, paths []string) (map[string]nix.Hash, error) {
	out := map[string]nix.Hash{}
	if len(paths) == 0 {
		return out, nil
	}
	raw, err := db.run(ctx, nil, "nix", append([]string{"--extra-experimental-features", "nix-command", "path-info", "--json"}, paths...)...)
	if err != nil && len(raw) == 0 {
		return nil, err
	}
	var list []struct {
		Path    string `json:"path"`
		Valid   *bool  `json:"valid"`
		NarHash string `json:"narHash"`
	}
	if err := json.Unmarshal(raw, &list); err != nil {
		// Newer Nix: an object keyed by path, null for invalid paths.
		var obj map[string]*struct {
			NarHash string `json:"narHash"`
		}
		if err2 := json.Unmarshal(raw, &obj); err2 != nil {
			return nil, fmt.Errorf("%w: nix path-info --json: %v", ErrNix, err)
		}
		for p, v := range obj {
			if v != nil {
				list = append(list, struct {
					Path    string `json:"path"`
					Valid   *bool  `json:"valid"`
					NarHash string `json:"narHash"`
				}{Path: p, NarHash: v.NarHash})
			}
		}
	}
	for _, e := range list {
		if e.Valid != nil && !*e.Valid {
			continue
		}
		h, err := nix.ParseHash(e.NarHash)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrNix, e.Path, err)
		}
		out[e.Path] = h
	}
	return out, nil
}

// Check refuses a closure whose paths Nix holds with other NAR hashes.
func (db *DB) Check(ctx context.Context, c *nix.Closure) error {
	var paths []string
	for _, p := range c.Paths {
		if _, err := os.Lstat(filepath.Join(db.store, nix.BaseName(p.Path))); err == nil {
			paths = append(paths, p.Path)
		}
	}
	valid, err := db.Valid(ctx, paths)
	if err != nil {
		return err
	}
	for _, p := range c.Paths {
		if h, ok := valid[p.Path]; ok && h != p.NarHash {
			return fmt.Errorf("%w: %s is valid with NAR hash %s, the release says %s", ErrConflict, p.Path, h, p.NarHash)
		}
	}
	return nil
}

// Register makes the closure's paths valid in Nix's database, with the
// NAR hash, size and references the closure (the signed config) gives,
// and no deriver. Paths Nix already holds are left as they are (one with
// another hash is ErrConflict); every other path must be in the store
// with exactly the closure's NAR hash, which Register checks first.
func (db *DB) Register(ctx context.Context, c *nix.Closure) error {
	return db.RegisterPaths(ctx, c.Paths)
}

// RegisterPaths registers the given paths as Register does; their
// references must be valid or among them.
func (db *DB) RegisterPaths(ctx context.Context, infos []nix.PathInfo) error {
	if len(infos) == 0 {
		return nil
	}
	var paths []string
	for _, p := range infos {
		paths = append(paths, p.Path)
	}
	valid, err := db.Valid(ctx, paths)
	if err != nil {
		return err
	}
	var in bytes.Buffer
	n := 0
	for _, p := range infos {
		if h, ok := valid[p.Path]; ok {
			if h != p.NarHash {
				return fmt.Errorf("%w: %s is valid with NAR hash %s, the release says %s", ErrConflict, p.Path, h, p.NarHash)
			}
			continue
		}
		// A registered path with wrong content must never exist: what is
		// on disk is hashed before Nix is told it is valid.
		h, size, err := nix.HashPath(filepath.Join(db.store, nix.BaseName(p.Path)))
		if err != nil {
			return fmt.Errorf("%w: %s: %v", ErrNix, p.Path, err)
		}
		if h != p.NarHash || size != p.NarSize {
			return fmt.Errorf("%w: %s on disk has NAR hash %s, the release says %s; not registered", ErrConflict, p.Path, h, p.NarHash)
		}
		refs := append([]string{}, p.References...)
		sort.Strings(refs)
		// The closureInfo "registration" format: path, hash, size,
		// deriver, the number of references, the references.
		fmt.Fprintf(&in, "%s\n%s\n%d\n\n%d\n", p.Path, p.NarHash, p.NarSize, len(refs))
		for _, r := range refs {
			fmt.Fprintf(&in, "%s\n", r)
		}
		n++
	}
	if n == 0 {
		return nil
	}
	_, err = db.run(ctx, in.Bytes(), "nix-store", "--load-db")
	return err
}

// Generation is one generation of a profile.
type Generation struct {
	Number int
	Path   string // the store path it names
}

// Generations lists the generations of the profile at path, oldest first.
func (db *DB) Generations(profile string) ([]Generation, error) {
	dir, base := filepath.Split(profile)
	ents, err := os.ReadDir(dir)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, nil
		}
		return nil, err
	}
	var out []Generation
	for _, e := range ents {
		rest, ok := strings.CutPrefix(e.Name(), base+"-")
		if !ok {
			continue
		}
		num, ok := strings.CutSuffix(rest, "-link")
		n, err := strconv.Atoi(num)
		if !ok || err != nil || n < 1 {
			continue
		}
		t, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, err
		}
		out = append(out, Generation{Number: n, Path: t})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Number < out[j].Number })
	return out, nil
}

// Set makes path a new generation of the profile and switches it there
// (nix-env --set): a root Nix's garbage collector keeps.
func (db *DB) Set(ctx context.Context, profile, path string) error {
	_, err := db.run(ctx, nil, "nix-env", "-p", profile, "--set", path)
	return err
}

// SwitchTo switches the profile to generation n.
func (db *DB) SwitchTo(ctx context.Context, profile string, n int) error {
	_, err := db.run(ctx, nil, "nix-env", "-p", profile, "--switch-generation", strconv.Itoa(n))
	return err
}

// DeleteGenerations deletes the given generations of the profile; Nix
// refuses to delete the current one.
func (db *DB) DeleteGenerations(ctx context.Context, profile string, gens []int) error {
	if len(gens) == 0 {
		return nil
	}
	args := []string{"-p", profile, "--delete-generations"}
	for _, g := range gens {
		args = append(args, strconv.Itoa(g))
	}
	_, err := db.run(ctx, nil, "nix-env", args...)
	return err
}

// Delete deletes those of paths that nothing roots any more, through Nix
// (so its database never names a path that is gone), and returns them.
func (db *DB) Delete(ctx context.Context, paths []string) ([]string, error) {
	if len(paths) == 0 {
		return nil, nil
	}
	raw, err := db.run(ctx, nil, "nix-store", "--gc", "--print-dead")
	if err != nil {
		return nil, err
	}
	dead := map[string]bool{}
	for _, l := range strings.Split(string(raw), "\n") {
		dead[strings.TrimSpace(l)] = true
	}
	var del []string
	for _, p := range paths {
		if dead[p] {
			del = append(del, p)
		}
	}
	if len(del) == 0 {
		return nil, nil
	}
	sort.Strings(del)
	if _, err := db.run(ctx, nil, "nix-store", append([]string{"--delete"}, del...)...); err != nil {
		return nil, err
	}
	return del, nil
}

// SetRoots makes the garbage-collector roots in gcroots/<dir> exactly
// one symlink per entry of roots, named by its key, to the store path it
// gives: Nix's collector keeps them whatever happens to profiles
// (nix-collect-garbage -d deletes old profile generations). Each link is
// replaced atomically.
func (db *DB) SetRoots(dir string, roots map[int]string) error {
	rd := filepath.Join(db.StateDir(), "gcroots", dir)
	if err := os.MkdirAll(rd, 0o755); err != nil {
		return err
	}
	for n, target := range roots {
		name := filepath.Join(rd, strconv.Itoa(n))
		if cur, err := os.Readlink(name); err == nil && cur == target {
			continue
		}
		tmp := name + ".tmp"
		os.Remove(tmp)
		if err := os.Symlink(target, tmp); err != nil {
			return err
		}
		if err := os.Rename(tmp, name); err != nil {
			return err
		}
	}
	ents, err := os.ReadDir(rd)
	if err != nil {
		return err
	}
	for _, e := range ents {
		n, err := strconv.Atoi(e.Name())
		if _, keep := roots[n]; err == nil && keep {
			continue
		}
		if err := os.Remove(filepath.Join(rd, e.Name())); err != nil {
			return err
		}
	}
	return nil
}
