package delta

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"

	"github.com/otter-fleet/otter/bundle"
	"github.com/otter-fleet/otter/internal/demo"
	"github.com/otter-fleet/otter/internal/fsutil"
	"github.com/otter-fleet/otter/internal/testutil/touch"
	"github.com/otter-fleet/otter/nix"
)

// hostile is a device whose store holds demo release 1, beside a directory
// outside the store that an attacker would like apply to write into or
// read from, and a patch template for demo release 2 whose op list and
// literal stream the attacker controls.
type hostile struct {
	*hostileTemplate
	store, outside string
	secret         string // the SHA-256 of the file outside
}

var hostileCount atomic.Int64

// hostileTemplate bundles demo release 2 once; newHostile makes a fresh
// device around it.
type hostileTemplate struct {
	header        Header
	target        []byte
	base, newPath string
	targetNames   map[string]bool // base names of release 2's paths
	others        []pathOp        // the other new paths, as empty directories
	fixed         [7][]byte       // the coded streams; ops and literal are replaced
}

func makeHostileTemplate(t testing.TB) *hostileTemplate {
	t.Helper()
	var rel [3]*bundle.Bundle
	for _, n := range []int{1, 2} {
		store := t.TempDir()
		c, err := demo.WriteRelease(store, n)
		if err != nil {
			t.Fatal(err)
		}
		b, err := bundle.Build(context.Background(), c, store)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close(); fsutil.RemoveAll(store) })
		rel[n] = b
	}
	bd, _ := rel[1].Digest()
	td, _ := rel[2].Digest()
	manifest, _ := rel[2].RawManifest()
	config, _ := rel[2].RawConfigFile()
	tpl := &hostileTemplate{
		header: Header{MediaType: MediaType, Base: bd.String(), Target: td.String(),
			BaseSize: rel[1].Config.Closure().NarSize(), TargetSize: rel[2].Config.Closure().NarSize()},
		target:      marshalTarget(manifest, config),
		targetNames: map[string]bool{},
	}
	for _, p := range rel[2].Config.Paths {
		tpl.targetNames[nix.BaseName(p.Path)] = true
	}
	for _, p := range rel[1].Config.Closure().Paths {
		tpl.header.BasePaths = append(tpl.header.BasePaths, BasePath{Path: p.Path, NarHash: p.NarHash})
	}
	sort.Slice(tpl.header.BasePaths, func(i, j int) bool { return tpl.header.BasePaths[i].Path < tpl.header.BasePaths[j].Path })
	tpl.base = nix.BaseName(demo.StorePath("otter-demo-hello-1.0"))
	tpl.newPath = nix.BaseName(demo.StorePath("otter-demo-greeting-2.0"))
	// The streams but ops and literal, as writePatch codes them.
	var raw [7]bytes.Buffer
	raw[sTarget].Write(tpl.target)
	var out bytes.Buffer
	if err := writePatch(&out, &tpl.header, &raw, newCMEncoder(), &Stats{StreamBytes: map[string]int{}}); err != nil {
		t.Fatal(err)
	}
	pos := int64(out.Len())
	for i := len(tpl.header.Streams) - 1; i >= 0; i-- {
		pos -= tpl.header.Streams[i].Size
		tpl.fixed[i] = out.Bytes()[pos : pos+tpl.header.Streams[i].Size]
	}
	for _, name := range []string{"otter-demo-hello-2.0", "otter-demo-release-2"} {
		tpl.others = append(tpl.others, pathOp{Target: nix.BaseName(demo.StorePath(name)), Entries: []entryOp{{Rel: "", Op: opDir}}})
	}
	return tpl
}

// ops is an op list building the new path from entries first, then the
// other new paths of release 2 (as empty directories).
func (tpl *hostileTemplate) ops(base string, entries []entryOp) []byte {
	return marshalOps(append([]pathOp{{Target: tpl.newPath, Base: base, Entries: entries}}, tpl.others...))
}

func newHostile(t testing.TB, tpl *hostileTemplate) *hostile {
	t.Helper()
	// Names of one length, so that fuzz inputs naming one device's
	// outside directory can be pointed at another's.
	dir := filepath.Join(os.TempDir(), fmt.Sprintf("otter-hostile-%08d-%010d", os.Getpid()%1e8, hostileCount.Add(1)))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fsutil.RemoveAll(dir) })
	h := &hostile{hostileTemplate: tpl, store: filepath.Join(dir, "store"), outside: filepath.Join(dir, "outside")}
	if _, err := demo.WriteRelease(h.store, 1); err != nil {
		t.Fatal(err)
	}
	secret := []byte("the device's private key, outside the store\n")
	sum := sha256.Sum256(secret)
	h.secret = hex.EncodeToString(sum[:])
	if err := os.MkdirAll(filepath.Join(h.outside, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(h.outside, "secret"), secret, 0o644); err != nil {
		t.Fatal(err)
	}
	// A base path holding a symlink out of the store: a patch must not
	// read through it.
	bp := filepath.Join(h.store, h.base)
	os.Chmod(bp, 0o755)
	if err := os.Symlink(h.outside, filepath.Join(bp, "evil")); err != nil {
		t.Fatal(err)
	}
	os.Chmod(bp, 0o555)
	return h
}

// patch assembles a patch with the attacker's op list and literal stream.
func (h *hostile) patch(t testing.TB, ops, literal []byte) string {
	t.Helper()
	// The streams that do not change are coded once (writePatch, as Diff
	// does); ops and literal are coded per input at zstd's fastest level,
	// which any decoder reads: the fuzzer's time goes to Apply.
	streams := h.fixed
	streams[sOps], streams[sLiteral] = fastEncoder.EncodeAll(ops, nil), fastEncoder.EncodeAll(literal, nil)
	hd := h.header
	hd.Streams = append([]Stream{}, h.header.Streams...)
	hd.Streams[sOps].Size, hd.Streams[sOps].RawSize = int64(len(streams[sOps])), int64(len(ops))
	hd.Streams[sLiteral].Size, hd.Streams[sLiteral].RawSize = int64(len(streams[sLiteral])), int64(len(literal))
	hb, err := MarshalHeader(&hd)
	if err != nil {
		t.Fatal(err)
	}
	out := bytes.NewBuffer(hb)
	for _, s := range streams {
		out.Write(s)
	}
	p := filepath.Join(filepath.Dir(h.store), "patch")
	if err := os.WriteFile(p, out.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

var fastEncoder, _ = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))

// applySafely applies a patch and checks the safety property: nothing
// outside the store and its staging area is created, changed or read,
// and the store gains nothing but new paths of the target.
func (h *hostile) applySafely(t testing.TB, patch string) error {
	t.Helper()
	outsideBefore := touch.Snapshot(t, h.outside)
	storeBefore := listNames(t, h.store)
	events := touch.Watch(t, touch.Touches, h.outside, filepath.Join(h.outside, "sub"))
	// Beside the store only new entries matter (the patch is read there).
	beside := touch.Watch(t, unix.IN_CREATE|unix.IN_MOVED_TO, filepath.Dir(h.store))
	_, err := Apply(context.Background(), patch, h.store, ApplyOptions{NoFsync: true})
	if ev := append(events(), beside()...); len(ev) > 0 {
		t.Fatalf("apply touched things outside the store (%v): %v", err, ev)
	}
	if after := touch.Snapshot(t, h.outside); after != outsideBefore {
		t.Fatalf("apply changed the directory outside the store (%v):\nbefore:\n%s\nafter:\n%s", err, outsideBefore, after)
	}
	added := map[string]bool{}
	for _, n := range listNames(t, h.store) {
		added[n] = true
	}
	for _, n := range storeBefore {
		delete(added, n)
	}
	for n := range added {
		if err != nil || !h.targetNames[n] {
			t.Fatalf("apply left %q in the store (err %v)", n, err)
		}
	}
	if err != nil && (strings.Contains(err.Error(), h.secret) || strings.Contains(err.Error(), strconv.Itoa(len("the device's private key, outside the store\n"))+" bytes")) {
		t.Fatalf("the error tells about the file outside the store: %v", err)
	}
	return err
}

func listNames(t testing.TB, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

// hostileSeeds are the attack shapes: each builds the new path so that a
// later entry goes through a symlink the patch made, or reads through one
// a base path holds.
func hostileSeeds(h *hostile) map[string][]entryOp {
	lit := func(rel string) entryOp {
		return entryOp{Rel: rel, Op: opFile, Size: 5, SHA256: sha256.Sum256([]byte("owned")), Codec: codecLiteral}
	}
	return map[string][]entryOp{
		"file under a symlink":          {{Rel: "", Op: opDir}, {Rel: "l", Op: opSymlink, Target: h.outside}, lit("l/sub/file")},
		"file directly under a symlink": {{Rel: "", Op: opDir}, {Rel: "l", Op: opSymlink, Target: h.outside}, lit("l/file")},
		"directory under a symlink":     {{Rel: "", Op: opDir}, {Rel: "l", Op: opSymlink, Target: h.outside}, {Rel: "l/sub/d", Op: opDir}},
		"symlink under a symlink":       {{Rel: "", Op: opDir}, {Rel: "l", Op: opSymlink, Target: h.outside}, {Rel: "l/sub/s", Op: opSymlink, Target: "x"}},
		"store path is a symlink":       {{Rel: "", Op: opSymlink, Target: h.outside}, lit("sub/file")},
		"relative symlink deeper down":  {{Rel: "", Op: opDir}, {Rel: "d", Op: opDir}, {Rel: "d/l", Op: opSymlink, Target: "../../../outside"}, lit("d/l/sub/file")},
		"read through a base symlink": {{Rel: "", Op: opDir}, {Rel: "x", Op: opFile, Size: 45,
			SHA256: sha256.Sum256([]byte("the device's private key, outside the store\n")), Codec: codecCopy, Source: h.base + "/evil/secret"}},
	}
}

// TestApplyNeverLeavesTheStore: each attack shape is refused as an
// invalid patch, and nothing outside the store is written or read.
func TestApplyNeverLeavesTheStore(t *testing.T) {
	tpl := makeHostileTemplate(t)
	for name := range hostileSeeds(newHostile(t, tpl)) {
		t.Run(name, func(t *testing.T) {
			h := newHostile(t, tpl)
			entries := hostileSeeds(h)[name]
			p := h.patch(t, h.ops("", entries), []byte("owned"))
			err := h.applySafely(t, p)
			if !errors.Is(err, ErrFormat) {
				t.Fatalf("want an invalid patch (21), got %v", err)
			}
		})
	}
	// The copy of a base path must not read through a symlink either:
	// a derived path whose base holds "evil" copies the link, not what
	// it points at.
	t.Run("base copy keeps symlinks", func(t *testing.T) {
		h := newHostile(t, tpl)
		p := h.patch(t, h.ops(h.base, nil), nil)
		err := h.applySafely(t, p)
		if !errors.Is(err, ErrTargetMismatch) {
			t.Fatalf("want a target mismatch (the copy is not release 2's path), got %v", err)
		}
	})
}

// TestApplyBoundsWrites: a path never holds more bytes than its NAR size,
// whatever sizes the patch declares.
func TestApplyBoundsWrites(t *testing.T) {
	tpl := makeHostileTemplate(t)
	h := newHostile(t, tpl)
	// Within the closure's size, over the path's.
	n := h.header.TargetSize
	big := entryOp{Rel: "big", Op: opFile, Size: n, SHA256: sha256.Sum256(make([]byte, n)), Codec: codecLiteral}
	p := h.patch(t, h.ops("", []entryOp{{Rel: "", Op: opDir}, big}), make([]byte, n))
	if err := h.applySafely(t, p); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("want ErrTooLarge, got %v", err)
	}
	// Copies of a base file, each under the NAR size but together over it.
	var entries []entryOp
	entries = append(entries, entryOp{Rel: "", Op: opDir})
	for i := range 50 {
		entries = append(entries, entryOp{Rel: fmt.Sprintf("c%d", i), Op: opFile, Codec: codecCopy, Size: 0, Source: h.base + "/bin/hello"})
	}
	p = h.patch(t, h.ops("", entries), nil)
	if err := h.applySafely(t, p); !errors.Is(err, ErrTargetMismatch) {
		t.Fatalf("want a refusal before the copy outgrows its declared size, got %v", err)
	}
}

// FuzzApply: whatever op list and literal stream a patch carries, apply
// creates, changes and reads nothing outside the store and its staging
// area, and leaves no partial path in the store.
func FuzzApply(f *testing.F) {
	tpl := makeHostileTemplate(f)
	seedDevice := newHostile(f, tpl)
	for _, entries := range hostileSeeds(seedDevice) {
		f.Add(seedDevice.ops("", entries), []byte("owned"))
	}
	f.Add(seedDevice.ops(seedDevice.base, nil), []byte{})
	f.Fuzz(func(t *testing.T, ops, literal []byte) {
		h := newHostile(t, tpl)
		// The seeds name the outside directory of the seed device; point
		// them at this one.
		ops = bytes.ReplaceAll(ops, []byte(seedDevice.outside), []byte(h.outside))
		if len(ops) > 1<<16 || len(literal) > 1<<16 {
			return
		}
		h.applySafely(t, h.patch(t, ops, literal))
	})
}
