package nix

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// EntryType is the kind of a NAR node.
type EntryType uint8

const (
	TypeDirectory EntryType = iota + 1
	TypeRegular
	TypeSymlink
)

func (t EntryType) String() string {
	switch t {
	case TypeDirectory:
		return "directory"
	case TypeRegular:
		return "regular"
	case TypeSymlink:
		return "symlink"
	}
	return fmt.Sprintf("EntryType(%d)", uint8(t))
}

// Header describes one node of a NAR. Path is slash-separated and relative
// to the NAR's root; the root itself has Path "".
type Header struct {
	Path       string
	Type       EntryType
	Executable bool   // regular files only
	Size       int64  // regular files only
	LinkTarget string // symlinks only
}

// ErrNARFormat is returned for a sequence of nodes that no NAR can hold:
// entries out of order, a child of a non-directory, contents of the wrong
// size.
var ErrNARFormat = errors.New("nix: invalid NAR structure")

type narDir struct {
	path string
	last string // name of the last child written, "" when none
}

// NARWriter serialises a file system tree into Nix's archive format, driven
// like archive/tar's Writer: WriteHeader for every node in NAR order
// (depth first, directory entries in byte order of their names), then the
// contents of a regular file through Write. Close finishes the archive.
type NARWriter struct {
	w       io.Writer
	n       int64
	started bool
	closed  bool
	dirs    []narDir
	remain  int64 // bytes of the current regular file still to come
	pad     int64
	inFile  bool
	fileTop bool // the open file is the root node
}

// NewNARWriter returns a NARWriter writing to w.
func NewNARWriter(w io.Writer) *NARWriter { return &NARWriter{w: w} }

// Size is the number of NAR bytes written so far.
func (nw *NARWriter) Size() int64 { return nw.n }

func (nw *NARWriter) raw(b []byte) error {
	n, err := nw.w.Write(b)
	nw.n += int64(n)
	return err
}

var zeros [8]byte

func (nw *NARWriter) str(s string) error {
	var l [8]byte
	binary.LittleEndian.PutUint64(l[:], uint64(len(s)))
	if err := nw.raw(l[:]); err != nil {
		return err
	}
	if err := nw.raw([]byte(s)); err != nil {
		return err
	}
	return nw.raw(zeros[:(8-len(s)%8)%8])
}

func (nw *NARWriter) strs(ss ...string) error {
	for _, s := range ss {
		if err := nw.str(s); err != nil {
			return err
		}
	}
	return nil
}

// finishFile closes the regular file being written, if any.
func (nw *NARWriter) finishFile() error {
	if !nw.inFile {
		return nil
	}
	if nw.remain != 0 {
		return fmt.Errorf("%w: %d bytes of file contents missing", ErrNARFormat, nw.remain)
	}
	if err := nw.raw(zeros[:nw.pad]); err != nil {
		return err
	}
	nw.inFile = false
	if nw.fileTop {
		return nw.str(")")
	}
	return nw.strs(")", ")")
}

// closeDirsTo closes open directories until the innermost is parent.
func (nw *NARWriter) closeDirsTo(parent string) error {
	for len(nw.dirs) > 0 && nw.dirs[len(nw.dirs)-1].path != parent {
		nw.dirs = nw.dirs[:len(nw.dirs)-1]
		closing := []string{")"}
		if len(nw.dirs) > 0 {
			closing = append(closing, ")")
		}
		if err := nw.strs(closing...); err != nil {
			return err
		}
	}
	if len(nw.dirs) == 0 {
		return fmt.Errorf("%w: %q is not inside an open directory", ErrNARFormat, parent)
	}
	return nil
}

// WriteHeader starts the next node.
func (nw *NARWriter) WriteHeader(h *Header) error {
	if nw.closed {
		return fmt.Errorf("%w: write after close", ErrNARFormat)
	}
	if err := nw.finishFile(); err != nil {
		return err
	}
	top := !nw.started
	if top {
		if h.Path != "" {
			return fmt.Errorf("%w: first node is %q, not the root", ErrNARFormat, h.Path)
		}
		nw.started = true
		if err := nw.strs("nix-archive-1", "("); err != nil {
			return err
		}
	} else {
		if h.Path == "" {
			return fmt.Errorf("%w: a second root node", ErrNARFormat)
		}
		parent, name := path.Split(h.Path)
		parent = strings.TrimSuffix(parent, "/")
		if err := checkName(name); err != nil {
			return err
		}
		if err := nw.closeDirsTo(parent); err != nil {
			return err
		}
		d := &nw.dirs[len(nw.dirs)-1]
		if d.last != "" && name <= d.last {
			return fmt.Errorf("%w: %q comes after %q", ErrNARFormat, name, d.last)
		}
		d.last = name
		if err := nw.strs("entry", "(", "name", name, "node", "("); err != nil {
			return err
		}
	}
	switch h.Type {
	case TypeDirectory:
		nw.dirs = append(nw.dirs, narDir{path: h.Path})
		return nw.strs("type", "directory")
	case TypeSymlink:
		if h.LinkTarget == "" {
			return fmt.Errorf("%w: symlink %q has an empty target", ErrNARFormat, h.Path)
		}
		if err := nw.strs("type", "symlink", "target", h.LinkTarget, ")"); err != nil {
			return err
		}
		if top {
			nw.closed = true // a symlink root is the whole archive
			return nil
		}
		return nw.str(")")
	case TypeRegular:
		if h.Size < 0 {
			return fmt.Errorf("%w: negative size for %q", ErrNARFormat, h.Path)
		}
		if err := nw.strs("type", "regular"); err != nil {
			return err
		}
		if h.Executable {
			if err := nw.strs("executable", ""); err != nil {
				return err
			}
		}
		if err := nw.str("contents"); err != nil {
			return err
		}
		var l [8]byte
		binary.LittleEndian.PutUint64(l[:], uint64(h.Size))
		if err := nw.raw(l[:]); err != nil {
			return err
		}
		nw.inFile, nw.fileTop = true, top
		nw.remain, nw.pad = h.Size, (8-h.Size%8)%8
		return nil
	}
	return fmt.Errorf("%w: %q has type %v", ErrNARFormat, h.Path, h.Type)
}

// Write writes contents of the current regular file.
func (nw *NARWriter) Write(b []byte) (int, error) {
	if !nw.inFile || int64(len(b)) > nw.remain {
		return 0, fmt.Errorf("%w: file contents longer than declared", ErrNARFormat)
	}
	n, err := nw.w.Write(b)
	nw.n += int64(n)
	nw.remain -= int64(n)
	return n, err
}

// Close finishes the archive. It does not close the underlying writer.
func (nw *NARWriter) Close() error {
	if nw.closed {
		return nil
	}
	if !nw.started {
		return fmt.Errorf("%w: empty archive", ErrNARFormat)
	}
	if err := nw.finishFile(); err != nil {
		return err
	}
	for len(nw.dirs) > 0 {
		nw.dirs = nw.dirs[:len(nw.dirs)-1]
		closing := []string{")"}
		if len(nw.dirs) > 0 {
			closing = append(closing, ")")
		}
		if err := nw.strs(closing...); err != nil {
			return err
		}
	}
	nw.closed = true
	return nil
}

func checkName(name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
		return fmt.Errorf("%w: invalid entry name %q", ErrNARFormat, name)
	}
	return nil
}

// WalkFunc is called by [Walk] for every node of a tree in NAR order. For a
// regular file, open returns its contents.
type WalkFunc func(h *Header, open func() (*os.File, error)) error

// Walk visits the tree at root (a store path on disk) in NAR order without
// following symlinks. Anything but directories, regular files and symlinks
// is an error naming the file.
func Walk(root string, fn WalkFunc) error {
	return walk(root, "", fn)
}

func walk(full, rel string, fn WalkFunc) error {
	fi, err := os.Lstat(full)
	if err != nil {
		return err
	}
	h := &Header{Path: rel}
	var open func() (*os.File, error)
	switch m := fi.Mode(); {
	case m.IsDir():
		h.Type = TypeDirectory
	case m.IsRegular():
		h.Type, h.Size, h.Executable = TypeRegular, fi.Size(), m&0o100 != 0
		open = func() (*os.File, error) { return os.Open(full) }
	case m&fs.ModeSymlink != 0:
		h.Type = TypeSymlink
		if h.LinkTarget, err = os.Readlink(full); err != nil {
			return err
		}
	default:
		return fmt.Errorf("%s: unsupported file type %v in a store path", full, m.Type())
	}
	if err := fn(h, open); err != nil {
		return err
	}
	if h.Type != TypeDirectory {
		return nil
	}
	entries, err := os.ReadDir(full) // sorted by name, bytewise
	if err != nil {
		return err
	}
	for _, e := range entries {
		if err := walk(filepath.Join(full, e.Name()), path.Join(rel, e.Name()), fn); err != nil {
			return err
		}
	}
	return nil
}

// DumpPath writes the NAR serialisation of the tree at dir to w, as
// `nix-store --dump` does, and returns its size.
func DumpPath(dir string, w io.Writer) (int64, error) {
	nw := NewNARWriter(w)
	err := Walk(dir, func(h *Header, open func() (*os.File, error)) error {
		if err := nw.WriteHeader(h); err != nil {
			return err
		}
		if open == nil {
			return nil
		}
		f, err := open()
		if err != nil {
			return err
		}
		defer f.Close()
		n, err := io.Copy(nw, f)
		if err == nil && n != h.Size {
			err = fmt.Errorf("%s/%s: changed size while reading", dir, h.Path)
		}
		return err
	})
	if err == nil {
		err = nw.Close()
	}
	return nw.Size(), err
}
