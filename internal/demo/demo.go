// Package demo holds the small closure that `otter demo` bundles and that
// unit tests use: three store paths with references between them, a script,
// a symlink and a plain file.
//
// The store tree is written from the table below; path-info.json beside
// this file is its path-info, made by `go run ./internal/demo/gen` and
// checked against real `nix-store --dump` in the tests.
package demo

import (
	"crypto/sha256"
	_ "embed"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/otter-fleet/otter/nix"
)

//go:embed path-info.json
var PathInfoJSON []byte

type file struct {
	path, content string
	exec, symlink bool
}

type storePath struct {
	name  string
	files []file // a single file with path "" is the store path itself
}

// StorePath returns the store path of a demo package. The hash is derived
// from the name, as a stand-in for what Nix would compute.
func StorePath(name string) string { return nix.StoreDir + "/" + storeHash(name) + "-" + name }

// storeHash is a store path's hash part made from key.
func storeHash(key string) string {
	d := sha256.Sum256([]byte("otter-demo\x00" + key))
	var folded [20]byte
	for i, b := range d {
		folded[i%20] ^= b
	}
	return nix.EncodeBase32(folded[:])
}

// Root is the demo closure's root store path.
var Root = StorePath("otter-demo-release-1")

func paths() []storePath { return releasePaths(1) }

// releasePaths is the demo closure of release n. Release 2 changes the
// greeting, which renames every path that depends on it, as a fix in a
// base library does in Nix.
func releasePaths(n int) []storePath {
	v := fmt.Sprint(n)
	greetingName, helloName := "otter-demo-greeting-"+v+".0", "otter-demo-hello-"+v+".0"
	greeting, hello := StorePath(greetingName), StorePath(helloName)
	text := "Hello from a store path, unpacked by otter.\n"
	if n > 1 {
		text = "Hello from release " + v + ", patched by otter.\n"
	}
	return []storePath{
		{name: greetingName, files: []file{
			{path: "share/greeting.txt", content: text},
		}},
		{name: helloName, files: []file{
			{path: "bin/hello", exec: true, content: "#!/bin/sh\nexec cat " + greeting + "/share/greeting.txt\n"},
			{path: "share/doc/hello/README", content: "hello prints a greeting.\n"},
		}},
		{name: "otter-demo-release-" + v, files: []file{
			{path: "bin", symlink: true, content: hello + "/bin"},
			{path: "release.json", content: `{"release":` + v + `,"packages":["` + hello + `"]}` + "\n"},
		}},
	}
}

// WriteRelease writes release n of the demo closure into storeDir and
// returns its closure, NAR hashes computed from what it wrote.
func WriteRelease(storeDir string, n int) (*nix.Closure, error) {
	sps := releasePaths(n)
	if err := writePaths(storeDir, sps); err != nil {
		return nil, err
	}
	var infos []nix.PathInfo
	var prev string
	for _, sp := range sps {
		p := StorePath(sp.name)
		h, size, err := nix.HashPath(filepath.Join(storeDir, nix.BaseName(p)))
		if err != nil {
			return nil, err
		}
		refs := []string{}
		if prev != "" {
			refs = []string{prev}
		}
		infos = append(infos, nix.PathInfo{Path: p, NarHash: h, NarSize: size, References: refs})
		prev = p
	}
	return nix.NewClosure(prev, infos)
}

// Write creates the demo store paths in storeDir with store modes.
func Write(storeDir string) error { return writePaths(storeDir, paths()) }

func writePaths(storeDir string, sps []storePath) error {
	for _, sp := range sps {
		if err := writeAt(storeDir, StorePath(sp.name), sp.files); err != nil {
			return err
		}
	}
	return nil
}

// writeAt writes files as the store path path into storeDir.
func writeAt(storeDir, path string, files []file) error {
	root := filepath.Join(storeDir, nix.BaseName(path))
	var dirs []string
	for _, f := range files {
		p := filepath.Join(root, filepath.FromSlash(f.path))
		for d := filepath.Dir(p); strings.HasPrefix(d, root); d = filepath.Dir(d) {
			dirs = append(dirs, d)
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		var err error
		switch {
		case f.symlink:
			err = os.Symlink(f.content, p)
		case f.exec:
			err = os.WriteFile(p, []byte(f.content), 0o555)
		default:
			err = os.WriteFile(p, []byte(f.content), 0o444)
		}
		if err != nil {
			return fmt.Errorf("demo: %w", err)
		}
	}
	for _, d := range dirs {
		if err := os.Chmod(d, 0o555); err != nil {
			return err
		}
	}
	return nil
}

// Closure returns the demo closure from the embedded path-info.
func Closure() (*nix.Closure, error) {
	infos, err := nix.ParsePathInfo(PathInfoJSON)
	if err != nil {
		return nil, err
	}
	return nix.NewClosure(Root, infos)
}

// References lists each demo path's references, for the generator.
func References() map[string][]string {
	greeting := StorePath("otter-demo-greeting-1.0")
	hello := StorePath("otter-demo-hello-1.0")
	return map[string][]string{
		greeting: {},
		hello:    {greeting},
		Root:     {hello},
	}
}
