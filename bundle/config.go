package bundle

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/otter-fleet/otter/nix"
)

// Media types of a bundle. See docs/bundle.md.
const (
	// ArtifactType is the manifest's artifactType.
	ArtifactType = "application/vnd.otter.bundle.v1"
	// ConfigMediaType is the media type of the config blob.
	ConfigMediaType types.MediaType = "application/vnd.otter.bundle.config.v1+json"
	// LayerMediaType is the media type of every layer: a tar of one store
	// path, zstd-compressed. It is otter's own, not an image layer type, so
	// that container runtimes do not mistake a bundle for an image.
	LayerMediaType types.MediaType = "application/vnd.otter.store-path.v1.tar+zstd"
	// SchemaVersion is the config's schemaVersion.
	SchemaVersion = 1
	// MaxConfigSize bounds the config blob otter reads.
	MaxConfigSize = 16 << 20
	// MaxLayers bounds the store paths of a bundle: a full NixOS system
	// closure has a few thousand.
	MaxLayers = 16384
	// MaxNarSize bounds one store path's NAR size (1 TiB), so that no sum
	// or bound derived from NAR sizes overflows.
	MaxNarSize = 1 << 40
)

// ErrConfig is returned for a config blob that is not a valid bundle config.
var ErrConfig = errors.New("bundle: invalid config")

// Config is the config blob of a bundle: the closure it holds. Paths[i] is
// stored in layer i, and RootFS.DiffIDs[i] is the SHA-256 of that layer's
// uncompressed tar.
type Config struct {
	SchemaVersion int    `json:"schemaVersion"`
	System        string `json:"system"`
	Version       uint64 `json:"version"`
	Created       string `json:"created"`
	Root          string `json:"root"`
	// Boot is the release's boot part, if its root has one (§3.1).
	Boot   *Boot  `json:"boot,omitempty"`
	Paths  []Path `json:"paths"`
	RootFS RootFS `json:"rootfs"`
}

// Path is one store path of the closure.
type Path struct {
	Path       string   `json:"path"`
	NarHash    nix.Hash `json:"narHash"`
	NarSize    int64    `json:"narSize"`
	References []string `json:"references"`
}

// RootFS mirrors the OCI image config's rootfs, so that generic tools can
// map a layer's DiffID to the layer.
type RootFS struct {
	Type    string    `json:"type"`
	DiffIDs []v1.Hash `json:"diff_ids"`
}

// Closure returns the closure the config describes.
func (c *Config) Closure() *nix.Closure {
	cl := &nix.Closure{Root: c.Root, Paths: make([]nix.PathInfo, len(c.Paths))}
	for i, p := range c.Paths {
		cl.Paths[i] = nix.PathInfo{Path: p.Path, NarHash: p.NarHash, NarSize: p.NarSize, References: p.References}
	}
	return cl
}

// CreatedTime parses Created.
func (c *Config) CreatedTime() (time.Time, error) { return time.Parse(time.RFC3339, c.Created) }

// Marshal gives the canonical encoding of c: fields in the order of the
// struct, no insignificant white space, no HTML escaping.
func (c *Config) Marshal() ([]byte, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(c); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// ParseConfig reads a config blob. It accepts only the canonical encoding
// of a valid config: anything [Config.Marshal] would not produce is an error.
func ParseConfig(b []byte) (*Config, error) {
	if len(b) > MaxConfigSize {
		return nil, fmt.Errorf("%w: %d bytes, more than %d", ErrConfig, len(b), MaxConfigSize)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var c Config
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrConfig, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: trailing data", ErrConfig)
	}
	again, err := c.Marshal()
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(again, b) {
		return nil, fmt.Errorf("%w: not in canonical form", ErrConfig)
	}
	return &c, nil
}

// Validate checks the rules of docs/bundle.md: schema version, store
// paths sorted and unique, references sorted and inside the closure, the
// root present, one DiffID per path.
func (c *Config) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrConfig, fmt.Sprintf(format, a...))
	}
	if c.SchemaVersion != SchemaVersion {
		return bad("schemaVersion %d, want %d", c.SchemaVersion, SchemaVersion)
	}
	if c.System == "" {
		return bad("empty system")
	}
	if t, err := time.Parse(time.RFC3339, c.Created); err != nil || t.UTC().Format(time.RFC3339) != c.Created {
		return bad("created %q is not an RFC 3339 UTC time in seconds", c.Created)
	}
	if c.RootFS.Type != "layers" {
		return bad("rootfs.type %q, want \"layers\"", c.RootFS.Type)
	}
	if len(c.Paths) == 0 {
		return bad("no store paths")
	}
	if len(c.Paths) > MaxLayers {
		return bad("%d paths, at most %d", len(c.Paths), MaxLayers)
	}
	if len(c.RootFS.DiffIDs) != len(c.Paths) {
		return bad("%d diff_ids for %d paths", len(c.RootFS.DiffIDs), len(c.Paths))
	}
	for i, d := range c.RootFS.DiffIDs {
		if d.Algorithm != "sha256" || len(d.Hex) != 64 {
			return bad("diff_ids[%d] %q is not a sha256 digest", i, d)
		}
	}
	in := make(map[string]bool, len(c.Paths))
	for i, p := range c.Paths {
		if err := nix.ValidateStorePath(p.Path); err != nil {
			return bad("paths[%d]: %v", i, err)
		}
		if i > 0 && p.Path <= c.Paths[i-1].Path {
			return bad("paths not sorted and unique at %s", p.Path)
		}
		if p.NarSize <= 0 || p.NarSize > MaxNarSize {
			return bad("%s: narSize %d (at most %d)", p.Path, p.NarSize, int64(MaxNarSize))
		}
		if p.References == nil {
			return bad("%s: references missing (use [])", p.Path)
		}
		if !sort.StringsAreSorted(p.References) {
			return bad("%s: references not sorted", p.Path)
		}
		in[p.Path] = true
	}
	if !in[c.Root] {
		return bad("root %q is not among the paths", c.Root)
	}
	if c.Boot != nil {
		if err := c.Boot.Validate(); err != nil {
			return err
		}
	}
	for _, p := range c.Paths {
		for j, r := range p.References {
			if j > 0 && r == p.References[j-1] {
				return bad("%s: reference %s listed twice", p.Path, r)
			}
			if !in[r] {
				return bad("%s refers to %s, which the bundle lacks", p.Path, r)
			}
		}
	}
	return nil
}

// CheckManifest makes sure a manifest is an otter bundle's.
func CheckManifest(m *v1.Manifest) error {
	if m.ArtifactType != ArtifactType || m.Config.MediaType != ConfigMediaType {
		return fmt.Errorf("%w: artifactType %q, config %q", ErrNotBundle, m.ArtifactType, m.Config.MediaType)
	}
	if len(m.Layers) > MaxLayers {
		return fmt.Errorf("%w: %d layers, at most %d", ErrConfig, len(m.Layers), MaxLayers)
	}
	if m.Config.Size < 0 || m.Config.Size > MaxConfigSize {
		return fmt.Errorf("%w: config of %d bytes", ErrConfig, m.Config.Size)
	}
	for i, l := range m.Layers {
		if l.Size < 0 {
			return fmt.Errorf("%w: layer %d has a negative size %d", ErrConfig, i, l.Size)
		}
	}
	return nil
}

// ReadConfig checks that img is an otter bundle and returns its config.
func ReadConfig(img v1.Image) (*Config, error) {
	m, err := img.Manifest()
	if err != nil {
		return nil, err
	}
	if err := CheckManifest(m); err != nil {
		return nil, err
	}
	if m.Config.Size > MaxConfigSize {
		return nil, fmt.Errorf("%w: config of %d bytes", ErrConfig, m.Config.Size)
	}
	raw, err := img.RawConfigFile()
	if err != nil {
		return nil, err
	}
	if h, _, _ := v1.SHA256(bytes.NewReader(raw)); h != m.Config.Digest {
		return nil, fmt.Errorf("%w: config blob is %s, manifest says %s", ErrLayerDigest, h, m.Config.Digest)
	}
	cfg, err := ParseConfig(raw)
	if err != nil {
		return nil, err
	}
	if len(m.Layers) != len(cfg.Paths) {
		return nil, fmt.Errorf("%w: %d layers for %d store paths", ErrConfig, len(m.Layers), len(cfg.Paths))
	}
	for i, l := range m.Layers {
		if l.MediaType != LayerMediaType {
			return nil, fmt.Errorf("%w: layer %d has media type %q", ErrNotBundle, i, l.MediaType)
		}
	}
	return cfg, nil
}
