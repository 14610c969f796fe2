package oci

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"syscall"
	"time"

	"github.com/otter-fleet/otter/bundle"
	"github.com/otter-fleet/otter/internal/iox"
)

// ArchivePrefix marks a reference to an OCI layout packed in one tar file
// (oci-archive:FILE[:TAG]), for offline and USB updates.
const ArchivePrefix = "oci-archive:"

var archiveNameRE = regexp.MustCompile(`^(oci-layout|index\.json|blobs/sha256/[0-9a-f]{64})$`)

// WriteArchive packs the OCI layout dir into one tar stream: oci-layout,
// index.json, then the blobs in name order, with fixed headers, so the
// same layout gives the same bytes.
func WriteArchive(dir string, w io.Writer) error {
	names := []string{"oci-layout", "index.json"}
	blobs, err := os.ReadDir(filepath.Join(dir, "blobs", "sha256"))
	if err != nil {
		return fmt.Errorf("%s is not an OCI layout: %w", dir, err)
	}
	var bnames []string
	for _, b := range blobs {
		if archiveNameRE.MatchString("blobs/sha256/" + b.Name()) {
			bnames = append(bnames, "blobs/sha256/"+b.Name())
		}
	}
	sort.Strings(bnames)
	tw := tar.NewWriter(w)
	for _, name := range append(names, bnames...) {
		f, err := os.Open(filepath.Join(dir, filepath.FromSlash(name)))
		if err != nil {
			return err
		}
		fi, err := f.Stat()
		if err == nil {
			err = tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: fi.Size(), ModTime: time.Unix(0, 0), Format: tar.FormatPAX})
		}
		if err == nil {
			_, err = io.Copy(tw, f)
		}
		f.Close()
		if err != nil {
			return fmt.Errorf("archiving %s: %w", name, err)
		}
	}
	return tw.Close()
}

// ExtractArchive unpacks the archive file (made by WriteArchive) into the
// empty directory dir. It accepts only the layout's own files, as regular
// entries: nothing else is written, and nothing outside dir. What it
// writes is bounded before it is written: sparse entries are refused, so
// the entries' declared sizes add up to less than the archive's own size,
// and index.json and manifests are capped as in a layout.
func ExtractArchive(file, dir string) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(dir, "blobs", "sha256"), 0o755); err != nil {
		return err
	}
	tr := tar.NewReader(f)
	seen := map[string]bool{}
	var declared int64
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("%w: archive %s: %v", bundle.ErrLayerFormat, file, err)
		}
		if h.Typeflag != tar.TypeReg || iox.SparseTar(h) || !archiveNameRE.MatchString(h.Name) || seen[h.Name] {
			return fmt.Errorf("%w: archive %s: entry %q is not a file of an OCI layout", bundle.ErrLayerFormat, file, h.Name)
		}
		if declared += h.Size; h.Size < 0 || declared > fi.Size() {
			return fmt.Errorf("%w: archive %s: entry %q declares more bytes than the archive holds", bundle.ErrLayerFormat, file, h.Name)
		}
		if h.Name == "index.json" && h.Size > MaxManifestSize {
			return fmt.Errorf("%w: archive %s: index.json of %d bytes, at most %d", ErrTooLarge, file, h.Size, MaxManifestSize)
		}
		seen[h.Name] = true
		out, err := os.OpenFile(filepath.Join(dir, filepath.FromSlash(h.Name)), os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o644)
		if err != nil {
			return err
		}
		_, err = iox.Copy(out, tr)
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		var we *iox.WriteError
		if errors.As(err, &we) {
			return fmt.Errorf("unpacking archive %s: %w", file, we.Err)
		}
		if err != nil {
			return fmt.Errorf("%w: archive %s: entry %s: %v", bundle.ErrLayerDigest, file, h.Name, err)
		}
	}
	if !seen["index.json"] || !seen["oci-layout"] {
		return fmt.Errorf("%w: archive %s holds no OCI layout", bundle.ErrLayerFormat, file)
	}
	return nil
}
