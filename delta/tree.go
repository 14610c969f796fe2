package delta

import (
	"context"
	"io"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/otter-fleet/otter/bundle"
	"github.com/otter-fleet/otter/nix"
)

// entry is one node of a store path, with a file's contents in memory.
type entry struct {
	Rel    string
	Type   nix.EntryType
	Exec   bool
	Target string // symlinks
	Data   []byte // regular files
}

// tree is a store path's nodes in NAR order.
type tree struct {
	Path    string
	Entries []entry
	byRel   map[string]int
}

func (t *tree) lookup(rel string) *entry {
	if i, ok := t.byRel[rel]; ok {
		return &t.Entries[i]
	}
	return nil
}

// loadTrees reads the store paths of a bundle for which want is true,
// each verified against its layer digest and NAR hash.
func loadTrees(ctx context.Context, img v1.Image, cfg *bundle.Config, want func(string) bool) (map[string]*tree, error) {
	out := map[string]*tree{}
	for i, p := range cfg.Paths {
		if !want(p.Path) {
			continue
		}
		t := &tree{Path: p.Path, byRel: map[string]int{}}
		err := bundle.ReadLayer(ctx, img, cfg, i, func(h *nix.Header, r io.Reader) error {
			e := entry{Rel: h.Path, Type: h.Type, Exec: h.Executable, Target: h.LinkTarget}
			if r != nil {
				data, err := io.ReadAll(r)
				if err != nil {
					return err
				}
				e.Data = data
			}
			t.byRel[e.Rel] = len(t.Entries)
			t.Entries = append(t.Entries, e)
			return nil
		})
		if err != nil {
			return nil, err
		}
		out[p.Path] = t
	}
	return out, nil
}
