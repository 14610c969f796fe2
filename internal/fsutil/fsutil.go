// Package fsutil holds the file-system steps otter's durability rests on:
// atomic replacement of a file, syncing a directory, and removing
// read-only store trees.
package fsutil

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// AtomicWrite replaces p with content: a temporary file beside it, synced,
// renamed over p, and the directory synced. A reader sees the old file or
// the new one, never a part.
func AtomicWrite(p string, content []byte, perm os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(p), "."+filepath.Base(p)+".tmp-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	if _, err := tmp.Write(content); err != nil {
		return err
	}
	if err := tmp.Chmod(perm); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), p); err != nil {
		return err
	}
	return SyncDir(filepath.Dir(p))
}

// SyncDir makes the entries of dir durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// RemoveAll removes a tree, read-only directories (store paths) included.
func RemoveAll(dir string) error {
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			_ = os.Chmod(p, 0o755)
		}
		return nil
	})
	return os.RemoveAll(dir)
}

// Canonicalize gives a tree the modes and times of the Nix store: files
// 0444 or 0555 (executable), directories 0555, modification time 1,
// directories last so nothing more is written into them.
func Canonicalize(root string) error {
	var dirs []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			dirs = append(dirs, p)
			return nil
		case d.Type().IsRegular():
			fi, err := d.Info()
			if err != nil {
				return err
			}
			mode := os.FileMode(0o444)
			if fi.Mode()&0o100 != 0 {
				mode = 0o555
			}
			if err := os.Chmod(p, mode); err != nil {
				return err
			}
		}
		return StoreTime(p)
	})
	if err != nil {
		return err
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := os.Chmod(dirs[i], 0o555); err != nil {
			return err
		}
		if err := StoreTime(dirs[i]); err != nil {
			return err
		}
	}
	return nil
}

// StoreTime sets p's modification time to 1, as Nix does, without
// following a symlink.
func StoreTime(p string) error {
	ts := []unix.Timespec{{Sec: 1}, {Sec: 1}}
	return unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW)
}

// SyncFS flushes the file system holding dir.
func SyncFS(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.Syncfs(int(f.Fd()))
}

// RenameStorePath renames a finished store path into place. Moving a
// directory to another parent rewrites its ".." entry, which needs write
// permission on it that a read-only (0555) store directory denies to
// anyone but root: the directory is made writable for the move and
// read-only again after.
func RenameStorePath(src, dst string) error {
	err := os.Rename(src, dst)
	if err == nil || !errors.Is(err, fs.ErrPermission) {
		return err
	}
	fi, serr := os.Lstat(src)
	if serr != nil || !fi.IsDir() {
		return err
	}
	if err := os.Chmod(src, fi.Mode().Perm()|0o200); err != nil {
		return err
	}
	if err := os.Rename(src, dst); err != nil {
		return errors.Join(err, os.Chmod(src, fi.Mode().Perm()))
	}
	if err := os.Chmod(dst, fi.Mode().Perm()); err != nil {
		return err
	}
	return StoreTime(dst)
}
