package bundle

import (
	"archive/tar"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/otter-fleet/otter/nix"
)

// tarPrefix is where store paths live inside a layer.
const tarPrefix = "nix/store/"

// Modes of store files in a layer, as Nix canonicalises them.
const (
	modeDir     = 0o555
	modeExec    = 0o555
	modeRegular = 0o444
	modeSymlink = 0o777
)

// tarHeader converts a NAR node of store path base into its tar header.
func tarHeader(base string, h *nix.Header, mtime time.Time) *tar.Header {
	name := tarPrefix + base
	if h.Path != "" {
		name += "/" + h.Path
	}
	th := &tar.Header{Name: name, ModTime: mtime, Format: tar.FormatPAX}
	switch h.Type {
	case nix.TypeDirectory:
		th.Typeflag, th.Name, th.Mode = tar.TypeDir, name+"/", modeDir
	case nix.TypeSymlink:
		th.Typeflag, th.Linkname, th.Mode = tar.TypeSymlink, h.LinkTarget, modeSymlink
	case nix.TypeRegular:
		th.Typeflag, th.Size, th.Mode = tar.TypeReg, h.Size, modeRegular
		if h.Executable {
			th.Mode = modeExec
		}
	}
	return th
}

// narHeader converts a layer's tar header back into a NAR node of store
// path base, refusing anything docs/bundle.md does not allow.
func narHeader(base string, th *tar.Header) (*nix.Header, error) {
	bad := func(why string) error {
		return fmt.Errorf("%w: entry %q: %s", ErrLayerFormat, th.Name, why)
	}
	name := strings.TrimSuffix(th.Name, "/")
	var rel string
	switch {
	case name == tarPrefix+base:
	case strings.HasPrefix(name, tarPrefix+base+"/"):
		rel = name[len(tarPrefix+base+"/"):]
		for _, el := range strings.Split(rel, "/") {
			if el == "" || el == "." || el == ".." || strings.ContainsRune(el, 0) {
				return nil, bad("bad path element")
			}
		}
	default:
		return nil, bad("outside store path " + base)
	}
	h := &nix.Header{Path: rel}
	switch th.Typeflag {
	case tar.TypeDir:
		h.Type = nix.TypeDirectory
	case tar.TypeReg:
		h.Type, h.Size, h.Executable = nix.TypeRegular, th.Size, th.Mode&0o100 != 0
	case tar.TypeSymlink:
		h.Type, h.LinkTarget = nix.TypeSymlink, th.Linkname
	default:
		return nil, bad(fmt.Sprintf("type %q is not a directory, regular file or symlink", th.Typeflag))
	}
	return h, nil
}

// packPath writes the layer tar of the store path at dir to w while
// computing its NAR hash and size.
func packPath(dir, base string, mtime time.Time, w io.Writer, checkCancel func() error) (nix.Hash, int64, error) {
	nh := sha256.New()
	nw := nix.NewNARWriter(nh)
	tw := tar.NewWriter(w)
	buf := make([]byte, 256<<10)
	err := nix.Walk(dir, func(h *nix.Header, open func() (*os.File, error)) error {
		if err := checkCancel(); err != nil {
			return err
		}
		if err := nw.WriteHeader(h); err != nil {
			return err
		}
		if err := tw.WriteHeader(tarHeader(base, h, mtime)); err != nil {
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
		n, err := io.CopyBuffer(io.MultiWriter(tw, nw), io.LimitReader(f, h.Size), buf)
		if err == nil && n != h.Size {
			err = fmt.Errorf("%s/%s: file shrank while reading", dir, h.Path)
		}
		return err
	})
	var sum nix.Hash
	if err != nil {
		return sum, 0, err
	}
	if err := nw.Close(); err != nil {
		return sum, 0, err
	}
	if err := tw.Close(); err != nil {
		return sum, 0, err
	}
	copy(sum[:], nh.Sum(nil))
	return sum, nw.Size(), nil
}
