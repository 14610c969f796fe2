// Package fsutil holds the file-system steps otter's durability rests on:
// atomic replacement of a file, syncing a directory, and removing
// read-only store trees.
package fsutil

import (
	"io/fs"
	"os"
	"path/filepath"
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
