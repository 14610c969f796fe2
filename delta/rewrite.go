package delta

import (
	"bytes"
	"sort"
)

// rewriter replaces base store-path hashes by the target's counterparts,
// as Nix's own hash rewriting does: every occurrence of the 32-character
// hash, anywhere in a file or a symlink target. The replacement has the
// same length, so offsets do not move.
type rewriter struct {
	from, to [][]byte // sorted by from
}

func newRewriter(m map[string]string) *rewriter {
	keys := make([]string, 0, len(m))
	for k, v := range m {
		if k != v {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	r := &rewriter{}
	for _, k := range keys {
		r.from = append(r.from, []byte(k))
		r.to = append(r.to, []byte(m[k]))
	}
	return r
}

// apply returns b with every old hash replaced; b itself is not changed.
func (r *rewriter) apply(b []byte) []byte {
	var out []byte
	for i, f := range r.from {
		src := b
		if out != nil {
			src = out
		}
		pos := bytes.Index(src, f)
		if pos < 0 {
			continue
		}
		if out == nil {
			out = append([]byte(nil), b...)
			src = out
		}
		for pos >= 0 {
			copy(src[pos:], r.to[i])
			next := bytes.Index(src[pos+len(f):], f)
			if next < 0 {
				break
			}
			pos += len(f) + next
		}
	}
	if out == nil {
		return b
	}
	return out
}

func (r *rewriter) string(s string) string { return string(r.apply([]byte(s))) }
