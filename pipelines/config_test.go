package pipelines

import (
	"errors"
	"strings"
	"testing"
)

const goodFile = `version: 1
registry: registry.example.com/fleet
channels: [stable, beta]
release: 7
targets:
  - name: system
    flake: .#packages.aarch64-linux.system
  - name: tools
    store:
      dir: ./out
      pathInfo: ./out/path-info.json
      root: /nix/store/0y390ij55hpd40083gz3zn63i3q6snm5-system-r1
signing:
  key: env://OTTER_RELEASE_KEY
patches:
  from: 2
image:
  target: system
  bootFiles: ./firmware
  out: sd.img
`

func TestParseReleaseFile(t *testing.T) {
	rf, err := ParseReleaseFile("otter.yaml", []byte(goodFile))
	if err != nil {
		t.Fatal(err)
	}
	if rf.Release != 7 || len(rf.Targets) != 2 || rf.Targets[0].System != "aarch64-linux" || rf.Patches.MaxShare != 0.6 ||
		rf.Signing.Expires != "30d" || rf.Image.Board != "rpi4" || rf.Targets[1].Store.Root == "" {
		t.Fatalf("parsed %+v", rf)
	}
}

// TestReleaseFileErrors: each mistake names the file, the line and the
// field.
func TestReleaseFileErrors(t *testing.T) {
	for _, tc := range []struct {
		name, old, new, want string
	}{
		{"unknown field", "release: 7\n", "release: 7\nrelaese: 8\n", "otter.yaml:5: unknown field relaese"},
		{"wrong type", "release: 7", "release: seven", "otter.yaml:4: release: cannot unmarshal"},
		{"no key", "  key: env://OTTER_RELEASE_KEY\n", "  expires: 30d\n", "otter.yaml:13: signing.key: a key file"},
		{"two sources", "    flake: .#packages.aarch64-linux.system\n", "    flake: .#x\n    file: default.nix\n", "otter.yaml:6: targets[0]: exactly one of"},
		{"bad root", "/nix/store/0y390ij55hpd40083gz3zn63i3q6snm5-system-r1", "/tmp/x", "otter.yaml:12: targets[1].store.root:"},
		{"bad channel", "[stable, beta]", "[stable, 'no spaces']", "otter.yaml:3: channels[1]:"},
		{"image of nothing", "  target: system\n", "  target: nothing\n", "otter.yaml:18: image.target: \"nothing\" names no target"},
		{"duplicate target", "  - name: tools", "  - name: system", "otter.yaml:8: targets[1].name: \"system\" appears twice"},
		{"bad version", "version: 1", "version: 2", "otter.yaml:1: version: must be 1"},
		{"not yaml", "targets:", "targets: [", "otter.yaml:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if !strings.Contains(goodFile, tc.old) {
				t.Fatalf("test case does not apply: %q", tc.old)
			}
			_, err := ParseReleaseFile("otter.yaml", []byte(strings.Replace(goodFile, tc.old, tc.new, 1)))
			if !errors.Is(err, ErrReleaseFile) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
		})
	}
}

func FuzzParseReleaseFile(f *testing.F) {
	f.Add([]byte(goodFile))
	f.Add([]byte("version: 1\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		rf, err := ParseReleaseFile("f.yaml", data)
		if err == nil && (rf.Version != 1 || len(rf.Targets) == 0 || rf.Signing.Key == "") {
			t.Fatalf("accepted an invalid file: %+v", rf)
		}
		if err != nil && !errors.Is(err, ErrReleaseFile) {
			t.Fatalf("error without ErrReleaseFile: %v", err)
		}
	})
}
