package delta

import (
	"bytes"
	"compress/bzip2"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/gabstv/go-bsdiff/pkg/bsdiff"
)

// ctrl is one bsdiff control triple: add Add bytes (new = prediction +
// diff), then copy Extra bytes from the extra stream, then move the old
// position by Seek.
type ctrl struct{ Add, Extra, Seek int64 }

// offtin reads bsdiff's sign-magnitude 64-bit integer.
func offtin(b []byte) int64 {
	y := int64(binary.LittleEndian.Uint64(b) &^ (1 << 63))
	if b[7]&0x80 != 0 {
		return -y
	}
	return y
}

// bsdiffControl runs bsdiff (gabstv/go-bsdiff: suffix sorting of old) and
// returns its control triples; the diff and extra bytes are computed again
// by encodeBsdiff, against the prediction.
func bsdiffControl(oldb, newb []byte) ([]ctrl, error) {
	patch, err := bsdiff.Bytes(oldb, newb)
	if err != nil {
		return nil, err
	}
	if len(patch) < 32 || string(patch[:8]) != "BSDIFF40" {
		return nil, errors.New("delta: bsdiff produced no BSDIFF40 patch")
	}
	ctrlLen := offtin(patch[8:16])
	if ctrlLen < 0 || 32+ctrlLen > int64(len(patch)) {
		return nil, errors.New("delta: bsdiff control block out of range")
	}
	raw, err := io.ReadAll(bzip2.NewReader(bytes.NewReader(patch[32 : 32+ctrlLen])))
	if err != nil {
		return nil, fmt.Errorf("delta: reading bsdiff's control block: %w", err)
	}
	var cs []ctrl
	for i := 0; i+24 <= len(raw); i += 24 {
		cs = append(cs, ctrl{Add: offtin(raw[i:]), Extra: offtin(raw[i+8:]), Seek: offtin(raw[i+16:])})
	}
	return cs, nil
}

// checkControl makes sure the triples describe a new file of newSize
// bytes and stay inside an old file of oldSize bytes where they add.
func checkControl(cs []ctrl, oldSize, newSize int64) error {
	var newPos, oldPos int64
	for _, c := range cs {
		if c.Add < 0 || c.Extra < 0 || newPos+c.Add+c.Extra > newSize {
			return fmt.Errorf("%w: control triple out of range", ErrFormat)
		}
		if c.Add > 0 && (oldPos < 0 || oldPos+c.Add > oldSize) {
			return fmt.Errorf("%w: control reads outside the old file", ErrFormat)
		}
		newPos += c.Add + c.Extra
		oldPos += c.Add + c.Seek
	}
	if newPos != newSize {
		return fmt.Errorf("%w: control covers %d of %d bytes", ErrFormat, newPos, newSize)
	}
	return nil
}

// encodeBsdiff computes the diff bytes (new minus prediction) and the
// extra bytes the triples call for.
func encodeBsdiff(oldb, newb []byte, cs []ctrl, p predictor) (diff, extra []byte) {
	var newPos, oldPos int64
	pred := make([]byte, 0, 64<<10)
	for _, c := range cs {
		pred = p.predict(oldb, oldPos, newPos, c.Add, pred[:0])
		for i := int64(0); i < c.Add; i++ {
			diff = append(diff, newb[newPos+i]-pred[i])
		}
		newPos += c.Add
		oldPos += c.Add
		extra = append(extra, newb[newPos:newPos+c.Extra]...)
		newPos += c.Extra
		oldPos += c.Seek
	}
	return diff, extra
}

// applyBsdiff writes the new file: prediction plus diff for added bytes,
// extra bytes as they are. The triples must have passed checkControl.
func applyBsdiff(oldb []byte, cs []ctrl, p predictor, diff, extra io.Reader, w io.Writer) error {
	var newPos, oldPos int64
	const chunk = 64 << 10
	pred := make([]byte, 0, chunk)
	buf := make([]byte, chunk)
	for _, c := range cs {
		for done := int64(0); done < c.Add; {
			n := min(c.Add-done, chunk)
			// End chunks on an old-side word boundary, so every word that
			// lies inside the add stretch is predicted whole, as it was
			// when the patch was made.
			if done+n < c.Add {
				n -= (oldPos + done + n) % 4
			}
			pred = p.predict(oldb, oldPos+done, newPos+done, n, pred[:0])
			if _, err := io.ReadFull(diff, buf[:n]); err != nil {
				return streamErr("diff", err)
			}
			for i := range n {
				buf[i] += pred[i]
			}
			if _, err := w.Write(buf[:n]); err != nil {
				return err
			}
			done += n
		}
		newPos += c.Add
		oldPos += c.Add
		if _, err := io.CopyN(w, extra, c.Extra); err != nil {
			return streamErr("extra", err)
		}
		newPos += c.Extra
		oldPos += c.Seek
	}
	return nil
}

// predictor says what a new file's bytes probably are, from the old file
// and the alignment: the diff stream holds only the difference.
type predictor interface {
	// predict appends the prediction of new[newPos:newPos+n], aligned with
	// old[oldPos:oldPos+n], to dst.
	predict(old []byte, oldPos, newPos, n int64, dst []byte) []byte
}

// identity predicts that new bytes equal the old ones: plain bsdiff.
type identity struct{}

func (identity) predict(old []byte, oldPos, _, n int64, dst []byte) []byte {
	return append(dst, old[oldPos:oldPos+n]...)
}
