package delta

import (
	"bytes"
	"encoding/binary"
	"index/suffixarray"
	"sort"
)

// bzip2Encode compresses b in the bzip2 format (block size 900k), read
// by compress/bzip2. It exists because the one pure-Go encoder
// (dsnet/compress) assigns Huffman tables to symbol groups round-robin,
// which costs about 14% on bsdiff diff streams; this one refines the
// assignment the way the reference bzip2 does (four passes).
func bzip2Encode(b []byte) []byte {
	w := &bitWriter{}
	w.buf.WriteString("BZh9")
	var combined uint32
	const maxBlock = 899_000 // RLE1 output stays under 900,000 - 19
	for len(b) > 0 {
		// Take input until its RLE1 form fills a block.
		rle, used := rle1(b, maxBlock)
		crc := bzCRC(b[:used])
		combined = (combined<<1 | combined>>31) ^ crc
		writeBlock(w, rle, crc)
		b = b[used:]
	}
	w.bits(0x177245, 24)
	w.bits(0x385090, 24)
	w.bits(uint64(combined), 32)
	w.flush()
	return w.buf.Bytes()
}

type bitWriter struct {
	buf   bytes.Buffer
	acc   uint64
	nbits uint
}

func (w *bitWriter) bits(v uint64, n uint) {
	for n > 0 {
		take := min(n, 32)
		n -= take
		w.acc = w.acc<<take | (v>>n)&(1<<take-1)
		w.nbits += take
		for w.nbits >= 8 {
			w.nbits -= 8
			w.buf.WriteByte(byte(w.acc >> w.nbits))
		}
	}
}

func (w *bitWriter) flush() {
	if w.nbits > 0 {
		w.buf.WriteByte(byte(w.acc << (8 - w.nbits)))
		w.nbits = 0
	}
}

var bzCRCTable = func() (t [256]uint32) {
	for i := range t {
		c := uint32(i) << 24
		for j := 0; j < 8; j++ {
			if c&0x80000000 != 0 {
				c = c<<1 ^ 0x04c11db7
			} else {
				c <<= 1
			}
		}
		t[i] = c
	}
	return
}()

func bzCRC(b []byte) uint32 {
	c := ^uint32(0)
	for _, x := range b {
		c = c<<8 ^ bzCRCTable[byte(c>>24)^x]
	}
	return ^c
}

// rle1 is bzip2's first run-length step: four equal bytes and a count of
// up to 251 more. It returns the encoding of a prefix of b of at most max
// bytes and how much of b it covers.
func rle1(b []byte, max int) ([]byte, int) {
	out := make([]byte, 0, min(len(b), max)+8)
	i := 0
	for i < len(b) && len(out)+5 <= max {
		r := 1
		for i+r < len(b) && b[i+r] == b[i] && r < 255 {
			r++
		}
		if r >= 4 {
			out = append(out, b[i], b[i], b[i], b[i], byte(r-4))
		} else {
			for k := 0; k < r; k++ {
				out = append(out, b[i])
			}
		}
		i += r
	}
	return out, i
}

// suffixArray returns the suffix array of s, from the standard library's
// SA-IS construction (read back from its serialised index).
func suffixArray(s []byte) []int {
	var buf bytes.Buffer
	if err := suffixarray.New(s).Write(&buf); err != nil {
		panic(err)
	}
	data := buf.Bytes()
	n, _ := binary.Varint(data)
	p := binary.MaxVarintLen64 + int(n)
	sa := make([]int, 0, n)
	for p < len(data) {
		size, _ := binary.Varint(data[p:])
		chunk := data[p+binary.MaxVarintLen64 : p+int(size)]
		for len(chunk) > 0 {
			v, k := binary.Uvarint(chunk)
			sa = append(sa, int(v))
			chunk = chunk[k:]
		}
		p += int(size)
	}
	return sa
}

// bwt sorts the rotations of s: the last column and the row of s itself.
func bwt(s []byte) ([]byte, int) {
	n := len(s)
	ss := append(append(make([]byte, 0, 2*n), s...), s...)
	out := make([]byte, 0, n)
	orig := 0
	for _, i := range suffixArray(ss) {
		if i >= n {
			continue
		}
		if i == 0 {
			orig = len(out)
		}
		out = append(out, s[(i+n-1)%n])
	}
	return out, orig
}

const (
	runA      = 0
	runB      = 1
	groupSize = 50
	maxLen    = 17
)

func writeBlock(w *bitWriter, block []byte, crc uint32) {
	last, orig := bwt(block)
	var inUse [256]bool
	for _, c := range last {
		inUse[c] = true
	}
	var unseqToSeq [256]byte
	var nInUse int
	for c := 0; c < 256; c++ {
		if inUse[c] {
			unseqToSeq[c] = byte(nInUse)
			nInUse++
		}
	}
	alpha := nInUse + 2
	eob := uint16(nInUse + 1)
	// MTF and zero-run coding.
	mtf := make([]byte, nInUse)
	for i := range mtf {
		mtf[i] = byte(i)
	}
	syms := make([]uint16, 0, len(last)+1)
	zPend := 0
	flushRun := func() {
		if zPend == 0 {
			return
		}
		zPend--
		for {
			syms = append(syms, uint16(zPend&1))
			if zPend < 2 {
				break
			}
			zPend = (zPend - 2) / 2
		}
		zPend = 0
	}
	for _, c := range last {
		s := unseqToSeq[c]
		j := bytes.IndexByte(mtf, s)
		if j == 0 {
			zPend++
			continue
		}
		flushRun()
		copy(mtf[1:j+1], mtf[:j])
		mtf[0] = s
		syms = append(syms, uint16(j+1))
	}
	flushRun()
	syms = append(syms, eob)

	nGroups := 6
	for i, lim := range []int{200, 600, 1200, 2400} {
		if len(syms) < lim {
			nGroups = 2 + i
			break
		}
	}
	freq := make([]int, alpha)
	for _, s := range syms {
		freq[s]++
	}
	// Initial tables: each cheap on one range of symbols.
	lens := make([][]uint8, nGroups)
	remF := len(syms)
	gs := 0
	for t := nGroups; t > 0; t-- {
		target := remF / t
		ge, acc := gs-1, 0
		for acc < target && ge < alpha-1 {
			ge++
			acc += freq[ge]
		}
		if ge > gs && t != nGroups && t != 1 && (nGroups-t)%2 == 1 {
			acc -= freq[ge]
			ge--
		}
		l := make([]uint8, alpha)
		for v := range l {
			if v >= gs && v <= ge {
				l[v] = 0
			} else {
				l[v] = 15
			}
		}
		lens[nGroups-t] = l
		gs = ge + 1
		remF -= acc
	}
	nSel := (len(syms) + groupSize - 1) / groupSize
	sel := make([]uint8, nSel)
	for iter := 0; iter < 4; iter++ {
		fr := make([][]int, nGroups)
		for t := range fr {
			fr[t] = make([]int, alpha)
		}
		for g := 0; g < nSel; g++ {
			grp := syms[g*groupSize : min((g+1)*groupSize, len(syms))]
			best, bestCost := 0, -1
			for t := 0; t < nGroups; t++ {
				cost := 0
				for _, s := range grp {
					cost += int(lens[t][s])
				}
				if bestCost < 0 || cost < bestCost {
					best, bestCost = t, cost
				}
			}
			sel[g] = uint8(best)
			for _, s := range grp {
				fr[best][s]++
			}
		}
		for t := range lens {
			lens[t] = huffLengths(fr[t], maxLen)
		}
	}

	w.bits(0x314159, 24)
	w.bits(0x265359, 24)
	w.bits(uint64(crc), 32)
	w.bits(0, 1) // not randomised
	w.bits(uint64(orig), 24)
	var used16 uint64
	for i := 0; i < 16; i++ {
		for j := 0; j < 16; j++ {
			if inUse[i*16+j] {
				used16 |= 1 << (15 - i)
				break
			}
		}
	}
	w.bits(used16, 16)
	for i := 0; i < 16; i++ {
		if used16&(1<<(15-i)) == 0 {
			continue
		}
		var v uint64
		for j := 0; j < 16; j++ {
			if inUse[i*16+j] {
				v |= 1 << (15 - j)
			}
		}
		w.bits(v, 16)
	}
	w.bits(uint64(nGroups), 3)
	w.bits(uint64(nSel), 15)
	order := make([]uint8, nGroups)
	for i := range order {
		order[i] = uint8(i)
	}
	for _, s := range sel {
		j := bytes.IndexByte(order, s)
		for k := 0; k < j; k++ {
			w.bits(1, 1)
		}
		w.bits(0, 1)
		copy(order[1:j+1], order[:j])
		order[0] = s
	}
	codes := make([][]uint32, nGroups)
	for t := 0; t < nGroups; t++ {
		cur := int(lens[t][0])
		w.bits(uint64(cur), 5)
		for s := 0; s < alpha; s++ {
			for cur < int(lens[t][s]) {
				w.bits(2, 2)
				cur++
			}
			for cur > int(lens[t][s]) {
				w.bits(3, 2)
				cur--
			}
			w.bits(0, 1)
		}
		codes[t] = canonicalCodes(lens[t])
	}
	for g := 0; g < nSel; g++ {
		t := sel[g]
		for _, s := range syms[g*groupSize : min((g+1)*groupSize, len(syms))] {
			w.bits(uint64(codes[t][s]), uint(lens[t][s]))
		}
	}
}

// canonicalCodes assigns codes as bzip2 does: by length, then symbol.
func canonicalCodes(lens []uint8) []uint32 {
	codes := make([]uint32, len(lens))
	var code uint32
	for l := uint8(1); l <= maxLen; l++ {
		for s, sl := range lens {
			if sl == l {
				codes[s] = code
				code++
			}
		}
		code <<= 1
	}
	return codes
}

// huffLengths makes Huffman code lengths of at most limit bits for the
// frequencies (every symbol gets a code), halving frequencies until the
// tree fits, as bzip2 does.
func huffLengths(freq []int, limit int) []uint8 {
	f := make([]int, len(freq))
	for i, x := range freq {
		f[i] = max(x, 1) << 8
	}
	for {
		lens := huffman(f)
		ok := true
		for _, l := range lens {
			if int(l) > limit {
				ok = false
				break
			}
		}
		if ok {
			return lens
		}
		for i := range f {
			f[i] = 1 + (f[i]>>8)/2<<8
		}
	}
}

// huffman returns optimal code lengths for the weights (all > 0).
func huffman(w []int) []uint8 {
	type node struct {
		weight, depth int
		sym           int // -1 for inner nodes
		left, right   int
	}
	nodes := make([]node, 0, 2*len(w))
	var heap []int
	for s, x := range w {
		nodes = append(nodes, node{weight: x, sym: s, left: -1, right: -1})
		heap = append(heap, s)
	}
	less := func(a, b int) bool {
		if nodes[a].weight != nodes[b].weight {
			return nodes[a].weight < nodes[b].weight
		}
		return nodes[a].depth < nodes[b].depth
	}
	for len(heap) > 1 {
		sort.Slice(heap, func(i, j int) bool { return less(heap[i], heap[j]) })
		a, b := heap[0], heap[1]
		heap = heap[2:]
		nodes = append(nodes, node{weight: nodes[a].weight + nodes[b].weight, depth: max(nodes[a].depth, nodes[b].depth) + 1, sym: -1, left: a, right: b})
		heap = append(heap, len(nodes)-1)
	}
	lens := make([]uint8, len(w))
	var walk func(i, d int)
	walk = func(i, d int) {
		if nodes[i].sym >= 0 {
			lens[nodes[i].sym] = uint8(max(d, 1))
			return
		}
		walk(nodes[i].left, d+1)
		walk(nodes[i].right, d+1)
	}
	walk(heap[0], 0)
	return lens
}
