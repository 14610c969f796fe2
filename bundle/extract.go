package bundle

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"sync/atomic"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/klauspost/compress/zstd"
	"golang.org/x/sync/errgroup"

	"github.com/otter-fleet/otter/internal/fsutil"
	"github.com/otter-fleet/otter/internal/iox"

	"github.com/otter-fleet/otter/nix"
)

// MaxDecoderWindow bounds the zstd window a layer may ask for.
const MaxDecoderWindow = 64 << 20

type extractOptions struct {
	jobs     int
	repair   bool
	fsync    bool
	progress Progress
}

// ExtractOption configures [Extract].
type ExtractOption func(*extractOptions) error

// WithExtractJobs sets how many layers are unpacked at once (default 2).
func WithExtractJobs(n int) ExtractOption {
	return func(o *extractOptions) error {
		if n < 1 {
			return fmt.Errorf("bundle: jobs %d < 1", n)
		}
		o.jobs = n
		return nil
	}
}

// WithRepair replaces store paths that are present with the wrong content
// instead of failing with ErrCorruptPath.
func WithRepair(repair bool) ExtractOption {
	return func(o *extractOptions) error { o.repair = repair; return nil }
}

// WithFsync sets whether each store path is synced to disk (syncfs)
// before it is renamed into place, and the store directory after (default
// true).
func WithFsync(sync bool) ExtractOption {
	return func(o *extractOptions) error { o.fsync = sync; return nil }
}

// WithExtractProgress reports progress in NAR bytes.
func WithExtractProgress(p Progress) ExtractOption {
	return func(o *extractOptions) error { o.progress = p; return nil }
}

// ExtractResult says what Extract did with each store path.
type ExtractResult struct {
	Extracted []string `json:"extracted"`
	Present   []string `json:"present"`
	Repaired  []string `json:"repaired"`
}

// Extract unpacks the bundle img, with config cfg, into storeDir. A path
// already present with the right NAR hash is skipped; every other one is
// unpacked under a temporary name, checked against its layer digest,
// DiffID and NAR hash, and only then renamed into place.
func Extract(ctx context.Context, img v1.Image, cfg *Config, storeDir string, opts ...ExtractOption) (*ExtractResult, error) {
	o := extractOptions{jobs: 2, fsync: true}
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return nil, err
		}
	}
	m, err := img.Manifest()
	if err != nil {
		return nil, err
	}
	if len(m.Layers) != len(cfg.Paths) {
		return nil, fmt.Errorf("%w: %d layers for %d store paths", ErrConfig, len(m.Layers), len(cfg.Paths))
	}
	if err := os.MkdirAll(storeDir, 0o755); err != nil {
		return nil, err
	}
	closure := cfg.Closure()
	status := make([]string, len(cfg.Paths))
	var done atomic.Int64
	total := closure.NarSize()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(o.jobs)
	for i := range cfg.Paths {
		g.Go(func() error {
			info := &closure.Paths[i]
			st, err := extractOne(gctx, img, m.Layers[i], cfg.RootFS.DiffIDs[i], info, storeDir, &o)
			status[i] = st
			if o.progress != nil {
				o.progress(done.Add(info.NarSize), total)
			}
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	res := &ExtractResult{Extracted: []string{}, Present: []string{}, Repaired: []string{}}
	for i, st := range status {
		p := cfg.Paths[i].Path
		switch st {
		case "present":
			res.Present = append(res.Present, p)
		case "repaired":
			res.Repaired = append(res.Repaired, p)
		default:
			res.Extracted = append(res.Extracted, p)
		}
	}
	return res, nil
}

func extractOne(ctx context.Context, img v1.Image, desc v1.Descriptor, diffID v1.Hash, info *nix.PathInfo, storeDir string, o *extractOptions) (string, error) {
	base := nix.BaseName(info.Path)
	final := filepath.Join(storeDir, base)
	status := "extracted"
	if _, err := os.Lstat(final); err == nil {
		h, n, err := nix.HashPath(final)
		if err == nil && h == info.NarHash && n == info.NarSize {
			return "present", nil
		}
		if !o.repair {
			return "", fmt.Errorf("%w: %s (use --repair to replace it)", ErrCorruptPath, final)
		}
		status = "repaired"
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	layer, err := img.LayerByDigest(desc.Digest)
	if err != nil {
		return "", fmt.Errorf("%s: %w", info.Path, err)
	}
	tmpDir, err := os.MkdirTemp(storeDir, ".otter-extract-")
	if err != nil {
		return "", err
	}
	defer fsutil.RemoveAll(tmpDir)
	staged := filepath.Join(tmpDir, base)
	if err := unpackLayer(ctx, layer, desc, diffID, info, staged); err != nil {
		return "", fmt.Errorf("extracting %s: %w", info.Path, err)
	}
	if o.fsync {
		// One syncfs makes every file of the path durable before the
		// rename publishes it; far cheaper than a sync per file.
		if err := fsutil.SyncFS(tmpDir); err != nil {
			return "", fmt.Errorf("syncing %s: %w", info.Path, err)
		}
	}
	if status == "repaired" {
		// Move the corrupt path out of the way inside tmpDir, which is removed.
		if err := os.Rename(final, filepath.Join(tmpDir, "corrupt")); err != nil {
			return "", err
		}
	}
	if err := fsutil.RenameStorePath(staged, final); err != nil {
		return "", err
	}
	if o.fsync {
		if err := fsutil.SyncDir(storeDir); err != nil {
			return "", err
		}
	}
	return status, nil
}

// EntryFunc receives the nodes of a store path in NAR order; for a
// regular file, r yields exactly h.Size bytes of contents.
type EntryFunc func(h *nix.Header, r io.Reader) error

// ReadLayer streams layer i of a bundle to fn, and checks the layer's
// digest, DiffID and the store path's NAR hash once it has read it all.
// fn sees content before the checks end: act on it only once ReadLayer
// returns nil.
func ReadLayer(ctx context.Context, img v1.Image, cfg *Config, i int, fn EntryFunc) error {
	m, err := img.Manifest()
	if err != nil {
		return err
	}
	if i < 0 || i >= len(m.Layers) || i >= len(cfg.Paths) {
		return fmt.Errorf("%w: no layer %d", ErrConfig, i)
	}
	layer, err := img.LayerByDigest(m.Layers[i].Digest)
	if err != nil {
		return err
	}
	info := cfg.Closure().Paths[i]
	return readLayer(ctx, layer, m.Layers[i], cfg.RootFS.DiffIDs[i], &info, fn)
}

func readLayer(ctx context.Context, layer v1.Layer, desc v1.Descriptor, diffID v1.Hash, info *nix.PathInfo, fn EntryFunc) error {
	rc, err := layer.Compressed()
	if err != nil {
		return err
	}
	defer rc.Close()
	compressed := &countingHash{Hash: sha256.New()}
	zr, err := zstd.NewReader(io.TeeReader(iox.ContextReader{Ctx: ctx, R: rc}, compressed),
		zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(MaxDecoderWindow), zstd.WithDecoderMaxMemory(MaxDecoderWindow))
	if err != nil {
		return err
	}
	defer zr.Close()
	// Every decompressed byte is hashed for the DiffID, and there are at
	// most MaxLayerTarSize of them: the bound is known from the config
	// before the first byte is read.
	limit := MaxLayerTarSize(info.NarSize)
	bounded := &iox.LimitReader{R: zr, Left: limit, Over: func() error {
		return fmt.Errorf("%w: %s decompresses to more than %d bytes (NAR size %d)", ErrLayerFormat, info.Path, limit, info.NarSize)
	}}
	uncompressed := sha256.New()
	tarStream := io.TeeReader(bounded, uncompressed)
	tr := tar.NewReader(tarStream)
	nh := sha256.New()
	nw := nix.NewNARWriter(nh)
	base := nix.BaseName(info.Path)
	for first := true; ; first = false {
		th, err := tr.Next()
		if err == io.EOF {
			if first {
				return fmt.Errorf("%w: empty layer", ErrLayerFormat)
			}
			break
		}
		if err != nil {
			return layerReadErr(err)
		}
		if iox.SparseTar(th) {
			return fmt.Errorf("%w: entry %q is a sparse file", ErrLayerFormat, th.Name)
		}
		h, err := narHeader(base, th)
		if err != nil {
			return err
		}
		// A file never holds more than what is left of the path's NAR
		// size: nothing is written past the signed bound.
		if h.Type == nix.TypeRegular && h.Size > info.NarSize-nw.Size() {
			return fmt.Errorf("%w: entry %q declares %d bytes, more than %s's NAR size %d allows", ErrLayerFormat, th.Name, h.Size, info.Path, info.NarSize)
		}
		// The NAR writer checks that every parent is a directory of this
		// layer, entries come in order and are unique.
		if err := nw.WriteHeader(h); err != nil {
			return fmt.Errorf("%w: %v", ErrLayerFormat, err)
		}
		var r io.Reader
		if h.Type == nix.TypeRegular {
			r = &iox.ExactReader{R: io.TeeReader(tr, nw), Left: h.Size}
		}
		if err := fn(h, r); err != nil {
			return err
		}
		if r != nil {
			if _, err := io.Copy(io.Discard, r); err != nil {
				return layerReadErr(err)
			}
		}
	}
	if err := nw.Close(); err != nil {
		return fmt.Errorf("%w: %v", ErrLayerFormat, err)
	}
	// What follows the end-of-archive marker (a record's padding, as GNU
	// tar and Python's tarfile write) is hashed too, and must be zeros.
	if err := zeros(tarStream); err != nil {
		return err
	}
	// Read to the end of the blob so its digest covers every byte.
	if _, err := io.Copy(io.Discard, io.TeeReader(iox.ContextReader{Ctx: ctx, R: rc}, compressed)); err != nil {
		return layerReadErr(err)
	}
	if got := hex.EncodeToString(compressed.Sum(nil)); got != desc.Digest.Hex || compressed.n != desc.Size {
		return fmt.Errorf("%w: layer %s has %d bytes hashing to sha256:%s", ErrLayerDigest, desc.Digest, compressed.n, got)
	}
	if got := hex.EncodeToString(uncompressed.Sum(nil)); got != diffID.Hex {
		return fmt.Errorf("%w: layer %s uncompresses to sha256:%s, config says %s", ErrLayerDigest, desc.Digest, got, diffID)
	}
	var sum nix.Hash
	copy(sum[:], nh.Sum(nil))
	return checkNar(info.Path, info, sum, nw.Size())
}

// MaxLayerTarSize bounds the uncompressed tar of a store path of NAR
// size narSize (docs/bundle.md §4): tar spends at most 1.5 KiB of headers
// per entry where NAR spends at least about 100 bytes, so 16 times the NAR
// size, plus a MiB for padding, holds every layer otter or another tool
// writes.
func MaxLayerTarSize(narSize int64) int64 {
	const slack = 1 << 20
	if narSize < 0 {
		return slack
	}
	if narSize > (math.MaxInt64-slack)/16 {
		return math.MaxInt64
	}
	return 16*narSize + slack
}

// zeros reads r to its end and refuses a non-zero byte.
func zeros(r io.Reader) error {
	buf := make([]byte, 32<<10)
	for {
		n, err := r.Read(buf)
		for _, b := range buf[:n] {
			if b != 0 {
				return fmt.Errorf("%w: non-zero bytes after the end of the archive", ErrLayerFormat)
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return layerReadErr(err)
		}
	}
}

// layerReadErr names a failure to read a layer: a refusal of otter's own
// passes through; anything else is a damaged blob (a tampered, truncated
// or undecodable stream).
func layerReadErr(err error) error {
	if errors.Is(err, ErrLayerFormat) || errors.Is(err, ErrLayerDigest) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return fmt.Errorf("%w: %v", ErrLayerDigest, err)
}

// unpackLayer unpacks one layer into dst and checks it. On error, dst may
// hold a partial tree; the caller removes it.
func unpackLayer(ctx context.Context, layer v1.Layer, desc v1.Descriptor, diffID v1.Hash, info *nix.PathInfo, dst string) (err error) {
	var dirs []string
	defer func() {
		// Directories get their store mode and time last, deepest first,
		// once nothing more is written into them.
		for i := len(dirs) - 1; i >= 0 && err == nil; i-- {
			if err = os.Chmod(dirs[i], modeDir); err == nil {
				err = fsutil.StoreTime(dirs[i])
			}
		}
	}()
	return readLayer(ctx, layer, desc, diffID, info, func(h *nix.Header, r io.Reader) error {
		p := dst
		if h.Path != "" {
			p = filepath.Join(dst, filepath.FromSlash(h.Path))
		}
		// readLayer has checked that every parent is a directory this
		// layer created, so p cannot leave dst.
		switch h.Type {
		case nix.TypeDirectory:
			if err := os.Mkdir(p, 0o755); err != nil {
				return err
			}
			dirs = append(dirs, p)
			return nil
		case nix.TypeSymlink:
			if err := os.Symlink(h.LinkTarget, p); err != nil {
				return err
			}
		case nix.TypeRegular:
			if err := writeFile(p, h, r); err != nil {
				return err
			}
		}
		return fsutil.StoreTime(p)
	})
}

func writeFile(p string, h *nix.Header, r io.Reader) error {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	n, err := iox.Copy(f, r)
	var we *iox.WriteError
	if errors.As(err, &we) {
		return fmt.Errorf("writing %s: %w", p, we.Err) // a full disk, not a bad layer
	}
	if err != nil {
		return layerReadErr(err)
	}
	if n != h.Size {
		return fmt.Errorf("%w: %s: %d of %d bytes", ErrLayerDigest, p, n, h.Size)
	}
	mode := os.FileMode(modeRegular)
	if h.Executable {
		mode = modeExec
	}
	if err := f.Chmod(mode); err != nil {
		return err
	}
	return f.Close()
}
