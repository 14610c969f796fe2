package boot

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// ErrFAT is a boot partition otter cannot read or write.
var ErrFAT = errors.New("boot: FAT file system")

// FAT is a FAT file system inside a file (a disk image or a block
// device) at a byte offset, read and written with mtools: no mount, no
// root, the same code for an image on a build machine and the SD card in
// a device.
type FAT struct {
	Path   string
	Offset int64
}

func (f FAT) spec() string { return fmt.Sprintf("%s@@%d", f.Path, f.Offset) }

func (f FAT) mtools(stdout *bytes.Buffer, name string, args ...string) error {
	cmd := exec.Command(name, append([]string{"-i", f.spec()}, args...)...)
	cmd.Env = append(os.Environ(), "MTOOLS_SKIP_CHECK=1", "MTOOLS_NO_VFAT=0")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if stdout != nil {
		cmd.Stdout = stdout
	}
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%w: %s %s on %s: %v: %s", ErrFAT, name, strings.Join(args, " "), f.spec(), err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// ReadFile reads a file at the top of the file system; a missing file is
// os.ErrNotExist.
func (f FAT) ReadFile(name string) ([]byte, error) {
	var out bytes.Buffer
	if err := f.mtools(&out, "mtype", "::/"+name); err != nil {
		if strings.Contains(err.Error(), "not found") {
			// mtools: File "::/name" not found; a file system it cannot
			// open is another error.
			return nil, fmt.Errorf("%s: %w", name, os.ErrNotExist)
		}
		return nil, err
	}
	return out.Bytes(), nil
}

// WriteFile writes name, replacing it: one mtools write. It is not
// atomic; only files no firmware is reading from are written this way
// (see Replace).
func (f FAT) WriteFile(name string, data []byte) error {
	dir, err := os.MkdirTemp("", "otter-fat-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	src := filepath.Join(dir, filepath.Base(name))
	if err := os.WriteFile(src, data, 0o644); err != nil {
		return err
	}
	return f.mtools(nil, "mcopy", "-o", "-m", "-Q", src, "::/"+name)
}

// Replace writes name as a new file beside it (name.new) and renames it
// over the old: a power cut leaves the old file, the new one, or — within
// the rename, which FAT does as two directory entry writes — neither, and
// a name.new holding the new content complete.
func (f FAT) Replace(name string, data []byte, cut func(string)) error {
	tmp := strings.TrimSuffix(name, filepath.Ext(name)) + ".new"
	if err := f.WriteFile(tmp, data); err != nil {
		return err
	}
	cut("written " + tmp)
	return f.mtools(nil, "mren", "-D", "o", "::/"+tmp, "::/"+name)
}

// Remove removes name; a missing file is not an error.
func (f FAT) Remove(name string) error {
	if _, err := f.ReadFile(name); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return f.mtools(nil, "mdel", "::/"+name)
}
