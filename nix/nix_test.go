package nix_test

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/otter-fleet/otter/internal/testutil"
	"github.com/otter-fleet/otter/nix"
)

func TestBase32(t *testing.T) {
	empty := sha256.Sum256(nil)
	// nix-hash --type sha256 --to-base32 e3b0c442…b855
	if got := nix.EncodeBase32(empty[:]); got != "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73" {
		t.Fatalf("base-32 of sha256(\"\") = %s", got)
	}
	for i := 0; i < 100; i++ {
		b := make([]byte, 1+i%40)
		rand.Read(b)
		back, err := nix.DecodeBase32(nix.EncodeBase32(b), len(b))
		if err != nil || !bytes.Equal(back, b) {
			t.Fatalf("round trip of %x: %x %v", b, back, err)
		}
	}
	if _, err := nix.DecodeBase32("0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c7e", 32); err == nil {
		t.Fatal("accepted 'e', which is not in Nix's alphabet")
	}
	if _, err := nix.DecodeBase32("zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz", 32); err == nil {
		t.Fatal("accepted excess bits")
	}
}

// TestBase32AgainstNix compares with the real nix-hash.
func TestBase32AgainstNix(t *testing.T) {
	bin, err := exec.LookPath("nix-hash")
	testutil.Require(t, err == nil, "nix-hash (apt-get install nix-bin)")
	for i := 0; i < 5; i++ {
		var h [32]byte
		rand.Read(h[:])
		out, err := exec.Command(bin, "--type", "sha256", "--to-base32", hex.EncodeToString(h[:])).Output()
		if err != nil {
			t.Fatal(err)
		}
		if want := strings.TrimSpace(string(out)); nix.EncodeBase32(h[:]) != want {
			t.Fatalf("%x: otter %s, nix %s", h, nix.EncodeBase32(h[:]), want)
		}
	}
}

func TestParseHashForms(t *testing.T) {
	want, err := nix.ParseHash("sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{
		"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
		"sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",
		want.SRI(),
	} {
		got, err := nix.ParseHash(s)
		if err != nil || got != want {
			t.Errorf("%s: %s %v", s, got, err)
		}
	}
	for _, s := range []string{"md5:abc", "sha256:", "sha256-AAAA", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"} {
		if _, err := nix.ParseHash(s); !errors.Is(err, nix.ErrHashFormat) {
			t.Errorf("%q: want ErrHashFormat, got %v", s, err)
		}
	}
}

// TestDumpMatchesNixStore compares otter's NAR with nix-store --dump byte
// for byte, on the demo closure (script, symlink, nested directories) and
// on a corpus path with ELF files.
func TestDumpMatchesNixStore(t *testing.T) {
	bin, err := exec.LookPath("nix-store")
	testutil.Require(t, err == nil, "nix-store (apt-get install nix-bin)")
	c, store := testutil.DemoStore(t)
	dirs := []string{}
	for _, p := range c.Paths {
		dirs = append(dirs, filepath.Join(store, nix.BaseName(p.Path)))
	}
	if base := os.Getenv("OTTER_CORPUS"); base != "" {
		cc, cstore := testutil.CorpusClosure(t, "r1")
		for _, p := range cc.Paths {
			if strings.Contains(p.Path, "-openssl-") || strings.Contains(p.Path, "-system-") {
				dirs = append(dirs, filepath.Join(cstore, nix.BaseName(p.Path)))
			}
		}
	}
	// A single file and a symlink as whole store paths.
	single := filepath.Join(t.TempDir(), "file")
	os.WriteFile(single, []byte("just a file\n"), 0o555)
	link := filepath.Join(t.TempDir(), "link")
	os.Symlink("/nix/store/somewhere", link)
	dirs = append(dirs, single, link)
	for _, d := range dirs {
		want, err := exec.Command(bin, "--dump", d).Output()
		if err != nil {
			t.Fatalf("nix-store --dump %s: %v", d, err)
		}
		var got bytes.Buffer
		n, err := nix.DumpPath(d, &got)
		if err != nil {
			t.Fatal(err)
		}
		if n != int64(len(want)) || !bytes.Equal(got.Bytes(), want) {
			t.Fatalf("%s: otter's NAR (%d bytes) differs from nix-store --dump (%d bytes)", d, n, len(want))
		}
	}
}

func TestNARWriterRefusesBadSequences(t *testing.T) {
	for _, tc := range []struct {
		name    string
		headers []nix.Header
	}{
		{"first is not root", []nix.Header{{Path: "a", Type: nix.TypeDirectory}}},
		{"out of order", []nix.Header{{Type: nix.TypeDirectory}, {Path: "b", Type: nix.TypeDirectory}, {Path: "a", Type: nix.TypeDirectory}}},
		{"duplicate", []nix.Header{{Type: nix.TypeDirectory}, {Path: "a", Type: nix.TypeSymlink, LinkTarget: "x"}, {Path: "a", Type: nix.TypeSymlink, LinkTarget: "x"}}},
		{"child of a file", []nix.Header{{Type: nix.TypeDirectory}, {Path: "a", Type: nix.TypeRegular}, {Path: "a/b", Type: nix.TypeRegular}}},
		{"dot-dot", []nix.Header{{Type: nix.TypeDirectory}, {Path: "..", Type: nix.TypeDirectory}}},
		{"missing contents", []nix.Header{{Type: nix.TypeDirectory}, {Path: "a", Type: nix.TypeRegular, Size: 3}, {Path: "b", Type: nix.TypeRegular}}},
		{"second root", []nix.Header{{Type: nix.TypeDirectory}, {Type: nix.TypeDirectory}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nw := nix.NewNARWriter(&bytes.Buffer{})
			var err error
			for i := range tc.headers {
				if err = nw.WriteHeader(&tc.headers[i]); err != nil {
					break
				}
			}
			if !errors.Is(err, nix.ErrNARFormat) {
				t.Fatalf("want ErrNARFormat, got %v", err)
			}
		})
	}
	nw := nix.NewNARWriter(&bytes.Buffer{})
	nw.WriteHeader(&nix.Header{Type: nix.TypeRegular, Size: 2})
	if _, err := nw.Write([]byte("abc")); !errors.Is(err, nix.ErrNARFormat) {
		t.Fatalf("contents longer than declared: %v", err)
	}
}

func TestParsePathInfoShapes(t *testing.T) {
	list, err := os.ReadFile("../testdata/nix/pathinfo-list-demo.json")
	if err != nil {
		t.Fatal(err)
	}
	obj, err := os.ReadFile("../testdata/nix/pathinfo-object-demo.json")
	if err != nil {
		t.Fatal(err)
	}
	a, err := nix.ParsePathInfo(list)
	if err != nil {
		t.Fatal(err)
	}
	b, err := nix.ParsePathInfo(obj)
	if err != nil {
		t.Fatal(err)
	}
	if len(a) != 3 || len(a) != len(b) {
		t.Fatalf("%d and %d paths", len(a), len(b))
	}
	for i := range a {
		if a[i].Path != b[i].Path || a[i].NarHash != b[i].NarHash || a[i].NarSize != b[i].NarSize || strings.Join(a[i].References, " ") != strings.Join(b[i].References, " ") {
			t.Fatalf("the two shapes differ at %d: %+v %+v", i, a[i], b[i])
		}
	}
	// Base-name references, as some Nix versions print them.
	base := strings.ReplaceAll(string(list), `"references": [
   "/nix/store/`, `"references": [
   "`)
	if c, err := nix.ParsePathInfo([]byte(base)); err != nil || c[0].References[0] != a[0].References[0] {
		t.Fatalf("base-name references: %v", err)
	}
	for name, bad := range map[string]string{
		"not json":      `nix`,
		"invalid path":  `[{"path":"/tmp/x","narHash":"sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73","narSize":8,"references":[]}]`,
		"no narSize":    `[{"path":"/nix/store/0mdqa9w1p6cmli6976v4wi0sw9r4p5pr-x","narHash":"sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73","references":[]}]`,
		"bad hash":      `[{"path":"/nix/store/0mdqa9w1p6cmli6976v4wi0sw9r4p5pr-x","narHash":"md5:x","narSize":8,"references":[]}]`,
		"invalid entry": `{"/nix/store/0mdqa9w1p6cmli6976v4wi0sw9r4p5pr-x": null}`,
		"bad reference": `[{"path":"/nix/store/0mdqa9w1p6cmli6976v4wi0sw9r4p5pr-x","narHash":"sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73","narSize":8,"references":["../../etc"]}]`,
	} {
		if _, err := nix.ParsePathInfo([]byte(bad)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestClosure(t *testing.T) {
	data, _ := os.ReadFile("../testdata/nix/pathinfo-list-demo.json")
	infos, err := nix.ParsePathInfo(data)
	if err != nil {
		t.Fatal(err)
	}
	// The middle path's closure leaves out the root.
	c, err := nix.NewClosure(infos[1].Path, infos)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Paths) != 2 || c.Lookup(infos[0].Path) != nil || c.Lookup(infos[2].Path) == nil {
		t.Fatalf("closure of %s: %+v", infos[1].Path, c.Paths)
	}
	// Without the greeting, hello's reference dangles.
	_, err = nix.NewClosure(infos[0].Path, infos[:2])
	var mr *nix.MissingReferenceError
	if !errors.As(err, &mr) || !errors.Is(err, nix.ErrNotClosed) || mr.Path != infos[1].Path || mr.Reference != infos[2].Path {
		t.Fatalf("want a MissingReferenceError naming %s -> %s, got %v", infos[1].Path, infos[2].Path, err)
	}
	if _, err := nix.NewClosure("/nix/store/0mdqa9w1p6cmli6976v4wi0sw9r4p5pr-absent", infos); !errors.Is(err, nix.ErrNotInClosure) {
		t.Fatalf("want ErrNotInClosure, got %v", err)
	}
}
