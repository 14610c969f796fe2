package delta

import (
	"bytes"
	"compress/bzip2"
	"io"
	"math/rand"
	"testing"
)

func TestBzip2EncodeRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewSource(7))
	sparse := make([]byte, 3_000_000) // a diff stream: zeros with sparse bytes
	for i := 0; i < len(sparse); i += 1 + rng.Intn(40) {
		sparse[i] = byte(rng.Intn(5))
	}
	random := make([]byte, 200_000)
	rng.Read(random)
	for name, data := range map[string][]byte{
		"empty": {}, "one byte": {42}, "runs": bytes.Repeat([]byte("aaaaaaaab"), 100_000),
		"sparse": sparse, "random": random, "text": bytes.Repeat([]byte("the quick brown fox "), 5000),
	} {
		enc := bzip2Encode(data)
		got, err := io.ReadAll(bzip2.NewReader(bytes.NewReader(enc)))
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%s: round trip through compress/bzip2 failed: %v (%d of %d bytes)", name, err, len(got), len(data))
		}
		t.Logf("%s: %d -> %d", name, len(data), len(enc))
	}
}

// FuzzBzip2RoundTrip: whatever the input, compress/bzip2 reads back the
// same bytes.
func FuzzBzip2RoundTrip(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaabbbbbbbbbbbbbbbbbb\x00\x00\x00\x00\x00\x01"))
	f.Add(bytes.Repeat([]byte{0, 0, 0, 7}, 300))
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := io.ReadAll(bzip2.NewReader(bytes.NewReader(bzip2Encode(data))))
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("round trip failed: %v", err)
		}
	})
}
