package oci

import (
	"archive/tar"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"time"

	"github.com/otter-fleet/otter/bundle"
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

// ExtractArchive unpacks an archive made by WriteArchive into the empty
// directory dir. It accepts only the layout's own files: nothing else is
// written, and nothing outside dir.
func ExtractArchive(r io.Reader, dir string) error {
	if err := os.MkdirAll(filepath.Join(dir, "blobs", "sha256"), 0o755); err != nil {
		return err
	}
	tr := tar.NewReader(r)
	seen := map[string]bool{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("%w: archive: %v", bundle.ErrLayerFormat, err)
		}
		if h.Typeflag != tar.TypeReg || !archiveNameRE.MatchString(h.Name) || seen[h.Name] {
			return fmt.Errorf("%w: archive entry %q is not part of an OCI layout", bundle.ErrLayerFormat, h.Name)
		}
		seen[h.Name] = true
		f, err := os.OpenFile(filepath.Join(dir, filepath.FromSlash(h.Name)), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if err != nil {
			return err
		}
		_, err = io.Copy(f, tr)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("%w: archive entry %s: %v", bundle.ErrLayerDigest, h.Name, err)
		}
	}
	if !seen["index.json"] || !seen["oci-layout"] {
		return fmt.Errorf("%w: the archive holds no OCI layout", bundle.ErrLayerFormat)
	}
	return nil
}
