package fsutil

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"strings"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// ErrSymlink is returned when a path beneath a [Dir] would go through a
// symlink, or leave the directory: nothing is created, written or read
// there.
var ErrSymlink = errors.New("fsutil: path goes through a symlink")

// Dir is an open directory in which paths are resolved without following
// any symlink, at any depth, and without leaving it: openat2 with
// RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS where the kernel has it (Linux 5.6),
// else one openat with O_NOFOLLOW per path element. Paths are slash
// separated and relative; "" and "." name the directory itself.
type Dir struct {
	fd   int
	name string
}

// OpenDir opens dir, which must itself be a directory and not a symlink.
func OpenDir(dir string) (*Dir, error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
			return nil, fmt.Errorf("%w: %s is not a directory", ErrSymlink, dir)
		}
		return nil, &fs.PathError{Op: "open", Path: dir, Err: err}
	}
	return &Dir{fd: fd, name: dir}, nil
}

// Close closes the directory.
func (d *Dir) Close() error { return unix.Close(d.fd) }

// Name is the path the directory was opened by.
func (d *Dir) Name() string { return d.name }

// noOpenat2 is set once the kernel has said it lacks openat2.
var noOpenat2 atomic.Bool

// resolve opens rel beneath d with flags, following no symlink.
func (d *Dir) resolve(rel string, flags int, mode uint32) (int, error) {
	rel = strings.TrimPrefix(rel, "./")
	if rel == "" || rel == "." {
		rel = "."
	}
	for _, el := range strings.Split(rel, "/") {
		if el == ".." || el == "" {
			return -1, fmt.Errorf("%w: %q leaves %s", ErrSymlink, rel, d.name)
		}
	}
	flags |= unix.O_CLOEXEC | unix.O_NOFOLLOW
	if !noOpenat2.Load() {
		fd, err := unix.Openat2(d.fd, rel, &unix.OpenHow{
			Flags:   uint64(flags),
			Mode:    uint64(mode),
			Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
		})
		if err == nil {
			return fd, nil
		}
		if !errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.EPERM) {
			return -1, d.pathErr(rel, err)
		}
		noOpenat2.Store(true) // seccomp or an old kernel: walk by hand
	}
	els := strings.Split(rel, "/")
	fd := d.fd
	for i, el := range els {
		f, m := unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC|unix.O_NOFOLLOW, uint32(0)
		if i == len(els)-1 {
			f, m = flags, mode
		}
		next, err := unix.Openat(fd, el, f, m)
		if fd != d.fd {
			unix.Close(fd)
		}
		if err != nil {
			return -1, d.pathErr(rel, err)
		}
		fd = next
	}
	if fd == d.fd {
		return unix.Dup(d.fd)
	}
	return fd, nil
}

func (d *Dir) pathErr(rel string, err error) error {
	if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.EXDEV) {
		return fmt.Errorf("%w: %s/%s", ErrSymlink, d.name, rel)
	}
	return &fs.PathError{Op: "open", Path: d.name + "/" + rel, Err: err}
}

// parent opens the directory holding rel and returns its last element.
func (d *Dir) parent(rel string) (int, string, error) {
	dir, base := path.Split(rel)
	if base == "" || base == "." || base == ".." {
		return -1, "", fmt.Errorf("%w: %q names no entry of %s", ErrSymlink, rel, d.name)
	}
	fd, err := d.resolve(strings.TrimSuffix(dir, "/"), unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if errors.Is(err, unix.ENOTDIR) {
		err = fmt.Errorf("%w: the parent of %s/%s is not a directory", ErrSymlink, d.name, rel)
	}
	return fd, base, err
}

// Mkdir makes the directory rel.
func (d *Dir) Mkdir(rel string, perm os.FileMode) error {
	fd, base, err := d.parent(rel)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.Mkdirat(fd, base, uint32(perm.Perm())); err != nil {
		return &fs.PathError{Op: "mkdir", Path: d.name + "/" + rel, Err: err}
	}
	return nil
}

// Symlink makes rel a symlink to target.
func (d *Dir) Symlink(target, rel string) error {
	fd, base, err := d.parent(rel)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.Symlinkat(target, fd, base); err != nil {
		return &fs.PathError{Op: "symlink", Path: d.name + "/" + rel, Err: err}
	}
	return nil
}

// Create makes the new regular file rel, failing if anything is there.
func (d *Dir) Create(rel string, perm os.FileMode) (*os.File, error) {
	fd, err := d.resolve(rel, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL, uint32(perm.Perm()))
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), d.name+"/"+rel), nil
}

// WriteFile makes the new regular file rel holding data.
func (d *Dir) WriteFile(rel string, data []byte, perm os.FileMode) error {
	f, err := d.Create(rel, perm)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// Open opens the regular file rel for reading.
func (d *Dir) Open(rel string) (*os.File, error) {
	fd, err := d.resolve(rel, unix.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), d.name+"/"+rel)
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%s/%s is not a regular file", d.name, rel)
	}
	return f, nil
}
