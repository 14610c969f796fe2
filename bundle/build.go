package bundle

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/zstd"

	"github.com/otter-fleet/otter/nix"
)

// Progress is called with the NAR bytes done so far and the total.
type Progress func(done, total int64)

type buildOptions struct {
	system   string
	version  uint64
	created  time.Time
	jobs     int
	spool    string
	level    zstd.EncoderLevel
	progress Progress
}

// BuildOption configures [Build].
type BuildOption func(*buildOptions) error

// WithSystem sets the target system recorded in the config (default aarch64-linux).
func WithSystem(s string) BuildOption {
	return func(o *buildOptions) error {
		if s == "" {
			return errors.New("bundle: empty system")
		}
		o.system = s
		return nil
	}
}

// WithVersion sets the release version recorded in the config.
func WithVersion(v uint64) BuildOption {
	return func(o *buildOptions) error { o.version = v; return nil }
}

// WithCreated sets the creation time recorded in the config and used as
// every file's modification time (default: the Unix epoch). It is
// truncated to seconds.
func WithCreated(t time.Time) BuildOption {
	return func(o *buildOptions) error {
		if t.Before(time.Unix(0, 0)) {
			return fmt.Errorf("bundle: creation time %v before 1970", t)
		}
		o.created = t.UTC().Truncate(time.Second)
		return nil
	}
}

// WithJobs sets how many store paths are packed at once (default GOMAXPROCS).
func WithJobs(n int) BuildOption {
	return func(o *buildOptions) error {
		if n < 1 {
			return fmt.Errorf("bundle: jobs %d < 1", n)
		}
		o.jobs = n
		return nil
	}
}

// WithSpoolDir sets where compressed layers are kept until the bundle is
// closed (default: a new directory under os.TempDir).
func WithSpoolDir(dir string) BuildOption {
	return func(o *buildOptions) error { o.spool = dir; return nil }
}

// WithProgress reports progress in NAR bytes.
func WithProgress(p Progress) BuildOption {
	return func(o *buildOptions) error { o.progress = p; return nil }
}

// Bundle is a bundle built from a closure on disk. It is a v1.Image whose
// layers are kept in a spool directory until Close.
type Bundle struct {
	v1.Image
	Config *Config
	spool  string
}

// Close removes the spooled layers.
func (b *Bundle) Close() error { return os.RemoveAll(b.spool) }

// Build packs the closure, whose store paths are the entries of storeDir
// named by their base names, into a bundle. It recomputes every path's NAR
// hash while packing and fails with a *NarHashError on a mismatch, and
// with ErrMissingPath for a path not on disk.
func Build(ctx context.Context, c *nix.Closure, storeDir string, opts ...BuildOption) (*Bundle, error) {
	o := buildOptions{system: "aarch64-linux", created: time.Unix(0, 0).UTC(), jobs: runtime.GOMAXPROCS(0), level: zstd.SpeedDefault}
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return nil, err
		}
	}
	for _, p := range c.Paths {
		if _, err := os.Lstat(filepath.Join(storeDir, nix.BaseName(p.Path))); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil, fmt.Errorf("%w: %s (looked in %s)", ErrMissingPath, p.Path, storeDir)
			}
			return nil, fmt.Errorf("reading %s: %w", p.Path, err)
		}
	}
	// The boot part, if the root has one: refused here if it breaks the
	// convention, before anything is packed.
	bootPart, err := ReadBoot(filepath.Join(storeDir, nix.BaseName(c.Root)))
	if err != nil {
		return nil, err
	}
	spool, err := os.MkdirTemp(o.spool, ".otter-spool-")
	if err != nil {
		return nil, fmt.Errorf("creating spool directory: %w", err)
	}
	layers, err := packAll(ctx, c, storeDir, spool, &o)
	if err != nil {
		os.RemoveAll(spool)
		return nil, err
	}
	cfg := &Config{
		SchemaVersion: SchemaVersion,
		System:        o.system,
		Version:       o.version,
		Created:       o.created.Format(time.RFC3339),
		Root:          c.Root,
		Boot:          bootPart,
		RootFS:        RootFS{Type: "layers"},
	}
	for i, p := range c.Paths {
		refs := p.References
		if refs == nil {
			refs = []string{}
		}
		cfg.Paths = append(cfg.Paths, Path{Path: p.Path, NarHash: p.NarHash, NarSize: p.NarSize, References: refs})
		cfg.RootFS.DiffIDs = append(cfg.RootFS.DiffIDs, layers[i].diffID)
	}
	img, err := newImage(cfg, layers)
	if err != nil {
		os.RemoveAll(spool)
		return nil, err
	}
	return &Bundle{Image: img, Config: cfg, spool: spool}, nil
}

// packAll packs every path of c, jobs at a time, largest first.
func packAll(ctx context.Context, c *nix.Closure, storeDir, spool string, o *buildOptions) ([]*spooledLayer, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	order := make([]int, len(c.Paths))
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(a, b int) bool { return c.Paths[order[a]].NarSize > c.Paths[order[b]].NarSize })
	total := c.NarSize()
	var done atomic.Int64
	layers := make([]*spooledLayer, len(c.Paths))
	work := make(chan int)
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
	)
	for w := 0; w < o.jobs; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(o.level), zstd.WithEncoderConcurrency(1))
			if err != nil {
				panic(err) // only for invalid options
			}
			defer enc.Close()
			for i := range work {
				l, err := packOne(ctx, &c.Paths[i], storeDir, spool, o.created, enc)
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					cancel()
					continue
				}
				layers[i] = l
				if o.progress != nil {
					o.progress(done.Add(c.Paths[i].NarSize), total)
				}
			}
		}()
	}
	for _, i := range order {
		if ctx.Err() != nil {
			break
		}
		work <- i
	}
	close(work)
	wg.Wait()
	if firstErr == nil && ctx.Err() != nil {
		firstErr = ctx.Err()
	}
	return layers, firstErr
}

// countingHash is a hash that counts the bytes it sees.
type countingHash struct {
	hash.Hash
	n int64
}

func (c *countingHash) Write(b []byte) (int, error) {
	c.n += int64(len(b))
	return c.Hash.Write(b)
}

func packOne(ctx context.Context, p *nix.PathInfo, storeDir, spool string, mtime time.Time, enc *zstd.Encoder) (*spooledLayer, error) {
	base := nix.BaseName(p.Path)
	f, err := os.CreateTemp(spool, "layer-")
	if err != nil {
		return nil, fmt.Errorf("spooling %s: %w", p.Path, err)
	}
	defer f.Close()
	bw := bufio.NewWriterSize(f, 1<<20)
	digest := &countingHash{Hash: sha256.New()}
	diffID := sha256.New()
	enc.Reset(io.MultiWriter(bw, digest))
	narHash, narSize, err := packPath(filepath.Join(storeDir, base), base, mtime, io.MultiWriter(enc, diffID), ctx.Err)
	if err != nil {
		return nil, fmt.Errorf("packing %s: %w", p.Path, err)
	}
	if err := checkNar(p.Path, p, narHash, narSize); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("compressing %s: %w", p.Path, err)
	}
	if err := bw.Flush(); err != nil {
		return nil, fmt.Errorf("spooling %s: %w", p.Path, err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("spooling %s: %w", p.Path, err)
	}
	return &spooledLayer{
		file:   f.Name(),
		digest: v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(digest.Sum(nil))},
		size:   digest.n,
		diffID: v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(diffID.Sum(nil))},
		title:  base,
	}, nil
}

// spooledLayer is a compressed layer kept in a file.
type spooledLayer struct {
	file   string
	digest v1.Hash
	size   int64
	diffID v1.Hash
	title  string
}

var (
	_ partial.CompressedLayer = (*spooledLayer)(nil)
	_ partial.WithDiffID      = (*spooledLayer)(nil)
)

func (l *spooledLayer) Digest() (v1.Hash, error)            { return l.digest, nil }
func (l *spooledLayer) DiffID() (v1.Hash, error)            { return l.diffID, nil }
func (l *spooledLayer) Size() (int64, error)                { return l.size, nil }
func (l *spooledLayer) MediaType() (types.MediaType, error) { return LayerMediaType, nil }
func (l *spooledLayer) Compressed() (io.ReadCloser, error)  { return os.Open(l.file) }

// image is the v1.Image core of a freshly built bundle.
type image struct {
	rawConfig   []byte
	rawManifest []byte
	layers      map[v1.Hash]*spooledLayer
}

var _ partial.CompressedImageCore = (*image)(nil)

func newImage(cfg *Config, layers []*spooledLayer) (v1.Image, error) {
	rawConfig, err := cfg.Marshal()
	if err != nil {
		return nil, err
	}
	cd, cs, err := v1.SHA256(bytes.NewReader(rawConfig))
	if err != nil {
		return nil, err
	}
	m := v1.Manifest{
		SchemaVersion: 2,
		MediaType:     types.OCIManifestSchema1,
		ArtifactType:  ArtifactType,
		Config:        v1.Descriptor{MediaType: ConfigMediaType, Size: cs, Digest: cd},
	}
	img := &image{rawConfig: rawConfig, layers: map[v1.Hash]*spooledLayer{}}
	for _, l := range layers {
		m.Layers = append(m.Layers, v1.Descriptor{
			MediaType:   LayerMediaType,
			Size:        l.size,
			Digest:      l.digest,
			Annotations: map[string]string{"org.opencontainers.image.title": l.title},
		})
		img.layers[l.digest] = l
	}
	if img.rawManifest, err = json.Marshal(m); err != nil {
		return nil, err
	}
	return partial.CompressedToImage(img)
}

func (i *image) RawConfigFile() ([]byte, error)      { return i.rawConfig, nil }
func (i *image) MediaType() (types.MediaType, error) { return types.OCIManifestSchema1, nil }
func (i *image) RawManifest() ([]byte, error)        { return i.rawManifest, nil }
func (i *image) LayerByDigest(h v1.Hash) (partial.CompressedLayer, error) {
	if l, ok := i.layers[h]; ok {
		return l, nil
	}
	return nil, fmt.Errorf("bundle: no layer %s", h)
}
