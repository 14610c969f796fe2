// Package diff says what an update from one release to another costs, and
// why: for every store path of the two closures whether it is unchanged,
// renamed only (it differs only in the store paths it names: a dependency
// changed), changed, added or removed; for every renamed or changed path
// the dependency changes that explain it, found by walking the
// references; and the bytes: NAR and layer size per path, each path's
// share of otter's patch, and the totals of the patch, the missing layers
// and Nix substitution.
package diff

import (
	"sort"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/otter-fleet/otter/bundle"
	"github.com/otter-fleet/otter/delta"
	"github.com/otter-fleet/otter/nix"
)

// Statuses of a store path.
const (
	Unchanged = "unchanged"
	Renamed   = "renamed"
	Changed   = "changed"
	Added     = "added"
	Removed   = "removed"
)

// Side is one release: its closure and the compressed size of each
// path's layer.
type Side struct {
	Closure *nix.Closure
	Layers  map[string]int64 // store path → layer bytes
}

// SideOf is the side of the bundle img with config cfg.
func SideOf(img v1.Image, cfg *bundle.Config) (Side, error) {
	m, err := img.Manifest()
	if err != nil {
		return Side{}, err
	}
	side := Side{Closure: cfg.Closure(), Layers: map[string]int64{}}
	for i, l := range m.Layers {
		if i < len(cfg.Paths) {
			side.Layers[cfg.Paths[i].Path] = l.Size
		}
	}
	return side, nil
}

// Path is one store path of either release.
type Path struct {
	Path    string `json:"path"`
	Name    string `json:"name"`
	Version string `json:"version,omitempty"`
	Status  string `json:"status"`
	// From is the old path it replaces (renamed or changed), with its
	// version.
	From        string `json:"from,omitempty"`
	FromVersion string `json:"fromVersion,omitempty"`
	NarSize     int64  `json:"narSize"`
	LayerSize   int64  `json:"layerSize"`
	// PatchBytes is its share of the patch (an estimate per path; the
	// total is exact).
	PatchBytes int64   `json:"patchBytes"`
	Causes     []Cause `json:"causes,omitempty"`
}

// Cause is a dependency change that explains why a path changed: the
// dependency, its versions, and the renamed paths between (Via, nearest
// first).
type Cause struct {
	Name        string   `json:"name"`
	Path        string   `json:"path"`
	FromVersion string   `json:"fromVersion,omitempty"`
	Version     string   `json:"version,omitempty"`
	Via         []string `json:"via,omitempty"`
}

// String says it the way a person reads it: "openssl 3.0.17 → 3.0.20,
// via python3".
func (c Cause) String() string {
	s := c.Name
	switch {
	case c.FromVersion != "" && c.FromVersion != c.Version:
		s += " " + c.FromVersion + " → " + c.Version
	case c.FromVersion == "" && c.Version != "":
		s += " " + c.Version + " (new)"
	default:
		s += " (rebuilt, same version)"
	}
	if len(c.Via) > 0 {
		s += ", via " + strings.Join(c.Via, ", ")
	}
	return s
}

// Totals are what the update costs a device.
type Totals struct {
	Paths    map[string]int `json:"paths"` // by status
	Patch    int64          `json:"patch"`
	Layers   int64          `json:"missingLayers"`
	NarBytes int64          `json:"nixSubstitutionNar"` // NAR bytes of the new paths
}

// Result is the diff of two releases.
type Result struct {
	Paths  []Path `json:"paths"`
	Totals Totals `json:"totals"`
}

// Compare diffs two releases with what the patch between them says
// (stats; its per-path entries tell renamed from changed).
func Compare(from, to Side, stats *delta.Stats) *Result {
	res := &Result{Totals: Totals{Paths: map[string]int{}, Patch: stats.Size}}
	per := map[string]delta.PathStats{}
	bases := map[string]bool{}
	for _, p := range stats.Paths {
		per[p.Path] = p
		if p.Base != "" {
			bases[p.Base] = true
		}
	}
	status := map[string]*Path{}
	for _, p := range to.Closure.Paths {
		name, version := nix.ParseName(p.Path)
		dp := &Path{Path: p.Path, Name: name, Version: version, NarSize: p.NarSize, LayerSize: to.Layers[p.Path]}
		switch ps, isNew := per[p.Path]; {
		case from.Closure.Lookup(p.Path) != nil:
			dp.Status = Unchanged
		case !isNew || ps.Base == "":
			dp.Status = Added
		default:
			dp.From = ps.Base
			_, dp.FromVersion = nix.ParseName(ps.Base)
			dp.Status = Changed
			if ps.Renamed {
				dp.Status = Renamed
			}
		}
		if dp.Status != Unchanged {
			dp.PatchBytes = per[p.Path].Bytes
			res.Totals.Layers += dp.LayerSize
			res.Totals.NarBytes += dp.NarSize
		}
		status[p.Path] = dp
	}
	for _, p := range to.Closure.Paths {
		dp := status[p.Path]
		if dp.Status == Renamed || dp.Status == Changed {
			dp.Causes = causes(to.Closure, status, p.Path)
		}
		res.Paths = append(res.Paths, *dp)
	}
	for _, p := range from.Closure.Paths {
		if to.Closure.Lookup(p.Path) == nil && !bases[p.Path] {
			name, version := nix.ParseName(p.Path)
			res.Paths = append(res.Paths, Path{Path: p.Path, Name: name, FromVersion: version, Status: Removed, NarSize: p.NarSize, LayerSize: from.Layers[p.Path]})
		}
	}
	for _, p := range res.Paths {
		res.Totals.Paths[p.Status]++
	}
	sort.SliceStable(res.Paths, func(i, j int) bool { return order[res.Paths[i].Status] < order[res.Paths[j].Status] })
	return res
}

var order = map[string]int{Changed: 0, Renamed: 1, Added: 2, Removed: 3, Unchanged: 4}

// causes walks the references of path in the new closure: a changed or
// added dependency is a cause; a renamed one is passed through (Via).
// A changed path is its own first cause.
func causes(c *nix.Closure, status map[string]*Path, path string) []Cause {
	var out []Cause
	seen := map[string]bool{}
	if dp := status[path]; dp.Status == Changed {
		out = append(out, Cause{Name: dp.Name, Path: path, FromVersion: dp.FromVersion, Version: dp.Version})
		seen[path] = true
	}
	type item struct {
		path string
		via  []string
	}
	queue := []item{{path: path}}
	visited := map[string]bool{path: true}
	for len(queue) > 0 {
		it := queue[0]
		queue = queue[1:]
		info := c.Lookup(it.path)
		if info == nil {
			continue
		}
		for _, r := range info.References {
			if visited[r] {
				continue
			}
			visited[r] = true
			dp := status[r]
			if dp == nil {
				continue
			}
			switch dp.Status {
			case Changed, Added:
				if !seen[r] {
					seen[r] = true
					out = append(out, Cause{Name: dp.Name, Path: r, FromVersion: dp.FromVersion, Version: dp.Version, Via: it.via})
				}
			case Renamed:
				queue = append(queue, item{path: r, via: append(append([]string{}, it.via...), dp.Name)})
			}
		}
	}
	return out
}
