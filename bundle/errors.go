package bundle

import (
	"errors"
	"fmt"

	"github.com/otter-fleet/otter/nix"
)

var (
	// ErrNarHashMismatch is returned when a store path's content does not
	// have the NAR hash or size its path-info or bundle config says.
	ErrNarHashMismatch = errors.New("bundle: NAR hash mismatch")
	// ErrMissingPath is returned when a store path of the closure is not on disk.
	ErrMissingPath = errors.New("bundle: store path missing")
	// ErrLayerDigest is returned when a layer's bytes do not have the
	// digest, size or DiffID the manifest and config say: a tampered or
	// truncated blob.
	ErrLayerDigest = errors.New("bundle: layer digest mismatch")
	// ErrLayerFormat is returned for a layer whose tar is not what
	// docs/bundle.md allows.
	ErrLayerFormat = errors.New("bundle: invalid layer")
	// ErrNotBundle is returned for an artifact that is not an otter bundle.
	ErrNotBundle = errors.New("bundle: not an otter bundle")
	// ErrCorruptPath is returned by Extract when a store path is present
	// in the target store with content other than the bundle's.
	ErrCorruptPath = errors.New("bundle: store path present with wrong content")
)

// NarHashError says which store path has the wrong NAR hash or size.
type NarHashError struct {
	Path              string
	WantHash, GotHash nix.Hash
	WantSize, GotSize int64
}

func (e *NarHashError) Error() string {
	if e.WantHash != e.GotHash {
		return fmt.Sprintf("%s: NAR hash is %s, expected %s", e.Path, e.GotHash, e.WantHash)
	}
	return fmt.Sprintf("%s: NAR size is %d, expected %d", e.Path, e.GotSize, e.WantSize)
}

func (e *NarHashError) Unwrap() error { return ErrNarHashMismatch }

func checkNar(path string, want *nix.PathInfo, got nix.Hash, gotSize int64) error {
	if got != want.NarHash || gotSize != want.NarSize {
		return &NarHashError{Path: path, WantHash: want.NarHash, GotHash: got, WantSize: want.NarSize, GotSize: gotSize}
	}
	return nil
}
