package delta

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/klauspost/compress/zstd"

	"github.com/otter-fleet/otter/bundle"
	"github.com/otter-fleet/otter/internal/fsutil"
	"github.com/otter-fleet/otter/internal/iox"
	"github.com/otter-fleet/otter/nix"
)

// ApplyOptions tune Apply.
type ApplyOptions struct {
	// Installed is the digest of the installed bundle; a patch for another
	// base is refused. Empty: the base is checked by its store paths only.
	Installed string
	// PatchDigest, if set, is the signed digest of the whole patch file,
	// checked before anything else.
	PatchDigest string
	// NoFsync skips syncing before store paths become visible.
	NoFsync bool
}

// ApplyResult says what Apply did.
type ApplyResult struct {
	Target  string         `json:"target"`
	Built   []string       `json:"built"`
	Present []string       `json:"present"`
	Config  *bundle.Config `json:"-"`
}

// Apply rebuilds the target's new store paths in storeDir from the
// installed base paths and the patch at path. Nothing outside a staging
// directory in storeDir changes until every new path has been built and
// matched its NAR hash; then the paths are renamed into place.
func Apply(ctx context.Context, patchPath, storeDir string, o ApplyOptions) (*ApplyResult, error) {
	f, err := os.Open(patchPath)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if o.PatchDigest != "" {
		got, _, err := v1.SHA256(f)
		if err != nil {
			return nil, err
		}
		if got.String() != o.PatchDigest {
			return nil, fmt.Errorf("%w: the patch file hashes to %s, the signed statement says %s", ErrPatchDigest, got, o.PatchDigest)
		}
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return nil, err
		}
	}
	h, off, err := ParseHeader(bufio.NewReader(io.LimitReader(f, preambleLength+MaxHeaderSize)))
	if err != nil {
		return nil, err
	}
	total := off
	for _, s := range h.Streams {
		total += s.Size
	}
	switch {
	case fi.Size() < total:
		return nil, fmt.Errorf("%w: %d bytes, the header declares %d", ErrTruncated, fi.Size(), total)
	case fi.Size() > total:
		return nil, fmt.Errorf("%w: %d bytes after the declared end", ErrFormat, fi.Size()-total)
	}
	sections := make([]*io.SectionReader, len(h.Streams))
	pos := off
	for i, s := range h.Streams {
		sections[i] = io.NewSectionReader(f, pos, s.Size)
		pos += s.Size
	}
	targetRaw, err := decodeAll(sections[sTarget], h.Streams[sTarget].RawSize)
	if err != nil {
		return nil, fmt.Errorf("target stream: %w", err)
	}
	cfg, err := targetConfig(h, targetRaw)
	if err != nil {
		return nil, err
	}
	if o.Installed != "" && o.Installed != h.Base {
		return nil, fmt.Errorf("%w: it applies to %s, %s is installed", ErrBaseMismatch, h.Base, o.Installed)
	}
	for _, bp := range h.BasePaths {
		if _, err := os.Lstat(filepath.Join(storeDir, nix.BaseName(bp.Path))); err != nil {
			return nil, fmt.Errorf("%w: the store lacks %s, which the patch reads", ErrBaseMismatch, bp.Path)
		}
	}
	opsRaw, err := decodeAll(sections[sOps], h.Streams[sOps].RawSize)
	if err != nil {
		return nil, fmt.Errorf("op list: %w", err)
	}
	ops, err := parseOps(opsRaw, h.TargetSize)
	if err != nil {
		return nil, err
	}
	closure := cfg.Closure()
	built := map[string]bool{}
	hashes := map[string]string{}
	allowed := map[string]bool{}
	for _, bp := range h.BasePaths {
		allowed[nix.BaseName(bp.Path)] = true
	}
	for _, p := range ops {
		tp := nix.StoreDir + "/" + p.Target
		if closure.Lookup(tp) == nil || built[tp] {
			return nil, fmt.Errorf("%w: %s is not a new path of the target", ErrFormat, tp)
		}
		built[tp] = true
		if p.Base != "" {
			if !allowed[p.Base] {
				return nil, fmt.Errorf("%w: %s derives from %s, not among the base paths", ErrFormat, p.Target, p.Base)
			}
			if _, seen := hashes[p.Base[:32]]; !seen {
				hashes[p.Base[:32]] = p.Target[:32]
			}
		}
		for _, e := range p.Entries {
			if e.Source != "" {
				b, _, _ := strings.Cut(e.Source, "/")
				if !allowed[b] {
					return nil, fmt.Errorf("%w: %s reads %s, not among the base paths", ErrFormat, p.Target, e.Source)
				}
			}
		}
	}
	for _, p := range closure.Paths {
		if built[p.Path] {
			continue
		}
		if _, err := os.Lstat(filepath.Join(storeDir, nix.BaseName(p.Path))); err != nil {
			return nil, fmt.Errorf("%w: the target keeps %s from the base, but the store lacks it", ErrBaseMismatch, p.Path)
		}
	}

	staging := filepath.Join(storeDir, ".otter-patch-"+strings.TrimPrefix(h.Target, "sha256:")[:16])
	if err := fsutil.RemoveAll(staging); err != nil {
		return nil, err
	}
	if err := os.Mkdir(staging, 0o755); err != nil {
		return nil, err
	}
	defer fsutil.RemoveAll(staging)
	stage, err := fsutil.OpenDir(staging)
	if err != nil {
		return nil, err
	}
	defer stage.Close()
	store, err := fsutil.OpenDir(storeDir)
	if err != nil {
		return nil, err
	}
	defer store.Close()

	a := &applier{store: store, stage: stage, rw: newRewriter(hashes)}
	decs := make([]*zstd.Decoder, len(h.Streams))
	for _, i := range []int{sControl, sExtra, sLiteral} {
		d, err := zstd.NewReader(sections[i], zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(streamWindow), zstd.WithDecoderMaxMemory(streamWindow))
		if err != nil {
			return nil, err
		}
		defer d.Close()
		decs[i] = d
	}
	a.ctrlRaw = streamReader(decs[sControl], h.Streams[sControl].RawSize)
	a.ctrl = bufio.NewReader(a.ctrlRaw)
	a.diff = newCMDecoder(bufio.NewReader(sections[sDiff]), h.Streams[sDiff].RawSize)
	a.extra = streamReader(decs[sExtra], h.Streams[sExtra].RawSize)
	a.literal = streamReader(decs[sLiteral], h.Streams[sLiteral].RawSize)
	a.frames = sections[sFrames]

	res := &ApplyResult{Target: h.Target, Built: []string{}, Present: []string{}, Config: cfg}
	for _, p := range ops {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		dst := filepath.Join(staging, p.Target)
		info := closure.Lookup(nix.StoreDir + "/" + p.Target)
		// What a path holds is bounded by its NAR size before any byte of
		// it is written: the files the patch lists, then what is copied.
		a.budget = info.NarSize
		for _, e := range p.Entries {
			a.budget -= e.Size
		}
		if a.budget < 0 {
			return nil, fmt.Errorf("%w: %s lists more file bytes than its NAR size %d", ErrTooLarge, info.Path, info.NarSize)
		}
		if err := a.buildPath(p, p.Target); err != nil {
			return nil, fmt.Errorf("building %s: %w", p.Target, err)
		}
		if _, err := os.Lstat(dst); err != nil {
			return nil, fmt.Errorf("%w: the patch makes nothing of %s", ErrFormat, p.Target)
		}
		if err := fsutil.Canonicalize(dst); err != nil {
			return nil, err
		}
		got, n, err := nix.HashPath(dst)
		if err != nil {
			return nil, err
		}
		if got != info.NarHash || n != info.NarSize {
			return nil, fmt.Errorf("%w: %s has NAR hash %s, the target says %s", ErrTargetMismatch, info.Path, got, info.NarHash)
		}
	}
	// Every stream must have been used exactly, and hold nothing more
	// than it declared.
	if _, err := a.ctrl.ReadByte(); err != io.EOF {
		return nil, fmt.Errorf("%w: control stream longer than the op list needs", ErrFormat)
	}
	for _, r := range []struct {
		name string
		r    *iox.ExactReader
	}{{"control", a.ctrlRaw}, {"extra", a.extra}, {"literal", a.literal}} {
		if r.r.Left != 0 {
			return nil, fmt.Errorf("%w: %d bytes of the %s stream unused", ErrFormat, r.r.Left, r.name)
		}
		if n, _ := r.r.R.Read(make([]byte, 1)); n != 0 {
			return nil, fmt.Errorf("%w: the %s stream is longer than declared", ErrFormat, r.name)
		}
	}
	if err := a.diff.finish(h.Streams[sDiff].Size); err != nil {
		return nil, err
	}
	if a.framePos != h.Streams[sFrames].Size {
		return nil, fmt.Errorf("%w: frames stream not used exactly", ErrFormat)
	}
	if !o.NoFsync {
		if err := fsutil.SyncFS(staging); err != nil {
			return nil, err
		}
	}
	for _, p := range ops {
		final := filepath.Join(storeDir, p.Target)
		if _, err := os.Lstat(final); err == nil {
			res.Present = append(res.Present, nix.StoreDir+"/"+p.Target)
			continue
		}
		if err := fsutil.RenameStorePath(filepath.Join(staging, p.Target), final); err != nil {
			return nil, err
		}
		res.Built = append(res.Built, nix.StoreDir+"/"+p.Target)
	}
	if !o.NoFsync {
		if err := fsutil.SyncDir(storeDir); err != nil {
			return nil, err
		}
	}
	return res, nil
}

// targetConfig checks the target manifest and config the patch carries
// against its target digest.
func targetConfig(h *Header, raw []byte) (*bundle.Config, error) {
	manifest, config, err := parseTarget(raw)
	if err != nil {
		return nil, err
	}
	if d, _, _ := v1.SHA256(bytes.NewReader(manifest)); d.String() != h.Target {
		return nil, fmt.Errorf("%w: the target manifest hashes to %s, the header says %s", ErrFormat, d, h.Target)
	}
	m, err := v1.ParseManifest(bytes.NewReader(manifest))
	if err != nil {
		return nil, fmt.Errorf("%w: target manifest: %v", ErrFormat, err)
	}
	if d, _, _ := v1.SHA256(bytes.NewReader(config)); d != m.Config.Digest {
		return nil, fmt.Errorf("%w: the target config hashes to %s, its manifest says %s", ErrFormat, d, m.Config.Digest)
	}
	cfg, err := bundle.ParseConfig(config)
	if err != nil {
		return nil, err
	}
	if cfg.Closure().NarSize() != h.TargetSize {
		return nil, fmt.Errorf("%w: targetSize %d, the closure is %d", ErrFormat, h.TargetSize, cfg.Closure().NarSize())
	}
	return cfg, nil
}

// decodeAll decompresses a whole (small) stream, bounded by its declared size.
func decodeAll(r io.Reader, rawSize int64) ([]byte, error) {
	d, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(streamWindow), zstd.WithDecoderMaxMemory(streamWindow))
	if err != nil {
		return nil, err
	}
	defer d.Close()
	data, err := io.ReadAll(io.LimitReader(d, rawSize+1))
	if err != nil {
		return nil, streamErr("a", err)
	}
	if int64(len(data)) != rawSize {
		return nil, fmt.Errorf("%w: stream is %d bytes, declared %d", ErrFormat, len(data), rawSize)
	}
	return data, nil
}

// streamReader yields exactly a stream's declared raw size: less is a
// truncated patch, more is found by reading on.
func streamReader(r io.Reader, rawSize int64) *iox.ExactReader {
	return &iox.ExactReader{R: r, Left: rawSize, Short: func(left int64) error {
		return fmt.Errorf("%w: stream ends %d bytes early", ErrTruncated, left)
	}}
}

type applier struct {
	store    *fsutil.Dir // the store, read beneath
	stage    *fsutil.Dir // the staging directory, written beneath
	rw       *rewriter
	ctrl     *bufio.Reader
	ctrlRaw  *iox.ExactReader
	diff     *cmDecoder
	extra    *iox.ExactReader
	literal  *iox.ExactReader
	frames   *io.SectionReader
	framePos int64
	budget   int64 // bytes the path being built may still hold
}

// buildPath makes one new store path, rel (its base name) in the staging
// directory. Every node is created beneath the staging directory without
// following a symlink at any depth, so an entry under a symlink the patch
// made (or a base path holds) is refused, never written through.
func (a *applier) buildPath(p pathOp, rel string) error {
	listed := map[string]*entryOp{}
	for i := range p.Entries {
		e := &p.Entries[i]
		if _, dup := listed[e.Rel]; dup {
			return fmt.Errorf("%w: %q listed twice", ErrFormat, e.Rel)
		}
		listed[e.Rel] = e
	}
	if p.Base != "" {
		if err := a.copyBase(p.Base, rel, listed); err != nil {
			return err
		}
	}
	for i := range p.Entries {
		e := &p.Entries[i]
		if e.Op == opRemove {
			continue
		}
		target := rel
		if e.Rel != "" {
			target = rel + "/" + e.Rel
		}
		var err error
		switch e.Op {
		case opDir:
			err = a.stage.Mkdir(target, 0o755)
		case opSymlink:
			err = a.stage.Symlink(e.Target, target)
		case opFile:
			err = a.writeFile(e, target)
		}
		if err != nil {
			return fmt.Errorf("%q: %w", e.Rel, placeErr(err))
		}
	}
	return nil
}

// placeErr names why a node could not be made where the patch puts it:
// through a symlink, over an existing node, or without a parent directory
// are the patch's faults; anything else (a full disk) is the device's.
func placeErr(err error) error {
	switch {
	case errors.Is(err, fsutil.ErrSymlink):
		return fmt.Errorf("%w: %v", ErrFormat, err)
	case errors.Is(err, fs.ErrExist):
		return fmt.Errorf("%w: exists already", ErrFormat)
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.ENOTDIR):
		return fmt.Errorf("%w: no parent directory", ErrFormat)
	}
	return err
}

// copyBase copies the base path, hashes rewritten, leaving out every
// listed entry and the subtree of a listed or removed directory.
func (a *applier) copyBase(base, rel string, listed map[string]*entryOp) error {
	var skip string // a listed subtree being skipped
	return nix.Walk(filepath.Join(a.store.Name(), base), func(h *nix.Header, _ func() (*os.File, error)) error {
		if skip != "" && (h.Path == skip || strings.HasPrefix(h.Path, skip+"/")) {
			return nil
		}
		skip = ""
		if _, ok := listed[h.Path]; ok {
			if h.Type == nix.TypeDirectory {
				skip = h.Path
			}
			return nil
		}
		target, src := rel, base
		if h.Path != "" {
			target, src = rel+"/"+h.Path, base+"/"+h.Path
		}
		var err error
		switch h.Type {
		case nix.TypeDirectory:
			err = a.stage.Mkdir(target, 0o755)
		case nix.TypeSymlink:
			err = a.stage.Symlink(a.rw.string(h.LinkTarget), target)
		default:
			if a.budget -= h.Size; a.budget < 0 {
				return fmt.Errorf("%w: the copied base files outgrow the path's NAR size", ErrTooLarge)
			}
			var data []byte
			if data, err = a.readBase(src, h.Size); err != nil {
				return err
			}
			mode := os.FileMode(0o644)
			if h.Executable {
				mode = 0o755
			}
			err = a.stage.WriteFile(target, a.rw.apply(data), mode)
		}
		if err != nil {
			return fmt.Errorf("%q: %w", h.Path, placeErr(err))
		}
		return nil
	})
}

// readBase reads the regular file src ("<base name>/<rel>") of the store,
// refusing a path that goes through a symlink: apply reads nothing
// outside the store.
func (a *applier) readBase(src string, size int64) ([]byte, error) {
	f, err := a.store.Open(src)
	if err != nil {
		if errors.Is(err, fsutil.ErrSymlink) {
			return nil, fmt.Errorf("%w: source %s: %v", ErrFormat, src, err)
		}
		return nil, fmt.Errorf("%w: source %s: %v", ErrBaseMismatch, src, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if size >= 0 && fi.Size() != size {
		return nil, fmt.Errorf("%w: source %s changed while reading", ErrBaseMismatch, src)
	}
	data := make([]byte, fi.Size())
	if _, err := io.ReadFull(f, data); err != nil {
		return nil, err
	}
	return data, nil
}

// readSource reads an old file named by a source, hashes rewritten.
func (a *applier) readSource(src string) ([]byte, error) {
	data, err := a.readBase(src, -1)
	if err != nil {
		return nil, err
	}
	return a.rw.apply(data), nil
}

// writeFile produces one listed file and checks its size and SHA-256.
func (a *applier) writeFile(e *entryOp, target string) error {
	mode := os.FileMode(0o644)
	if e.Exec {
		mode = 0o755
	}
	f, err := a.stage.Create(target, mode)
	if err != nil {
		return err
	}
	defer f.Close()
	sum := sha256.New()
	cw := &countWriter{w: io.MultiWriter(f, sum), max: e.Size}
	bw := bufio.NewWriterSize(cw, 256<<10)
	if err := a.produce(e, bw); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	if cw.n != e.Size {
		return fmt.Errorf("%w: %d bytes, the patch declares %d", ErrTargetMismatch, cw.n, e.Size)
	}
	if got := sum.Sum(nil); !bytes.Equal(got, e.SHA256[:]) {
		return fmt.Errorf("%w: SHA-256 %x, the patch declares %x", ErrTargetMismatch, got, e.SHA256)
	}
	return f.Close()
}

func (a *applier) produce(e *entryOp, w io.Writer) error {
	switch e.Codec {
	case codecLiteral:
		if _, err := io.CopyN(w, a.literal, e.Size); err != nil {
			return streamErr("literal", err)
		}
		return nil
	}
	old, err := a.readSource(e.Source)
	if err != nil {
		return err
	}
	switch e.Codec {
	case codecCopy:
		_, err = w.Write(old)
		return err
	case codecBsdiff:
		var segs []segment
		if e.Pred == predAArch64 {
			if segs, err = a.readSegments(); err != nil {
				return err
			}
		}
		cs := make([]ctrl, 0, min(e.NCtrl, 1<<16))
		for i := int64(0); i < e.NCtrl; i++ {
			var c ctrl
			for _, v := range []*int64{&c.Add, &c.Extra, &c.Seek} {
				if *v, err = binary.ReadVarint(a.ctrl); err != nil {
					return streamErr("control", err)
				}
			}
			cs = append(cs, c)
		}
		if err := checkControl(cs, int64(len(old)), e.Size); err != nil {
			return err
		}
		var p predictor = identity{}
		if e.Pred == predAArch64 {
			ap, ok := newAArch64(old, cs, segs)
			if !ok {
				return fmt.Errorf("%w: aarch64 prediction for a file that is no aarch64 ELF", ErrBaseMismatch)
			}
			p = ap
		}
		return applyBsdiff(old, cs, p, a.diff, a.extra, w)
	case codecZdict:
		if e.Frame > a.frames.Size()-a.framePos {
			return fmt.Errorf("%w: frame beyond the frames stream", ErrTruncated)
		}
		frame := io.NewSectionReader(a.frames, a.framePos, e.Frame)
		a.framePos += e.Frame
		window := zdictWindow(len(old), int(e.Size))
		d, err := zstd.NewReader(frame, zstd.WithDecoderConcurrency(1), zstd.WithDecoderDictRaw(1, old),
			zstd.WithDecoderMaxWindow(uint64(window)), zstd.WithDecoderMaxMemory(uint64(window)))
		if err != nil {
			return err
		}
		defer d.Close()
		n, err := io.Copy(w, io.LimitReader(d, e.Size+1))
		if err != nil {
			return streamErr("frames", err)
		}
		if n != e.Size {
			return fmt.Errorf("%w: zstd frame gives %d bytes, declared %d", ErrTargetMismatch, n, e.Size)
		}
		return nil
	}
	return fmt.Errorf("%w: codec %d", ErrFormat, e.Codec)
}

// countWriter counts what it passes on, and refuses to pass on more than
// max bytes: a file is never written past its declared size.
type countWriter struct {
	w   io.Writer
	n   int64
	max int64
}

func (c *countWriter) Write(b []byte) (int, error) {
	if int64(len(b)) > c.max-c.n {
		return 0, fmt.Errorf("%w: more bytes than the %d the patch declares", ErrTargetMismatch, c.max)
	}
	n, err := c.w.Write(b)
	c.n += int64(n)
	return n, err
}

// readSegments reads the new file's segment table from the control stream.
func (a *applier) readSegments() ([]segment, error) {
	n, err := binary.ReadUvarint(a.ctrl)
	if err != nil || n == 0 || n > 64 {
		return nil, fmt.Errorf("%w: segment table (%d entries, %v)", ErrFormat, n, err)
	}
	segs := make([]segment, n)
	for i := range segs {
		for _, v := range []*uint64{&segs[i].Off, &segs[i].VA, &segs[i].FileSize, &segs[i].MemSize} {
			if *v, err = binary.ReadUvarint(a.ctrl); err != nil {
				return nil, fmt.Errorf("%w: segment table: %v", ErrFormat, err)
			}
		}
	}
	return segs, nil
}

// Target is what a patch says it builds: the target bundle's manifest and
// config, checked against the header's target digest.
type Target struct {
	Manifest, RawConfig []byte
	Config              *bundle.Config
}

// ReadTarget reads the target a patch file builds, without applying it:
// a device sizes the update and records the new release from it.
func ReadTarget(patchPath string) (*Target, error) {
	f, err := os.Open(patchPath)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h, off, err := ParseHeader(bufio.NewReader(io.LimitReader(f, preambleLength+MaxHeaderSize)))
	if err != nil {
		return nil, err
	}
	raw, err := decodeAll(io.NewSectionReader(f, off, h.Streams[sTarget].Size), h.Streams[sTarget].RawSize)
	if err != nil {
		return nil, fmt.Errorf("target stream: %w", err)
	}
	cfg, err := targetConfig(h, raw)
	if err != nil {
		return nil, err
	}
	manifest, config, _ := parseTarget(raw)
	return &Target{Manifest: manifest, RawConfig: config, Config: cfg}, nil
}
