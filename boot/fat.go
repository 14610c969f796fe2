package boot

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/otter-fleet/otter/internal/fsutil"
)

// ErrFAT is a boot partition otter cannot read or write.
var ErrFAT = errors.New("boot: FAT file system")

// Volume is a boot partition as otter writes it: a FAT file system,
// reached with mtools (FAT) or through a mount (Dir). Names are slash
// separated and relative to the partition's top.
type Volume interface {
	// ReadFile reads a file; a missing one is os.ErrNotExist.
	ReadFile(name string) ([]byte, error)
	// WriteFile writes a file, replacing it, and makes its directory;
	// not atomic (see Replace).
	WriteFile(name string, data []byte) error
	// Rename renames a file, replacing to.
	Rename(from, to string) error
	// Remove removes a file; a missing one is not an error.
	Remove(name string) error
	// RemoveAll removes a file, or a directory and what it holds; a
	// missing one is not an error.
	RemoveAll(dir string) error
	// MkdirAll makes a directory and its parents.
	MkdirAll(dir string) error
	// List gives the names in a directory, sorted; none when it is
	// missing.
	List(dir string) ([]string, error)
	// Space gives the file system's size and its free bytes.
	Space() (total, free int64, err error)
}

// Replace writes name as a new file beside it (name.new) and renames it
// over the old: a power cut leaves the old file, the new one, or — within
// the rename, which FAT does as two directory entry writes — neither, and
// a name.new holding the new content complete.
func Replace(v Volume, name string, data []byte, cut func(string)) error {
	tmp := strings.TrimSuffix(name, filepath.Ext(name)) + ".new"
	if err := v.WriteFile(tmp, data); err != nil {
		return err
	}
	if cut != nil {
		cut("written " + tmp)
	}
	return v.Rename(tmp, name)
}

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

// ReadFile reads a file; a missing file is os.ErrNotExist.
func (f FAT) ReadFile(name string) ([]byte, error) {
	var out bytes.Buffer
	if err := f.mtools(&out, "mtype", "::/"+name); err != nil {
		if notFound(err) {
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
	if i := strings.LastIndex(name, "/"); i > 0 {
		if err := f.MkdirAll(name[:i]); err != nil {
			return err
		}
	}
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

// Rename renames from to to, replacing to.
func (f FAT) Rename(from, to string) error {
	return f.mtools(nil, "mren", "-D", "o", "::/"+from, "::/"+to)
}

// Remove removes name; a missing file is not an error.
func (f FAT) Remove(name string) error {
	if err := f.mtools(nil, "mdel", "::/"+name); err != nil && !notFound(err) {
		return err
	}
	return nil
}

// notFound says an mtools command failed on a missing name (it prints
// File "::/name" not found); a file system it cannot open is another
// error.
func notFound(err error) bool { return strings.Contains(err.Error(), "not found") }

// RemoveAll removes a file, or a directory and its contents; a missing
// one is not an error.
func (f FAT) RemoveAll(name string) error {
	if err := f.mtools(nil, "mdel", "::/"+name); err == nil {
		return nil
	}
	if err := f.mtools(nil, "mdeltree", "::/"+name); err != nil && !notFound(err) {
		return err
	}
	return nil
}

// MkdirAll makes dir and its parents.
func (f FAT) MkdirAll(dir string) error {
	parts := strings.Split(strings.Trim(dir, "/"), "/")
	for i := range parts {
		p := strings.Join(parts[:i+1], "/")
		if err := f.mtools(nil, "mdir", "-b", "::/"+p); err == nil {
			continue
		}
		if err := f.mtools(nil, "mmd", "::/"+p); err != nil {
			return err
		}
	}
	return nil
}

// List gives the names in dir, sorted; nil when dir is missing.
func (f FAT) List(dir string) ([]string, error) {
	var out bytes.Buffer
	if err := f.mtools(&out, "mdir", "-b", "::/"+dir); err != nil {
		if notFound(err) {
			return nil, nil
		}
		return nil, err
	}
	var names []string
	for _, l := range strings.Split(out.String(), "\n") {
		if l = strings.TrimRight(l, "/"); l != "" {
			names = append(names, l[strings.LastIndex(l, "/")+1:])
		}
	}
	sort.Strings(names)
	return names, nil
}

var (
	sizeRE   = regexp.MustCompile(`(?m)^(?:big|small) size: ([0-9]+) sectors`)
	sectorRE = regexp.MustCompile(`(?m)^sector size: ([0-9]+) bytes`)
	freeRE   = regexp.MustCompile(`(?m)^\s*([0-9][0-9 ]*) bytes free`)
)

// Space gives the file system's size (minfo) and its free bytes (mdir).
func (f FAT) Space() (total, free int64, err error) {
	var info, dir bytes.Buffer
	if err := f.mtools(&info, "minfo", "::"); err != nil {
		return 0, 0, err
	}
	if err := f.mtools(&dir, "mdir", "::/"); err != nil {
		return 0, 0, err
	}
	sector := sectorRE.FindStringSubmatch(info.String())
	for _, m := range sizeRE.FindAllStringSubmatch(info.String(), -1) {
		if n, _ := strconv.ParseInt(m[1], 10, 64); n > 0 && sector != nil {
			b, _ := strconv.ParseInt(sector[1], 10, 64)
			total = n * b
		}
	}
	fm := freeRE.FindStringSubmatch(dir.String())
	if total == 0 || fm == nil {
		return 0, 0, fmt.Errorf("%w: the size of %s: minfo and mdir said\n%s%s", ErrFAT, f.spec(), info.String(), dir.String())
	}
	free, _ = strconv.ParseInt(strings.ReplaceAll(fm[1], " ", ""), 10, 64)
	return total, free, nil
}

// Dir is a boot partition mounted at a directory (vfat on the device):
// plain file operations, each write synced with its directory, so that
// what the firmware reads after a power cut is what Replace promises.
type Dir string

func (d Dir) path(name string) string { return filepath.Join(string(d), filepath.FromSlash(name)) }

// ReadFile reads a file.
func (d Dir) ReadFile(name string) ([]byte, error) { return os.ReadFile(d.path(name)) }

// WriteFile writes a file and syncs it and its directory.
func (d Dir) WriteFile(name string, data []byte) error {
	p := d.path(name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return fsutil.SyncDir(filepath.Dir(p))
}

// Rename renames a file and syncs its directory.
func (d Dir) Rename(from, to string) error {
	if err := os.Rename(d.path(from), d.path(to)); err != nil {
		return err
	}
	return fsutil.SyncDir(filepath.Dir(d.path(to)))
}

// Remove removes a file; a missing one is not an error.
func (d Dir) Remove(name string) error {
	if err := os.Remove(d.path(name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return fsutil.SyncDir(filepath.Dir(d.path(name)))
}

// RemoveAll removes a file, or a directory and its contents.
func (d Dir) RemoveAll(dir string) error {
	if err := os.RemoveAll(d.path(dir)); err != nil {
		return err
	}
	return fsutil.SyncDir(filepath.Dir(d.path(dir)))
}

// MkdirAll makes a directory and its parents.
func (d Dir) MkdirAll(dir string) error { return os.MkdirAll(d.path(dir), 0o755) }

// Space gives the mounted file system's size and free bytes.
func (d Dir) Space() (total, free int64, err error) {
	var st unix.Statfs_t
	if err := unix.Statfs(string(d), &st); err != nil {
		return 0, 0, err
	}
	return int64(st.Blocks) * st.Bsize, int64(st.Bavail) * st.Bsize, nil
}

// List gives the names in dir, sorted; nil when it is missing.
func (d Dir) List(dir string) ([]string, error) {
	ents, err := os.ReadDir(d.path(dir))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names, nil
}

// OpenVolume opens a boot partition by the name a device config gives
// it: a directory is a mounted partition (Dir); anything else is a
// block device or image file holding FAT, at the byte offset after an @
// (FAT, with mtools).
func OpenVolume(spec string) (Volume, error) {
	if spec == "" {
		return nil, fmt.Errorf("%w: no partition named", ErrFAT)
	}
	if fi, err := os.Stat(spec); err == nil && fi.IsDir() {
		return Dir(spec), nil
	}
	path, off := spec, int64(0)
	if i := strings.LastIndex(spec, "@"); i > 0 {
		n, err := strconv.ParseInt(spec[i+1:], 10, 64)
		if err != nil || n < 0 {
			return nil, fmt.Errorf("%w: %q: PATH or PATH@OFFSET (bytes)", ErrFAT, spec)
		}
		path, off = spec[:i], n
	}
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrFAT, err)
	}
	return FAT{Path: path, Offset: off}, nil
}
