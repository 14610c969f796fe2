package nix

import (
	"errors"
	"fmt"
)

// base32Alphabet is Nix's base-32 alphabet: the digits and lower-case
// letters without e, o, u and t.
const base32Alphabet = "0123456789abcdfghijklmnpqrsvwxyz"

// EncodeBase32 encodes b the way Nix prints hashes: least significant bits
// first, most significant character first.
func EncodeBase32(b []byte) string {
	n := (len(b)*8-1)/5 + 1
	out := make([]byte, 0, n)
	for i := n - 1; i >= 0; i-- {
		bit := i * 5
		q, r := bit/8, bit%8
		c := int(b[q]) >> r
		if q+1 < len(b) {
			c |= int(b[q+1]) << (8 - r)
		}
		out = append(out, base32Alphabet[c&0x1f])
	}
	return string(out)
}

var errBase32 = errors.New("nix: invalid base-32")

// DecodeBase32 decodes s, which must encode exactly size bytes.
func DecodeBase32(s string, size int) ([]byte, error) {
	if len(s) != (size*8-1)/5+1 {
		return nil, fmt.Errorf("%w: %d characters for %d bytes", errBase32, len(s), size)
	}
	out := make([]byte, size)
	for n := 0; n < len(s); n++ {
		c := s[len(s)-n-1]
		digit := -1
		for i := 0; i < len(base32Alphabet); i++ {
			if base32Alphabet[i] == c {
				digit = i
				break
			}
		}
		if digit < 0 {
			return nil, fmt.Errorf("%w: character %q", errBase32, c)
		}
		b := n * 5
		i, j := b/8, b%8
		out[i] |= byte(digit << j)
		if i+1 < size {
			out[i+1] |= byte(digit >> (8 - j))
		} else if digit>>(8-j) != 0 {
			return nil, fmt.Errorf("%w: excess bits", errBase32)
		}
	}
	return out, nil
}
