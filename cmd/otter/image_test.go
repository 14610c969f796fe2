package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/otter-fleet/otter/device"
	"github.com/otter-fleet/otter/image"
	"github.com/otter-fleet/otter/internal/testutil"
)

// bootFiles writes stand-ins for a Raspberry Pi 4's firmware and kernel.
func bootFiles(t *testing.T) string {
	dir := t.TempDir()
	for name, body := range map[string]string{
		"start4.elf": "firmware", "fixup4.dat": "fixup", "bcm2711-rpi-4-b.dtb": "dtb", "kernel8.img": "kernel",
		"overlays/disable-bt.dtbo": "overlay",
	} {
		os.MkdirAll(filepath.Dir(filepath.Join(dir, name)), 0o755)
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func needTools(t *testing.T, tools ...string) {
	for _, tool := range tools {
		_, err := exec.LookPath(tool)
		testutil.Require(t, err == nil, tool+" (apt: fdisk dosfstools mtools e2fsprogs bmap-tools)")
	}
}

func sh(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return string(out)
}

// partitionFile copies one partition out of the image.
func partitionFile(t *testing.T, img string, p image.Partition) string {
	in, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out := filepath.Join(t.TempDir(), p.Name)
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := io.Copy(f, io.NewSectionReader(in, p.Start, p.Size)); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestImage builds a Raspberry Pi 4 image of demo release 1 and inspects
// it with sfdisk, mtools, fsck.ext4 and debugfs; bmaptool copies it; a
// second build gives the same bytes.
func TestImage(t *testing.T) {
	needTools(t, "sfdisk", "mkfs.fat", "mcopy", "mkfs.ext4", "debugfs", "e2fsck", "bmaptool")
	base := "oci:" + filepath.Join(t.TempDir(), "l")
	trust, digests, closures := fleet(t, base, 1)
	boot := bootFiles(t)
	out := filepath.Join(t.TempDir(), "sd.img")
	var res image.Result
	otterJSON(t, &res, "image", base+":r1", "--out", out, "--board", "rpi4", "--boot-files", boot, "--trust", trust)
	for _, f := range []string{out, out + ".zst", out + ".bmap"} {
		if _, err := os.Stat(f); err != nil {
			t.Fatal(err)
		}
	}

	// The partition table.
	var table struct {
		PartitionTable struct {
			Label      string
			ID         string
			Partitions []struct {
				Node        string
				Start, Size int64
				Type        string
				Bootable    bool
			}
		}
	}
	if err := json.Unmarshal([]byte(sh(t, "sfdisk", "--json", out)), &table); err != nil {
		t.Fatal(err)
	}
	pt := table.PartitionTable
	if pt.Label != "dos" || pt.ID != "0x"+res.DiskID || len(pt.Partitions) != 4 || len(res.Partitions) != 4 {
		t.Fatalf("partition table %+v, result %+v", pt, res.Partitions)
	}
	for i, p := range pt.Partitions {
		want := res.Partitions[i]
		if p.Start*512 != want.Start || p.Size*512 != want.Size || (want.Type == "fat32") != (p.Type == "c") {
			t.Errorf("partition %d: %+v, want %+v", i+1, p, want)
		}
	}
	if !pt.Partitions[0].Bootable {
		t.Error("boot-a is not marked bootable")
	}

	// The boot partitions.
	fat := func(p image.Partition, file string) string {
		return sh(t, "mtype", "-i", fmt.Sprintf("%s@@%d", out, p.Start), "::"+file)
	}
	a, b := res.Partitions[0], res.Partitions[1]
	root := res.Partitions[2]
	if cmd := fat(a, "cmdline.txt"); !strings.Contains(cmd, "root=PARTUUID="+res.DiskID+"-03 ") || root.UUID != res.DiskID+"-03" {
		t.Errorf("cmdline.txt %q, root %s", cmd, root.UUID)
	}
	if c := fat(a, "config.txt"); !strings.Contains(c, "arm_64bit=1") || !strings.Contains(c, "kernel=kernel8.img") {
		t.Errorf("config.txt %q", c)
	}
	if ab := fat(a, "autoboot.txt"); !strings.Contains(ab, "tryboot_a_b=1") || !strings.Contains(ab, "[tryboot]\nboot_partition=2") {
		t.Errorf("autoboot.txt %q", ab)
	}
	if fat(b, "kernel8.img") != "kernel" || fat(a, "overlays/disable-bt.dtbo") != "overlay" {
		t.Error("boot files differ")
	}
	if _, err := exec.Command("mtype", "-i", fmt.Sprintf("%s@@%d", out, b.Start), "::autoboot.txt").CombinedOutput(); err == nil {
		t.Error("autoboot.txt on boot-b: the firmware reads only the first FAT partition's")
	}

	// The root file system: clean, the closure whole, the device state at
	// generation 1.
	rootFS := partitionFile(t, out, root)
	sh(t, "e2fsck", "-fn", rootFS)
	dump := t.TempDir()
	sh(t, "debugfs", "-R", "rdump /nix/store "+dump, rootFS)
	sh(t, "debugfs", "-R", "rdump /var/lib/otter "+dump, rootFS)
	store := filepath.Join(dump, "store")
	testutil.VerifyStore(t, closures[0], store)
	testutil.AssertOnlyStorePaths(t, store, closures[0])
	var st device.Status
	otterJSON(t, &st, "status", "--store", store, "--state", filepath.Join(dump, "otter"))
	if st.Current == nil || st.Current.Number != 1 || st.Current.Digest != digests[0] {
		t.Fatalf("device state in the image: %+v", st)
	}
	if link, _ := os.Readlink(filepath.Join(dump, "otter", "generations", "1", "root")); !strings.HasPrefix(link, "/nix/store/") {
		t.Errorf("generation 1 root links to %q, not into the device's store", link)
	}
	if got, _ := os.ReadFile(filepath.Join(dump, "otter", "trust.json")); len(got) == 0 {
		t.Error("no trust file on the device")
	}
	sh(t, "e2fsck", "-fn", partitionFile(t, out, res.Partitions[3]))
	if !strings.Contains(sh(t, "debugfs", "-R", "stats", partitionFile(t, out, res.Partitions[3])), "otter-data") {
		t.Error("the data partition is not labelled otter-data")
	}

	// bmaptool writes the same bytes from the compressed image.
	copied := filepath.Join(t.TempDir(), "card")
	sh(t, "bmaptool", "copy", "--bmap", out+".bmap", out+".zst", copied)
	want, _ := os.ReadFile(out)
	got, _ := os.ReadFile(copied)
	if !bytes.Equal(got, want) {
		t.Fatal("bmaptool copy gives other bytes")
	}
	if res.Mapped >= res.Size {
		t.Errorf("%d of %d bytes mapped: the image is not sparse", res.Mapped, res.Size)
	}

	// Reproducible: a second build, at another time, the same bytes.
	out2 := filepath.Join(t.TempDir(), "sd.img")
	var res2 image.Result
	otterJSON(t, &res2, "image", base+":r1", "--out", out2, "--board", "rpi4", "--boot-files", boot, "--trust", trust)
	if res2.Digest != res.Digest {
		t.Fatalf("two builds: %s and %s", res.Digest, res2.Digest)
	}
}

// TestImageBadInput: too small a size, missing boot files, an unknown
// board and an unwritable output fail with the reason and leave nothing
// under the output name.
func TestImageBadInput(t *testing.T) {
	needTools(t, "sfdisk", "mkfs.fat", "mcopy", "mkfs.ext4", "debugfs")
	base := "oci:" + filepath.Join(t.TempDir(), "l")
	trust, _, _ := fleet(t, base, 1)
	boot := bootFiles(t)
	out := filepath.Join(t.TempDir(), "sd.img")
	noKernel := bootFiles(t)
	os.Remove(filepath.Join(noKernel, "kernel8.img"))
	for _, tc := range []struct {
		name string
		args []string
		code int
		msg  string
	}{
		{"too small", []string{"--size", "100M", "--boot-files", boot}, exitInvalid, "needs at least"},
		{"no kernel", []string{"--boot-files", noKernel}, exitInvalid, "kernel8.img or Image"},
		{"rpi5 files missing", []string{"--board", "rpi5", "--boot-files", boot}, exitInvalid, "bcm2712-rpi-5-b.dtb"},
		{"unknown board", []string{"--board", "beaglebone", "--boot-files", boot}, exitUsage, "unknown board"},
		{"bad size", []string{"--size", "lots", "--boot-files", boot}, exitUsage, "not a size"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, stderr := otter(t, append([]string{"image", base + ":r1", "--out", out, "--trust", trust}, tc.args...)...)
			if code != tc.code || !strings.Contains(stderr, tc.msg) {
				t.Fatalf("exit %d, %q; want %d and %q", code, stderr, tc.code, tc.msg)
			}
			ents, _ := os.ReadDir(filepath.Dir(out))
			if len(ents) != 0 {
				t.Fatalf("left behind: %v", ents)
			}
		})
	}
	code, _, stderr := otter(t, "image", base+":r1", "--out", "/nonexistent/dir/sd.img", "--trust", trust, "--boot-files", boot)
	if code == 0 || !strings.Contains(stderr, "output directory") {
		t.Fatalf("unwritable output: exit %d, %s", code, stderr)
	}
}

// TestImageGenericAndClosureBootFiles: a generic board gets GPT with an
// EFI system partition; boot files named inside the closure are looked
// for there, and one outside it is refused.
func TestImageGenericAndClosureBootFiles(t *testing.T) {
	needTools(t, "sfdisk", "mkfs.fat", "mcopy", "mkfs.ext4", "debugfs")
	base := "oci:" + filepath.Join(t.TempDir(), "l")
	trust, _, closures := fleet(t, base, 1)
	efi := t.TempDir()
	os.MkdirAll(filepath.Join(efi, "EFI", "BOOT"), 0o755)
	os.WriteFile(filepath.Join(efi, "EFI", "BOOT", "BOOTAA64.EFI"), []byte("efi"), 0o644)
	out := filepath.Join(t.TempDir(), "generic.img")
	var res image.Result
	otterJSON(t, &res, "image", base+":r1", "--out", out, "--board", "generic", "--boot-files", efi, "--trust", trust, "--size", "700M")
	var table struct {
		PartitionTable struct {
			Label      string
			Partitions []struct {
				Type, UUID, Name string
				Size             int64
			}
		}
	}
	if err := json.Unmarshal([]byte(sh(t, "sfdisk", "--json", out)), &table); err != nil {
		t.Fatal(err)
	}
	pt := table.PartitionTable
	if pt.Label != "gpt" || len(pt.Partitions) != 3 || pt.Partitions[0].Type != "C12A7328-F81F-11D2-BA4B-00A0C93EC93B" ||
		!strings.EqualFold(pt.Partitions[1].UUID, res.Partitions[1].UUID) || res.Size != 700<<20 {
		t.Fatalf("generic layout %+v, result %+v", pt, res)
	}
	if got := sh(t, "mtype", "-i", fmt.Sprintf("%s@@%d", out, res.Partitions[0].Start), "::EFI/BOOT/BOOTAA64.EFI"); got != "efi" {
		t.Errorf("ESP holds %q", got)
	}

	// The demo closure holds no firmware: the error names what is missing
	// where it looked.
	inClosure := closures[0].Paths[0].Path
	code, _, stderr := otter(t, "image", base+":r1", "--out", out+"2", "--boot-files", inClosure, "--trust", trust)
	if code != exitInvalid || !strings.Contains(stderr, "start4.elf") {
		t.Fatalf("boot files in the closure: exit %d, %s", code, stderr)
	}
	code, _, stderr = otter(t, "image", base+":r1", "--out", out+"2", "--boot-files", "/nix/store/00000000000000000000000000000000-firmware", "--trust", trust)
	if code != exitInvalid || !strings.Contains(stderr, "not in the closure") {
		t.Fatalf("boot files outside the closure: exit %d, %s", code, stderr)
	}
}

// TestImageWithoutRoot builds the image as nobody (fakeroot for
// ownership, no loop devices) and gets the same bytes as root does.
func TestImageWithoutRoot(t *testing.T) {
	needTools(t, "sfdisk", "mkfs.fat", "mcopy", "mkfs.ext4", "debugfs", "fakeroot", "setpriv")
	testutil.Require(t, os.Geteuid() == 0, "root, to drop to nobody")
	bin := otterBinary(t)
	shared, err := os.MkdirTemp("", "otter-image-nobody-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(shared) })
	os.Chmod(shared, 0o777)
	base := "oci:" + filepath.Join(shared, "l")
	trust, _, _ := fleet(t, base, 1)
	boot := bootFiles(t)
	for _, p := range []string{filepath.Join(shared, "l"), boot, filepath.Dir(trust)} {
		exec.Command("chmod", "-R", "a+rX", p).Run()
	}
	exec.Command("chmod", "a+x", filepath.Dir(filepath.Dir(trust)), filepath.Dir(boot)).Run()
	var asRoot image.Result
	otterJSON(t, &asRoot, "image", base+":r1", "--out", filepath.Join(t.TempDir(), "root.img"), "--boot-files", boot, "--trust", trust)
	outDir := filepath.Join(shared, "out")
	os.Mkdir(outDir, 0o777)
	os.Chmod(outDir, 0o777)
	cmd := exec.Command("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
		bin, "image", base+":r1", "--out", filepath.Join(outDir, "nobody.img"), "--boot-files", boot, "--trust", trust, "--json")
	cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=" + shared, "TMPDIR=" + shared} // no sbin, as for most users
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("as nobody: %v\n%s", err, out)
	}
	var asNobody image.Result
	if err := json.Unmarshal(out, &asNobody); err != nil {
		t.Fatal(err)
	}
	if asNobody.Digest != asRoot.Digest {
		t.Fatalf("as nobody %s, as root %s", asNobody.Digest, asRoot.Digest)
	}
}
