package boot_test

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/otter-fleet/otter/boot"
)

const (
	sector = 512
	p1     = 2048 * sector  // partition 1 at 1 MiB
	p2     = 67584 * sector // partition 2 after 32 MiB
)

// piDisk makes a disk image with two 32 MiB FAT partitions, each a whole
// boot of generation 1, autoboot.txt on the first: what otter image
// writes for a Pi.
func piDisk(t *testing.T) string {
	t.Helper()
	for _, tool := range []string{"sfdisk", "mkfs.fat", "mcopy", "mren"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") != "" || os.Getenv("OTTER_REQUIRE_ALL") != "" {
				t.Fatalf("%s is missing", tool)
			}
			t.Skipf("%s is missing", tool)
		}
	}
	img := filepath.Join(t.TempDir(), "sd.img")
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 100<<20); err != nil {
		t.Fatal(err)
	}
	sf := exec.Command("sfdisk", "--no-reread", "--no-tell-kernel", img)
	sf.Stdin = strings.NewReader("label: dos\nstart=2048, size=65536, type=c, bootable\nstart=67584, size=65536, type=c\n")
	if out, err := sf.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk: %v\n%s", err, out)
	}
	for i, off := range []int64{p1, p2} {
		if out, err := exec.Command("mkfs.fat", "-n", fmt.Sprintf("BOOT_%c", 'A'+i), "--offset", fmt.Sprint(off/sector), img, "32768").CombinedOutput(); err != nil {
			t.Fatalf("mkfs.fat: %v\n%s", err, out)
		}
	}
	pi := piOf(img)
	for i, fs := range pi.Slots {
		for name, data := range release(1) {
			if err := fs.WriteFile(name, data); err != nil {
				t.Fatal(err)
			}
		}
		if err := fs.WriteFile("cmdline.txt", []byte(cmdline(1))); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			if err := fs.WriteFile("autoboot.txt", boot.Autoboot(1)); err != nil {
				t.Fatal(err)
			}
		}
	}
	return img
}

func piOf(img string) *boot.Pi {
	return &boot.Pi{Slots: [2]boot.Volume{boot.FAT{Path: img, Offset: p1}, boot.FAT{Path: img, Offset: p2}}}
}

// release is generation n's boot files: a kernel, a device tree, config.
func release(n int) map[string][]byte {
	return map[string][]byte{
		"kernel8.img":              []byte(strings.Repeat(fmt.Sprintf("kernel %d ", n), 4096)),
		"bcm2711-rpi-4-b.dtb":      []byte(fmt.Sprintf("dtb %d", n)),
		"config.txt":               []byte("arm_64bit=1\nkernel=kernel8.img\n"),
		"overlays/disable-bt.dtbo": []byte("overlay"),
	}
}

func cmdline(n int) string {
	return fmt.Sprintf("console=serial0,115200 root=PARTUUID=0badcafe-03 rootwait init=/var/lib/otter/generations/%d/root/init\n", n)
}

// boots asserts what the firmware boots: the slot and its generation.
func boots(t *testing.T, pi *boot.Pi, tryboot bool, slot, gen int) {
	t.Helper()
	s, cl, err := boot.Firmware(pi, tryboot)
	if err != nil {
		t.Fatalf("firmware (tryboot %v): %v", tryboot, err)
	}
	if want := fmt.Sprintf("/var/lib/otter/generations/%d/root/init", gen); s != slot || boot.InitOf(cl) != want {
		t.Fatalf("firmware (tryboot %v) boots slot %d with init=%s, want slot %d with %s", tryboot, s, boot.InitOf(cl), slot, want)
	}
	fs := pi.Slots[s-1]
	for name, want := range release(gen) {
		if got, err := fs.ReadFile(name); err != nil || string(got) != string(want) {
			t.Fatalf("slot %d: %s is not generation %d's (%v)", s, name, gen, err)
		}
	}
}

// TestPiTryboot runs the state machine on a disk image, asserting after
// each step what the firmware reads: autoboot.txt, the tried slot, and
// each partition's cmdline.txt.
func TestPiTryboot(t *testing.T) {
	img := piDisk(t)
	pi := piOf(img)
	boots(t, pi, false, 1, 1)

	// Generation 2 needs a reboot: staged on slot 2, tried once.
	slot, err := pi.Stage(release(2), cmdline(2))
	if err != nil || slot != 2 {
		t.Fatalf("stage: slot %d, %v", slot, err)
	}
	boots(t, pi, false, 1, 1) // an ordinary reset still boots generation 1
	boots(t, pi, true, 2, 2)  // the tryboot reset boots generation 2, once
	// The tried boot panics: the watchdog's reset is an ordinary one.
	boots(t, pi, false, 1, 1)

	// Tried again, and this time confirmed.
	if _, err := pi.Stage(release(2), cmdline(2)); err != nil {
		t.Fatal(err)
	}
	if err := pi.Confirm(2); err != nil {
		t.Fatal(err)
	}
	boots(t, pi, false, 2, 2)
	boots(t, pi, true, 1, 1) // the other slot still holds generation 1
	if st, _ := pi.State(); st.Active != 2 || st.Tryboot != 1 {
		t.Fatalf("autoboot.txt after confirming: %+v", st)
	}

	// Generation 3 goes to slot 1, never to the running slot 2; what the
	// slot held before goes, but partition 1's autoboot.txt stays.
	if err := pi.Slots[0].WriteFile("overlays/stale.dtbo", []byte("from an older release")); err != nil {
		t.Fatal(err)
	}
	before, _ := pi.Slots[1].ReadFile("kernel8.img")
	if slot, err := pi.Stage(release(3), cmdline(3)); err != nil || slot != 1 {
		t.Fatalf("stage 3: slot %d, %v", slot, err)
	}
	if after, _ := pi.Slots[1].ReadFile("kernel8.img"); string(after) != string(before) {
		t.Fatal("staging wrote the running slot")
	}
	boots(t, pi, false, 2, 2)
	boots(t, pi, true, 1, 3)
	if _, err := pi.Slots[0].ReadFile("overlays/stale.dtbo"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a file of an older release survived staging: %v", err)
	}
	// The room a slot has: its whole file system (32 MiB here).
	total, free, err := pi.Slots[0].Space()
	if err != nil || total < 30<<20 || total > 32<<20 || free <= 0 || free >= total {
		t.Fatalf("partition 1's space: %d total, %d free, %v", total, free, err)
	}

	// A missing file is os.ErrNotExist; a file system mtools cannot open
	// is not taken for one.
	if _, err := pi.Slots[0].ReadFile("tryboot.txt"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a missing file: %v", err)
	}
	gone := boot.FAT{Path: filepath.Join(t.TempDir(), "missing.img")}
	if _, err := gone.ReadFile("autoboot.txt"); err == nil || errors.Is(err, os.ErrNotExist) || !errors.Is(err, boot.ErrFAT) {
		t.Fatalf("an image that is not there: %v", err)
	}
}

type cut struct{}

// cutAt runs fn with the hook set (by set) to stop it, as a power cut
// would, at the k-th cut point (1-based), and clears the hook. It says
// whether fn finished before the k-th point.
func cutAt(k int, set func(func(string)), fn func()) (finished bool) {
	n := 0
	set(func(string) {
		if n++; n == k {
			panic(cut{})
		}
	})
	defer set(nil)
	defer func() {
		if r := recover(); r != nil {
			if _, ok := r.(cut); !ok {
				panic(r)
			}
		}
	}()
	fn()
	return true
}

// TestPiPowerCut cuts the power between every two writes of staging and
// confirming generation 2: an ordinary reset then boots a complete
// generation (1 before the confirmation, 2 after it — or, with
// autoboot.txt caught in its rename, partition 1's generation 1), and
// running the update again completes it.
func TestPiPowerCut(t *testing.T) {
	golden := piDisk(t)
	for k := 1; ; k++ {
		img := filepath.Join(t.TempDir(), "sd.img")
		copyFile(t, golden, img)
		pi := piOf(img)
		finished := cutAt(k, func(h func(string)) { pi.Cut = h }, func() {
			if _, err := pi.Stage(release(2), cmdline(2)); err != nil {
				t.Fatal(err)
			}
			if err := pi.Confirm(2); err != nil {
				t.Fatal(err)
			}
		})
		s, cl, err := boot.Firmware(pi, false)
		if err != nil {
			t.Fatalf("cut %d: firmware: %v", k, err)
		}
		switch init := boot.InitOf(cl); {
		case s == 1 && init == "/var/lib/otter/generations/1/root/init":
			boots(t, pi, false, 1, 1)
		case s == 2 && init == "/var/lib/otter/generations/2/root/init":
			boots(t, pi, false, 2, 2)
		default:
			t.Fatalf("cut %d: an ordinary reset boots slot %d with %q", k, s, init)
		}
		if finished {
			if k < 4 {
				t.Fatalf("only %d cut points", k-1)
			}
			t.Logf("%d cut points, every one boots a whole generation", k-1)
			return
		}
		// The update run again completes.
		if _, err := pi.Stage(release(2), cmdline(2)); err != nil {
			t.Fatalf("cut %d: stage again: %v", k, err)
		}
		if err := pi.Confirm(2); err != nil {
			t.Fatalf("cut %d: confirm again: %v", k, err)
		}
		boots(t, pi, false, 2, 2)
	}
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestPiCutInsideTheRename: a power cut between the two directory writes
// of autoboot.txt's rename leaves no autoboot.txt and a complete
// autoboot.new. The firmware then boots partition 1, a whole slot;
// Recover finishes the rename, and the confirmed slot boots again.
func TestPiCutInsideTheRename(t *testing.T) {
	pi := piOf(piDisk(t))
	if _, err := pi.Stage(release(2), cmdline(2)); err != nil {
		t.Fatal(err)
	}
	if err := pi.Slots[0].WriteFile("autoboot.new", boot.Autoboot(2)); err != nil {
		t.Fatal(err)
	}
	if err := pi.Slots[0].Remove("autoboot.txt"); err != nil {
		t.Fatal(err)
	}
	boots(t, pi, false, 1, 1)
	if err := pi.Recover(); err != nil {
		t.Fatal(err)
	}
	boots(t, pi, false, 2, 2)
	if _, err := pi.Slots[0].ReadFile("autoboot.new"); err == nil {
		t.Fatal("autoboot.new left behind")
	}
}
