package bootproof_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/otter-fleet/otter/boot"
	"github.com/otter-fleet/otter/bundle"
	"github.com/otter-fleet/otter/image"
	"github.com/otter-fleet/otter/internal/demo"
	"github.com/otter-fleet/otter/internal/testutil"
	"github.com/otter-fleet/otter/internal/testutil/publish"
	"github.com/otter-fleet/otter/nix"
	"github.com/otter-fleet/otter/oci"
	"github.com/otter-fleet/otter/release"
	"github.com/otter-fleet/otter/sign"
)

// kitDir is where task setup unpacks the arm64 Debian packages the
// proof boots: linux-image-arm64, busybox-static, systemd-boot-efi.
const kitDir = "/var/cache/otter/arm64"

// firmware is qemu-efi-aarch64's UEFI build for -M virt.
const firmware = "/usr/share/qemu-efi-aarch64/QEMU_EFI.fd"

type kit struct {
	kernel, modules, systemdBoot, busybox string
}

func findKit(t *testing.T) kit {
	t.Helper()
	root := kitDir
	if d := os.Getenv("OTTER_ARM64_ROOT"); d != "" {
		root = d
	}
	_, err := exec.LookPath("qemu-system-aarch64")
	testutil.Require(t, err == nil, "qemu-system-aarch64 (qemu-system-arm; task setup)")
	_, err = os.Stat(firmware)
	testutil.Require(t, err == nil, "UEFI firmware for aarch64 (qemu-efi-aarch64; task setup)")
	kernels, _ := filepath.Glob(filepath.Join(root, "boot", "vmlinuz-*"))
	testutil.Require(t, len(kernels) == 1, "Debian's arm64 kernel unpacked in "+root+" (task setup)")
	ver := strings.TrimPrefix(filepath.Base(kernels[0]), "vmlinuz-")
	k := kit{kernel: kernels[0], modules: filepath.Join(root, "lib", "modules", ver, "kernel"),
		systemdBoot: filepath.Join(root, "usr", "lib", "systemd", "boot", "efi", "systemd-bootaa64.efi"),
		busybox:     filepath.Join(root, "bin", "busybox")}
	for _, p := range []string{k.modules, k.systemdBoot, k.busybox} {
		_, err := os.Stat(p)
		testutil.Require(t, err == nil, p+" (task setup)")
	}
	return k
}

// modules are what the initramfs loads, in dependency order: the virtio
// disk and network, ext4 for the root, vfat for the ESP.
var modules = []string{
	"drivers/virtio/virtio_pci_legacy_dev", "drivers/virtio/virtio_pci_modern_dev", "drivers/virtio/virtio_pci",
	"drivers/block/virtio_blk", "net/core/failover", "drivers/net/net_failover", "drivers/net/virtio_net",
	"lib/crc16", "fs/mbcache", "fs/jbd2/jbd2", "crypto/crc32c_generic", "fs/ext4/ext4",
	"fs/fat/fat", "fs/fat/vfat", "fs/nls/nls_cp437", "fs/nls/nls_ascii",
}

// initramfsInit mounts the root partition (by its label) and starts the
// init= of the kernel command line on it: the generation the boot entry
// names. An init that is missing or exits ends in a kernel panic, and
// panic=5 resets the machine.
const initramfsInit = `#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /modules); do insmod /lib/modules/$(basename $m).ko || echo "initramfs: insmod $m failed"; done
for i in $(seq 1 100); do dev=$(findfs LABEL=otter-root 2>/dev/null) && break; sleep 0.1; done
mount -t ext4 -o rw "$dev" /newroot || { echo "initramfs: cannot mount the root ($dev)"; exit 1; }
init=$(tr ' ' '\n' < /proc/cmdline | sed -n 's/^init=//p' | tail -n 1)
mkdir -p /newroot/dev /newroot/proc /newroot/sys
mount --move /dev /newroot/dev
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
exec switch_root /newroot "$init"
`

// cpio is a newc archive, the initramfs format.
type cpio struct {
	buf bytes.Buffer
	ino int
}

func (c *cpio) add(name string, mode uint32, data []byte, rmajor, rminor int) {
	c.ino++
	fmt.Fprintf(&c.buf, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rmajor, rminor, len(name)+1, 0)
	c.buf.WriteString(name)
	c.buf.WriteByte(0)
	c.pad()
	c.buf.Write(data)
	c.pad()
}

func (c *cpio) pad() {
	for c.buf.Len()%4 != 0 {
		c.buf.WriteByte(0)
	}
}

func (c *cpio) bytes() []byte {
	c.add("TRAILER!!!", 0, nil, 0, 0)
	return c.buf.Bytes()
}

func initramfs(t *testing.T, k kit) []byte {
	t.Helper()
	var c cpio
	for _, d := range []string{"bin", "dev", "proc", "sys", "newroot", "lib", "lib/modules"} {
		c.add(d, 0o40755, nil, 0, 0)
	}
	c.add("dev/console", 0o20600, nil, 5, 1)
	c.add("bin/busybox", 0o100755, mustRead(t, k.busybox), 0, 0)
	c.add("init", 0o100755, []byte(initramfsInit), 0, 0)
	c.add("modules", 0o100644, []byte(strings.Join(modules, "\n")+"\n"), 0, 0)
	for _, m := range modules {
		c.add("lib/modules/"+filepath.Base(m)+".ko", 0o100644, mustRead(t, filepath.Join(k.modules, m+".ko")), 0, 0)
	}
	return c.bytes()
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// releaseInit is a good release's init: the network up, the ESP mounted,
// otter confirm, then otter agent, polling every two seconds, which
// reboots into what it stages.
func releaseInit(n int, busybox, otter, config string) string {
	return fmt.Sprintf(`#!%[1]s/bin/sh
%[1]s/bin/busybox mkdir -p /bin /run /tmp /efi
%[1]s/bin/busybox --install -s /bin
export PATH=/bin
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t vfat /dev/vda1 /efi
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
echo "otter-proof: release %[4]d booted: $(cat /proc/cmdline)"
O=%[2]s/bin/otter
C="--config %[3]s/device.yaml"
$O confirm $C --json
echo "otter-proof: confirm exit $?"
exec $O agent $C
`, busybox, otter, config, n)
}

// panicInit is release 3's: it exits, and the kernel panics.
func panicInit(busybox string) string {
	return fmt.Sprintf("#!%s/bin/sh\necho \"otter-proof: release 3 panics\"\nexit 1\n", busybox)
}

// store holds the releases' store paths.
type store struct {
	dir   string
	infos map[string]nix.PathInfo
}

func (s *store) path(t *testing.T, name string, files map[string][]byte, refs ...string) string {
	t.Helper()
	p := demo.StorePath(name)
	root := filepath.Join(s.dir, nix.BaseName(p))
	for rel, data := range files {
		f := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(f), 0o755); err != nil {
			t.Fatal(err)
		}
		var err error
		switch {
		case strings.HasPrefix(string(data), "->"):
			err = os.Symlink(strings.TrimPrefix(string(data), "->"), f)
		case rel == "init" || strings.HasPrefix(rel, "bin/"):
			err = os.WriteFile(f, data, 0o555)
		default:
			err = os.WriteFile(f, data, 0o444)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	h, size, err := nix.HashPath(root)
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(refs)
	s.infos[p] = nix.PathInfo{Path: p, NarHash: h, NarSize: size, References: append([]string{}, refs...)}
	return p
}

func (s *store) closure(t *testing.T, root string) *nix.Closure {
	t.Helper()
	var infos []nix.PathInfo
	var walk func(p string)
	seen := map[string]bool{}
	walk = func(p string) {
		if seen[p] {
			return
		}
		seen[p] = true
		infos = append(infos, s.infos[p])
		for _, r := range s.infos[p].References {
			walk(r)
		}
	}
	walk(root)
	c, err := nix.NewClosure(root, infos)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// published is one release in the registry.
type published struct {
	bundle   *bundle.Bundle
	desc     v1.Descriptor
	ref      oci.Ref
	envelope []byte
}

// vm is one run of qemu-system-aarch64; resets stay in it.
type vm struct {
	cmd   *exec.Cmd
	lines chan string
	mu    sync.Mutex
	log   *bytes.Buffer
	start time.Time
}

func startVM(t *testing.T, img string, log *bytes.Buffer) *vm {
	t.Helper()
	cmd := exec.Command("qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a72", "-smp", "2", "-m", "1024",
		"-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio",
		"-bios", firmware, "-boot", "menu=on,splash-time=0",
		"-drive", "if=none,id=disk,format=raw,file="+img, "-device", "virtio-blk-pci,drive=disk",
		"-netdev", "user,id=net", "-device", "virtio-net-pci,netdev=net,romfile=")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	v := &vm{cmd: cmd, lines: make(chan string, 100000), log: log, start: time.Now()}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			l := strings.TrimRight(sc.Text(), "\r")
			v.mu.Lock()
			fmt.Fprintf(v.log, "%7.1fs %s\n", time.Since(v.start).Seconds(), l)
			v.mu.Unlock()
			v.lines <- l
		}
		close(v.lines)
	}()
	t.Cleanup(v.kill)
	return v
}

// kill is a power cut.
func (v *vm) kill() {
	if v.cmd.Process != nil {
		_ = v.cmd.Process.Kill()
		_ = v.cmd.Wait()
	}
}

// expect waits for a console line matching re and returns its
// submatches; the whole console log is in the failure.
func (v *vm) expect(t *testing.T, re string, timeout time.Duration) []string {
	t.Helper()
	rx := regexp.MustCompile(re)
	deadline := time.After(timeout)
	for {
		select {
		case l, ok := <-v.lines:
			if !ok {
				t.Fatalf("qemu ended before %q\n%s", re, v.tail())
			}
			if m := rx.FindStringSubmatch(l); m != nil {
				return m
			}
		case <-deadline:
			t.Fatalf("no %q on the console within %v\n%s", re, timeout, v.tail())
		}
	}
}

func (v *vm) tail() string {
	v.mu.Lock()
	defer v.mu.Unlock()
	s := v.log.String()
	if len(s) > 12000 {
		s = "…" + s[len(s)-12000:]
	}
	return s
}

// TestBootProof builds a generic image of release 1 and boots it under
// qemu-system-aarch64: it updates itself to release 2 (a new init) from
// the docker-registry on the host, reboots into it and confirms it.
// Release 3, whose init panics, is tried three times and the machine
// comes back on release 2 by itself, reporting release 3 as failed; a
// power cut during the update to release 4, and another during its
// tried boot, both come back on a good release, and release 4 is
// confirmed. About 80 seconds here.
func TestBootProof(t *testing.T) {
	k := findKit(t)
	reg := testutil.RealRegistry(t)
	ctx := context.Background()
	work := t.TempDir()
	timing := map[string]time.Duration{}

	// otter for the device, static arm64.
	repo, err := testutil.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	otterBin := filepath.Join(work, "otter")
	build := exec.Command("go", "build", "-trimpath", "-o", otterBin, "./cmd/otter")
	build.Dir = repo
	build.Env = append(os.Environ(), "GOOS=linux", "GOARCH=arm64", "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building otter for arm64: %v\n%s", err, out)
	}

	// The store: busybox, otter, the device config, and one root per
	// release with its boot part (the Debian kernel, an initramfs) and
	// its init.
	s := &store{dir: filepath.Join(work, "store"), infos: map[string]nix.PathInfo{}}
	name := testutil.Repository(t)
	bb := s.path(t, "busybox-static-1.35.0", map[string][]byte{"bin/busybox": mustRead(t, k.busybox), "bin/sh": []byte("->busybox")})
	ot := s.path(t, "otter-proof", map[string][]byte{"bin/otter": mustRead(t, otterBin)})
	config := fmt.Sprintf(`version: 1
release: 10.0.2.2:%s/%s:stable
insecure: true
trust: /var/lib/otter/trust.json
wariness: 0
healthCheck: test -e /efi/loader/loader.conf
schedule: {interval: 2s, jitter: 0s, afterBoot: 0s, maxBackoff: 8s}
boot:
  loader: efi
  esp: /efi
  reboot: sync; reboot -f
`, strings.Split(reg, ":")[1], name)
	cf := s.path(t, "otter-proof-config", map[string][]byte{"device.yaml": []byte(config)})
	kernel, initrd := mustRead(t, k.kernel), initramfs(t, k)
	roots := map[int]string{}
	for n := 1; n <= 4; n++ {
		files := map[string][]byte{"boot/vmlinuz": kernel, "boot/initrd": initrd, "init": []byte(releaseInit(n, bb, ot, cf))}
		switch n {
		case 3:
			files["init"] = []byte(panicInit(bb))
		case 4:
			// Incompressible bytes make the update long enough to be cut.
			junk := make([]byte, 24<<20)
			if _, err := rand.Read(junk); err != nil {
				t.Fatal(err)
			}
			files["data"] = junk
		}
		roots[n] = s.path(t, fmt.Sprintf("otter-proof-release-%d", n), files, bb, ot, cf)
	}

	// Published, signed, with patches from the releases a device runs.
	key, err := sign.GenerateKey(sign.Ed25519)
	if err != nil {
		t.Fatal(err)
	}
	trust, err := sign.NewTrust(1, 1, key.Public())
	if err != nil {
		t.Fatal(err)
	}
	trustJSON, err := trust.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	signer := release.Signer{Keys: []crypto.Signer{key}, Now: time.Now().Add(-time.Hour), Expires: time.Now().Add(30 * 24 * time.Hour)}
	rel := map[int]*published{}
	for n := 1; n <= 4; n++ {
		b := testutil.BuildBundle(t, s.closure(t, roots[n]), s.dir, bundle.WithVersion(uint64(n)))
		ref, err := oci.ParseRef(fmt.Sprintf("%s/%s:r%d", reg, name, n), true)
		if err != nil {
			t.Fatal(err)
		}
		desc, env := publish.Release(t, signer, b, ref, uint64(n), "stable")
		rel[n] = &published{bundle: b, desc: desc, ref: ref, envelope: env}
	}
	for _, p := range [][2]int{{1, 2}, {2, 3}, {2, 4}} {
		from, to := rel[p[0]], rel[p[1]]
		size := publish.Patch(t, signer, from.bundle, from.desc.Digest, to.bundle, to.ref, to.desc, "stable", uint64(p[1]))
		t.Logf("patch r%d -> r%d: %d bytes", p[0], p[1], size)
	}
	channel := func(n int) {
		t.Helper()
		ref, err := oci.ParseRef(fmt.Sprintf("%s/%s:r%d", reg, name, n), true)
		if err != nil {
			t.Fatal(err)
		}
		if err := oci.Tag(ctx, ref, "stable", rel[n].bundle); err != nil {
			t.Fatal(err)
		}
	}

	// The image of release 1: systemd-boot from Debian on the ESP.
	espFiles := filepath.Join(work, "esp")
	if err := os.MkdirAll(filepath.Join(espFiles, "EFI", "BOOT"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(espFiles, "EFI", "BOOT", "BOOTAA64.EFI"), mustRead(t, k.systemdBoot), 0o644); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(work, "disk.img")
	res, err := image.Build(ctx, rel[1].bundle, rel[1].bundle.Config, img, image.Options{Board: "generic", BootFiles: espFiles,
		BootSize: 192 << 20, DataSize: 16 << 20, Size: 1024 << 20, Envelope: rel[1].envelope, Trust: trustJSON})
	if err != nil {
		t.Fatal(err)
	}
	esp := &boot.EFI{ESP: boot.FAT{Path: img, Offset: res.Partitions[0].Start}}
	entries := func() string {
		t.Helper()
		es, err := esp.Entries()
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, e := range es {
			names = append(names, e.Name)
			data, err := esp.ESP.ReadFile("loader/entries/" + e.Name)
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(string(data), "current") {
				t.Fatalf("%s names current:\n%s", e.Name, data)
			}
		}
		return strings.Join(names, " ")
	}
	if got := entries(); got != "otter-1.conf" {
		t.Fatalf("the image's entries: %s", got)
	}

	var console bytes.Buffer
	defer func() {
		if t.Failed() || testing.Verbose() {
			_ = os.WriteFile(filepath.Join(os.TempDir(), "otter-bootproof-console.log"), console.Bytes(), 0o644)
		}
	}()
	const bootWait = 4 * time.Minute

	// Release 1 boots, stages release 2 and reboots into it; release 2
	// confirms itself.
	channel(2)
	v := startVM(t, img, &console)
	t0 := time.Now()
	v.expect(t, `^otter-proof: release 1 booted`, bootWait)
	timing["boot: power on to the release's init"] = time.Since(t0)
	v.expect(t, `^otter-proof: confirm exit 0$`, bootWait)
	v.expect(t, `^otter agent: .* names `+rel[2].desc.Digest.String()+`: updating$`, bootWait)
	t1 := time.Now()
	v.expect(t, `^otter agent: staged release 2 .* by patch`, bootWait)
	timing["update to release 2 (the agent's poll to staged; a 2.2 KB patch)"] = time.Since(t1)
	v.expect(t, `^otter agent: rebooting to try release 2$`, bootWait)
	t2 := time.Now()
	m := v.expect(t, `^otter-proof: release (\d) booted: (.*)$`, bootWait)
	timing["reboot into the tried release: staged to its init"] = time.Since(t2)
	if m[1] != "2" || boot.InitOf(m[2]) != "/var/lib/otter/generations/2/root/init" {
		t.Fatalf("the reboot started release %s with %s", m[1], m[2])
	}
	v.expect(t, `"confirmed": 2`, bootWait)
	v.expect(t, `^otter-proof: confirm exit 0$`, bootWait)
	timing["tried boot: staged to confirmed"] = time.Since(t2)
	v.expect(t, `^otter agent: .* unchanged$`, bootWait)

	// Release 3's init panics: three tries, then release 2 by itself.
	channel(3)
	v.expect(t, `^otter agent: rebooting to try release 3$`, bootWait)
	t3 := time.Now()
	for try := 1; try <= boot.Tries; try++ {
		v.expect(t, `^otter-proof: release 3 panics$`, bootWait)
		v.expect(t, `Kernel panic`, bootWait)
	}
	if m := v.expect(t, `^otter-proof: release (\d) booted`, 2*bootWait); m[1] != "2" {
		t.Fatalf("after release 3's failed tries release %s booted", m[1])
	}
	v.expect(t, `did not confirm`, bootWait)
	v.expect(t, `^otter-proof: confirm exit 22$`, bootWait)
	timing["fallback: staged to release 3 reported failed on release 2 (3 tries of a panicking init)"] = time.Since(t3)
	v.expect(t, `^otter agent: poll of .* failed .*failed here before`, bootWait) // known bad

	// A power cut during the update to release 4 (its patch takes a few
	// seconds).
	channel(4)
	v.expect(t, `^otter agent: .* names `+rel[4].desc.Digest.String()+`: updating$`, bootWait)
	time.Sleep(time.Duration(1000+time.Now().UnixNano()%1500) * time.Millisecond)
	v.kill()
	v = startVM(t, img, &console)
	t4 := time.Now()
	m = v.expect(t, `^otter-proof: release (\d) booted`, bootWait)
	timing["power cut during an update: power on to a good release's init"] = time.Since(t4)
	if m[1] != "2" && m[1] != "4" {
		t.Fatalf("after a power cut during the update release %s booted", m[1])
	}
	// The power is cut again in release 4's tried boot, before it
	// confirms: at once if the first cut came after it was staged (this
	// is its tried boot), else once the update, done again or resumed,
	// has staged it and rebooted.
	if m[1] == "2" {
		// What the next otter found: an update interrupted in its
		// phase, or nothing (cut before it began).
		if rec := v.expect(t, `"action": "([a-z-]+)"|^otter-proof: confirm exit`, bootWait); rec[1] != "" {
			t.Logf("after the power cut during the update: recovery %s", rec[1])
		} else {
			t.Logf("after the power cut during the update: nothing to recover")
		}
		v.expect(t, `^otter-proof: release 4 booted`, 2*bootWait)
	}
	v.kill()
	v = startVM(t, img, &console)
	t5 := time.Now()
	// Its entry has tries left: systemd-boot tries it again.
	if m := v.expect(t, `^otter-proof: release (\d) booted`, bootWait); m[1] != "4" {
		t.Fatalf("after a power cut in the tried boot release %s booted", m[1])
	}
	v.expect(t, `"confirmed": [1-9]`, 2*bootWait)
	v.expect(t, `^otter-proof: confirm exit 0$`, bootWait)
	timing["power cut in a tried boot: power on to confirmed"] = time.Since(t5)
	v.kill()
	got := entries()
	if !regexp.MustCompile(`^otter-\d\.conf otter-2\.conf`).MatchString(got) || strings.Contains(got, "+") {
		t.Fatalf("entries at the end: %s", got)
	}
	report(t, timing)
}

func report(t *testing.T, timing map[string]time.Duration) {
	var names []string
	for n := range timing {
		names = append(names, n)
	}
	sort.Strings(names)
	var b strings.Builder
	fmt.Fprintln(&b, "| step | time |\n| --- | ---: |")
	for _, n := range names {
		fmt.Fprintf(&b, "| %s | %.1f s |\n", n, timing[n].Seconds())
	}
	t.Logf("boot proof timings:\n%s", b.String())
}
