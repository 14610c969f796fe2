package delta

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"regexp"

	"github.com/otter-fleet/otter/nix"
)

// Format constants; docs/delta.md is normative.
const (
	Magic         = "OTRPATCH"
	FormatVersion = 1
	MediaType     = "application/vnd.otter.patch.v1"
	// ArtifactType is the artifactType of a patch published to a registry.
	ArtifactType = "application/vnd.otter.patch.v1"
	// AnnotationBase and AnnotationTarget, on a published patch artifact,
	// name the bundles it takes a device from and to.
	AnnotationBase   = "dev.otter.patch.base"
	AnnotationTarget = "dev.otter.patch.target"
	// LayerMediaType is the media type of the patch file as an OCI blob.
	LayerMediaType = "application/vnd.otter.patch.v1"

	MaxHeaderSize = 1 << 20
	MaxOpsSize    = 64 << 20
	MaxString     = 4096
	MaxEntries    = 1 << 20
	// MaxClosureSize bounds baseSize and targetSize (1 TiB): far above
	// any device's flash, and low enough that no bound derived from them
	// overflows.
	MaxClosureSize = 1 << 40
	preambleLength = 16
)

// Stream names, in the order the streams follow the header.
var streamNames = []string{"target", "ops", "control", "diff", "extra", "literal", "frames"}

// Stream indexes.
const (
	sTarget = iota
	sOps
	sControl
	sDiff
	sExtra
	sLiteral
	sFrames
)

var (
	// ErrFormat is returned for bytes that are not a valid patch.
	ErrFormat = errors.New("delta: invalid patch")
	// ErrTruncated is returned for a patch shorter than it declares.
	ErrTruncated = errors.New("delta: truncated patch")
	// ErrTooLarge is returned for declared sizes over the bounds.
	ErrTooLarge = errors.New("delta: patch declares sizes over the bounds")
	// ErrCorrupt is returned when a stream of the patch does not decode:
	// a tampered or damaged patch.
	ErrCorrupt = errors.New("delta: corrupt patch stream")
	// ErrPatchDigest is returned when the patch file is not the one its
	// signed statement names.
	ErrPatchDigest = errors.New("delta: patch is not the signed one")
	// ErrBaseMismatch is returned for a patch made for another base.
	ErrBaseMismatch = errors.New("delta: patch is for another base release")
	// ErrTargetMismatch is returned when what the patch builds is not the
	// target: a file's SHA-256 or a store path's NAR hash is wrong.
	ErrTargetMismatch = errors.New("delta: patched content does not match the target")
)

var digestRE = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

// Header is the patch's JSON header.
type Header struct {
	MediaType  string     `json:"mediaType"`
	Base       string     `json:"base"`
	Target     string     `json:"target"`
	BaseSize   int64      `json:"baseSize"`
	TargetSize int64      `json:"targetSize"`
	BasePaths  []BasePath `json:"basePaths"`
	Streams    []Stream   `json:"streams"`
}

// BasePath is a store path of the base that the patch reads.
type BasePath struct {
	Path    string   `json:"path"`
	NarHash nix.Hash `json:"narHash"`
}

// Stream is one section after the header: Size bytes in the file,
// RawSize bytes once decompressed.
type Stream struct {
	Name    string `json:"name"`
	Size    int64  `json:"size"`
	RawSize int64  `json:"rawSize"`
}

// Validate checks the header's fields and bounds.
func (h *Header) Validate() error {
	bad := func(f string, a ...any) error { return fmt.Errorf("%w: %s", ErrFormat, fmt.Sprintf(f, a...)) }
	switch {
	case h.MediaType != MediaType:
		return bad("media type %q", h.MediaType)
	case !digestRE.MatchString(h.Base) || !digestRE.MatchString(h.Target):
		return bad("base %q or target %q is not a digest", h.Base, h.Target)
	case h.BaseSize <= 0 || h.TargetSize <= 0:
		return bad("sizes must be positive")
	case h.BaseSize > MaxClosureSize || h.TargetSize > MaxClosureSize:
		return fmt.Errorf("%w: closure sizes %d and %d, at most %d", ErrTooLarge, h.BaseSize, h.TargetSize, int64(MaxClosureSize))
	case len(h.Streams) != len(streamNames):
		return bad("%d streams, want %d", len(h.Streams), len(streamNames))
	}
	for i, p := range h.BasePaths {
		if err := nix.ValidateStorePath(p.Path); err != nil {
			return bad("basePaths[%d]: %v", i, err)
		}
		if i > 0 && p.Path <= h.BasePaths[i-1].Path {
			return bad("basePaths not sorted")
		}
	}
	for i, s := range h.Streams {
		if s.Name != streamNames[i] {
			return bad("stream %d is %q, want %q", i, s.Name, streamNames[i])
		}
		if s.Size < 0 || s.RawSize < 0 {
			return bad("stream %s has a negative size", s.Name)
		}
		// Nothing decompresses to more than the target itself, or the op
		// list bound; frames are stored as they are.
		limit := h.TargetSize
		if s.Name == "ops" || s.Name == "target" {
			limit = MaxOpsSize
		}
		if s.Name == "control" {
			limit = 3 * 10 * h.TargetSize
		}
		if s.RawSize > limit || (s.Name == "frames" && s.RawSize != s.Size) {
			return fmt.Errorf("%w: stream %s declares %d bytes", ErrTooLarge, s.Name, s.RawSize)
		}
	}
	return nil
}

// MarshalHeader gives the preamble and canonical header bytes.
func MarshalHeader(h *Header) ([]byte, error) {
	if err := h.Validate(); err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(h); err != nil {
		return nil, err
	}
	body := bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
	if len(body) > MaxHeaderSize {
		return nil, fmt.Errorf("%w: header of %d bytes", ErrTooLarge, len(body))
	}
	out := make([]byte, preambleLength, preambleLength+len(body))
	copy(out, Magic)
	binary.LittleEndian.PutUint32(out[8:], FormatVersion)
	binary.LittleEndian.PutUint32(out[12:], uint32(len(body)))
	return append(out, body...), nil
}

// ParseHeader reads the preamble and header from the start of a patch
// and returns the header and the offset of the first stream.
func ParseHeader(r io.Reader) (*Header, int64, error) {
	var pre [preambleLength]byte
	if _, err := io.ReadFull(r, pre[:]); err != nil {
		return nil, 0, fmt.Errorf("%w: no preamble: %v", ErrTruncated, err)
	}
	if string(pre[:8]) != Magic {
		return nil, 0, fmt.Errorf("%w: not an otter patch (magic %q)", ErrFormat, pre[:8])
	}
	if v := binary.LittleEndian.Uint32(pre[8:]); v != FormatVersion {
		return nil, 0, fmt.Errorf("%w: format version %d, this otter reads %d", ErrFormat, v, FormatVersion)
	}
	n := binary.LittleEndian.Uint32(pre[12:])
	if n > MaxHeaderSize {
		return nil, 0, fmt.Errorf("%w: header of %d bytes", ErrTooLarge, n)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, 0, fmt.Errorf("%w: header: %v", ErrTruncated, err)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	var h Header
	if err := dec.Decode(&h); err != nil || dec.More() {
		return nil, 0, fmt.Errorf("%w: header: %v", ErrFormat, err)
	}
	again, err := MarshalHeader(&h)
	if err != nil {
		return nil, 0, err
	}
	if !bytes.Equal(again[preambleLength:], body) {
		return nil, 0, fmt.Errorf("%w: header is not in canonical form", ErrFormat)
	}
	return &h, preambleLength + int64(n), nil
}

// Op codes of entries and codecs of files.
const (
	opRemove  = 0
	opDir     = 1
	opSymlink = 2
	opFile    = 3

	codecCopy    = 0
	codecBsdiff  = 1
	codecZdict   = 2
	codecLiteral = 3

	predIdentity = 0
	predAArch64  = 1
)

// pathOp says how to build one new store path.
type pathOp struct {
	Target  string // base name of the new store path
	Base    string // base name of the store path it derives from; "" for a fresh one
	Entries []entryOp
}

// entryOp is one listed node of a new store path.
type entryOp struct {
	Rel    string
	Op     byte
	Target string // symlink
	Exec   bool
	Size   int64
	SHA256 [32]byte
	Codec  byte
	Source string // "<base name>/<rel>" of the old file, for copy, bsdiff, zdict
	NCtrl  int64  // bsdiff: triples in the control stream
	Pred   byte   // bsdiff: predictor
	Frame  int64  // zdict: bytes in the frames stream
}

type opWriter struct{ bytes.Buffer }

func (w *opWriter) uvarint(v uint64) { w.Write(binary.AppendUvarint(nil, v)) }
func (w *opWriter) str(s string)     { w.uvarint(uint64(len(s))); w.WriteString(s) }

func marshalOps(ops []pathOp) []byte {
	var w opWriter
	w.uvarint(uint64(len(ops)))
	for _, p := range ops {
		w.str(p.Target)
		w.str(p.Base)
		w.uvarint(uint64(len(p.Entries)))
		for _, e := range p.Entries {
			w.str(e.Rel)
			w.WriteByte(e.Op)
			switch e.Op {
			case opSymlink:
				w.str(e.Target)
			case opFile:
				w.WriteByte(map[bool]byte{false: 0, true: 1}[e.Exec])
				w.uvarint(uint64(e.Size))
				w.Write(e.SHA256[:])
				w.WriteByte(e.Codec)
				switch e.Codec {
				case codecCopy:
					w.str(e.Source)
				case codecBsdiff:
					w.str(e.Source)
					w.uvarint(uint64(e.NCtrl))
					w.WriteByte(e.Pred)
				case codecZdict:
					w.str(e.Source)
					w.uvarint(uint64(e.Frame))
				}
			}
		}
	}
	return w.Bytes()
}

type opReader struct {
	r *bufio.Reader
}

// uvarint reads an unsigned LEB128 varint in its one minimal encoding,
// so that an op list has exactly one byte form.
func (o *opReader) uvarint(max uint64) (uint64, error) {
	var v uint64
	for i := 0; ; i++ {
		b, err := o.r.ReadByte()
		if err != nil {
			return 0, fmt.Errorf("%w: op list: %v", ErrFormat, err)
		}
		if i == 9 && b > 1 || i > 9 {
			return 0, fmt.Errorf("%w: op list: varint overflows 64 bits", ErrFormat)
		}
		if i > 0 && b == 0 {
			return 0, fmt.Errorf("%w: op list: varint not in minimal form", ErrFormat)
		}
		v |= uint64(b&0x7f) << (7 * i)
		if b < 0x80 {
			break
		}
	}
	if v > max {
		return 0, fmt.Errorf("%w: op list value %d over %d", ErrTooLarge, v, max)
	}
	return v, nil
}

func (o *opReader) str() (string, error) {
	n, err := o.uvarint(MaxString)
	if err != nil {
		return "", err
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(o.r, b); err != nil {
		return "", fmt.Errorf("%w: op list: %v", ErrFormat, err)
	}
	return string(b), nil
}

func (o *opReader) byte_() (byte, error) {
	b, err := o.r.ReadByte()
	if err != nil {
		return 0, fmt.Errorf("%w: op list: %v", ErrFormat, err)
	}
	return b, nil
}

// parseOps reads an op list; maxFile bounds every declared file size.
func parseOps(data []byte, maxFile int64) ([]pathOp, error) {
	o := &opReader{r: bufio.NewReader(bytes.NewReader(data))}
	n, err := o.uvarint(MaxEntries)
	if err != nil {
		return nil, err
	}
	var ops []pathOp
	total := 0
	for i := uint64(0); i < n; i++ {
		var p pathOp
		if p.Target, err = o.str(); err != nil {
			return nil, err
		}
		if err := nix.ValidateBaseName(p.Target); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrFormat, err)
		}
		if p.Base, err = o.str(); err != nil {
			return nil, err
		}
		if p.Base != "" {
			if err := nix.ValidateBaseName(p.Base); err != nil {
				return nil, fmt.Errorf("%w: %v", ErrFormat, err)
			}
		}
		ne, err := o.uvarint(MaxEntries)
		if err != nil {
			return nil, err
		}
		if total += int(ne); total > MaxEntries {
			return nil, fmt.Errorf("%w: more than %d entries", ErrTooLarge, MaxEntries)
		}
		for j := uint64(0); j < ne; j++ {
			e, err := parseEntry(o, maxFile)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", p.Target, err)
			}
			p.Entries = append(p.Entries, e)
		}
		ops = append(ops, p)
	}
	if _, err := o.r.ReadByte(); err != io.EOF {
		return nil, fmt.Errorf("%w: trailing bytes after the op list", ErrFormat)
	}
	return ops, nil
}

func parseEntry(o *opReader, maxFile int64) (entryOp, error) {
	var e entryOp
	var err error
	if e.Rel, err = o.str(); err != nil {
		return e, err
	}
	if err := checkRel(e.Rel); err != nil {
		return e, err
	}
	if e.Op, err = o.byte_(); err != nil {
		return e, err
	}
	switch e.Op {
	case opRemove, opDir:
		return e, nil
	case opSymlink:
		e.Target, err = o.str()
		if err == nil && e.Target == "" {
			err = fmt.Errorf("%w: empty symlink target", ErrFormat)
		}
		return e, err
	case opFile:
	default:
		return e, fmt.Errorf("%w: op %d", ErrFormat, e.Op)
	}
	x, err := o.byte_()
	if err != nil {
		return e, err
	}
	if x > 1 {
		return e, fmt.Errorf("%w: executable flag %d", ErrFormat, x)
	}
	e.Exec = x == 1
	size, err := o.uvarint(uint64(maxFile))
	if err != nil {
		return e, err
	}
	e.Size = int64(size)
	if _, err := io.ReadFull(o.r, e.SHA256[:]); err != nil {
		return e, fmt.Errorf("%w: op list: %v", ErrFormat, err)
	}
	if e.Codec, err = o.byte_(); err != nil {
		return e, err
	}
	switch e.Codec {
	case codecLiteral:
		return e, nil
	case codecCopy, codecBsdiff, codecZdict:
		if e.Source, err = o.str(); err != nil {
			return e, err
		}
		if err := checkSource(e.Source); err != nil {
			return e, err
		}
	default:
		return e, fmt.Errorf("%w: codec %d", ErrFormat, e.Codec)
	}
	switch e.Codec {
	case codecBsdiff:
		n, err := o.uvarint(uint64(maxFile) + 1)
		if err != nil {
			return e, err
		}
		e.NCtrl = int64(n)
		if e.Pred, err = o.byte_(); err != nil {
			return e, err
		}
		if e.Pred > predAArch64 {
			return e, fmt.Errorf("%w: predictor %d", ErrFormat, e.Pred)
		}
	case codecZdict:
		n, err := o.uvarint(uint64(maxFile) * 2)
		if err != nil {
			return e, err
		}
		e.Frame = int64(n)
	}
	return e, nil
}

// checkRel accepts "" (the store path itself) or a relative path of
// non-empty elements other than . and ..
func checkRel(rel string) error {
	if rel == "" {
		return nil
	}
	for _, el := range bytes.Split([]byte(rel), []byte("/")) {
		if len(el) == 0 || string(el) == "." || string(el) == ".." || bytes.IndexByte(el, 0) >= 0 {
			return fmt.Errorf("%w: entry path %q", ErrFormat, rel)
		}
	}
	return nil
}

// checkSource accepts "<store base name>" or "<store base name>/<rel>".
func checkSource(s string) error {
	base, rel, _ := bytes.Cut([]byte(s), []byte("/"))
	if err := nix.ValidateBaseName(string(base)); err != nil {
		return fmt.Errorf("%w: source %q: %v", ErrFormat, s, err)
	}
	if len(rel) == 0 && bytes.Contains([]byte(s), []byte("/")) {
		return fmt.Errorf("%w: source %q", ErrFormat, s)
	}
	return checkRel(string(rel))
}

// marshalTarget and parseTarget carry the target's manifest and config:
// uvarint length of the manifest, the manifest, the config.
func marshalTarget(manifest, config []byte) []byte {
	b := binary.AppendUvarint(nil, uint64(len(manifest)))
	b = append(b, manifest...)
	return append(b, config...)
}

func parseTarget(b []byte) (manifest, config []byte, err error) {
	n, k := binary.Uvarint(b)
	if k <= 0 || n > uint64(len(b)-k) {
		return nil, nil, fmt.Errorf("%w: target stream", ErrFormat)
	}
	return b[k : k+int(n)], b[k+int(n):], nil
}

// streamErr names a failure to read a stream: the stream ended early
// (truncated), or its bytes do not decode (corrupt).
func streamErr(stream string, err error) error {
	var pe *fs.PathError
	if errors.Is(err, ErrTruncated) || errors.Is(err, ErrFormat) || errors.Is(err, ErrCorrupt) || errors.Is(err, ErrTargetMismatch) ||
		errors.As(err, &pe) || errors.Is(err, context.Canceled) {
		return err // otter's own refusal, or the device's (a full disk)
	}
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return fmt.Errorf("%w: %s stream: %v", ErrTruncated, stream, err)
	}
	return fmt.Errorf("%w: %s stream: %v", ErrCorrupt, stream, err)
}
