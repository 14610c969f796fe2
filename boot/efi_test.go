package boot_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/otter-fleet/otter/boot"
)

// esp makes a 64 MiB FAT image: an EFI system partition.
func esp(t *testing.T) *boot.EFI {
	t.Helper()
	if _, err := exec.LookPath("mkfs.fat"); err != nil {
		t.Skip("mkfs.fat is missing")
	}
	img := filepath.Join(t.TempDir(), "esp.img")
	if out, err := exec.Command("mkfs.fat", "-C", "-n", "ESP", img, "65536").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.fat: %v\n%s", err, out)
	}
	return &boot.EFI{ESP: boot.FAT{Path: img}}
}

func options(n int) string {
	return fmt.Sprintf("root=PARTUUID=1234 rw panic=5 init=/var/lib/otter/generations/%d/root/init", n)
}

func stage(t *testing.T, x *boot.EFI, n int) {
	t.Helper()
	if err := x.Stage(n, []byte(fmt.Sprintf("kernel %d", n)), []byte(fmt.Sprintf("initrd %d", n)), fmt.Sprintf("otter generation %d", n), options(n)); err != nil {
		t.Fatal(err)
	}
}

// resets asserts the generation the next reset boots, and its entry's
// name after systemd-boot counted the try.
func resets(t *testing.T, x *boot.EFI, gen int, name string) {
	t.Helper()
	e, opts, err := boot.FirmwareEFI(x)
	if err != nil {
		t.Fatal(err)
	}
	if e.Generation != gen || e.Name != name || boot.InitOf(opts) != fmt.Sprintf("/var/lib/otter/generations/%d/root/init", gen) {
		t.Fatalf("the reset boots %s (%s), want generation %d as %s", e.Name, opts, gen, name)
	}
	if k, _ := x.ESP.ReadFile(fmt.Sprintf("otter/%d/linux", gen)); string(k) != fmt.Sprintf("kernel %d", gen) {
		t.Fatalf("generation %d's kernel on the ESP: %q", gen, k)
	}
}

// TestEFIBootCounting: a new generation's entry is tried Tries times;
// unconfirmed, the next reset boots the newest good generation; once
// confirmed it boots every time.
func TestEFIBootCounting(t *testing.T) {
	t.Run("mtools", func(t *testing.T) { bootCounting(t, esp(t)) })
	// The same on a mounted ESP (a directory here): boot.Dir.
	t.Run("mount", func(t *testing.T) { bootCounting(t, &boot.EFI{ESP: boot.Dir(t.TempDir())}) })
}

func bootCounting(t *testing.T, x *boot.EFI) {
	stage(t, x, 1)
	if err := x.Confirm(1); err != nil {
		t.Fatal(err)
	}
	resets(t, x, 1, "otter-1.conf")

	stage(t, x, 2) // its init panics: never confirmed
	resets(t, x, 2, "otter-2+2-1.conf")
	resets(t, x, 2, "otter-2+1-2.conf")
	resets(t, x, 2, "otter-2+0-3.conf")
	resets(t, x, 1, "otter-1.conf") // back on 1 by itself
	resets(t, x, 1, "otter-1.conf")

	stage(t, x, 3)
	resets(t, x, 3, "otter-3+2-1.conf")
	if err := x.Confirm(3); err != nil {
		t.Fatal(err)
	}
	resets(t, x, 3, "otter-3.conf")
	resets(t, x, 3, "otter-3.conf")
	if err := x.Remove(2); err != nil {
		t.Fatal(err)
	}
	es, _ := x.Entries()
	if len(es) != 2 || es[0].Name != "otter-3.conf" || es[1].Name != "otter-1.conf" {
		t.Fatalf("entries after removing 2: %+v", es)
	}
	if _, err := x.ESP.ReadFile("otter/2/linux"); !os.IsNotExist(err) && err == nil {
		t.Fatal("generation 2's kernel is still on the ESP")
	}
}

// TestEFIPowerCut: a power cut at any point of staging a generation
// leaves the ESP booting the confirmed one; staging again completes.
func TestEFIPowerCut(t *testing.T) {
	for k := 1; ; k++ {
		x := esp(t)
		stage(t, x, 1)
		if err := x.Confirm(1); err != nil {
			t.Fatal(err)
		}
		finished := cutAt(k, func(h func(string)) { x.Cut = h }, func() { stage(t, x, 2) })
		if finished {
			if k < 3 {
				t.Fatalf("only %d cut points", k-1)
			}
			return
		}
		resets(t, x, 1, "otter-1.conf")
		stage(t, x, 2)
		resets(t, x, 2, "otter-2+2-1.conf")
	}
}
