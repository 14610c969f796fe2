package bundle

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"syscall"

	"github.com/otter-fleet/otter/nix"
)

// ErrBootPart is a release whose boot part breaks the convention of
// docs/bundle.md §3.1: refused when the bundle is built.
var ErrBootPart = errors.New("bundle: invalid boot part")

// Boot is a release's boot part (docs/bundle.md §3.1): the root store
// path's boot/ directory — kernel, initrd, device trees, firmware, config
// fragments — and the init it starts, ROOT/init. A device compares
// NarHash with the installed release's: a different boot part needs a
// reboot into a tried slot; the same one only an activation.
type Boot struct {
	// NarHash and NarSize are those of ROOT/boot, as `nix-store --dump`
	// would serialise it.
	NarHash nix.Hash `json:"narHash"`
	NarSize int64    `json:"narSize"`
	// Kernel is the kernel's file name in boot/; Initrd the initrd's,
	// if there is one.
	Kernel string `json:"kernel"`
	Initrd string `json:"initrd,omitempty"`
	// Init is the NAR hash of ROOT/init (a symlink is hashed as one): a
	// new init needs a tried boot as much as a new kernel does.
	Init nix.Hash `json:"init"`
}

var (
	kernelRE = regexp.MustCompile(`^(Image|vmlinuz(-.+)?|kernel[0-9_a-z]*\.img|linux)$`)
	initrdRE = regexp.MustCompile(`^(initrd(\.img)?(-.+)?|initramfs.*)$`)
	fileRE   = regexp.MustCompile(`^[A-Za-z0-9._+-]{1,128}$`)
)

// ReadBoot reads the boot part of the release whose root store path is
// root (a directory on disk): nil when it has no boot/ directory.
func ReadBoot(root string) (*Boot, error) {
	dir := filepath.Join(root, "boot")
	fi, err := os.Lstat(dir)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
		return nil, nil // no boot part (or a root that is a file)
	}
	if err != nil {
		return nil, err
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("%w: %s is not a directory", ErrBootPart, dir)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	b := &Boot{}
	var kernels, initrds []string
	for _, e := range ents {
		switch {
		case kernelRE.MatchString(e.Name()) && e.Type().IsRegular():
			kernels = append(kernels, e.Name())
		case initrdRE.MatchString(e.Name()) && e.Type().IsRegular():
			initrds = append(initrds, e.Name())
		}
	}
	sort.Strings(kernels)
	sort.Strings(initrds)
	switch {
	case len(kernels) == 0:
		return nil, fmt.Errorf("%w: %s holds no kernel (Image, vmlinuz*, kernel*.img or linux)", ErrBootPart, dir)
	case len(kernels) > 1:
		return nil, fmt.Errorf("%w: %s holds %d kernels %v: one, please", ErrBootPart, dir, len(kernels), kernels)
	case len(initrds) > 1:
		return nil, fmt.Errorf("%w: %s holds %d initrds %v: one at most", ErrBootPart, dir, len(initrds), initrds)
	}
	b.Kernel = kernels[0]
	if len(initrds) == 1 {
		b.Initrd = initrds[0]
	}
	// init may be a symlink into another store path (NixOS's is): it is
	// not followed, the store tree may not be at /nix/store here.
	if fi, err := os.Lstat(filepath.Join(root, "init")); err != nil || !(fi.Mode()&fs.ModeSymlink != 0 || fi.Mode().IsRegular() && fi.Mode()&0o111 != 0) {
		return nil, fmt.Errorf("%w: %s has boot/ but no executable init", ErrBootPart, root)
	}
	if b.NarHash, b.NarSize, err = nix.HashPath(dir); err != nil {
		return nil, err
	}
	if b.Init, _, err = nix.HashPath(filepath.Join(root, "init")); err != nil {
		return nil, err
	}
	return b, nil
}

// Read reads the kernel and the initrd (nil when there is none) of this
// boot part from dir, the root's boot/ directory.
func (b *Boot) Read(dir string) (kernel, initrd []byte, err error) {
	if kernel, err = os.ReadFile(filepath.Join(dir, b.Kernel)); err != nil {
		return nil, nil, err
	}
	if b.Initrd != "" {
		if initrd, err = os.ReadFile(filepath.Join(dir, b.Initrd)); err != nil {
			return nil, nil, err
		}
	}
	return kernel, initrd, nil
}

// Validate checks the fields' form.
func (b *Boot) Validate() error {
	switch {
	case !kernelRE.MatchString(b.Kernel):
		return fmt.Errorf("%w: boot.kernel %q", ErrConfig, b.Kernel)
	case b.Initrd != "" && (!initrdRE.MatchString(b.Initrd) || !fileRE.MatchString(b.Initrd)):
		return fmt.Errorf("%w: boot.initrd %q", ErrConfig, b.Initrd)
	case b.NarSize <= 0 || b.NarSize > MaxNarSize:
		return fmt.Errorf("%w: boot.narSize %d", ErrConfig, b.NarSize)
	case b.Init == nix.Hash{}:
		return fmt.Errorf("%w: boot.init is missing", ErrConfig)
	}
	return nil
}

// NeedsReboot says whether going from the release old to next changes
// the boot part or the init: then the update is tried by a reboot into the other
// slot (docs/image.md §2) instead of an activation.
func NeedsReboot(old, next *Config) bool {
	switch {
	case next.Boot == nil:
		return false
	case old == nil || old.Boot == nil:
		return true
	}
	return old.Boot.NarHash != next.Boot.NarHash || old.Boot.Init != next.Boot.Init
}

// Fits checks that the boot part fits a boot partition (or an ESP's
// free space) of size bytes, with its FAT overhead (a cluster per file
// rounded up, 1/16 for the tables) counted generously.
func (b *Boot) Fits(size int64) error {
	need := b.NarSize + b.NarSize/16
	if need > size {
		return fmt.Errorf("%w: the boot part needs about %d bytes, the partition has %d", ErrBootPart, need, size)
	}
	return nil
}
