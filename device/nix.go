package device

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/otter-fleet/otter/nix"
	"github.com/otter-fleet/otter/state"
)

// A device whose store Nix owns (docs/device.md, "Devices with Nix and
// NixOS"): every path otter builds is registered as valid before a
// generation names it, otter's generations are the generations of a Nix
// profile (so Nix's garbage collector keeps them), otter gc deletes
// through Nix, and a release that is a NixOS system is activated the way
// nixos-rebuild does it.

// Mode says whether otter works with Nix's database: "nix" or "plain".
func (d *Device) Mode() string {
	if d.c.Nix != nil {
		return "nix"
	}
	return "plain"
}

func (d *Device) profile() string {
	if d.c.NixProfile != "" {
		return d.c.NixProfile
	}
	return d.c.Nix.ProfilePath("otter")
}

// nixCheck refuses a closure whose paths Nix holds with other NAR hashes,
// before anything is written.
func (d *Device) nixCheck(ctx context.Context, c *nix.Closure) error {
	if d.c.Nix == nil {
		return nil
	}
	return d.c.Nix.Check(ctx, c)
}

// nixRegister makes every path of the closure valid (each checked against
// its NAR hash on disk first).
func (d *Device) nixRegister(ctx context.Context, c *nix.Closure) error {
	if d.c.Nix == nil {
		return nil
	}
	return d.c.Nix.Register(ctx, c)
}

// syncProfile makes the otter profile's generations those of the kept
// otter generations, and its current generation the current one's: a
// generation otter has is added (nix-env --set), one it no longer has is
// deleted.
func (d *Device) syncProfile(ctx context.Context) error {
	if d.c.Nix == nil {
		return nil
	}
	db, profile := d.c.Nix, d.profile()
	gens, err := d.st.Generations()
	if err != nil {
		return err
	}
	cur, err := d.st.Current()
	if err != nil {
		return err
	}
	roots := map[string]bool{}
	var curRoot string
	for _, n := range gens {
		g, err := d.st.Load(n)
		if err != nil {
			return err
		}
		roots[g.Root] = true
		if n == cur {
			curRoot = g.Root
		}
	}
	have, err := db.Generations(profile)
	if err != nil {
		return err
	}
	in := map[string]int{}
	for _, g := range have {
		in[g.Path] = g.Number
	}
	for _, n := range gens {
		g, err := d.st.Load(n)
		if err != nil {
			return err
		}
		if _, ok := in[g.Root]; ok {
			continue
		}
		if err := db.Set(ctx, profile, g.Root); err != nil {
			return err
		}
		if have, err = db.Generations(profile); err != nil {
			return err
		}
		in[g.Root] = have[len(have)-1].Number
	}
	if curRoot != "" {
		if err := db.SwitchTo(ctx, profile, in[curRoot]); err != nil {
			return err
		}
	}
	var drop []int
	for _, g := range have {
		if !roots[g.Path] && g.Path != curRoot {
			drop = append(drop, g.Number)
		}
	}
	if err := db.DeleteGenerations(ctx, profile, drop); err != nil {
		return err
	}
	// nix-collect-garbage -d deletes a profile's old generations: each
	// kept generation is also a root of its own, gcroots/otter/N.
	byNumber := map[int]string{}
	for _, n := range gens {
		g, err := d.st.Load(n)
		if err != nil {
			return err
		}
		byNumber[n] = g.Root
	}
	return db.SetRoots("otter", byNumber)
}

// nixosScript is the activation script of a NixOS system release root,
// on disk; "" when the root is no NixOS system.
func (d *Device) nixosScript(root string) string {
	if d.c.Nix == nil || root == "" {
		return ""
	}
	p := filepath.Join(d.c.Store, filepath.Base(root), "bin", "switch-to-configuration")
	if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
		return p
	}
	return ""
}

// setSystem points the NixOS system profile at root: the generation that
// names it, else a new one.
func (d *Device) setSystem(ctx context.Context, root string) error {
	db := d.c.Nix
	profile := db.ProfilePath("system")
	gens, err := db.Generations(profile)
	if err != nil {
		return err
	}
	for _, g := range gens {
		if g.Path == root {
			return db.SwitchTo(ctx, profile, g.Number)
		}
	}
	return db.Set(ctx, profile, root)
}

// dropSystem deletes the system profile's generations that name root
// (a release that failed), unless current.
func (d *Device) dropSystem(ctx context.Context, root string) error {
	db := d.c.Nix
	profile := db.ProfilePath("system")
	gens, err := db.Generations(profile)
	if err != nil || len(gens) == 0 {
		return err
	}
	cur, _ := os.Readlink(profile)
	var drop []int
	for _, g := range gens {
		if g.Path == root && !strings.HasSuffix(cur, fmt.Sprintf("-%d-link", g.Number)) {
			drop = append(drop, g.Number)
		}
	}
	return db.DeleteGenerations(ctx, profile, drop)
}

// nixosActivate activates generation g, if it is a NixOS system, the way
// nixos-rebuild test does: the system profile names it, then
// switch-to-configuration test.
func (d *Device) nixosActivate(ctx context.Context, g *Generation) error {
	script := d.nixosScript(g.Root)
	if script == "" {
		return nil
	}
	if err := d.setSystem(ctx, g.Root); err != nil {
		return err
	}
	return d.run(ctx, []string{script, "test"}, g.Number)
}

// nixosCommit makes generation n, if it is a NixOS system that passed its
// health check, the one that boots: switch-to-configuration boot (or
// switch, NixOSSwitch).
func (d *Device) nixosCommit(ctx context.Context, n int) error {
	g, err := d.loadGeneration(n)
	if err != nil {
		return err
	}
	script := d.nixosScript(g.Root)
	if script == "" {
		return nil
	}
	mode := d.c.NixOSSwitch
	if mode == "" {
		mode = "boot"
	}
	return d.run(ctx, []string{script, mode}, n)
}

// nixGC, on a Nix store, leaves the otter profile with the kept
// generations and deletes, through Nix, those of the removed generations'
// paths that nothing roots any more: never a path another user of the
// store holds, and Nix's database never names a path that is gone.
func (d *Device) nixGC(ctx context.Context, candidates []string, live map[string]bool) ([]string, error) {
	if err := d.syncProfile(ctx); err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	var paths []string
	for _, p := range candidates {
		if !live[filepath.Base(p)] && !seen[p] {
			seen[p] = true
			paths = append(paths, p)
		}
	}
	collected, err := d.c.Nix.Delete(ctx, paths)
	if collected == nil {
		collected = []string{}
	}
	return collected, err
}

// nixRegisterPresent registers those of the paths that are complete in
// the store but not valid; a path whose content is not its NAR hash is
// removed instead (it never is: paths appear only by rename after their
// hash was checked).
func (d *Device) nixRegisterPresent(ctx context.Context, paths []nix.PathInfo) error {
	if d.c.Nix == nil || len(paths) == 0 {
		return nil
	}
	var names []string
	for _, p := range paths {
		names = append(names, p.Path)
	}
	valid, err := d.c.Nix.Valid(ctx, names)
	if err != nil {
		return err
	}
	var reg []nix.PathInfo
	for _, p := range paths {
		if _, ok := valid[p.Path]; ok {
			continue
		}
		on := filepath.Join(d.c.Store, nix.BaseName(p.Path))
		if _, err := os.Lstat(on); err != nil {
			continue
		}
		if h, size, err := nix.HashPath(on); err != nil || h != p.NarHash || size != p.NarSize {
			if err := state.RemoveRenamed(d.c.Store, nix.BaseName(p.Path), ".otter-gc-"); err != nil {
				return err
			}
			continue
		}
		reg = append(reg, p)
	}
	return d.c.Nix.RegisterPaths(ctx, reg)
}
