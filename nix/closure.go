package nix

import (
	"errors"
	"fmt"
	"sort"
)

// ErrNotClosed is returned when a store path refers to one the closure lacks.
var ErrNotClosed = errors.New("nix: closure is not closed")

// ErrNotInClosure is returned when the root is not among the paths.
var ErrNotInClosure = errors.New("nix: root is not in the path-info")

// MissingReferenceError names the reference a closure lacks.
type MissingReferenceError struct {
	Path, Reference string
}

func (e *MissingReferenceError) Error() string {
	return fmt.Sprintf("closure is not closed: %s refers to %s, which the path-info does not list", e.Path, e.Reference)
}

func (e *MissingReferenceError) Unwrap() error { return ErrNotClosed }

// Closure is a root store path and every path it refers to, directly or
// not, sorted by path.
type Closure struct {
	Root  string
	Paths []PathInfo
}

// NewClosure selects the closure of root from infos. Every reference must
// be listed: otherwise the error is a *MissingReferenceError.
func NewClosure(root string, infos []PathInfo) (*Closure, error) {
	if err := ValidateStorePath(root); err != nil {
		return nil, err
	}
	byPath := make(map[string]*PathInfo, len(infos))
	for i := range infos {
		byPath[infos[i].Path] = &infos[i]
	}
	if byPath[root] == nil {
		return nil, fmt.Errorf("%w: %s", ErrNotInClosure, root)
	}
	seen := map[string]bool{root: true}
	queue := []string{root}
	var out []PathInfo
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		info := byPath[p]
		out = append(out, *info)
		for _, ref := range info.References {
			if byPath[ref] == nil {
				return nil, &MissingReferenceError{Path: p, Reference: ref}
			}
			if !seen[ref] {
				seen[ref] = true
				queue = append(queue, ref)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return &Closure{Root: root, Paths: out}, nil
}

// Lookup returns the path-info of p, or nil.
func (c *Closure) Lookup(p string) *PathInfo {
	i := sort.Search(len(c.Paths), func(i int) bool { return c.Paths[i].Path >= p })
	if i < len(c.Paths) && c.Paths[i].Path == p {
		return &c.Paths[i]
	}
	return nil
}

// NarSize is the sum of the closure's NAR sizes.
func (c *Closure) NarSize() int64 {
	var n int64
	for _, p := range c.Paths {
		n += p.NarSize
	}
	return n
}
