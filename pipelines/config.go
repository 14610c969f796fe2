package pipelines

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/otter-fleet/otter/internal/yamlfile"
	"github.com/otter-fleet/otter/nix"
	"github.com/otter-fleet/otter/sign"
)

// ErrReleaseFile is returned for a release file otter cannot use; the
// message names the file, line and field.
var ErrReleaseFile = errors.New("pipelines: invalid release file")

// ReleaseFile is otter.yaml (docs/pipeline.md).
type ReleaseFile struct {
	Version int `yaml:"version"`
	// Registry is the repository prefix: each target is published to
	// Registry/<target name>.
	Registry string   `yaml:"registry"`
	Insecure bool     `yaml:"insecure"`
	Channels []string `yaml:"channels"`
	// Release is this release's version; tags are v<version>.
	Release uint64   `yaml:"release"`
	Targets []Target `yaml:"targets"`
	Signing Signing  `yaml:"signing"`
	Patches Patches  `yaml:"patches"`
	Image   *Image   `yaml:"image"`

	path string
	file *yamlfile.File
}

// Target is one closure to build and publish.
type Target struct {
	Name   string `yaml:"name"`
	System string `yaml:"system"`
	// One of: a flake output, a Nix file and attribute, or a store tree
	// already built (a directory holding nix/store, its path-info and
	// root).
	Flake string `yaml:"flake"`
	File  string `yaml:"file"`
	Attr  string `yaml:"attr"`
	Store *Store `yaml:"store"`
}

// Store is a closure already on disk.
type Store struct {
	Dir      string `yaml:"dir"`
	PathInfo string `yaml:"pathInfo"`
	Root     string `yaml:"root"`
}

// Signing says where the release key is.
type Signing struct {
	// Key is a key file or env://VAR; the passphrase comes from
	// OTTER_PASSWORD.
	Key     string `yaml:"key"`
	Expires string `yaml:"expires"`
	Cosign  *bool  `yaml:"cosign"`
	// Rollout stages the release: PERCENT%:DURATION[@START]
	// (sign.ParseRollout); empty offers it to every device at once.
	Rollout string `yaml:"rollout"`
}

// Patches says which earlier releases get a patch to this one.
type Patches struct {
	From     int     `yaml:"from"`
	MaxShare float64 `yaml:"maxShare"`
}

// Image asks for an SD-card image of a target.
type Image struct {
	Target    string `yaml:"target"`
	Board     string `yaml:"board"`
	BootFiles string `yaml:"bootFiles"`
	Out       string `yaml:"out"`
	Size      string `yaml:"size"`
	Trust     string `yaml:"trust"`
}

var (
	nameRE    = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)
	channelRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$`)
)

// LoadReleaseFile reads and checks a release file.
func LoadReleaseFile(path string) (*ReleaseFile, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ParseReleaseFile(path, data)
}

// ParseReleaseFile parses a release file's bytes; path is for messages.
func ParseReleaseFile(path string, data []byte) (*ReleaseFile, error) {
	rf := &ReleaseFile{path: path}
	f, err := yamlfile.Decode(path, data, rf)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrReleaseFile, err)
	}
	rf.file = f
	if err := rf.validate(); err != nil {
		return nil, err
	}
	return rf, nil
}

// fieldErr names the file, the line of field (or of its nearest parent)
// and the field.
func (rf *ReleaseFile) fieldErr(field, format string, a ...any) error {
	return fmt.Errorf("%w: %v", ErrReleaseFile, rf.file.Err(field, format, a...))
}

func (rf *ReleaseFile) validate() error {
	if rf.Version != 1 {
		return rf.fieldErr("version", "must be 1, is %d", rf.Version)
	}
	if rf.Registry == "" || strings.Contains(rf.Registry, ":") && strings.Count(rf.Registry, "/") == 0 {
		return rf.fieldErr("registry", "a registry and repository prefix (registry.example.com/fleet) is required")
	}
	if rf.Release == 0 {
		return rf.fieldErr("release", "the release version (a positive integer) is required")
	}
	if len(rf.Channels) == 0 {
		rf.Channels = []string{"stable"}
	}
	for i, c := range rf.Channels {
		if !channelRE.MatchString(c) {
			return rf.fieldErr(fmt.Sprintf("channels[%d]", i), "%q is not a valid tag", c)
		}
	}
	if len(rf.Targets) == 0 {
		return rf.fieldErr("targets", "at least one target is required")
	}
	seen := map[string]bool{}
	for i, t := range rf.Targets {
		f := fmt.Sprintf("targets[%d]", i)
		if !nameRE.MatchString(t.Name) {
			return rf.fieldErr(f+".name", "%q is not a valid name (lower case, digits, . _ -)", t.Name)
		}
		if seen[t.Name] {
			return rf.fieldErr(f+".name", "%q appears twice", t.Name)
		}
		seen[t.Name] = true
		n := 0
		for _, set := range []bool{t.Flake != "", t.File != "", t.Store != nil} {
			if set {
				n++
			}
		}
		if n != 1 {
			return rf.fieldErr(f, "exactly one of flake, file (with attr) or store is required")
		}
		if t.File != "" && t.Attr == "" {
			return rf.fieldErr(f+".attr", "file needs an attribute")
		}
		if t.Store != nil {
			if t.Store.Dir == "" || t.Store.PathInfo == "" {
				return rf.fieldErr(f+".store", "dir and pathInfo are required")
			}
			if err := nix.ValidateStorePath(t.Store.Root); err != nil {
				return rf.fieldErr(f+".store.root", "%v", err)
			}
		}
		if t.System == "" {
			rf.Targets[i].System = "aarch64-linux"
		}
	}
	if rf.Signing.Key == "" {
		return rf.fieldErr("signing.key", "a key file or env://VAR is required")
	}
	if rf.Signing.Expires == "" {
		rf.Signing.Expires = "30d"
	}
	if rf.Signing.Rollout != "" {
		if _, err := sign.ParseRollout(rf.Signing.Rollout, time.Unix(0, 0)); err != nil {
			return rf.fieldErr("signing.rollout", "%v", err)
		}
	}
	if rf.Patches.From < 0 || rf.Patches.From > 32 {
		return rf.fieldErr("patches.from", "must be 0 to 32, is %d", rf.Patches.From)
	}
	if rf.Patches.MaxShare == 0 {
		rf.Patches.MaxShare = 0.6
	}
	if rf.Patches.MaxShare < 0 {
		return rf.fieldErr("patches.maxShare", "must be positive")
	}
	if im := rf.Image; im != nil {
		if !seen[im.Target] {
			return rf.fieldErr("image.target", "%q names no target", im.Target)
		}
		if im.BootFiles == "" || im.Out == "" {
			return rf.fieldErr("image", "bootFiles and out are required")
		}
		if im.Board == "" {
			im.Board = "rpi4"
		}
	}
	return nil
}

// Path is where the release file was read from.
func (rf *ReleaseFile) Path() string { return rf.path }
