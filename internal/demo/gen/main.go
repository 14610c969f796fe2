// Command gen writes internal/demo/path-info.json: the path-info of the
// demo closure in the list shape of Nix 2.8, NAR hashes computed from the
// tree demo.Write makes. Run it from the repository root:
//
//	go run ./internal/demo/gen > internal/demo/path-info.json
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/otter-fleet/otter/internal/demo"
	"github.com/otter-fleet/otter/nix"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "gen:", err)
		os.Exit(1)
	}
}

func run() error {
	dir, err := os.MkdirTemp("", "otter-demo-gen-")
	if err != nil {
		return err
	}
	defer func() {
		filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
			if err == nil && fi.IsDir() {
				os.Chmod(p, 0o755)
			}
			return nil
		})
		os.RemoveAll(dir)
	}()
	if err := demo.Write(dir); err != nil {
		return err
	}
	type entry struct {
		Path       string   `json:"path"`
		NarHash    string   `json:"narHash"`
		NarSize    int64    `json:"narSize"`
		References []string `json:"references"`
	}
	var out []entry
	for p, refs := range demo.References() {
		h, n, err := nix.HashPath(filepath.Join(dir, nix.BaseName(p)))
		if err != nil {
			return err
		}
		out = append(out, entry{Path: p, NarHash: h.String(), NarSize: n, References: refs})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", " ")
	return enc.Encode(out)
}
