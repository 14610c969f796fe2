// Package image writes flashable SD-card images of a release without
// root: sfdisk on a plain file, mkfs.fat and mtools for the boot
// partitions, mkfs.ext4 -d (under fakeroot when not root) for the root and
// data partitions. Everything random is derived from the bundle digest and
// every time is fixed, so the same bundle and options give the same bytes.
// docs/image.md is the layout.
package image

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"

	"github.com/otter-fleet/otter/boot"
	"github.com/otter-fleet/otter/bundle"
	"github.com/otter-fleet/otter/internal/fsutil"
	"github.com/otter-fleet/otter/nix"
	"github.com/otter-fleet/otter/state"
)

// Errors of image building.
var (
	ErrTooSmall     = errors.New("image: size too small")
	ErrBootFiles    = errors.New("image: boot files missing")
	ErrUnknownBoard = errors.New("image: unknown board")
	ErrTool         = errors.New("image: a tool failed")
)

const (
	mib        = 1 << 20
	sector     = 512
	firstStart = 1 * mib
)

// Board is what a board needs of an image.
type Board struct {
	Name string
	// GPT is true for a GPT label (generic), false for MBR (Raspberry Pi).
	GPT bool
	// Required are boot files that must be present; each entry lists
	// alternatives.
	Required [][]string
	// AB gives two boot partitions and an autoboot.txt for tryboot.
	AB bool
	// ConfigTxt is the config.txt for the kernel file found, if any.
	ConfigTxt func(kernel string) string
	Kernels   []string
	// Console is the kernel command line's console= part.
	Console string
}

// Boards otter knows.
var Boards = map[string]Board{
	"rpi4": {
		Name: "rpi4", AB: true, Console: "console=serial0,115200 console=tty1", Kernels: []string{"kernel8.img", "Image"},
		Required: [][]string{{"start4.elf"}, {"fixup4.dat"}, {"bcm2711-rpi-4-b.dtb"}, {"kernel8.img", "Image"}},
		ConfigTxt: func(k string) string {
			return "# otter: Raspberry Pi 4, aarch64\narm_64bit=1\nkernel=" + k + "\nenable_uart=1\ndisable_overscan=1\n"
		},
	},
	"rpi5": {
		Name: "rpi5", AB: true, Console: "console=serial0,115200 console=tty1", Kernels: []string{"kernel_2712.img", "kernel8.img", "Image"},
		Required: [][]string{{"bcm2712-rpi-5-b.dtb"}, {"kernel_2712.img", "kernel8.img", "Image"}},
		ConfigTxt: func(k string) string {
			return "# otter: Raspberry Pi 5, aarch64\nkernel=" + k + "\nenable_uart=1\n"
		},
	},
	"generic": {
		Name: "generic", GPT: true, Console: "console=tty0 console=ttyAMA0,115200",
		Required: [][]string{{"EFI/BOOT/BOOTAA64.EFI"}},
	},
}

// FirstInit is the init an image boots: generation 1's own.
const FirstInit = "/var/lib/otter/generations/1/root/init"

// efiEntry writes generation 1's boot entry into the ESP tree esp:
// systemd-boot's loader.conf (no menu), the kernel and initrd of the
// boot part in dir, and a confirmed entry.
func efiEntry(esp, dir string, cfg *bundle.Config, cmdline string) error {
	if err := os.MkdirAll(filepath.Join(esp, "loader"), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(esp, "loader", "loader.conf"), []byte("timeout 0\neditor no\n"), 0o644); err != nil {
		return err
	}
	kernel, initrd, err := cfg.Boot.Read(dir)
	if err != nil {
		return err
	}
	x := &boot.EFI{ESP: boot.Dir(esp)}
	if err := x.Stage(1, kernel, initrd, fmt.Sprintf("otter release %d (generation 1)", cfg.Version), cmdline); err != nil {
		return err
	}
	if err := x.Confirm(1); err != nil {
		return err
	}
	return fixTimes(esp, fatEpoch)
}

// Options tune Build.
type Options struct {
	Board string
	// BootFiles is a directory of firmware, kernel and device trees.
	BootFiles string
	// Size of the image in bytes; 0 picks the least that holds it all.
	Size int64
	// BootSize and DataSize size the boot partitions and the data
	// partition (defaults 256 MiB each).
	BootSize, DataSize int64
	// Envelope is the release's signed statement; Trust, if set, is
	// installed as the device's trust.json.
	Envelope, Trust []byte
	// Init is the kernel's init, by default generation 1's root/init
	// (docs/bundle.md §3.1: no boot path goes through current).
	Init     string
	Progress func(step string)
}

// Result says what Build wrote.
type Result struct {
	Image      string      `json:"image"`
	Compressed string      `json:"compressed"`
	Bmap       string      `json:"bmap"`
	Size       int64       `json:"size"`
	Mapped     int64       `json:"mapped"`
	ZstdSize   int64       `json:"zstdSize"`
	Digest     string      `json:"digest"`
	DiskID     string      `json:"diskId"`
	Partitions []Partition `json:"partitions"`
}

// Partition is one partition of the image.
type Partition struct {
	Number int    `json:"number"`
	Name   string `json:"name"`
	Type   string `json:"type"`
	Start  int64  `json:"start"`
	Size   int64  `json:"size"`
	UUID   string `json:"uuid"`
}

// Build writes out, out.zst and out.bmap for the bundle img.
func Build(ctx context.Context, img v1.Image, cfg *bundle.Config, out string, o Options) (*Result, error) {
	var err error
	board, ok := Boards[o.Board]
	if !ok {
		return nil, fmt.Errorf("%w %q: %s", ErrUnknownBoard, o.Board, strings.Join(boardNames(), ", "))
	}
	if o.BootSize == 0 {
		o.BootSize = 256 * mib
	}
	if o.DataSize == 0 {
		o.DataSize = 256 * mib
	}
	if o.Init == "" {
		o.Init = FirstInit
	}
	if cfg.Boot != nil {
		// The release's boot part must fit: a Pi's boot partition
		// holds one; the ESP the kept generations' kernels (three).
		room := o.BootSize
		if board.GPT {
			room /= 3
		}
		if err := cfg.Boot.Fits(room); err != nil {
			return nil, err
		}
		if board.AB && o.BootFiles == "" {
			o.BootFiles = cfg.Root + "/boot" // the firmware is in the boot part
		}
	}
	step := func(s string) {
		if o.Progress != nil {
			o.Progress(s)
		}
	}
	// Boot files in the closure are checked once it is unpacked.
	inClosure := strings.HasPrefix(o.BootFiles, nix.StoreDir+"/")
	var kernel string
	if inClosure {
		sp := strings.Join(strings.SplitN(o.BootFiles, "/", 5)[:4], "/")
		if cfg.Closure().Lookup(sp) == nil {
			return nil, fmt.Errorf("%w: %s is not in the closure", ErrBootFiles, sp)
		}
	} else if kernel, err = checkBootFiles(board, o.BootFiles); err != nil {
		return nil, err
	}
	digest, err := img.Digest()
	if err != nil {
		return nil, err
	}
	seed := func(what string) [16]byte {
		h := sha256.Sum256([]byte("otter image " + what + " " + digest.String()))
		var u [16]byte
		copy(u[:], h[:])
		u[6] = u[6]&0x0f | 0x40 // a version-4 shape
		u[8] = u[8]&0x3f | 0x80
		return u
	}
	diskSeed := seed("disk")
	diskID := fmt.Sprintf("%02x%02x%02x%02x", diskSeed[0], diskSeed[1], diskSeed[2], diskSeed[3])

	outDir := filepath.Dir(out)
	work, err := os.MkdirTemp(outDir, ".otter-image-")
	if err != nil {
		return nil, fmt.Errorf("the output directory: %w", err)
	}
	defer fsutil.RemoveAll(work)

	// The root file system's tree: the store and the device state.
	step("unpacking the closure")
	tree := filepath.Join(work, "root")
	if _, err := bundle.Extract(ctx, img, cfg, filepath.Join(tree, "nix", "store"), bundle.WithFsync(false)); err != nil {
		return nil, err
	}
	if inClosure {
		o.BootFiles = filepath.Join(tree, o.BootFiles)
		if kernel, err = checkBootFiles(board, o.BootFiles); err != nil {
			return nil, err
		}
	}
	manifest, err := img.RawManifest()
	if err != nil {
		return nil, err
	}
	config, err := img.RawConfigFile()
	if err != nil {
		return nil, err
	}
	stateDir := filepath.Join(tree, "var", "lib", "otter")
	if err := state.Provision(stateDir, "/nix/store", manifest, config, o.Envelope); err != nil {
		return nil, err
	}
	if o.Trust != nil {
		if err := os.WriteFile(filepath.Join(stateDir, "trust.json"), o.Trust, 0o644); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(filepath.Join(tree, "data"), 0o755); err != nil {
		return nil, err
	}
	if err := fixTimes(tree, time.Unix(1, 0)); err != nil {
		return nil, err
	}

	// The layout.
	treeBytes, inodes, err := usage(tree)
	if err != nil {
		return nil, err
	}
	rootMin := alignUp(treeBytes+treeBytes/8+inodes*256+64*mib, mib)
	var parts []Partition
	pos := int64(firstStart)
	add := func(name, typ string, size int64, uuid [16]byte) {
		parts = append(parts, Partition{Number: len(parts) + 1, Name: name, Type: typ, Start: pos, Size: size, UUID: uuidString(uuid)})
		pos += size
	}
	add("boot-a", "fat32", o.BootSize, seed("boot-a"))
	if board.AB {
		add("boot-b", "fat32", o.BootSize, seed("boot-b"))
	}
	rootAt := len(parts)
	add("root", "ext4", rootMin, seed("root"))
	add("data", "ext4", o.DataSize, seed("data"))
	need := pos + mib // the backup GPT and slack
	size := o.Size
	if size == 0 {
		size = need
	}
	if size < need {
		return nil, fmt.Errorf("%w: %d MiB given, the closure (%d MiB unpacked) needs at least %d MiB", ErrTooSmall, size/mib, treeBytes/mib, alignUp(need, mib)/mib)
	}
	// Room left over goes to the root partition.
	if extra := alignDown(size-need, mib); extra > 0 {
		parts[rootAt].Size += extra
		for i := rootAt + 1; i < len(parts); i++ {
			parts[i].Start += extra
		}
	}
	if !board.GPT {
		for i := range parts {
			parts[i].UUID = fmt.Sprintf("%s-%02d", diskID, parts[i].Number)
		}
	}

	raw := filepath.Join(work, "image")
	f, err := os.Create(raw)
	if err != nil {
		return nil, err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return nil, err
	}
	f.Close()
	step("partitioning")
	if err := partition(raw, board, diskID, uuidString(diskSeed), parts); err != nil {
		return nil, err
	}

	step("writing the boot partitions")
	rootPart := parts[rootAt]
	cmdline := fmt.Sprintf("%s root=PARTUUID=%s rootfstype=ext4 fsck.repair=yes rootwait panic=5 init=%s\n", board.Console, rootPart.UUID, o.Init)
	bootStage := filepath.Join(work, "boot")
	if err := stageBoot(bootStage, o.BootFiles, board, kernel, cmdline); err != nil {
		return nil, err
	}
	if board.GPT && cfg.Boot != nil {
		// Generation 1's entry, confirmed, as the device writes them
		// (boot.EFI): its kernel and initrd from the boot part.
		if err := efiEntry(bootStage, filepath.Join(tree, cfg.Root, "boot"), cfg, strings.TrimSpace(cmdline)); err != nil {
			return nil, err
		}
	}
	for i, p := range parts {
		if p.Type != "fat32" {
			continue
		}
		vol := seed(p.Name)
		label := strings.ToUpper(strings.ReplaceAll(p.Name, "-", "_"))
		// One sector a cluster: a 256 MiB FAT32 then has well over the
		// 65525 clusters FAT32 needs (mtools misreads it otherwise).
		if err := run(nil, "mkfs.fat", "-F", "32", "-s", "1", "--invariant", "-i", fmt.Sprintf("%02X%02X%02X%02X", vol[0], vol[1], vol[2], vol[3]), "-n", label,
			"--offset", fmt.Sprint(p.Start/sector), raw, fmt.Sprint(p.Size/1024)); err != nil {
			return nil, err
		}
		src := bootStage
		if i > 0 && board.AB {
			src = filepath.Join(work, "boot-b")
			if err := stageBoot(src, o.BootFiles, board, kernel, cmdline); err != nil {
				return nil, err
			}
			// autoboot.txt is read from the first FAT partition only.
			if err := os.Remove(filepath.Join(src, "autoboot.txt")); err != nil {
				return nil, err
			}
			if err := fixTimes(src, fatEpoch); err != nil {
				return nil, err
			}
		}
		if err := mcopy(raw, p.Start, src); err != nil {
			return nil, err
		}
	}

	step("writing the root file system")
	rootImg := filepath.Join(work, "root.ext4")
	if err := mkext4(rootImg, 0, rootPart.Size, "otter-root", seed("root-fs"), tree); err != nil {
		return nil, err
	}
	if err := copySparse(rootImg, raw, rootPart.Start); err != nil {
		return nil, err
	}
	os.Remove(rootImg)
	dataPart := parts[len(parts)-1]
	empty := filepath.Join(work, "empty")
	if err := os.MkdirAll(empty, 0o755); err != nil {
		return nil, err
	}
	if err := fixTimes(empty, time.Unix(1, 0)); err != nil {
		return nil, err
	}
	if err := mkext4(raw, dataPart.Start, dataPart.Size, "otter-data", seed("data-fs"), empty); err != nil {
		return nil, err
	}

	step("writing the block map and the compressed image")
	res := &Result{Image: out, Compressed: out + ".zst", Bmap: out + ".bmap", Size: size, DiskID: diskID, Partitions: parts}
	bmap, mapped, err := writeBmap(raw)
	if err != nil {
		return nil, err
	}
	res.Mapped = mapped
	bmapTmp := filepath.Join(work, "bmap")
	if err := os.WriteFile(bmapTmp, bmap, 0o644); err != nil {
		return nil, err
	}
	zstTmp := filepath.Join(work, "image.zst")
	if res.ZstdSize, res.Digest, err = compress(raw, zstTmp); err != nil {
		return nil, err
	}
	// Into place: the image last, so its name never holds a partial one.
	for _, mv := range [][2]string{{zstTmp, res.Compressed}, {bmapTmp, res.Bmap}, {raw, out}} {
		if err := os.Rename(mv[0], mv[1]); err != nil {
			return nil, err
		}
	}
	return res, fsutil.SyncDir(outDir)
}

func boardNames() []string {
	var out []string
	for n := range Boards {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// checkBootFiles finds the board's required boot files and returns the
// kernel's name.
func checkBootFiles(b Board, dir string) (string, error) {
	if dir == "" {
		return "", fmt.Errorf("%w: --boot-files names no directory", ErrBootFiles)
	}
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return "", fmt.Errorf("%w: %s is not a directory", ErrBootFiles, dir)
	}
	var missing []string
	for _, alts := range b.Required {
		found := false
		for _, a := range alts {
			if fi, err := os.Stat(filepath.Join(dir, a)); err == nil && fi.Mode().IsRegular() {
				found = true
				break
			}
		}
		if !found {
			missing = append(missing, strings.Join(alts, " or "))
		}
	}
	if len(missing) > 0 {
		return "", fmt.Errorf("%w for %s in %s: %s", ErrBootFiles, b.Name, dir, strings.Join(missing, ", "))
	}
	for _, k := range b.Kernels {
		if _, err := os.Stat(filepath.Join(dir, k)); err == nil {
			return k, nil
		}
	}
	return "", nil
}

// fatEpoch is the earliest time FAT can hold.
var fatEpoch = time.Date(1980, 1, 1, 0, 0, 0, 0, time.UTC)

func stageBoot(dst, src string, b Board, kernel, cmdline string) error {
	if out, err := exec.Command("cp", "-rL", "--no-preserve=ownership", src+"/.", dst).CombinedOutput(); err != nil {
		return fmt.Errorf("%w: copying the boot files: %v: %s", ErrTool, err, out)
	}
	if b.ConfigTxt != nil {
		files := map[string]string{"config.txt": b.ConfigTxt(kernel), "cmdline.txt": cmdline}
		if b.AB {
			// tryboot A/B (docs/image.md): boot from partition 1 unless
			// the next reboot is a tryboot, which boots partition 2.
			files["autoboot.txt"] = "[all]\ntryboot_a_b=1\nboot_partition=1\n[tryboot]\nboot_partition=2\n"
		}
		if _, err := os.Stat(filepath.Join(dst, "config.txt")); err == nil {
			delete(files, "config.txt") // the boot files' own (a release's boot part) stays
		}
		for name, body := range files {
			if err := os.WriteFile(filepath.Join(dst, name), []byte(body), 0o644); err != nil {
				return err
			}
		}
	}
	return fixTimes(dst, fatEpoch)
}

// fixTimes sets every entry's times under root to t.
func fixTimes(root string, t time.Time) error {
	ts := []unix.Timespec{unix.NsecToTimespec(t.UnixNano()), unix.NsecToTimespec(t.UnixNano())}
	var dirs []string
	err := filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if fi.IsDir() {
			dirs = append(dirs, p) // after their contents
			return nil
		}
		return unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW)
	})
	if err != nil {
		return err
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, dirs[i], ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return err
		}
	}
	return nil
}

// usage is the space a tree takes in 4 KiB blocks, and its inode count.
func usage(root string) (bytes, inodes int64, err error) {
	err = filepath.Walk(root, func(_ string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		inodes++
		bytes += alignUp(fi.Size(), 4096)
		return nil
	})
	return bytes, inodes, err
}

func alignUp(n, a int64) int64   { return (n + a - 1) / a * a }
func alignDown(n, a int64) int64 { return n / a * a }

func uuidString(u [16]byte) string {
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}

func partition(raw string, b Board, diskID, diskGUID string, parts []Partition) error {
	var s strings.Builder
	if b.GPT {
		fmt.Fprintf(&s, "label: gpt\nlabel-id: %s\nunit: sectors\n", strings.ToUpper(diskGUID))
	} else {
		fmt.Fprintf(&s, "label: dos\nlabel-id: 0x%s\nunit: sectors\n", diskID)
	}
	for _, p := range parts {
		typ := "83"
		switch {
		case b.GPT && p.Type == "fat32":
			typ = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B" // EFI System
		case b.GPT:
			typ = "0FC63DAF-8483-4772-8E79-3D69D8477DE4" // Linux file system
		case p.Type == "fat32":
			typ = "c"
		}
		fmt.Fprintf(&s, "start=%d, size=%d, type=%s", p.Start/sector, p.Size/sector, typ)
		if b.GPT {
			fmt.Fprintf(&s, ", uuid=%s, name=%s", strings.ToUpper(p.UUID), p.Name)
		}
		if p.Number == 1 && !b.GPT {
			s.WriteString(", bootable")
		}
		s.WriteString("\n")
	}
	return run(strings.NewReader(s.String()), "sfdisk", "-q", "--no-reread", "--no-tell-kernel", raw)
}

func mcopy(raw string, start int64, src string) error {
	ents, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	if len(ents) == 0 {
		return nil
	}
	args := []string{"-s", "-m", "-Q", "-i", fmt.Sprintf("%s@@%d", raw, start)}
	for _, e := range ents {
		args = append(args, filepath.Join(src, e.Name()))
	}
	return runEnv([]string{"MTOOLS_SKIP_CHECK=1", "SOURCE_DATE_EPOCH=315532800"}, nil, "mcopy", append(args, "::/")...)
}

// mkext4 makes an ext4 file system of size bytes at offset in file,
// holding the tree: UUID and hash seed fixed, owned by root (fakeroot
// when not root), every inode's times fixed afterwards with debugfs.
func mkext4(file string, offset, size int64, label string, uuid [16]byte, tree string) error {
	u := uuidString(uuid)
	ext := fmt.Sprintf("hash_seed=%s,root_owner=0:0,nodiscard", u)
	if offset > 0 {
		ext += fmt.Sprintf(",offset=%d", offset)
	}
	args := []string{"-q", "-F", "-t", "ext4", "-b", "4096", "-U", u, "-L", label, "-E", ext, "-d", tree, file, fmt.Sprintf("%dk", size/1024)}
	name := "mkfs.ext4"
	if os.Geteuid() != 0 {
		args = append([]string{name}, args...)
		name = "fakeroot"
	}
	if err := runEnv([]string{"E2FSPROGS_FAKE_TIME=1"}, nil, name, args...); err != nil {
		return err
	}
	if offset > 0 {
		return nil // an empty tree: no times to fix but the root's, which mkfs sets from the tree
	}
	// mkfs.ext4 -d copies ctime and atime from the source files, which the
	// kernel set when they were unpacked: set them all to 1.
	var cmds strings.Builder
	err := filepath.Walk(tree, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel := "/" + strings.TrimPrefix(strings.TrimPrefix(p, tree), "/")
		for _, field := range []string{"ctime", "atime", "mtime", "crtime"} {
			fmt.Fprintf(&cmds, "sif %q %s @1\n", rel, field)
		}
		return nil
	})
	if err != nil {
		return err
	}
	cmdFile := file + ".debugfs"
	if err := os.WriteFile(cmdFile, []byte(cmds.String()), 0o644); err != nil {
		return err
	}
	defer os.Remove(cmdFile)
	return runEnv([]string{"E2FSPROGS_FAKE_TIME=1"}, nil, "debugfs", "-w", "-f", cmdFile, file)
}

func run(stdin io.Reader, name string, args ...string) error {
	return runEnv(nil, stdin, name, args...)
}

// tool finds a program in PATH, else in the sbin directories an
// unprivileged user's PATH often lacks (mkfs.ext4, sfdisk, debugfs).
func tool(name string) string {
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, dir := range []string{"/usr/sbin", "/sbin"} {
		if fi, err := os.Stat(filepath.Join(dir, name)); err == nil && fi.Mode()&0o111 != 0 {
			return filepath.Join(dir, name)
		}
	}
	return name
}

func runEnv(env []string, stdin io.Reader, name string, args ...string) error {
	if name == "fakeroot" && len(args) > 0 {
		args[0] = tool(args[0])
	}
	cmd := exec.Command(tool(name), args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdin = stdin
	out, err := cmd.CombinedOutput()
	if err != nil {
		msg := strings.TrimSpace(string(out))
		if len(msg) > 800 {
			msg = msg[:800]
		}
		return fmt.Errorf("%w: %s: %v: %s", ErrTool, name, err, msg)
	}
	return nil
}

// copySparse copies src's data regions into dst at offset, leaving holes.
func copySparse(src, dst string, offset int64) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer out.Close()
	err = dataRanges(in, func(start, end int64) error {
		_, err := io.Copy(io.NewOffsetWriter(out, offset+start), io.NewSectionReader(in, start, end-start))
		return err
	})
	if err != nil {
		return err
	}
	return out.Close()
}

// dataRanges calls fn for each data region of f (SEEK_DATA/SEEK_HOLE).
func dataRanges(f *os.File, fn func(start, end int64) error) error {
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	size := fi.Size()
	for pos := int64(0); pos < size; {
		start, err := unix.Seek(int(f.Fd()), pos, unix.SEEK_DATA)
		if err != nil {
			if errors.Is(err, unix.ENXIO) {
				return nil
			}
			return err
		}
		end, err := unix.Seek(int(f.Fd()), start, unix.SEEK_HOLE)
		if err != nil {
			return err
		}
		if err := fn(start, end); err != nil {
			return err
		}
		pos = end
	}
	return nil
}

// compress writes src as zstd to dst and returns its size and src's
// SHA-256.
func compress(src, dst string) (int64, string, error) {
	in, err := os.Open(src)
	if err != nil {
		return 0, "", err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return 0, "", err
	}
	defer out.Close()
	enc, err := zstd.NewWriter(out, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(1))
	if err != nil {
		return 0, "", err
	}
	h := sha256.New()
	if _, err := io.Copy(enc, io.TeeReader(in, h)); err != nil {
		return 0, "", err
	}
	if err := enc.Close(); err != nil {
		return 0, "", err
	}
	if err := out.Sync(); err != nil {
		return 0, "", err
	}
	fi, err := out.Stat()
	if err != nil {
		return 0, "", err
	}
	return fi.Size(), v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h.Sum(nil))}.String(), out.Close()
}
