package nix

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// Hash is a SHA-256 NAR hash.
type Hash [sha256.Size]byte

// ErrHashFormat is returned for a NAR hash otter cannot read.
var ErrHashFormat = errors.New("nix: unrecognised NAR hash")

// String gives the hash as Nix's path-info prints it: "sha256:" and
// Nix's base-32. This is the canonical form in otter's formats.
func (h Hash) String() string { return "sha256:" + EncodeBase32(h[:]) }

// SRI gives the hash in the Subresource Integrity form newer Nix prints.
func (h Hash) SRI() string { return "sha256-" + base64.StdEncoding.EncodeToString(h[:]) }

// MarshalText implements encoding.TextMarshaler with [Hash.String].
func (h Hash) MarshalText() ([]byte, error) { return []byte(h.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler with [ParseHash].
func (h *Hash) UnmarshalText(b []byte) error {
	p, err := ParseHash(string(b))
	if err != nil {
		return err
	}
	*h = p
	return nil
}

// ParseHash reads a SHA-256 hash in any of the forms Nix prints:
// "sha256:<base-32>", "sha256:<hex>" or "sha256-<base64>".
func ParseHash(s string) (Hash, error) {
	var h Hash
	var b []byte
	var err error
	switch {
	case strings.HasPrefix(s, "sha256-"):
		b, err = base64.StdEncoding.DecodeString(s[len("sha256-"):])
	case strings.HasPrefix(s, "sha256:") && len(s) == len("sha256:")+64:
		b, err = hex.DecodeString(s[len("sha256:"):])
	case strings.HasPrefix(s, "sha256:"):
		b, err = DecodeBase32(s[len("sha256:"):], sha256.Size)
	default:
		return h, fmt.Errorf("%w: %q (want sha256)", ErrHashFormat, s)
	}
	if err != nil || len(b) != sha256.Size {
		return h, fmt.Errorf("%w: %q", ErrHashFormat, s)
	}
	copy(h[:], b)
	return h, nil
}

// HashPath computes the NAR hash and NAR size of the tree at dir.
func HashPath(dir string) (Hash, int64, error) {
	d := sha256.New()
	n, err := DumpPath(dir, d)
	var h Hash
	if err != nil {
		return h, 0, err
	}
	copy(h[:], d.Sum(nil))
	return h, n, nil
}
