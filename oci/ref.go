package oci

import (
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// ErrRef is returned for a reference otter cannot parse.
var ErrRef = errors.New("oci: invalid reference")

// LayoutPrefix marks a reference to an OCI image layout directory.
const LayoutPrefix = "oci:"

var tagRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$`)

// Ref names where a bundle is: a tag or digest in an OCI image layout
// directory (oci:DIR, oci:DIR:TAG, oci:DIR@sha256:…) or a registry
// reference (HOST/REPO:TAG, HOST/REPO@sha256:…).
type Ref struct {
	Layout string         // the layout directory; empty for a registry
	Tag    string         // the layout tag (org.opencontainers.image.ref.name), if any
	Digest *v1.Hash       // the layout manifest digest, if any
	Remote name.Reference // the registry reference; nil for a layout
}

// ParseRef parses s. With insecure, a registry is reached over plain HTTP
// if it does not speak HTTPS.
func ParseRef(s string, insecure bool) (Ref, error) {
	if rest, ok := strings.CutPrefix(s, LayoutPrefix); ok {
		return parseLayoutRef(rest)
	}
	opts := []name.Option{name.StrictValidation}
	if insecure {
		opts = append(opts, name.Insecure)
	}
	r, err := name.ParseReference(s, opts...)
	if err != nil {
		return Ref{}, fmt.Errorf("%w %q: %v (want HOST/REPO:TAG, HOST/REPO@sha256:…, or oci:DIR[:TAG])", ErrRef, s, err)
	}
	return Ref{Remote: r}, nil
}

func parseLayoutRef(s string) (Ref, error) {
	var r Ref
	if i := strings.LastIndex(s, "@"); i >= 0 {
		h, err := v1.NewHash(s[i+1:])
		if err != nil {
			return r, fmt.Errorf("%w %q: %v", ErrRef, LayoutPrefix+s, err)
		}
		r.Digest, s = &h, s[:i]
	} else if i := strings.LastIndex(s, ":"); i >= 0 && !strings.Contains(s[i:], "/") {
		r.Tag, s = s[i+1:], s[:i]
		if !tagRE.MatchString(r.Tag) {
			return r, fmt.Errorf("%w: tag %q is not a valid tag", ErrRef, r.Tag)
		}
	}
	if s == "" {
		return r, fmt.Errorf("%w: %q names no directory", ErrRef, LayoutPrefix)
	}
	r.Layout = s
	return r, nil
}

// String gives the reference in the form ParseRef reads.
func (r Ref) String() string {
	if r.Remote != nil {
		return r.Remote.String()
	}
	s := LayoutPrefix + r.Layout
	if r.Digest != nil {
		return s + "@" + r.Digest.String()
	}
	if r.Tag != "" {
		return s + ":" + r.Tag
	}
	return s
}
