package image_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/otter-fleet/otter/boot"
	"github.com/otter-fleet/otter/bundle"
	"github.com/otter-fleet/otter/image"
	"github.com/otter-fleet/otter/internal/testutil"
)

func needTools(t *testing.T, names ...string) {
	t.Helper()
	for _, n := range names {
		_, err := exec.LookPath(n)
		if err != nil {
			_, err = exec.LookPath("/usr/sbin/" + n)
		}
		testutil.Require(t, err == nil, n)
	}
}

func efiFiles(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "EFI", "BOOT"), 0o755)
	os.WriteFile(filepath.Join(dir, "EFI", "BOOT", "BOOTAA64.EFI"), []byte("efi"), 0o644)
	return dir
}

// TestBuildGeneric builds a generic (GPT, EFI) image of the demo bundle
// twice: the same digest, three partitions, and the device state inside
// the root file system says generation 1.
func TestBuildGeneric(t *testing.T) {
	needTools(t, "sfdisk", "mkfs.fat", "mcopy", "mkfs.ext4", "debugfs")
	c, store := testutil.DemoStore(t)
	b := testutil.BuildBundle(t, c, store)
	efi := efiFiles(t)
	var digests [2]string
	var res *image.Result
	for i := range digests {
		out := filepath.Join(t.TempDir(), "generic.img")
		var err error
		res, err = image.Build(context.Background(), b, b.Config, out, image.Options{Board: "generic", BootFiles: efi,
			Envelope: []byte(`{"payloadType":"stand-in"}`), Trust: []byte(`{}`)})
		if err != nil {
			t.Fatal(err)
		}
		digests[i] = res.Digest
		if i == 0 {
			root := res.Partitions[1]
			part := filepath.Join(t.TempDir(), "root.ext4")
			if out, err := exec.Command("dd", "if="+res.Image, "of="+part, "bs=1M", "skip="+itoa(root.Start>>20), "count="+itoa(root.Size>>20)).CombinedOutput(); err != nil {
				t.Fatalf("dd: %v %s", err, out)
			}
			got, err := exec.Command("debugfs", "-R", "cat /var/lib/otter/last.json", part).Output()
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(string(got), `"provision"`) || !strings.Contains(string(got), `"to": 1`) {
				t.Fatalf("the image's last.json: %s", got)
			}
		}
	}
	if digests[0] != digests[1] {
		t.Fatalf("two builds: %s and %s", digests[0], digests[1])
	}
	if len(res.Partitions) != 3 || res.Partitions[0].Name == "" {
		t.Fatalf("partitions %+v", res.Partitions)
	}
}

// TestBuildRefuses: bad options are refused by name, and nothing is left
// at the output.
func TestBuildRefuses(t *testing.T) {
	needTools(t, "sfdisk", "mkfs.fat", "mcopy", "mkfs.ext4", "debugfs")
	c, store := testutil.DemoStore(t)
	b := testutil.BuildBundle(t, c, store)
	for _, tc := range []struct {
		name string
		o    image.Options
		want error
	}{
		{"unknown board", image.Options{Board: "beaglebone", BootFiles: efiFiles(t)}, image.ErrUnknownBoard},
		{"no boot files", image.Options{Board: "generic", BootFiles: t.TempDir()}, image.ErrBootFiles},
		{"too small", image.Options{Board: "generic", BootFiles: efiFiles(t), Size: 100 << 20}, image.ErrTooSmall},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			_, err := image.Build(context.Background(), b, b.Config, filepath.Join(dir, "x.img"), tc.o)
			if !errors.Is(err, tc.want) {
				t.Fatalf("want %v, got %v", tc.want, err)
			}
			if ents, _ := os.ReadDir(dir); len(ents) != 0 {
				t.Fatalf("left %v", ents)
			}
		})
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// bootPartRelease is a one-path release with a boot part for a Pi 4:
// firmware, a device tree, a 3 MiB kernel, and an init.
func bootPartRelease(t *testing.T) *bundle.Bundle {
	t.Helper()
	store := testutil.TempStore(t)
	c := testutil.OnePath(t, store, "otter-image-boot-release", map[string][]byte{"boot/kernel8.img": bytes.Repeat([]byte("k"), 3<<20),
		"boot/initrd": []byte("initrd"), "boot/start4.elf": []byte("fw"), "boot/fixup4.dat": []byte("fx"), "boot/bcm2711-rpi-4-b.dtb": []byte("dtb"),
		"init": []byte("#!/bin/sh\n")})
	return testutil.BuildBundle(t, c, store)
}

// TestBuildBootPart: a release that carries its boot part boots it. On
// a Pi both partitions hold the boot part (no --boot-files needed) and a
// cmdline.txt starting generation 1's own init; a generic image's ESP
// holds generation 1's BLS entry and kernel. No boot path names current.
// A boot part larger than the boot partition is refused.
func TestBuildBootPart(t *testing.T) {
	needTools(t, "sfdisk", "mkfs.fat", "mcopy", "mkfs.ext4", "debugfs")
	b := bootPartRelease(t)
	ctx := context.Background()
	opts := image.Options{Envelope: []byte(`{"payloadType":"stand-in"}`), Trust: []byte(`{}`), BootSize: 64 << 20, DataSize: 16 << 20}

	o := opts
	o.Board = "rpi4"
	res, err := image.Build(ctx, b, b.Config, filepath.Join(t.TempDir(), "pi.img"), o)
	if err != nil {
		t.Fatal(err)
	}
	for _, part := range res.Partitions[:2] {
		fs := boot.FAT{Path: res.Image, Offset: part.Start}
		k, err := fs.ReadFile("kernel8.img")
		if err != nil || len(k) != 3<<20 {
			t.Fatalf("%s's kernel: %d bytes, %v", part.Name, len(k), err)
		}
		line, err := fs.ReadFile("cmdline.txt")
		if err != nil || boot.InitOf(string(line)) != image.FirstInit || strings.Contains(string(line), "current") {
			t.Fatalf("%s's cmdline.txt: %q %v", part.Name, line, err)
		}
	}

	o = opts
	o.Board, o.BootFiles = "generic", efiFiles(t)
	res, err = image.Build(ctx, b, b.Config, filepath.Join(t.TempDir(), "generic.img"), o)
	if err != nil {
		t.Fatal(err)
	}
	x := &boot.EFI{ESP: boot.FAT{Path: res.Image, Offset: res.Partitions[0].Start}}
	es, err := x.Entries()
	if err != nil || len(es) != 1 || es[0].Name != "otter-1.conf" {
		t.Fatalf("the ESP's entries: %+v %v", es, err)
	}
	if opts, err := x.Options(1); err != nil || boot.InitOf(opts) != image.FirstInit || strings.Contains(opts, "current") {
		t.Fatalf("the entry's options: %q %v", opts, err)
	}
	if k, err := x.ESP.ReadFile("otter/1/linux"); err != nil || len(k) != 3<<20 {
		t.Fatalf("the entry's kernel: %d bytes, %v", len(k), err)
	}

	// 3 MiB of boot part in a 2 MiB boot partition: refused, nothing left.
	o = opts
	o.Board, o.BootSize = "rpi4", 2<<20
	dir := t.TempDir()
	if _, err := image.Build(ctx, b, b.Config, filepath.Join(dir, "small.img"), o); !errors.Is(err, bundle.ErrBootPart) {
		t.Fatalf("a boot part larger than the boot partition: %v", err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("left %v", ents)
	}
}
