// Package testutil holds what otter's tests share: the release corpus, the
// demo closure on disk, registries, and read-only store trees.
package testutil

import (
	"debug/elf"
	"fmt"
	"io/fs"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/google/go-containerregistry/pkg/registry"

	"github.com/otter-fleet/otter/internal/demo"
	"github.com/otter-fleet/otter/internal/fsutil"
	"github.com/otter-fleet/otter/nix"
)

// Require skips the test when a dependency is missing, or fails it where
// everything must run: under CI (CI set) or with OTTER_REQUIRE_ALL set.
func Require(t testing.TB, ok bool, what string) {
	t.Helper()
	if ok {
		return
	}
	if os.Getenv("CI") != "" || os.Getenv("OTTER_REQUIRE_ALL") != "" {
		t.Fatalf("%s is missing; run the tests through `go tool -modfile=tools/task/go.mod task test`, which sets it up", what)
	}
	t.Skipf("%s is missing; `go tool -modfile=tools/task/go.mod task test` sets it up", what)
}

// Tool returns the path of a command-line tool: from .bin at the
// repository root (where the setup builds pinned tools) or PATH.
func Tool(t testing.TB, name string) string {
	t.Helper()
	if root, err := RepoRoot(); err == nil {
		p := filepath.Join(root, ".bin", name)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	p, err := exec.LookPath(name)
	Require(t, err == nil, "the tool "+name)
	return p
}

// RepoRoot finds the directory holding go.mod.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fs.ErrNotExist
		}
		dir = parent
	}
}

// Corpus returns the directory of a corpus release made by
// ../shared/corpus/generate.py, found through OTTER_CORPUS.
func Corpus(t testing.TB, release string) string {
	t.Helper()
	base := os.Getenv("OTTER_CORPUS")
	dir := filepath.Join(base, release)
	_, err := os.Stat(filepath.Join(dir, "path-info.json"))
	Require(t, base != "" && err == nil, "the corpus release "+release+" (OTTER_CORPUS)")
	return dir
}

// CorpusClosure reads a corpus release's closure and returns it with the
// release's store directory.
func CorpusClosure(t testing.TB, release string) (*nix.Closure, string) {
	t.Helper()
	dir := Corpus(t, release)
	data, err := os.ReadFile(filepath.Join(dir, "path-info.json"))
	if err != nil {
		t.Fatal(err)
	}
	root, err := os.ReadFile(filepath.Join(dir, "root"))
	if err != nil {
		t.Fatal(err)
	}
	infos, err := nix.ParsePathInfo(data)
	if err != nil {
		t.Fatal(err)
	}
	c, err := nix.NewClosure(strings.TrimSpace(string(root)), infos)
	if err != nil {
		t.Fatal(err)
	}
	return c, filepath.Join(dir, "nix", "store")
}

// TempStore returns an empty directory that is removed after the test even
// when it holds read-only store paths.
func TempStore(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "otter-store-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { RemoveAll(dir) })
	return dir
}

// RemoveAll removes a tree, read-only directories included.
func RemoveAll(dir string) { _ = fsutil.RemoveAll(dir) }

// DemoStore writes the demo closure into a new store directory.
func DemoStore(t testing.TB) (*nix.Closure, string) {
	t.Helper()
	store := TempStore(t)
	if err := demo.Write(store); err != nil {
		t.Fatal(err)
	}
	c, err := demo.Closure()
	if err != nil {
		t.Fatal(err)
	}
	return c, store
}

// Registry starts go-containerregistry's in-process registry and returns
// its host:port.
func Registry(t testing.TB, opts ...registry.Option) string {
	t.Helper()
	s := httptest.NewServer(registry.New(append([]registry.Option{registry.Logger(discardLogger())}, opts...)...))
	t.Cleanup(s.Close)
	u, err := url.Parse(s.URL)
	if err != nil {
		t.Fatal(err)
	}
	return u.Host
}

// RealRegistry returns the host:port of the docker-registry process the
// test task starts on loopback (OTTER_TEST_REGISTRY).
func RealRegistry(t testing.TB) string {
	t.Helper()
	host := os.Getenv("OTTER_TEST_REGISTRY")
	Require(t, host != "", "a docker-registry on loopback (OTTER_TEST_REGISTRY)")
	return host
}

var repoCounter atomic.Int64

// Repository returns a repository name no other test of this run uses.
func Repository(t testing.TB) string {
	return fmt.Sprintf("otter-test/%d-%d", os.Getpid(), repoCounter.Add(1))
}

// AddSeeds adds every file matching glob (relative to the test's package)
// to a fuzz test's corpus, and fails if there is none.
func AddSeeds(f *testing.F, glob string) {
	f.Helper()
	seeds, err := filepath.Glob(glob)
	if err != nil || len(seeds) == 0 {
		f.Fatalf("no fuzz seeds match %s (%v)", glob, err)
	}
	for _, s := range seeds {
		data, err := os.ReadFile(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
}

// VerifyStore checks that every path of c is in store with its NAR hash.
func VerifyStore(t testing.TB, c *nix.Closure, store string) {
	t.Helper()
	for _, p := range c.Paths {
		h, n, err := nix.HashPath(filepath.Join(store, nix.BaseName(p.Path)))
		if err != nil {
			t.Fatalf("%s: %v", p.Path, err)
		}
		if h != p.NarHash || n != p.NarSize {
			t.Fatalf("%s: NAR hash %s size %d, want %s size %d", p.Path, h, n, p.NarHash, p.NarSize)
		}
	}
}

// LockBinfmt serialises tests that change the machine's binfmt_misc
// registration (exclusive) against tests that rely on it (shared), across
// test processes, until the test ends.
func LockBinfmt(t testing.TB, exclusive bool) {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(os.TempDir(), "otter-binfmt.lock"), os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		t.Fatal(err)
	}
	how := syscall.LOCK_SH
	if exclusive {
		how = syscall.LOCK_EX
	}
	if err := syscall.Flock(int(f.Fd()), how); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
}

// ArmBusybox returns a directory holding only `busybox`, Debian's static
// arm64 build, taken from the corpus: the builder of testdata/cross.
func ArmBusybox(t testing.TB) string {
	t.Helper()
	matches, _ := filepath.Glob(filepath.Join(Corpus(t, "r1"), "nix", "store", "*-busybox-*", "bin", "busybox"))
	if len(matches) != 1 {
		t.Fatalf("no arm64 busybox in the corpus (%v)", matches)
	}
	data, err := os.ReadFile(matches[0])
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "busybox"), data, 0o555); err != nil {
		t.Fatal(err)
	}
	return dir
}

// Nonce is unique per test run, to make Nix build derivations afresh.
func Nonce() string { return fmt.Sprintf("%d-%d", os.Getpid(), repoCounter.Add(1)) }

// AssertOnlyStorePaths fails if store holds anything but c's paths, such
// as a leftover temporary directory.
func AssertOnlyStorePaths(t testing.TB, store string, c *nix.Closure) {
	t.Helper()
	entries, err := os.ReadDir(store)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if c.Lookup(nix.StoreDir+"/"+e.Name()) == nil {
			t.Errorf("unexpected entry %s in the store", e.Name())
		}
	}
}

// NixChrootStore makes ROOT/nix/store with a Nix database beside it, as
// `nix-store --store ROOT` does, so that Nix tests never touch the
// machine's own store. It needs Debian's nix-bin.
func NixChrootStore(t testing.TB) (root, store string) {
	t.Helper()
	_, err := exec.LookPath("nix-store")
	Require(t, err == nil, "nix-store (Debian's nix-bin)")
	root = TempStore(t)
	store = filepath.Join(root, "nix", "store")
	if err := os.MkdirAll(store, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("nix-store", "--store", root, "--verify").CombinedOutput(); err != nil {
		t.Fatalf("nix-store --verify: %v %s", err, out)
	}
	return root, store
}

// StaticARM64 fails the test unless path is a statically linked aarch64
// ELF executable, as a device runs otter.
func StaticARM64(t testing.TB, path string) {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.Machine != elf.EM_AARCH64 {
		t.Fatalf("%s is a %v binary, not aarch64", path, f.Machine)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Fatalf("%s is dynamically linked", path)
		}
	}
}

// OnePath writes a store path named name into store (a store directory)
// holding files (slash-separated names; "init" and bin/ executable) and
// returns its closure: that one path, without references.
func OnePath(t testing.TB, store, name string, files map[string][]byte) *nix.Closure {
	t.Helper()
	p := demo.StorePath(name)
	root := filepath.Join(store, nix.BaseName(p))
	for rel, data := range files {
		f := filepath.Join(root, filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(f), 0o755); err != nil {
			t.Fatal(err)
		}
		mode := os.FileMode(0o444)
		if rel == "init" || strings.HasPrefix(rel, "bin/") {
			mode = 0o555
		}
		if err := os.WriteFile(f, data, mode); err != nil {
			t.Fatal(err)
		}
	}
	h, size, err := nix.HashPath(root)
	if err != nil {
		t.Fatal(err)
	}
	c, err := nix.NewClosure(p, []nix.PathInfo{{Path: p, NarHash: h, NarSize: size, References: []string{}}})
	if err != nil {
		t.Fatal(err)
	}
	return c
}
