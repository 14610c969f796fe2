package bundle_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/otter-fleet/otter/bundle"
	"github.com/otter-fleet/otter/internal/testutil"
	"github.com/otter-fleet/otter/nix"
)

// bootRoot writes a one-path closure whose root holds files (relative
// path → content; a trailing * makes it executable) and returns it.
func bootRoot(t *testing.T, files map[string]string) (*nix.Closure, string) {
	t.Helper()
	store := testutil.TempStore(t)
	path := "/nix/store/" + strings.Repeat("b", 32) + "-system"
	root := filepath.Join(store, nix.BaseName(path))
	for name, content := range files {
		mode := os.FileMode(0o444)
		if n, ok := strings.CutSuffix(name, "*"); ok {
			name, mode = n, 0o555
		}
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
	}
	h, n, err := nix.HashPath(root)
	if err != nil {
		t.Fatal(err)
	}
	return &nix.Closure{Root: path, Paths: []nix.PathInfo{{Path: path, NarHash: h, NarSize: n, References: []string{}}}}, store
}

// TestBootPart: a root with boot/ and init gets a boot part in the
// config, with boot/'s NAR hash; a release without one has none; the
// convention's breaches are refused at build time.
func TestBootPart(t *testing.T) {
	good := map[string]string{"init*": "#!/bin/sh\n", "boot/Image": "kernel 1", "boot/initrd": "initrd", "boot/dtbs/bcm2711-rpi-4-b.dtb": "dtb", "boot/config.txt": "arm_64bit=1\n"}
	c, store := bootRoot(t, good)
	b, err := bundle.Build(context.Background(), c, store)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	want, size, _ := nix.HashPath(filepath.Join(store, nix.BaseName(c.Root), "boot"))
	init, _, _ := nix.HashPath(filepath.Join(store, nix.BaseName(c.Root), "init"))
	if bp := b.Config.Boot; bp == nil || bp.Kernel != "Image" || bp.Initrd != "initrd" || bp.NarHash != want || bp.NarSize != size || bp.Init != init {
		t.Fatalf("boot part %+v", b.Config.Boot)
	}
	raw, _ := b.RawConfigFile()
	if again, err := bundle.ParseConfig(raw); err != nil || again.Boot == nil || *again.Boot != *b.Config.Boot {
		t.Fatalf("the config does not round-trip its boot part: %v", err)
	}

	// The same kernel: no reboot; another: a reboot; none before: a reboot.
	same := *b.Config
	changed := *b.Config
	changed.Boot = &bundle.Boot{NarHash: nix.Hash{1}, NarSize: 1, Kernel: "Image", Init: b.Config.Boot.Init}
	newInit := *b.Config
	newInit.Boot = &bundle.Boot{NarHash: b.Config.Boot.NarHash, NarSize: 1, Kernel: "Image", Init: nix.Hash{2}}
	noBoot := *b.Config
	noBoot.Boot = nil
	if bundle.NeedsReboot(b.Config, &same) || !bundle.NeedsReboot(b.Config, &changed) || !bundle.NeedsReboot(&noBoot, b.Config) || bundle.NeedsReboot(b.Config, &noBoot) || !bundle.NeedsReboot(b.Config, &newInit) {
		t.Fatal("NeedsReboot decides wrongly")
	}
	if err := b.Config.Boot.Fits(1 << 20); err != nil {
		t.Fatal(err)
	}
	if err := b.Config.Boot.Fits(10); !errors.Is(err, bundle.ErrBootPart) {
		t.Fatalf("a boot part larger than its partition: %v", err)
	}

	for name, files := range map[string]map[string]string{
		"no kernel":           {"init*": "x", "boot/initrd": "i"},
		"two kernels":         {"init*": "x", "boot/Image": "k", "boot/vmlinuz": "k"},
		"no init":             {"boot/Image": "k"},
		"init not executable": {"init": "x", "boot/Image": "k"},
	} {
		c, store := bootRoot(t, files)
		if _, err := bundle.Build(context.Background(), c, store); !errors.Is(err, bundle.ErrBootPart) {
			t.Errorf("%s: %v, want ErrBootPart", name, err)
		}
	}
	// No boot/: no boot part, and the config is as before.
	c, store = bootRoot(t, map[string]string{"bin/app*": "x"})
	b2, err := bundle.Build(context.Background(), c, store)
	if err != nil || b2.Config.Boot != nil {
		t.Fatalf("a release without boot/: %+v %v", b2.Config.Boot, err)
	}
	raw, _ = b2.RawConfigFile()
	if strings.Contains(string(raw), `"boot"`) {
		t.Fatalf("a config without a boot part names one: %s", raw)
	}
	b2.Close()
}
