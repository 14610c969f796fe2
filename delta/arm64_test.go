package delta

import (
	"bytes"
	"context"
	"encoding/binary"
	"flag"
	"math/rand"
	"os"
	"path/filepath"
	"testing"

	"github.com/otter-fleet/otter/bundle"
	"github.com/otter-fleet/otter/internal/fsutil"
	"github.com/otter-fleet/otter/nix"
)

var updateVectors = flag.Bool("update-vectors", false, "rewrite testdata/delta/arm64-1-2.patch and cm1.kat")

// The synthetic aarch64 program the vectors are made from: an ELF64 with
// one PT_LOAD segment at synthVA, nFuncs functions of funcWords
// instructions, then a data area. Every function holds a BL to another
// function, an ADRP+ADD and an ADRP+LDR into the data area, an LDR
// literal, a B.cond and a CBZ into its own code; the rest is MOVZ filler.
// Version 2 inserts insertWords instructions at the start of function
// nFuncs/3, so every later site, and every BL across the insertion,
// changes its immediate; it also changes one filler word.
const (
	synthVA     = 0x400000
	codeOff     = 0x100
	nFuncs      = 48
	funcWords   = 96
	dataBytes   = 0x3000
	insertWords = 41 // not a multiple of 1024: ADRP pages change for some sites
	dataOff     = 0x10000
)

// synthELF returns version v (1 or 2) of the synthetic program.
func synthELF(v int) []byte {
	rng := rand.New(rand.NewSource(1)) // the same filler in both versions
	var code []uint32
	funcStart := make([]int, nFuncs) // word index of each function
	// First pass: lay out functions to know where each starts.
	n := 0
	for f := range nFuncs {
		if v == 2 && f == nFuncs/3 {
			n += insertWords
		}
		funcStart[f] = n
		n += funcWords
	}
	codeWords := n
	// The data sits at a fixed address, as a linker's next segment would:
	// every PC-relative reference to it from code after the insertion
	// changes.
	_ = codeWords
	dataVA := uint64(synthVA + dataOff)
	pc := func(word int) uint64 { return uint64(synthVA + codeOff + 4*word) }
	movz := func() uint32 { return 0xD2800000 | uint32(rng.Intn(1<<16))<<5 | uint32(rng.Intn(29)) }
	for f := range nFuncs {
		if v == 2 && f == nFuncs/3 {
			for range insertWords {
				code = append(code, 0xD2800000|uint32(len(code)&0xFFFF)<<5|9)
			}
		}
		start := len(code)
		for w := range funcWords {
			here := pc(start + w)
			switch w {
			case 5: // BL to another function
				t := pc(funcStart[(f*7+3)%nFuncs])
				code = append(code, 0x94000000|uint32(int64(t-here)/4)&0x3FFFFFF)
			case 11, 12: // ADRP x3 + ADD x3, x3, #lo12
				t := dataVA + uint64(f*40+8)
				if w == 11 {
					pages := int64(t&^0xFFF-here&^0xFFF) >> 12
					code = append(code, 0x90000000|uint32(pages&3)<<29|uint32((pages>>2)&0x7FFFF)<<5|3)
				} else {
					code = append(code, 0x91000000|uint32(t&0xFFF)<<10|3<<5|3)
				}
			case 20, 21: // ADRP x4 + LDR x5, [x4, #lo12] (8-byte scaled)
				t := dataVA + uint64(f*48+16)
				if w == 20 {
					pages := int64(t&^0xFFF-here&^0xFFF) >> 12
					code = append(code, 0x90000000|uint32(pages&3)<<29|uint32((pages>>2)&0x7FFFF)<<5|4)
				} else {
					code = append(code, 0xF9400000|uint32((t&0xFFF)>>3)<<10|4<<5|5)
				}
			case 30: // LDR x6, literal at word 90 of this function
				code = append(code, 0x58000000|uint32(60&0x7FFFF)<<5|6)
			case 40: // B.NE to word 70
				code = append(code, 0x54000000|uint32(30&0x7FFFF)<<5|1)
			case 50: // CBZ x7 to word 10
				code = append(code, 0xB4000000|uint32(-40&0x7FFFF)<<5|7)
			default:
				word := movz()
				if v == 2 && f == 2*nFuncs/3 && w == 60 {
					word ^= 0x00100000 // a real change, not a move
				}
				code = append(code, word)
			}
		}
	}
	size := int(dataVA-synthVA) + dataBytes
	b := make([]byte, size)
	// ELF header.
	copy(b, "\x7fELF\x02\x01\x01")
	binary.LittleEndian.PutUint16(b[16:], 2)         // ET_EXEC
	binary.LittleEndian.PutUint16(b[18:], emAArch64) // e_machine
	binary.LittleEndian.PutUint32(b[20:], 1)         // e_version
	binary.LittleEndian.PutUint64(b[24:], synthVA+codeOff)
	binary.LittleEndian.PutUint64(b[32:], 64) // e_phoff
	binary.LittleEndian.PutUint16(b[52:], 64) // e_ehsize
	binary.LittleEndian.PutUint16(b[54:], 56) // e_phentsize
	binary.LittleEndian.PutUint16(b[56:], 1)  // e_phnum
	// One PT_LOAD, R+X, the whole file plus some .bss.
	ph := b[64:]
	binary.LittleEndian.PutUint32(ph[0:], 1)
	binary.LittleEndian.PutUint32(ph[4:], 5)
	binary.LittleEndian.PutUint64(ph[16:], synthVA)
	binary.LittleEndian.PutUint64(ph[24:], synthVA)
	binary.LittleEndian.PutUint64(ph[32:], uint64(size))
	binary.LittleEndian.PutUint64(ph[40:], uint64(size+0x1000))
	binary.LittleEndian.PutUint64(ph[48:], 0x10000)
	for i, w := range code {
		binary.LittleEndian.PutUint32(b[codeOff+4*i:], w)
	}
	drng := rand.New(rand.NewSource(2))
	drng.Read(b[dataVA-synthVA:])
	return b
}

// armRelease is a one-path release holding the synthetic program.
func armRelease(t testing.TB, v int) (Release, string) {
	t.Helper()
	store, err := os.MkdirTemp("", "otter-arm64-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fsutil.RemoveAll(store) })
	hash := []string{"", "0ay5p6n3zqbdvb5wa3d0gkklx8q1k6jw", "1mx3c2q6gq0zv8l5rfk8p7j2v3zh2yd4"}[v]
	base := hash + "-synth-arm64-" + []string{"", "1.0", "2.0"}[v]
	dir := filepath.Join(store, base, "bin")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "prog"), synthELF(v), 0o555); err != nil {
		t.Fatal(err)
	}
	if err := fsutil.Canonicalize(filepath.Join(store, base)); err != nil {
		t.Fatal(err)
	}
	h, size, err := nix.HashPath(filepath.Join(store, base))
	if err != nil {
		t.Fatal(err)
	}
	c, err := nix.NewClosure(nix.StoreDir+"/"+base, []nix.PathInfo{{Path: nix.StoreDir + "/" + base, NarHash: h, NarSize: size, References: []string{}}})
	if err != nil {
		t.Fatal(err)
	}
	b, err := bundle.Build(context.Background(), c, store)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return Release{Image: b, Config: b.Config}, store
}

// TestArm64Vector is the patch format's known-answer test for the
// aarch64 predictor and the cm1 coder: the patch between the two
// versions of the synthetic program is checked in as
// testdata/delta/arm64-1-2.patch (remake it with
// go test ./delta -run TestArm64Vector -update-vectors, only when the
// format changes on purpose). It must use predictor 1, be far smaller
// than without prediction, and apply.
func TestArm64Vector(t *testing.T) {
	r1, store := armRelease(t, 1)
	r2, _ := armRelease(t, 2)
	var got bytes.Buffer
	st, err := Diff(context.Background(), r1, r2, &got, Options{})
	if err != nil {
		t.Fatal(err)
	}
	var plain bytes.Buffer
	stPlain, err := Diff(context.Background(), r1, r2, &plain, Options{NoPredict: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("streams with prediction %v, without %v", st.StreamBytes, stPlain.StreamBytes)
	if st.Codecs["bsdiff"] != 1 || st.StreamBytes["diff"]*2 > stPlain.StreamBytes["diff"] {
		t.Fatalf("codecs %v; diff stream %d bytes with prediction, %d without: the vector must exercise the predictor", st.Codecs, st.StreamBytes["diff"], stPlain.StreamBytes["diff"])
	}
	// The file's control data starts with its segment table: predictor 1.
	h, off, err := ParseHeader(bytes.NewReader(got.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	opsAt := off + h.Streams[sTarget].Size
	opsRaw, err := decodeAll(bytes.NewReader(got.Bytes()[opsAt:opsAt+h.Streams[sOps].Size]), h.Streams[sOps].RawSize)
	if err != nil {
		t.Fatal(err)
	}
	ops, err := parseOps(opsRaw, h.TargetSize)
	if err != nil {
		t.Fatal(err)
	}
	var pred byte
	for _, p := range ops {
		for _, e := range p.Entries {
			if e.Codec == codecBsdiff {
				pred = e.Pred
			}
		}
	}
	if pred != predAArch64 {
		t.Fatalf("the program was coded with predictor %d", pred)
	}
	golden := filepath.Join("..", "testdata", "delta", "arm64-1-2.patch")
	if *updateVectors {
		os.WriteFile(golden, got.Bytes(), 0o644)
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(want, got.Bytes()) {
		t.Fatalf("the patch (%d bytes) differs from %s (%d bytes) from byte %d: the predictor or the coder changed", got.Len(), golden, len(want), firstDiff(want, got.Bytes()))
	}
	// The checked-in vector applies on the device side.
	if _, err := Apply(context.Background(), golden, store, ApplyOptions{NoFsync: true}); err != nil {
		t.Fatal(err)
	}
	built, err := os.ReadFile(filepath.Join(store, nix.BaseName(r2.Config.Root), "bin", "prog"))
	if err != nil || !bytes.Equal(built, synthELF(2)) {
		t.Fatalf("the vector built another program (%v)", err)
	}
	t.Logf("arm64 vector: %d bytes with prediction, %d without, for a %d-byte program", got.Len(), plain.Len(), len(synthELF(2)))
}

// TestCM1KnownAnswer: the cm1 coder's output for fixed input is checked
// in as testdata/delta/cm1.kat (made by -update-vectors from cmChunks with
// math/rand seed 42, whose sequence Go keeps stable, and sparse random
// changes from the same source), and decodes back.
func TestCM1KnownAnswer(t *testing.T) {
	// cmChunks' regular changes, plus sparse random ones, so that the
	// vector exercises the bit models as well as the zero flag.
	rng := rand.New(rand.NewSource(42))
	chunks := cmChunks(rng, 40)
	for _, c := range chunks {
		for i := range c.diff {
			if rng.Intn(24) == 0 {
				c.diff[i] = byte(rng.Intn(256))
			}
		}
	}
	coded, raw := cmEncodeAll(chunks)
	golden := filepath.Join("..", "testdata", "delta", "cm1.kat")
	if *updateVectors {
		os.WriteFile(golden, coded, 0o644)
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(want, coded) {
		t.Fatalf("cm1 output (%d bytes) differs from %s (%d bytes) from byte %d", len(coded), golden, len(want), firstDiff(want, coded))
	}
	out, err := cmDecodeAll(want, raw, chunks)
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range chunks {
		if !bytes.Equal(out[i], c.diff) {
			t.Fatalf("chunk %d decodes differently", i)
		}
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// aarch64With builds a predictor over an old file with the given
// alignment regions, for the address map's unit tests.
func aarch64With(regions ...region) *aarch64 {
	a := &aarch64{minVA: 0x1000, maxVA: 0x100000, regions: regions}
	return a
}

// TestMapVA pins the address map's tie-breaks (docs/delta.md §6).
func TestMapVA(t *testing.T) {
	for _, tc := range []struct {
		name    string
		regions []region
		v       uint64
		want    uint64
		ok      bool
	}{
		{"inside a region", []region{{0x2000, 0x1000, 0x40}}, 0x2010, 0x2050, true},
		{"between regions: the nearest below", []region{{0x2000, 0x100, 0x40}, {0x4000, 0x100, -0x20}}, 0x3000, 0x3040, true},
		{"below every region", []region{{0x2000, 0x100, 0x40}}, 0x1800, 0, false},
		{"outside the image", []region{{0x2000, 0x100, 0x40}}, 0x200000, 0, false},
		{"no regions", nil, 0x2000, 0, false},
		{"overlapping: the longest holding it", []region{{0x2000, 0x2000, 0x10}, {0x2800, 0x100, 0x20}}, 0x2810, 0x2820, true},
		{"overlapping: the longest, later shorter one ignored",
			[]region{{0x2000, 0x2000, 0x10}, {0x2800, 0x100, 0x20}}, 0x3000, 0x3010, true},
		{"equal lengths: the later (nearest) one", []region{{0x2000, 0x1000, 0x10}, {0x2800, 0x1000, 0x20}}, 0x2900, 0x2920, true},
		{"holding region more than eight back: the nearest below instead",
			append([]region{{0x2000, 0x10000, 0x10}}, func() []region {
				var rs []region
				for i := range 8 {
					rs = append(rs, region{uint64(0x2100 + 0x10*i), 4, 0x30})
				}
				return rs
			}()...), 0x3000, 0x3030, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := aarch64With(tc.regions...).mapVA(tc.v)
			if ok != tc.ok || ok && got != tc.want {
				t.Fatalf("mapVA(%#x) = %#x, %v; want %#x, %v", tc.v, got, ok, tc.want, tc.ok)
			}
		})
	}
}

// TestEncodeADRP: page differences round-trip through the ADRP immediate,
// in range and at its limits; out of range is refused.
func TestEncodeADRP(t *testing.T) {
	const adrpX3 = 0x90000003
	decode := func(w uint32) int64 {
		return sext((w>>5)&0x7FFFF<<2|(w>>29)&3, 21)
	}
	for _, pages := range []int64{0, 1, -1, 2, 3, 4, 12345, -54321, 1<<20 - 1, -(1 << 20)} {
		w, ok := encodeADRP(adrpX3, pages)
		if !ok || decode(w) != pages || w&0x9F00001F != adrpX3 {
			t.Fatalf("pages %d: %#x %v, decodes to %d", pages, w, ok, decode(w))
		}
	}
	for _, pages := range []int64{1 << 20, -(1 << 20) - 1} {
		if _, ok := encodeADRP(adrpX3, pages); ok {
			t.Fatalf("pages %d out of range accepted", pages)
		}
	}
}

// TestPredictWord: each PC-relative site of the synthetic program,
// predicted across the insertion, is exactly version 2's instruction.
func TestPredictWord(t *testing.T) {
	old, neu := synthELF(1), synthELF(2)
	segs, _ := elfSegments(neu)
	shift := int64(4 * insertWords)
	split := int64(codeOff + 4*funcWords*(nFuncs/3)) // where version 2 inserts
	// The alignment: code before the insertion in place, after it moved
	// by the insertion, the data in place.
	codeEnd := int64(codeOff + 4*funcWords*nFuncs)
	cs := []ctrl{
		{Add: split, Extra: shift},
		{Add: codeEnd - split, Extra: dataOff - codeEnd - shift, Seek: dataOff - codeEnd},
		{Add: int64(len(old)) - dataOff},
	}
	a, ok := newAArch64(old, cs, segs)
	if !ok {
		t.Fatal("no predictor for the synthetic program")
	}
	sites := map[string]int{"BL": 5, "ADRP+ADD": 11, "ADD": 12, "ADRP+LDR": 20, "LDR lo12": 21, "LDR literal": 30, "B.cond": 40, "CBZ": 50}
	checked := 0
	for f := range nFuncs {
		for name, w := range sites {
			q := int64(codeOff + 4*(f*funcWords+w))
			p := q
			if q >= split {
				p += shift
			}
			want := binary.LittleEndian.Uint32(neu[p:])
			got, ok := a.predictWord(q, p)
			if !ok || got != want {
				t.Fatalf("function %d, %s at old %#x: predicted %#x (%v), version 2 has %#x", f, name, q, got, ok, want)
			}
			checked++
		}
	}
	// A filler word is not predicted: the old word stands.
	if _, ok := a.predictWord(codeOff+4*2, codeOff+4*2); ok {
		t.Fatal("a MOVZ was predicted")
	}
	t.Logf("%d sites predicted exactly", checked)
}
