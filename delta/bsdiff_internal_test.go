package delta

import (
	"bytes"
	"math/rand"
	"testing"
)

// TestPredictionIsChunkIndependent: applying in chunks gives what
// encoding the whole stretch gave, for every predictor.
func TestBsdiffRoundTripSynthetic(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	old := make([]byte, 300_000)
	rng.Read(old)
	// New: old with an insertion, a change and a deletion.
	newb := append(append(append([]byte{}, old[:1000]...), []byte("inserted bytes")...), old[1000:200_000]...)
	newb[5000] ^= 0xff
	newb = append(newb, old[210_000:]...)
	cs, err := bsdiffControl(old, newb)
	if err != nil {
		t.Fatal(err)
	}
	if err := checkControl(cs, int64(len(old)), int64(len(newb))); err != nil {
		t.Fatal(err)
	}
	chunks, extra := encodeBsdiff(old, newb, cs, identity{})
	enc := newCMEncoder()
	for _, c := range chunks {
		enc.encode(c)
	}
	coded := enc.finish()
	var out bytes.Buffer
	dec := newCMDecoder(bytes.NewReader(coded), enc.raw)
	if err := applyBsdiff(old, cs, identity{}, dec, bytes.NewReader(extra), &out); err != nil {
		t.Fatal(err)
	}
	if err := dec.finish(int64(len(coded))); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), newb) {
		t.Fatal("bsdiff round trip differs")
	}
	// A control that reads outside the old file is refused.
	bad := append([]ctrl{}, cs...)
	bad[0].Seek += 1 << 30
	if len(bad) > 1 {
		if err := checkControl(bad, int64(len(old)), int64(len(newb))); err == nil {
			t.Fatal("out-of-range control accepted")
		}
	}
}
