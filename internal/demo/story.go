package demo

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/otter-fleet/otter/nix"
)

// Releases is how many releases the story of `otter demo` has:
//
//  1. the first install: libgreet 1.0 (a base library, like openssl),
//     hello 1.0 and dashboard 2.3, which both link against it;
//  2. an app update: hello 1.1;
//  3. a security fix in the base library: libgreet 1.1, which renames
//     hello and dashboard although neither changed;
//  4. hello 1.2, which fails the release's own self test.
const Releases = 4

// storyPkg is one package of a story release.
type storyPkg struct {
	name, version string
	deps          []string // store paths
	files         []file
}

func (p storyPkg) path() string {
	deps := append([]string(nil), p.deps...)
	sort.Strings(deps)
	// Input-addressed, as in Nix: the name and the dependencies' paths.
	key := "otter-demo-story\x00" + p.name + "-" + p.version
	for _, d := range deps {
		key += "\x00" + d
	}
	return nix.StoreDir + "/" + storeHash(key) + "-" + p.name + "-" + p.version
}

// storyRelease is release n of the story, leaves first.
func storyRelease(n int) ([]storyPkg, error) {
	if n < 1 || n > Releases {
		return nil, fmt.Errorf("demo: the story has releases 1 to %d, not %d", Releases, n)
	}
	libVersion := "1.0"
	if n >= 3 {
		libVersion = "1.1"
	}
	helloVersion := map[int]string{1: "1.0", 2: "1.1", 3: "1.1", 4: "1.2"}[n]

	lib := storyPkg{name: "libgreet", version: libVersion, files: []file{
		{path: "lib/libgreet.so.1", content: string(blob("libgreet", libVersion, 192<<10, nil))},
		{path: "share/greeting.txt", content: "Hello from a store path patched by otter (libgreet " + libVersion + ").\n"},
	}}
	libPath := lib.path()
	hello := storyPkg{name: "hello", version: helloVersion, deps: []string{libPath}}
	script := "#!/bin/sh\n# hello " + helloVersion + ", linked against " + libPath + "\n" +
		"exec cat \"${OTTER_STORE:-" + nix.StoreDir + "}/" + nix.BaseName(libPath) + "/share/greeting.txt\"\n"
	if n == 4 {
		script = "#!/bin/sh\n# hello " + helloVersion + ", linked against " + libPath + "\n" +
			"echo 'hello: cannot read the greeting table' >&2\nexit 1\n"
	}
	hello.files = []file{
		{path: "bin/hello", exec: true, content: script},
		{path: "lib/hello-core.so", content: string(blob("hello", helloVersion, 64<<10, []string{libPath}))},
	}
	dash := storyPkg{name: "dashboard", version: "2.3", deps: []string{libPath}, files: []file{
		{path: "bin/dashboard", exec: true, content: string(blob("dashboard", "2.3", 128<<10, []string{libPath}))},
	}}
	helloPath, dashPath := hello.path(), dash.path()
	root := storyPkg{name: "otter-demo-release", version: fmt.Sprint(n), deps: []string{helloPath, dashPath}, files: []file{
		{path: "bin/hello", symlink: true, content: helloPath + "/bin/hello"},
		{path: "bin/selftest", exec: true, content: "#!/bin/sh\n# The release's own health check: otter runs it after every switch.\n" +
			"out=$(\"${OTTER_STORE:-" + nix.StoreDir + "}/" + nix.BaseName(helloPath) + "/bin/hello\") || exit 1\n" +
			"case $out in Hello*) echo \"selftest: ok: $out\" ;; *) echo \"selftest: unexpected greeting: $out\" >&2; exit 1 ;; esac\n" +
			"# also needs " + dashPath + "\n"},
		{path: "release.json", content: `{"release":` + fmt.Sprint(n) + `,"packages":["` + helloPath + `","` + dashPath + `"]}` + "\n"},
	}}
	return []storyPkg{lib, hello, dash, root}, nil
}

// blob is size bytes that look like a compiled binary to a compressor
// (about half compressible), the same for every version of a package but
// for a few small regions, with each store path in refs written every
// 8 KiB as a linker writes an RPATH.
func blob(name, version string, size int, refs []string) []byte {
	out := make([]byte, 0, size+64)
	words := make([][]byte, 256)
	for i := range words {
		w := sha256.Sum256([]byte(fmt.Sprintf("%s word %d", name, i)))
		words[i] = w[:16]
	}
	var ctr uint64
	next := func(seed string) [32]byte {
		ctr++
		var b [8]byte
		binary.LittleEndian.PutUint64(b[:], ctr)
		return sha256.Sum256(append([]byte(seed), b[:]...))
	}
	for len(out) < size {
		r := next(name)
		out = append(out, words[r[0]]...)
		out = append(out, r[16:32]...)
	}
	out = out[:size]
	// What a version changes: 12 regions of 48 bytes.
	ctr = 0
	for i := 0; i < 12; i++ {
		r := next(name + "\x00" + version)
		off := int(binary.LittleEndian.Uint32(r[:4])) % (size - 64)
		copy(out[off:], r[:])
		r2 := next(name + "\x00" + version)
		copy(out[off+32:], r2[:16])
	}
	copy(out[size/2:], name+" "+version+"\x00")
	for _, ref := range refs {
		for off := 4096; off+len(ref)+1 < size; off += 8192 {
			copy(out[off:], ref+"\x00")
		}
	}
	return out
}

// WriteStory writes release n of the story under dir: its store tree at
// dir/nix/store and its path-info at dir/path-info.json, as a Nix build
// machine would have them. It returns the release's root store path.
func WriteStory(dir string, n int) (string, error) {
	pkgs, err := storyRelease(n)
	if err != nil {
		return "", err
	}
	store := filepath.Join(dir, "nix", "store")
	if err := os.MkdirAll(store, 0o755); err != nil {
		return "", err
	}
	var infos []nix.PathInfo
	for _, p := range pkgs {
		path := p.path()
		if err := writeAt(store, path, p.files); err != nil {
			return "", err
		}
		h, size, err := nix.HashPath(filepath.Join(store, nix.BaseName(path)))
		if err != nil {
			return "", err
		}
		refs := append([]string{}, p.deps...)
		sort.Strings(refs)
		infos = append(infos, nix.PathInfo{Path: path, NarHash: h, NarSize: size, References: refs})
	}
	data, err := json.MarshalIndent(infos, "", "  ")
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, "path-info.json"), append(data, '\n'), 0o644); err != nil {
		return "", err
	}
	return pkgs[len(pkgs)-1].path(), nil
}
