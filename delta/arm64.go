package delta

import (
	"encoding/binary"
	"sort"
)

// aarch64 is the prediction for aarch64 ELF files: where the old file has
// a PC-relative branch or address (BL, B, B.cond, CBZ, TBZ, LDR literal,
// ADRP with its ADD or load/store), it predicts the same instruction with
// the target moved the way bsdiff's alignment moved it. Code that only moved then
// diffs to zeros. It depends only on the old file, the alignment and the
// new file's segment table, so the device predicts exactly what the
// builder did.
type aarch64 struct {
	old     []byte
	oldSegs []segment
	newSegs []segment
	regions []region // sorted by old VA
	minVA   uint64
	maxVA   uint64
}

// Predicting 64-bit pointers the same way was measured and left out: on
// corpus r1->r2 it broke more words than it fixed (pointers into .bss,
// values that only look like pointers).

// segment is a PT_LOAD program header: file offset, address, sizes.
type segment struct{ Off, VA, FileSize, MemSize uint64 }

// region is an aligned stretch: old VA oldVA maps to new VA oldVA+delta.
type region struct {
	oldVA, length uint64
	delta         int64
}

const emAArch64 = 183

// minRegion is the shortest bsdiff match that defines how addresses move.
const minRegion = 256

// elfSegments reads the PT_LOAD headers of a little-endian ELF64 aarch64
// file; ok is false for anything else.
func elfSegments(b []byte) (segs []segment, ok bool) {
	if len(b) < 64 || string(b[:4]) != "\x7fELF" || b[4] != 2 || b[5] != 1 || binary.LittleEndian.Uint16(b[18:]) != emAArch64 {
		return nil, false
	}
	phoff := binary.LittleEndian.Uint64(b[32:])
	phentsize := uint64(binary.LittleEndian.Uint16(b[54:]))
	phnum := uint64(binary.LittleEndian.Uint16(b[56:]))
	if phentsize < 56 || phnum > 64 || phoff > uint64(len(b)) || phoff+phnum*phentsize > uint64(len(b)) {
		return nil, false
	}
	for i := uint64(0); i < phnum; i++ {
		h := b[phoff+i*phentsize:]
		if binary.LittleEndian.Uint32(h) != 1 { // PT_LOAD
			continue
		}
		segs = append(segs, segment{
			Off: binary.LittleEndian.Uint64(h[8:]), VA: binary.LittleEndian.Uint64(h[16:]),
			FileSize: binary.LittleEndian.Uint64(h[32:]), MemSize: binary.LittleEndian.Uint64(h[40:]),
		})
	}
	return segs, len(segs) > 0
}

func offToVA(segs []segment, off uint64) (uint64, bool) {
	for _, s := range segs {
		if off >= s.Off && off < s.Off+s.FileSize {
			return s.VA + (off - s.Off), true
		}
	}
	return 0, false
}

// newAArch64 builds the predictor from the old file, the alignment and
// the new file's segments.
func newAArch64(old []byte, cs []ctrl, newSegs []segment) (*aarch64, bool) {
	oldSegs, ok := elfSegments(old)
	if !ok || len(newSegs) == 0 {
		return nil, false
	}
	a := &aarch64{old: old, oldSegs: oldSegs, newSegs: newSegs, minVA: ^uint64(0)}
	for _, s := range oldSegs {
		a.minVA = min(a.minVA, s.VA)
		a.maxVA = max(a.maxVA, s.VA+s.MemSize)
	}
	var newPos, oldPos int64
	for _, c := range cs {
		// Short matches far away say nothing about how code moved.
		if c.Add >= minRegion {
			ov, ok1 := offToVA(oldSegs, uint64(oldPos))
			nv, ok2 := offToVA(newSegs, uint64(newPos))
			if ok1 && ok2 {
				a.regions = append(a.regions, region{oldVA: ov, length: uint64(c.Add), delta: int64(nv) - int64(ov)})
			}
		}
		newPos += c.Add + c.Extra
		oldPos += c.Add + c.Seek
	}
	sort.SliceStable(a.regions, func(i, j int) bool { return a.regions[i].oldVA < a.regions[j].oldVA })
	return a, true
}

// mapVA moves an old address into the new file: by the region holding
// it, else by the nearest region below it (addresses in .bss, or in
// bytes bsdiff did not align).
func (a *aarch64) mapVA(v uint64) (uint64, bool) {
	if v < a.minVA || v >= a.maxVA || len(a.regions) == 0 {
		return 0, false
	}
	i := sort.Search(len(a.regions), func(i int) bool { return a.regions[i].oldVA > v }) - 1
	if i < 0 {
		return 0, false
	}
	// A region that holds v wins; among several, the longest.
	best := -1
	for j := i; j >= 0 && j > i-8; j-- {
		r := a.regions[j]
		if v < r.oldVA+r.length && (best < 0 || r.length > a.regions[best].length) {
			best = j
		}
	}
	if best < 0 {
		best = i
	}
	return uint64(int64(v) + a.regions[best].delta), true
}

func (a *aarch64) predict(old []byte, oldPos, newPos, n int64, dst []byte) []byte {
	start := len(dst)
	dst = append(dst, old[oldPos:oldPos+n]...)
	if (newPos-oldPos)%4 != 0 {
		return dst // bsdiff aligned these bytes off the instruction grid
	}
	out := dst[start:]
	// Words whose 4 bytes all lie in this stretch.
	first := (4 - oldPos%4) % 4
	for i := first; i+4 <= n; i += 4 {
		q, p := oldPos+i, newPos+i
		if w, ok := a.predictWord(q, p); ok {
			binary.LittleEndian.PutUint32(out[i:], w)
		}
	}
	return dst
}

func sext(v uint32, bits uint) int64 { return int64(int32(v<<(32-bits))) >> (32 - bits) }

// predictWord predicts the new instruction at new offset p, aligned with
// old offset q.
func (a *aarch64) predictWord(q, p int64) (uint32, bool) {
	w := binary.LittleEndian.Uint32(a.old[q:])
	pcOld, ok1 := offToVA(a.oldSegs, uint64(q))
	pcNew, ok2 := offToVA(a.newSegs, uint64(p))
	if !ok1 || !ok2 {
		return 0, false
	}
	// rel re-encodes a PC-relative field of bits bits at shift, scaled by 4.
	rel := func(mask uint32, shift, bits uint) (uint32, bool) {
		off := sext((w>>shift)&(1<<bits-1), bits) * 4
		t, ok := a.mapVA(uint64(int64(pcOld) + off))
		if !ok {
			return 0, false
		}
		d := int64(t) - int64(pcNew)
		if d%4 != 0 || d/4 >= 1<<(bits-1) || d/4 < -(1<<(bits-1)) {
			return 0, false
		}
		return w&^mask | (uint32(d/4)&(1<<bits-1))<<shift, true
	}
	switch {
	case w&0x7C000000 == 0x14000000: // B, BL: imm26
		return rel(0x03FFFFFF, 0, 26)
	case w&0xFF000010 == 0x54000000, w&0x7E000000 == 0x34000000, w&0xBF000000 == 0x18000000: // B.cond, CBZ/CBNZ, LDR literal: imm19
		return rel(0x00FFFFE0, 5, 19)
	case w&0x7E000000 == 0x36000000: // TBZ/TBNZ: imm14
		return rel(0x0007FFE0, 5, 14)
	case w&0x9F000000 == 0x90000000: // ADRP, with the instruction after it
		if q+8 > int64(len(a.old)) {
			return 0, false
		}
		t, _, ok := a.adrpTarget(q, w, pcOld)
		if !ok {
			return 0, false
		}
		d := int64(t&^0xFFF) - int64(pcNew&^0xFFF)
		return encodeADRP(w, d>>12)
	}
	// The ADD or load/store after an ADRP: its low 12 bits.
	if q >= 4 {
		prev := binary.LittleEndian.Uint32(a.old[q-4:])
		if prev&0x9F000000 == 0x90000000 {
			prevPC, ok := offToVA(a.oldSegs, uint64(q-4))
			if !ok {
				return 0, false
			}
			t, scale, ok := a.adrpTarget(q-4, prev, prevPC)
			if !ok || t&(1<<scale-1) != 0 {
				return 0, false
			}
			lo := (t & 0xFFF) >> scale
			return w&^(0xFFF<<10) | uint32(lo)<<10, true
		}
	}
	return 0, false
}

// adrpTarget maps the address an ADRP at old offset q forms together
// with the next instruction (ADD immediate or a load/store with unsigned
// offset on the same register) into the new file; scale is the
// load/store's size shift (0 for ADD).
func (a *aarch64) adrpTarget(q int64, w uint32, pc uint64) (uint64, uint, bool) {
	rd := w & 31
	next := binary.LittleEndian.Uint32(a.old[q+4:])
	immhi, immlo := (w>>5)&0x7FFFF, (w>>29)&3
	page := int64(pc&^0xFFF) + sext(immhi<<2|immlo, 21)<<12
	var lo uint64
	var scale uint
	switch {
	case next&0xFFC00000 == 0x91000000 && (next>>5)&31 == rd: // ADD Xd, Xn, #imm12 (no shift)
		lo = uint64((next >> 10) & 0xFFF)
	case next&0x3B000000 == 0x39000000 && (next>>5)&31 == rd && next&(1<<24) != 0: // LDR/STR (unsigned offset)
		scale = uint(next >> 30)
		if next&0x04000000 != 0 { // SIMD&FP: size with opc bit 1
			scale = uint(next>>30) | uint((next>>23)&1)<<2
		}
		if scale > 4 {
			return 0, 0, false
		}
		lo = uint64((next>>10)&0xFFF) << scale
	default:
		return 0, 0, false
	}
	t, ok := a.mapVA(uint64(page) + lo)
	return t, scale, ok
}

func encodeADRP(w uint32, pages int64) (uint32, bool) {
	if pages >= 1<<20 || pages < -(1<<20) {
		return 0, false
	}
	imm := uint32(pages) & 0x1FFFFF
	return w&^(0x3<<29|0x7FFFF<<5) | (imm&3)<<29 | (imm>>2)<<5, true
}

// marshalSegments and parseSegments carry the new file's segment table
// at the head of the file's control data.
func marshalSegments(segs []segment) []byte {
	b := binary.AppendUvarint(nil, uint64(len(segs)))
	for _, s := range segs {
		for _, v := range []uint64{s.Off, s.VA, s.FileSize, s.MemSize} {
			b = binary.AppendUvarint(b, v)
		}
	}
	return b
}
