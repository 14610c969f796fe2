package delta

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"regexp"
	"runtime"
	"sort"
	"strings"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/klauspost/compress/zstd"
	"golang.org/x/sync/errgroup"

	"github.com/otter-fleet/otter/bundle"
	"github.com/otter-fleet/otter/nix"
)

// Release is one side of a patch: a bundle and its config.
type Release struct {
	Image  v1.Image
	Config *bundle.Config
}

// Stats says what a patch holds.
type Stats struct {
	NewPaths     int            `json:"newPaths"`
	DerivedPaths int            `json:"derivedPaths"`
	FreshPaths   int            `json:"freshPaths"`
	ListedFiles  int            `json:"listedFiles"`
	Codecs       map[string]int `json:"codecs"`
	StreamBytes  map[string]int `json:"streamBytes"`
	Size         int64          `json:"size"`
	// Paths says, for each new store path of the target, what the patch
	// does with it.
	Paths []PathStats `json:"paths"`
}

// PathStats is one new store path of a patch.
type PathStats struct {
	Path string `json:"path"`
	// Base is the base path it derives from ("" for a fresh one).
	Base string `json:"base,omitempty"`
	// Entries is how many of its nodes still differ from the base once
	// store-path hashes are rewritten: 0 means it is the base renamed.
	Entries int `json:"entries"`
	// Bytes is its estimated share of the patch's streams: the file data
	// it adds before compression, scaled to what the streams take.
	Bytes int64 `json:"bytes"`
	// Renamed says it is its base renamed: identical once every store
	// path it names (hash and name) is replaced by its package name, so
	// it changed only because a dependency did.
	Renamed bool `json:"renamed"`
}

// storePathRE matches a store path's base name inside file contents.
var storePathRE = regexp.MustCompile(`[0-9abcdfghijklmnpqrsvwxyz]{32}-[A-Za-z0-9+._?=-]+`)

// normalizeNames replaces every store path name in b by @package@.
func normalizeNames(b []byte) []byte {
	return storePathRE.ReplaceAllFunc(b, func(m []byte) []byte {
		name, _ := nix.ParseName(nix.StoreDir + "/" + string(m))
		return []byte("@" + name + "@")
	})
}

// renamedOnly reports whether the new tree is the old one but for the
// store path names its files and links hold: the listed entries are only
// files and links both have, equal once names are normalized.
func renamedOnly(ot, nt *tree, listed []entryOp) bool {
	for _, e := range listed {
		oe, ne := ot.lookup(e.Rel), nt.lookup(e.Rel)
		if oe == nil || ne == nil || oe.Type != ne.Type || oe.Exec != ne.Exec {
			return false
		}
		switch ne.Type {
		case nix.TypeSymlink:
			if !bytes.Equal(normalizeNames([]byte(oe.Target)), normalizeNames([]byte(ne.Target))) {
				return false
			}
		case nix.TypeRegular:
			if !bytes.Equal(normalizeNames(oe.Data), normalizeNames(ne.Data)) {
				return false
			}
		}
	}
	return true
}

// Options tune Diff.
type Options struct {
	Jobs int
	// MaxZdictWindow bounds old plus new size for zstd with the old file as
	// dictionary: the memory a device needs to apply it. The default, 2
	// MiB, tries zdict on files up to about 1 MiB: on the corpus it never
	// beat bsdiff above 256 KiB, and on big files it is the costliest try.
	MaxZdictWindow int64
	// NoPredict turns off aarch64-aware prediction in bsdiff.
	NoPredict bool
}

// pname is a store path's package name (nix.ParseName).
func pname(p string) string {
	name, _ := nix.ParseName(p)
	return name
}

// similarity is the share of the new tree's entry names the old one has.
func similarity(oldT, newT *tree) float64 {
	if len(newT.Entries) == 0 {
		return 0
	}
	n := 0
	for _, e := range newT.Entries {
		if oldT.lookup(e.Rel) != nil {
			n++
		}
	}
	return float64(n) / float64(len(newT.Entries))
}

// match pairs every new path with the base path it most likely derives
// from: the same package name, then the most similar tree.
func match(newTrees, oldTrees map[string]*tree) map[string]string {
	var olds []string
	for p := range oldTrees {
		olds = append(olds, p)
	}
	sort.Strings(olds)
	out := map[string]string{}
	for np, nt := range newTrees {
		best, bestScore := "", 0.0
		for _, op := range olds {
			score := similarity(oldTrees[op], nt)
			if pname(op) == pname(np) {
				score += 1 // the same package wins over a merely similar one
			}
			if score > bestScore {
				best, bestScore = op, score
			}
		}
		if bestScore >= 0.5 {
			out[np] = best
		}
	}
	return out
}

// Diff writes a patch taking a device from base to target.
func Diff(ctx context.Context, base, target Release, w io.Writer, o Options) (*Stats, error) {
	if o.Jobs <= 0 {
		o.Jobs = runtime.GOMAXPROCS(0)
	}
	if o.MaxZdictWindow <= 0 {
		o.MaxZdictWindow = 2 << 20
	}
	baseDigest, err := base.Image.Digest()
	if err != nil {
		return nil, err
	}
	targetDigest, err := target.Image.Digest()
	if err != nil {
		return nil, err
	}
	inBase := map[string]bool{}
	for _, p := range base.Config.Paths {
		inBase[p.Path] = true
	}
	inTarget := map[string]bool{}
	for _, p := range target.Config.Paths {
		inTarget[p.Path] = true
	}
	newTrees, err := loadTrees(ctx, target.Image, target.Config, func(p string) bool { return !inBase[p] })
	if err != nil {
		return nil, fmt.Errorf("reading the target: %w", err)
	}
	oldTrees, err := loadTrees(ctx, base.Image, base.Config, func(p string) bool { return !inTarget[p] })
	if err != nil {
		return nil, fmt.Errorf("reading the base: %w", err)
	}
	matches := match(newTrees, oldTrees)

	var newPaths []string
	for p := range newTrees {
		newPaths = append(newPaths, p)
	}
	sort.Strings(newPaths)
	hashes := map[string]string{}
	for _, np := range newPaths {
		if op, ok := matches[np]; ok {
			if _, seen := hashes[nix.HashPart(op)]; !seen {
				hashes[nix.HashPart(op)] = nix.HashPart(np)
			}
		}
	}
	rw := newRewriter(hashes)

	// Every file of the old trees, by base name, for files that moved.
	byName := map[string][]string{}
	for _, op := range sortedKeys(oldTrees) {
		for _, e := range oldTrees[op].Entries {
			if e.Type == nix.TypeRegular {
				name := e.Rel[strings.LastIndex(e.Rel, "/")+1:]
				if e.Rel == "" {
					name = nix.NamePart(op)
				}
				byName[name] = append(byName[name], source(op, e.Rel))
			}
		}
	}
	lookupSource := func(src string) *entry {
		p, rel, _ := strings.Cut(src, "/")
		t := oldTrees[nix.StoreDir+"/"+p]
		if t == nil {
			return nil
		}
		return t.lookup(rel)
	}

	st := &Stats{NewPaths: len(newPaths), Codecs: map[string]int{}, StreamBytes: map[string]int{}}
	var ops []pathOp
	type job struct {
		e      *entryOp
		newb   []byte
		source string
		old    []byte
		path   int // index in ops
	}
	var jobs []job
	var renamed []bool // per op: differs from its base only in store path names
	basePaths := map[string]bool{}
	for _, np := range newPaths {
		nt := newTrees[np]
		p := pathOp{Target: nix.BaseName(np)}
		var ot *tree
		if op, ok := matches[np]; ok {
			ot = oldTrees[op]
			p.Base = nix.BaseName(op)
			basePaths[op] = true
			st.DerivedPaths++
		} else {
			st.FreshPaths++
		}
		listed := map[string]bool{}
		for i := range nt.Entries {
			ne := &nt.Entries[i]
			if ot != nil {
				if oe := ot.lookup(ne.Rel); oe != nil && sameEntry(rw, oe, ne) {
					continue
				}
			}
			listed[ne.Rel] = true
			e := entryOp{Rel: ne.Rel}
			switch ne.Type {
			case nix.TypeDirectory:
				e.Op = opDir
			case nix.TypeSymlink:
				e.Op, e.Target = opSymlink, ne.Target
			case nix.TypeRegular:
				e.Op, e.Exec, e.Size, e.SHA256 = opFile, ne.Exec, int64(len(ne.Data)), sha256.Sum256(ne.Data)
			}
			p.Entries = append(p.Entries, e)
		}
		if ot != nil {
			// Base entries the target lacks, where the target keeps the parent directory.
			for _, oe := range ot.Entries {
				if oe.Rel == "" || nt.lookup(oe.Rel) != nil {
					continue
				}
				parent := ""
				if i := strings.LastIndex(oe.Rel, "/"); i >= 0 {
					parent = oe.Rel[:i]
				}
				if pe := nt.lookup(parent); pe != nil && pe.Type == nix.TypeDirectory && !(listed[parent] && ot.lookup(parent) == nil) {
					p.Entries = append(p.Entries, entryOp{Rel: oe.Rel, Op: opRemove})
				}
			}
			sort.SliceStable(p.Entries, func(i, j int) bool { return p.Entries[i].Rel < p.Entries[j].Rel })
		}
		if ot != nil {
			renamed = append(renamed, renamedOnly(ot, nt, p.Entries))
		} else {
			renamed = append(renamed, false)
		}
		ops = append(ops, p)
	}
	// Sources for listed files: the same path in the base path, else a file
	// of the same name anywhere in the base.
	for i := range ops {
		p := &ops[i]
		nt := newTrees[nix.StoreDir+"/"+p.Target]
		for j := range p.Entries {
			e := &p.Entries[j]
			if e.Op != opFile {
				continue
			}
			ne := nt.lookup(e.Rel)
			st.ListedFiles++
			var src string
			if p.Base != "" {
				if oe := lookupSource(source(nix.StoreDir+"/"+p.Base, e.Rel)); oe != nil && oe.Type == nix.TypeRegular {
					src = source(nix.StoreDir+"/"+p.Base, e.Rel)
				}
			}
			if src == "" {
				name := e.Rel[strings.LastIndex(e.Rel, "/")+1:]
				if e.Rel == "" {
					name = nix.NamePart(p.Target)
				}
				if c := byName[name]; len(c) > 0 {
					src = c[0]
				}
			}
			if src == "" {
				e.Codec = codecLiteral
				jobs = append(jobs, job{e: e, newb: ne.Data, path: i})
				continue
			}
			jobs = append(jobs, job{e: e, newb: ne.Data, source: src, old: rw.apply(lookupSource(src).Data), path: i})
			bp, _, _ := strings.Cut(src, "/")
			basePaths[nix.StoreDir+"/"+bp] = true
		}
	}

	// Encode every listed file, in parallel, then lay the streams out in order.
	// Each goroutine writes only its own element of encs.
	encs := make([]encoded, len(jobs))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(o.Jobs)
	// Largest files first, so no big one starts last and runs alone.
	order := make([]int, len(jobs))
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(a, b int) bool { return len(jobs[order[a]].newb) > len(jobs[order[b]].newb) })
	for _, i := range order {
		g.Go(func() error {
			if err := gctx.Err(); err != nil {
				return err
			}
			j := jobs[i]
			r, err := encodeFile(j.e, j.source, j.old, j.newb, o)
			if err != nil {
				return fmt.Errorf("%s: %w", j.e.Rel, err)
			}
			encs[i] = r
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	var raw [7]bytes.Buffer // in the order of streamNames; diff is coded apart
	cm := newCMEncoder()
	for i, j := range jobs {
		st.Codecs[codecName(j.e.Codec)]++
		raw[sControl].Write(encs[i].ctrl)
		for _, c := range encs[i].chunks {
			cm.encode(c)
		}
		raw[sExtra].Write(encs[i].extra)
		raw[sLiteral].Write(encs[i].literal)
		raw[sFrames].Write(encs[i].frame)
	}
	raw[sOps].Write(marshalOps(ops))
	manifest, err := target.Image.RawManifest()
	if err != nil {
		return nil, err
	}
	config, err := target.Image.RawConfigFile()
	if err != nil {
		return nil, err
	}
	raw[sTarget].Write(marshalTarget(manifest, config))

	h := &Header{
		MediaType: MediaType, Base: baseDigest.String(), Target: targetDigest.String(),
		BaseSize: base.Config.Closure().NarSize(), TargetSize: target.Config.Closure().NarSize(),
	}
	baseInfo := base.Config.Closure()
	for _, bp := range sortedKeys(basePaths) {
		info := baseInfo.Lookup(bp)
		h.BasePaths = append(h.BasePaths, BasePath{Path: bp, NarHash: info.NarHash})
	}
	sort.Slice(h.BasePaths, func(i, j int) bool { return h.BasePaths[i].Path < h.BasePaths[j].Path })
	if err := writePatch(w, h, &raw, cm, st); err != nil {
		return nil, err
	}
	st.Paths = pathStats(ops, renamed, func(yield func(path int, weight int64)) {
		for i, j := range jobs {
			e := encs[i]
			w := int64(len(e.ctrl) + len(e.extra) + len(e.literal) + len(e.frame))
			for _, c := range e.chunks {
				for _, d := range c.diff {
					if d != 0 {
						w++
					}
				}
			}
			yield(j.path, w)
		}
	}, st)
	return st, nil
}

// pathStats gives each new path its entries and its share of the streams,
// in proportion to the weights the jobs give.
func pathStats(ops []pathOp, renamed []bool, weights func(yield func(path int, weight int64)), st *Stats) []PathStats {
	out := make([]PathStats, len(ops))
	w := make([]int64, len(ops))
	var total int64
	weights(func(i int, x int64) { w[i] += x; total += x })
	var streams int64
	for name, n := range st.StreamBytes {
		if name != "header" && name != "target" && name != "ops" {
			streams += int64(n)
		}
	}
	for i, p := range ops {
		out[i] = PathStats{Path: nix.StoreDir + "/" + p.Target, Entries: len(p.Entries), Renamed: renamed[i]}
		if p.Base != "" {
			out[i].Base = nix.StoreDir + "/" + p.Base
		}
		if total > 0 {
			out[i].Bytes = w[i] * streams / total
		}
	}
	return out
}

// writePatch compresses the streams (raw holds every one but diff, which
// cm has coded), fills in their sizes in h, and writes the header and the
// streams to w, counting them in st.
func writePatch(w io.Writer, h *Header, raw *[7]bytes.Buffer, cm *cmEncoder, st *Stats) error {
	var streams [7][]byte
	h.Streams = h.Streams[:0]
	for i := range raw {
		rawSize := int64(raw[i].Len())
		switch streamNames[i] {
		case "frames":
			streams[i] = raw[i].Bytes()
		case "diff":
			streams[i], rawSize = cm.finish(), cm.raw
		default:
			streams[i] = compressStream(raw[i].Bytes())
		}
		h.Streams = append(h.Streams, Stream{Name: streamNames[i], Size: int64(len(streams[i])), RawSize: rawSize})
		st.StreamBytes[streamNames[i]] = len(streams[i])
	}
	hb, err := MarshalHeader(h)
	if err != nil {
		return err
	}
	st.StreamBytes["header"] = len(hb)
	st.Size = int64(len(hb))
	if _, err := w.Write(hb); err != nil {
		return err
	}
	for _, s := range streams {
		if _, err := w.Write(s); err != nil {
			return err
		}
		st.Size += int64(len(s))
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func source(storePath, rel string) string {
	if rel == "" {
		return nix.BaseName(storePath)
	}
	return nix.BaseName(storePath) + "/" + rel
}

// sameEntry reports whether the old entry, hashes rewritten, is the new one.
func sameEntry(rw *rewriter, oe, ne *entry) bool {
	if oe.Type != ne.Type || oe.Exec != ne.Exec {
		return false
	}
	switch ne.Type {
	case nix.TypeSymlink:
		return rw.string(oe.Target) == ne.Target
	case nix.TypeRegular:
		return len(oe.Data) == len(ne.Data) && bytes.Equal(rw.apply(oe.Data), ne.Data)
	}
	return true
}

func codecName(c byte) string {
	return [...]string{"copy", "bsdiff", "zdict", "literal"}[c]
}

type encoded struct {
	ctrl, extra, literal, frame []byte
	chunks                      []diffChunk
}

// Stream compression: the best level, an 8 MiB window (the memory a
// device spends on each stream it decodes).
const streamWindow = 8 << 20

// streamEncoder is shared: EncodeAll is safe for concurrent use, and a
// best-level encoder is too costly to set up for every file.
var streamEncoder = sync.OnceValue(func() *zstd.Encoder {
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedBestCompression), zstd.WithWindowSize(streamWindow),
		zstd.WithEncoderConcurrency(runtime.GOMAXPROCS(0)))
	if err != nil {
		panic(err) // the options are constant
	}
	return enc
})

func compressStream(b []byte) []byte { return streamEncoder().EncodeAll(b, nil) }

// estimateEncoder sizes a file's literal, control and extra bytes when
// choosing its codec: the streams are compressed whole at the end, so
// only the comparison matters, and the "better" level costs a sixteenth
// of the best one per call (most of which goes to resetting its tables).
var estimateEncoder = sync.OnceValue(func() *zstd.Encoder {
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedBetterCompression), zstd.WithWindowSize(streamWindow),
		zstd.WithEncoderConcurrency(runtime.GOMAXPROCS(0)))
	if err != nil {
		panic(err)
	}
	return enc
})

func estimateStream(b []byte) int { return len(estimateEncoder().EncodeAll(b, nil)) }

// encodeFile picks the codec that makes the fewest bytes for one file.
func encodeFile(e *entryOp, src string, old, newb []byte, o Options) (encoded, error) {
	lit := encoded{literal: newb}
	if src == "" {
		e.Codec = codecLiteral
		return lit, nil
	}
	e.Source = src
	if bytes.Equal(old, newb) {
		e.Codec = codecCopy
		return encoded{}, nil
	}
	best, bestCost, bestCodec := lit, estimateStream(newb), byte(codecLiteral)
	// bsdiff against the old file, with plain and aarch64 prediction.
	cs, err := bsdiffControl(old, newb)
	if err != nil {
		return encoded{}, err
	}
	try := func(pred byte, p predictor, head []byte) {
		chunks, extra := encodeBsdiff(old, newb, cs, p)
		ctrlBytes := append(head, marshalCtrl(cs)...)
		cost := estimateStream(ctrlBytes) + cmSize(chunks) + estimateStream(extra)
		if cost < bestCost {
			best, bestCost, bestCodec = encoded{ctrl: ctrlBytes, chunks: chunks, extra: extra}, cost, codecBsdiff
			e.NCtrl, e.Pred = int64(len(cs)), pred
		}
	}
	try(predIdentity, identity{}, nil)
	if newSegs, ok := elfSegments(newb); ok && !o.NoPredict {
		if p, ok := newAArch64(old, cs, newSegs); ok {
			try(predAArch64, p, marshalSegments(newSegs))
		}
	}
	// zstd with the old file as a raw dictionary (zstd --patch-from).
	if int64(len(old)+len(newb)) <= o.MaxZdictWindow {
		frame, err := zdictEncode(old, newb)
		if err != nil {
			return encoded{}, err
		}
		if len(frame) < bestCost {
			best, bestCost, bestCodec = encoded{frame: frame}, len(frame), codecZdict
			e.Frame = int64(len(frame))
		}
	}
	e.Codec = bestCodec
	if bestCodec != codecBsdiff {
		e.NCtrl, e.Pred = 0, 0
	}
	if bestCodec != codecZdict {
		e.Frame = 0
	}
	return best, nil
}

func marshalCtrl(cs []ctrl) []byte {
	var b []byte
	for _, c := range cs {
		b = binary.AppendVarint(b, c.Add)
		b = binary.AppendVarint(b, c.Extra)
		b = binary.AppendVarint(b, c.Seek)
	}
	return b
}

// zdictWindow is the zstd window for a file patched from old: a power of
// two covering old and new.
func zdictWindow(oldLen, newLen int) int {
	w := 1 << 20
	for w < oldLen+newLen {
		w <<= 1
	}
	return w
}

func zdictEncode(old, newb []byte) ([]byte, error) {
	// No frame checksum: every produced file's SHA-256 is checked anyway.
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedBestCompression), zstd.WithEncoderConcurrency(1),
		zstd.WithWindowSize(zdictWindow(len(old), len(newb))), zstd.WithEncoderDictRaw(1, old), zstd.WithEncoderCRC(false))
	if err != nil {
		return nil, err
	}
	defer enc.Close()
	return enc.EncodeAll(newb, nil), nil
}
