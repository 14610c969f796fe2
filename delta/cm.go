package delta

import (
	"fmt"
	"io"
)

// Context-mixing coder for the diff stream (cm1, docs/delta.md §7).
//
// bsdiff's diff bytes are new minus predicted: almost all zero, and where
// not, the change sits in an instruction's immediate field. bzip2 sees
// only the diff bytes; this coder also sees the predicted bytes the
// device has anyway, so it knows which instruction a byte belongs to and
// which of its bits an address change can touch. Each byte is coded as a
// zero flag and, when not zero, its eight bits, each bit by a binary
// arithmetic coder whose probability mixes several context models
// (PAQ-style logistic mixing). Everything is integer arithmetic, so the
// encoder on the build host and the decoder on the device agree bit for
// bit whatever the CPU.

// squash maps a stretched probability (-2047..2047, 8 fractional bits)
// to a 12-bit probability; stretch is its inverse. The table is lpaq1's.
var squashT = [33]int32{1, 2, 3, 6, 10, 16, 27, 45, 73, 120, 194, 310, 488, 747, 1101, 1546,
	2047, 2549, 2994, 3348, 3607, 3785, 3901, 3975, 4022, 4050, 4068, 4079, 4085, 4089, 4092, 4093, 4094}

func squash(d int32) int32 {
	if d > 2047 {
		return 4095
	}
	if d < -2047 {
		return 1
	}
	w := d & 127
	i := (d >> 7) + 16
	return (squashT[i]*(128-w) + squashT[i+1]*w + 64) >> 7
}

var stretchT [4096]int16

func init() {
	pi := int32(0)
	for x := int32(-2047); x <= 2047; x++ {
		v := squash(x)
		for j := pi; j <= v; j++ {
			stretchT[j] = int16(x)
		}
		pi = v + 1
	}
	for j := pi; j < 4096; j++ {
		stretchT[j] = 2047
	}
}

func stretch(p int32) int32 { return int32(stretchT[p]) }

// dtab[n] is the adaptation rate after n observations.
var dtab [1024]int32

func init() {
	for i := range dtab {
		dtab[i] = 16384 / int32(i+i+3)
	}
}

// stateMap holds, per context slot, a 22-bit probability and a 10-bit
// count; the rate falls as the count grows, up to limit.
type stateMap struct {
	t     []uint32
	mask  uint32
	limit uint32
	idx   uint32
}

func newStateMap(bits uint, limit uint32) stateMap {
	t := make([]uint32, 1<<bits)
	for i := range t {
		t[i] = 1 << 31
	}
	return stateMap{t: t, mask: 1<<bits - 1, limit: limit}
}

func (s *stateMap) p(h uint32) int32 {
	s.idx = h & s.mask
	return int32(s.t[s.idx] >> 20)
}

func (s *stateMap) update(y int32) {
	v := s.t[s.idx]
	n, p := v&1023, int32(v>>10)
	if n < s.limit {
		v++
	} else {
		v = v&0xfffffc00 | s.limit
	}
	v += uint32(((y<<22)-p)>>3*dtab[n]) & 0xfffffc00
	s.t[s.idx] = v
}

// mixer combines stretched predictions with one weight set per selector.
type mixer struct {
	n    int
	w    []int32
	x    []int32
	sel  int
	pr   int32
	rate int32
}

func newMixer(n, sets int, rate int32) mixer {
	w := make([]int32, n*sets)
	for i := range w {
		w[i] = 1 << 14
	}
	return mixer{n: n, w: w, x: make([]int32, 0, n), rate: rate}
}

func (m *mixer) add(st int32) { m.x = append(m.x, st) }

func (m *mixer) mix(sel int) int32 {
	m.sel = sel * m.n
	w := m.w[m.sel : m.sel+m.n]
	var dot int64
	for i, x := range m.x {
		dot += int64(x) * int64(w[i])
	}
	d := int32(dot >> 16)
	d = max(-2047, min(2047, d))
	m.pr = squash(d)
	return m.pr
}

func (m *mixer) update(y int32) {
	err := ((y << 12) - m.pr) * m.rate
	w := m.w[m.sel : m.sel+m.n]
	for i, x := range m.x {
		w[i] += (x*err + 0x200) >> 10
	}
	m.x = m.x[:0]
}

// apm refines a probability by a small context (an SSE stage).
type apm struct {
	t   []uint16
	idx int
}

func newAPM(n int) apm {
	t := make([]uint16, n*33)
	for i := 0; i < n; i++ {
		for j := 0; j < 33; j++ {
			t[i*33+j] = uint16(squash(int32((j-16)*128)) * 16)
		}
	}
	return apm{t: t}
}

func (a *apm) pp(pr int32, cx int) int32 {
	s := stretch(pr) + 2048
	lo := s & 127
	a.idx = int(s>>7) + cx*33
	return (int32(a.t[a.idx])*(128-lo) + int32(a.t[a.idx+1])*lo) >> 11
}

func (a *apm) update(y int32) {
	g := int32(y<<16) + int32(y<<5) - int32(y) - int32(y)
	a.t[a.idx] += uint16((g - int32(a.t[a.idx])) >> 7)
	a.t[a.idx+1] += uint16((g - int32(a.t[a.idx+1])) >> 7)
}

// Binary arithmetic coder (carry-less, 32-bit, as in lpaq1).
type acEncoder struct {
	x1, x2 uint32
	out    []byte
}

func (e *acEncoder) encode(y int32, p int32) {
	// p is P(bit = 1), 12 bits.
	xmid := e.x1 + uint32((uint64(e.x2-e.x1)*uint64(p))>>12)
	if y != 0 {
		e.x2 = xmid
	} else {
		e.x1 = xmid + 1
	}
	for (e.x1^e.x2)&0xff000000 == 0 {
		e.out = append(e.out, byte(e.x2>>24))
		e.x1 <<= 8
		e.x2 = e.x2<<8 | 255
	}
}

func (e *acEncoder) flush() []byte {
	return append(e.out, byte(e.x1>>24), byte(e.x1>>16), byte(e.x1>>8), byte(e.x1))
}

type acDecoder struct {
	x1, x2, x uint32
	in        io.ByteReader
	read      int64 // bytes read from in
	over      bool  // in ended before the decoder was done
}

func (d *acDecoder) next() uint32 {
	c, err := d.in.ReadByte()
	if err != nil {
		d.over = true
		return 0
	}
	d.read++
	return uint32(c)
}

func (d *acDecoder) init(in io.ByteReader) {
	d.in, d.x1, d.x2 = in, 0, 0xffffffff
	for range 4 {
		d.x = d.x<<8 | d.next()
	}
}

func (d *acDecoder) decode(p int32) int32 {
	xmid := d.x1 + uint32((uint64(d.x2-d.x1)*uint64(p))>>12)
	var y int32
	if d.x <= xmid {
		y = 1
		d.x2 = xmid
	} else {
		d.x1 = xmid + 1
	}
	for (d.x1^d.x2)&0xff000000 == 0 {
		d.x1 <<= 8
		d.x2 = d.x2<<8 | 255
		d.x = d.x<<8 | d.next()
	}
	return y
}

const (
	cmZeroModels  = 7
	cmValueModels = 8
)

// cmModel predicts diff bytes; the encoder and the decoder drive it
// through the same calls in the same order.
type cmModel struct {
	zero  [cmZeroModels]stateMap
	value [cmValueModels]stateMap
	zmix  mixer
	vmix  mixer
	zapm  apm
	vapm  apm

	hist uint64 // last eight diff bytes, newest in the low byte
	nz   uint32 // one bit per byte of the last 32: not zero
	run  uint32 // zero bytes since the last non-zero one

	zctx [cmZeroModels]uint32
	vctx [cmValueModels]uint32
	k    uint32
}

// The model's table sizes, in bits of slots: part of the format.
const (
	cmZeroBits  = 18
	cmValueBits = 18
)

func newCMModel() *cmModel { return newCMModelBits(cmZeroBits, cmValueBits) }

// newCMModelBits makes a model with smaller tables, for estimating what
// a short input costs.
func newCMModelBits(zbits, vbits uint) *cmModel {
	m := &cmModel{zmix: newMixer(cmZeroModels+1, 4*16, 6), vmix: newMixer(cmValueModels+1, 4*256, 6), zapm: newAPM(4 * 64), vapm: newAPM(4 * 256)}
	for i := range m.zero {
		m.zero[i] = newStateMap(zbits, 1023)
	}
	for i := range m.value {
		m.value[i] = newStateMap(vbits, 255)
	}
	return m
}

func hash3(a, b, c uint32) uint32 {
	h := a*0x9E3779B1 ^ b*0x85EBCA77 ^ c*0xC2B2AE3D
	return h ^ h>>15
}

func runBucket(r uint32) uint32 {
	switch {
	case r < 8:
		return r
	case r < 16:
		return 8
	case r < 32:
		return 9
	case r < 64:
		return 10
	case r < 256:
		return 11
	case r < 1024:
		return 12
	case r < 4096:
		return 13
	case r < 65536:
		return 14
	}
	return 15
}

// setContext computes the contexts of the byte at pred[j], at position
// np of the new file; pred is the current chunk's prediction.
func (m *cmModel) setContext(pred []byte, j int, np int64) {
	k := uint32(np & 3)
	var w uint32
	base := j - int(k)
	for b := 0; b < 4; b++ {
		if i := base + b; i >= 0 && i < len(pred) {
			w |= uint32(pred[i]) << (8 * b)
		}
	}
	p := uint32(pred[j])
	op := w >> 24
	h := m.hist
	h1, h2, h4, h8 := uint32(h&0xff), uint32(h>>8&0xff), uint32(h>>24&0xff), uint32(h>>56)
	rb := runBucket(m.run)
	m.k = k
	m.zctx = [cmZeroModels]uint32{
		hash3(1, k, w>>16),
		hash3(2, k<<8|p, op),
		hash3(3, k, w),
		hash3(4, k, m.nz&0xff),
		hash3(5, k<<16|h4<<8|h8, h1),
		hash3(6, k, rb),
		hash3(7, k<<8|op, m.nz&0xf0f0f0f0),
	}
	m.vctx = [cmValueModels]uint32{
		hash3(11, k, 0),
		hash3(12, k, p),
		hash3(13, k, op),
		hash3(14, k, h4),
		hash3(15, k, h1),
		hash3(16, k, w),
		hash3(17, k, h8),
		hash3(18, k, h1|h2<<8|uint32(h>>16&0xff)<<16),
	}
}

func (m *cmModel) pZero() int32 {
	for i := range m.zero {
		m.zmix.add(stretch(m.zero[i].p(m.zctx[i])))
	}
	m.zmix.add(256)
	rb := runBucket(m.run)
	pr := m.zmix.mix(int(m.k*16 + rb))
	a := m.zapm.pp(pr, int(m.k*64+rb*4+min(uint32(bitsCount(m.nz&0xff)), 3)))
	return clampP((pr + 3*a) >> 2)
}

func (m *cmModel) updateZero(y int32) {
	for i := range m.zero {
		m.zero[i].update(y)
	}
	m.zmix.update(y)
	m.zapm.update(y)
}

func (m *cmModel) pBit(c0 uint32) int32 {
	for i := range m.value {
		m.vmix.add(stretch(m.value[i].p(m.vctx[i] + c0*0x2F0B3A49)))
	}
	m.vmix.add(256)
	pr := m.vmix.mix(int(m.k*256 + c0))
	a := m.vapm.pp(pr, int(m.k*256+c0))
	return clampP((pr + 3*a) >> 2)
}

func (m *cmModel) updateBit(y int32) {
	for i := range m.value {
		m.value[i].update(y)
	}
	m.vmix.update(y)
	m.vapm.update(y)
}

func (m *cmModel) push(d byte) {
	m.hist = m.hist<<8 | uint64(d)
	m.nz <<= 1
	if d != 0 {
		m.nz |= 1
		m.run = 0
	} else if m.run < 1<<30 {
		m.run++
	}
}

func clampP(p int32) int32 { return max(1, min(4095, p)) }

func bitsCount(x uint32) int {
	n := 0
	for ; x != 0; x &= x - 1 {
		n++
	}
	return n
}

// cmEncoder codes diff bytes given their predictions.
type cmEncoder struct {
	m   *cmModel
	ac  acEncoder
	raw int64
}

func newCMEncoder() *cmEncoder { return newCMEncoderBits(cmZeroBits, cmValueBits) }

func newCMEncoderBits(zbits, vbits uint) *cmEncoder {
	return &cmEncoder{m: newCMModelBits(zbits, vbits), ac: acEncoder{x2: 0xffffffff}}
}

// encode codes the diff bytes of one piece of an add stretch.
func (e *cmEncoder) encode(c diffChunk) {
	m := e.m
	for j, d := range c.diff {
		m.setContext(c.pred, j, c.np+int64(j))
		var z int32
		if d != 0 {
			z = 1
		}
		e.ac.encode(z, m.pZero())
		m.updateZero(z)
		if d != 0 {
			c0 := uint32(1)
			for b := 7; b >= 0; b-- {
				y := int32(d>>b) & 1
				e.ac.encode(y, m.pBit(c0))
				m.updateBit(y)
				c0 = c0<<1 | uint32(y)
			}
		}
		m.push(d)
	}
	e.raw += int64(len(c.diff))
}

func (e *cmEncoder) finish() []byte { return e.ac.flush() }

// cmSize is what chunks cost coded on their own, with a fresh model.
func cmSize(chunks []diffChunk) int {
	var raw int64
	for _, c := range chunks {
		raw += int64(len(c.diff))
	}
	// Tables about the size of the input: a short file needs no more,
	// and setting up the full ones would cost more than coding it.
	bits := uint(12)
	for bits < cmZeroBits && int64(1)<<bits < raw {
		bits++
	}
	e := newCMEncoderBits(bits, bits)
	for _, c := range chunks {
		e.encode(c)
	}
	return len(e.finish())
}

// cmDecoder decodes a diff stream of a declared number of bytes.
type cmDecoder struct {
	m    *cmModel
	ac   acDecoder
	left int64 // diff bytes the header declared and not yet decoded
}

func newCMDecoder(in io.ByteReader, raw int64) *cmDecoder {
	d := &cmDecoder{m: newCMModel(), left: raw}
	d.ac.init(in)
	return d
}

// decode fills diff, the diff bytes of one piece whose prediction is
// pred, starting at position np of the new file.
func (d *cmDecoder) decode(pred, diff []byte, np int64) error {
	if int64(len(diff)) > d.left {
		return fmt.Errorf("%w: the files need more diff bytes than the header declares", ErrFormat)
	}
	d.left -= int64(len(diff))
	m := d.m
	for j := range diff {
		m.setContext(pred, j, np+int64(j))
		z := d.ac.decode(m.pZero())
		m.updateZero(z)
		var v byte
		if z != 0 {
			c0 := uint32(1)
			for range 8 {
				y := d.ac.decode(m.pBit(c0))
				m.updateBit(y)
				c0 = c0<<1 | uint32(y)
			}
			v = byte(c0)
		}
		diff[j] = v
		m.push(v)
	}
	if d.ac.over {
		return fmt.Errorf("%w: the diff stream's coding runs past its end", ErrCorrupt)
	}
	return nil
}

// finish checks that the stream was used exactly: every declared byte
// decoded, every coded byte read, nothing left over.
func (d *cmDecoder) finish(size int64) error {
	switch {
	case d.left != 0:
		return fmt.Errorf("%w: %d bytes of the diff stream unused", ErrFormat, d.left)
	case d.ac.over:
		return fmt.Errorf("%w: the diff stream's coding runs past its end", ErrCorrupt)
	case d.ac.read != size:
		return fmt.Errorf("%w: the diff stream is %d bytes, its coding ends after %d", ErrCorrupt, size, d.ac.read)
	}
	return nil
}
