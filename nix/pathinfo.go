package nix

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"sort"
	"strings"
)

// StoreDir is the only Nix store directory otter handles.
const StoreDir = "/nix/store"

// ErrStorePath is returned for a string that is not a valid store path.
var ErrStorePath = errors.New("nix: invalid store path")

// ValidateStorePath checks that p is /nix/store/<32-char hash>-<name> with a
// name Nix accepts, so that it is safe to join below a directory.
func ValidateStorePath(p string) error {
	base, ok := strings.CutPrefix(p, StoreDir+"/")
	if !ok {
		return fmt.Errorf("%w: %q is not under %s", ErrStorePath, p, StoreDir)
	}
	return ValidateBaseName(base)
}

// ValidateBaseName checks a store path's last element, <hash>-<name>.
func ValidateBaseName(base string) error {
	if len(base) < 34 || base[32] != '-' {
		return fmt.Errorf("%w: %q has no <hash>-<name> form", ErrStorePath, base)
	}
	for i := 0; i < 32; i++ {
		if !strings.ContainsRune(base32Alphabet, rune(base[i])) {
			return fmt.Errorf("%w: %q has a bad hash character %q", ErrStorePath, base, base[i])
		}
	}
	name := base[33:]
	if len(name) > 211 || name[0] == '.' {
		return fmt.Errorf("%w: bad name %q", ErrStorePath, name)
	}
	for _, c := range []byte(name) {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("+-._?=", c) >= 0
		if !ok {
			return fmt.Errorf("%w: name %q has character %q", ErrStorePath, name, c)
		}
	}
	return nil
}

// BaseName returns the last element of a store path: <hash>-<name>.
func BaseName(p string) string { return strings.TrimPrefix(p, StoreDir+"/") }

// HashPart returns the 32-character hash of a store path.
func HashPart(p string) string { return BaseName(p)[:32] }

// NamePart returns the name of a store path without its hash.
func NamePart(p string) string { return BaseName(p)[33:] }

// ParseName splits a store path's name into package name and version
// as Nix's parseDrvName does: the version starts at the first dash
// followed by a digit ("openssl-3.0.17" is openssl, 3.0.17).
func ParseName(p string) (name, version string) {
	n := NamePart(p)
	for i := 0; i+1 < len(n); i++ {
		if n[i] == '-' && n[i+1] >= '0' && n[i+1] <= '9' {
			return n[:i], n[i+1:]
		}
	}
	return n, ""
}

// PathInfo is what otter needs to know of one valid store path.
type PathInfo struct {
	Path       string   `json:"path"`
	NarHash    Hash     `json:"narHash"`
	NarSize    int64    `json:"narSize"`
	References []string `json:"references"`
}

// rawInfo is one entry as Nix prints it; unknown fields are ignored.
type rawInfo struct {
	Path       string   `json:"path"`
	NarHash    string   `json:"narHash"`
	NarSize    *int64   `json:"narSize"`
	References []string `json:"references"`
	Valid      *bool    `json:"valid"`
}

// ParsePathInfo reads the output of `nix path-info --json [--recursive]`:
// the list Nix 2.8 prints ([{"path": …, …}]) or the object keyed by store
// path of newer Nix ({"/nix/store/…": {…}}). References may be full store
// paths or base names. The result is sorted by path.
func ParsePathInfo(data []byte) ([]PathInfo, error) {
	data = bytes.TrimSpace(data)
	var raws []rawInfo
	switch {
	case len(data) > 0 && data[0] == '[':
		if err := json.Unmarshal(data, &raws); err != nil {
			return nil, fmt.Errorf("path-info list: %w", err)
		}
	case len(data) > 0 && data[0] == '{':
		var m map[string]*rawInfo
		if err := json.Unmarshal(data, &m); err != nil {
			return nil, fmt.Errorf("path-info object: %w", err)
		}
		for p, r := range m {
			if r == nil {
				return nil, fmt.Errorf("path-info: %s is not a valid store path in that store", p)
			}
			r.Path = p
			raws = append(raws, *r)
		}
	default:
		return nil, errors.New("path-info: want a JSON list or object")
	}
	infos := make([]PathInfo, 0, len(raws))
	seen := make(map[string]bool, len(raws))
	for _, r := range raws {
		if r.Valid != nil && !*r.Valid {
			return nil, fmt.Errorf("path-info: %s is not a valid store path in that store", r.Path)
		}
		if err := ValidateStorePath(r.Path); err != nil {
			return nil, fmt.Errorf("path-info: %w", err)
		}
		if seen[r.Path] {
			return nil, fmt.Errorf("path-info: %s listed twice", r.Path)
		}
		seen[r.Path] = true
		h, err := ParseHash(r.NarHash)
		if err != nil {
			return nil, fmt.Errorf("path-info: %s: %w", r.Path, err)
		}
		if r.NarSize == nil || *r.NarSize <= 0 {
			return nil, fmt.Errorf("path-info: %s: missing or invalid narSize", r.Path)
		}
		refs := make([]string, 0, len(r.References))
		for _, ref := range r.References {
			if !strings.HasPrefix(ref, "/") {
				ref = StoreDir + "/" + ref
			}
			if err := ValidateStorePath(ref); err != nil {
				return nil, fmt.Errorf("path-info: reference of %s: %w", r.Path, err)
			}
			refs = append(refs, ref)
		}
		sort.Strings(refs)
		infos = append(infos, PathInfo{Path: r.Path, NarHash: h, NarSize: *r.NarSize, References: refs})
	}
	sort.Slice(infos, func(i, j int) bool { return infos[i].Path < infos[j].Path })
	return infos, nil
}

// QueryClosure asks Nix for the closure of root, a path in the local store.
func QueryClosure(ctx context.Context, root string) ([]PathInfo, error) {
	if _, err := exec.LookPath("nix"); err != nil {
		return nil, fmt.Errorf("nix is not installed (apt-get install nix-bin, or use --store-dir and --path-info): %w", err)
	}
	cmd := exec.CommandContext(ctx, "nix", "--extra-experimental-features", "nix-command",
		"path-info", "--json", "--recursive", root)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("nix path-info --json --recursive %s: %w: %s", root, err, strings.TrimSpace(stderr.String()))
	}
	return ParsePathInfo(out)
}
