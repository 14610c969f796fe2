package delta

import (
	"bytes"
	"errors"
	"math/rand"
	"testing"
)

// cmChunks makes diff pieces that look like bsdiff's: predicted
// instruction words, where every word whose top byte is 0x94 (a BL)
// changes its low byte by 0x20 and nothing else changes. The changes
// follow the prediction, which the coder sees and a plain compressor
// does not.
func cmChunks(rng *rand.Rand, n int) []diffChunk {
	var chunks []diffChunk
	np := int64(0)
	for range n {
		size := 4 * (1 + rng.Intn(800))
		c := diffChunk{np: np, pred: make([]byte, size), diff: make([]byte, size)}
		rng.Read(c.pred)
		for i := 0; i < size; i += 4 {
			if rng.Intn(8) == 0 {
				c.pred[i+3] = 0x94
			} else if c.pred[i+3] == 0x94 {
				c.pred[i+3] = 0x95
			}
			if c.pred[i+3] == 0x94 {
				c.diff[i] = 0x20
			}
		}
		chunks = append(chunks, c)
		np += int64(size + 4*rng.Intn(3))
	}
	return chunks
}

func cmEncodeAll(chunks []diffChunk) ([]byte, int64) {
	e := newCMEncoder()
	for _, c := range chunks {
		e.encode(c)
	}
	return e.finish(), e.raw
}

func cmDecodeAll(coded []byte, raw int64, chunks []diffChunk) ([][]byte, error) {
	d := newCMDecoder(bytes.NewReader(coded), raw)
	var out [][]byte
	for _, c := range chunks {
		got := make([]byte, len(c.diff))
		if err := d.decode(c.pred, got, c.np); err != nil {
			return out, err
		}
		out = append(out, got)
	}
	return out, d.finish(int64(len(coded)))
}

func TestCMRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewSource(7))
	chunks := cmChunks(rng, 200)
	coded, raw := cmEncodeAll(chunks)
	got, err := cmDecodeAll(coded, raw, chunks)
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range chunks {
		if !bytes.Equal(got[i], c.diff) {
			t.Fatalf("piece %d differs after the round trip", i)
		}
	}
	// Changes that follow the prediction cost next to nothing: the model
	// learns them. zstd, which sees only the diff bytes, must code where
	// each change is.
	var all []byte
	for _, c := range chunks {
		all = append(all, c.diff...)
	}
	if z := len(compressStream(all)); len(coded)*10 > z {
		t.Errorf("%d diff bytes coded to %d bytes, zstd makes %d", raw, len(coded), z)
	}
	// The same input codes to the same bytes.
	again, _ := cmEncodeAll(chunks)
	if !bytes.Equal(again, coded) {
		t.Error("coding is not deterministic")
	}
}

func TestCMEmpty(t *testing.T) {
	coded, raw := cmEncodeAll(nil)
	if raw != 0 || len(coded) != 4 {
		t.Fatalf("empty stream: %d raw, %d coded bytes", raw, len(coded))
	}
	if _, err := cmDecodeAll(coded, 0, nil); err != nil {
		t.Fatal(err)
	}
}

func TestCMRefusals(t *testing.T) {
	rng := rand.New(rand.NewSource(8))
	chunks := cmChunks(rng, 50)
	coded, raw := cmEncodeAll(chunks)
	for _, tc := range []struct {
		name  string
		coded []byte
		raw   int64
		want  error
	}{
		{"cut short", coded[:len(coded)/2], raw, ErrCorrupt},
		{"trailing bytes", append(append([]byte{}, coded...), 0, 0), raw, ErrCorrupt},
		{"more declared than used", coded, raw + 1, ErrFormat},
		{"less declared than needed", coded, raw - 1, ErrFormat},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := cmDecodeAll(tc.coded, tc.raw, chunks)
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
}

// FuzzCMDecode: any bytes decode without a panic and within the declared
// size; what the encoder wrote decodes back exactly.
func FuzzCMDecode(f *testing.F) {
	f.Add([]byte{0, 0, 0, 0}, []byte{1, 2, 3, 4}, uint16(4))
	f.Add([]byte{0xff, 0x12, 0x80, 0x00, 0x01}, []byte{0x1f, 0x20, 0x03, 0xd5}, uint16(64))
	f.Fuzz(func(t *testing.T, coded, pred []byte, n uint16) {
		if len(pred) == 0 {
			pred = []byte{0}
		}
		c := diffChunk{np: int64(len(coded)), pred: bytes.Repeat(pred, int(n)/len(pred)+1)[:n], diff: make([]byte, n)}
		d := newCMDecoder(bytes.NewReader(coded), int64(n))
		if err := d.decode(c.pred, c.diff, c.np); err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatal(err)
			}
			return
		}
		// Whatever came out, coding it again and decoding gives it back.
		again, raw := cmEncodeAll([]diffChunk{c})
		got, err := cmDecodeAll(again, raw, []diffChunk{{np: c.np, pred: c.pred, diff: make([]byte, n)}})
		if err != nil || !bytes.Equal(got[0], c.diff) {
			t.Fatalf("round trip: %v", err)
		}
	})
}
