package image_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

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
