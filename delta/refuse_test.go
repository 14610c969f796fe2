package delta_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/otter-fleet/otter/delta"
	"github.com/otter-fleet/otter/internal/testutil"
)

// TestApplyRefusesBadPatches damages a real patch in the ways an attacker
// or a broken link would, and checks each is refused with its own error
// while the store is left exactly as it was.
var errCorruptOrMismatch = errors.New("corrupt stream or target mismatch")

func TestApplyRefusesBadPatches(t *testing.T) {
	from, to := release(t, "r1"), release(t, "r2")
	var buf bytes.Buffer
	if _, err := delta.Diff(context.Background(), from, to, &buf, delta.Options{}); err != nil {
		t.Fatal(err)
	}
	good := buf.Bytes()
	h, off, err := delta.ParseHeader(bytes.NewReader(good))
	if err != nil {
		t.Fatal(err)
	}
	other := release(t, "r3")
	otherDigest, _ := other.Image.Digest()
	withHeader := func(f func(h *delta.Header)) []byte {
		h2 := *h
		h2.Streams = append([]delta.Stream{}, h.Streams...)
		f(&h2)
		// Marshalled by hand: MarshalHeader itself refuses bad headers.
		body, err := json.Marshal(&h2)
		if err != nil {
			t.Fatal(err)
		}
		pre := append([]byte(delta.Magic), 1, 0, 0, 0, 0, 0, 0, 0)
		binary.LittleEndian.PutUint32(pre[12:], uint32(len(body)))
		return append(append(pre, body...), good[off:]...)
	}
	for _, tc := range []struct {
		name      string
		patch     []byte
		installed string
		want      error
	}{
		{"truncated", good[:len(good)-1000], "", delta.ErrTruncated},
		{"truncated header", good[:20], "", delta.ErrTruncated},
		{"trailing bytes", append(append([]byte{}, good...), 0), "", delta.ErrFormat},
		{"not a patch", []byte("GIF89a and some more bytes to read"), "", delta.ErrFormat},
		{"tampered stream", flip(good, len(good)-200), "", delta.ErrCorrupt},
		// The diff stream has no checksum of its own: a flipped bit makes
		// the coder run past the stream's end (corrupt) or decode other
		// bytes, which the file's SHA-256 catches (target mismatch).
		{"tampered diff", flip(good, len(good)/2), "", errCorruptOrMismatch},
		{"tampered target stream", flip(good, int(off)+5), "", delta.ErrCorrupt},
		{"oversized declaration", withHeader(func(h *delta.Header) { h.Streams[1].RawSize = 1 << 40 }), "", delta.ErrTooLarge},
		// 30 × targetSize must not overflow into a small bound.
		{"target size over the bound", withHeader(func(h *delta.Header) { h.TargetSize = 1 << 41 }), "", delta.ErrTooLarge},
		{"target size that overflows", withHeader(func(h *delta.Header) { h.TargetSize = 0x0888888888888889 }), "", delta.ErrTooLarge},
		{"another installed base", good, otherDigest.String(), delta.ErrBaseMismatch},
		{"another target", withHeader(func(h *delta.Header) { h.Target = otherDigest.String() }), "", delta.ErrFormat},
		{"wrong version", version(good, 2), "", delta.ErrFormat},
	} {
		t.Run(tc.name, func(t *testing.T) {
			store := deviceStore(t, from)
			before := listStore(t, store)
			patch := filepath.Join(t.TempDir(), "patch")
			os.WriteFile(patch, tc.patch, 0o644)
			_, err := delta.Apply(context.Background(), patch, store, delta.ApplyOptions{Installed: tc.installed, NoFsync: true})
			if tc.want == errCorruptOrMismatch && (errors.Is(err, delta.ErrCorrupt) || errors.Is(err, delta.ErrTargetMismatch)) {
				err = tc.want
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("want %v, got %v", tc.want, err)
			}
			if after := listStore(t, store); after != before {
				t.Fatalf("a refused patch changed the store:\n%s\n%s", before, after)
			}
		})
	}
	t.Run("signed digest", func(t *testing.T) {
		store := deviceStore(t, from)
		patch := filepath.Join(t.TempDir(), "patch")
		os.WriteFile(patch, good, 0o644)
		_, err := delta.Apply(context.Background(), patch, store, delta.ApplyOptions{PatchDigest: "sha256:" + string(bytes.Repeat([]byte("0"), 64)), NoFsync: true})
		if !errors.Is(err, delta.ErrPatchDigest) {
			t.Fatalf("a patch that is not the signed one: %v", err)
		}
	})
	t.Run("a base store path is missing", func(t *testing.T) {
		store := deviceStore(t, from)
		testutil.RemoveAll(filepath.Join(store, filepathBase(h.BasePaths[0].Path)))
		patch := filepath.Join(t.TempDir(), "patch")
		os.WriteFile(patch, good, 0o644)
		if _, err := delta.Apply(context.Background(), patch, store, delta.ApplyOptions{NoFsync: true}); !errors.Is(err, delta.ErrBaseMismatch) {
			t.Fatalf("got %v", err)
		}
	})
}

func filepathBase(p string) string { return filepath.Base(p) }

func flip(b []byte, i int) []byte {
	out := append([]byte{}, b...)
	out[i] ^= 0x55
	return out
}

func version(b []byte, v uint32) []byte {
	out := append([]byte{}, b...)
	binary.LittleEndian.PutUint32(out[8:], v)
	return out
}

// listStore names every entry of a store directory, hidden ones included.
func listStore(t *testing.T, store string) string {
	entries, err := os.ReadDir(store)
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	for _, e := range entries {
		b.WriteString(e.Name() + "\n")
	}
	return b.String()
}
