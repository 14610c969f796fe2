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

// addChunk is the most bytes of an add stretch predicted and coded at
// once.
const addChunk = 64 << 10

// addChunks splits an add stretch of n bytes at old position oldPos into
// the pieces both sides predict and code at once: at most addChunk bytes,
// each but the last ending on an old-side word boundary, so every word
// inside the stretch is predicted whole. The diff coder sees the
// prediction one piece at a time; the encoder and the device must cut
// alike.
func addChunks(oldPos, n int64, fn func(off, m int64) error) error {
	for done := int64(0); done < n; {
		m := min(n-done, addChunk)
		if done+m < n {
			m -= (oldPos + done + m) % 4
		}
		if err := fn(done, m); err != nil {
			return err
		}
		done += m
	}
	return nil
}

// diffChunk is one piece of an add stretch: its position in the new file,
// the prediction and the diff bytes (new minus prediction).
type diffChunk struct {
	np         int64
	pred, diff []byte
}

// encodeBsdiff computes the diff bytes against the prediction, piece by
// piece, and the extra bytes the triples call for.
func encodeBsdiff(oldb, newb []byte, cs []ctrl, p predictor) (chunks []diffChunk, extra []byte) {
	var total int64
	for _, c := range cs {
		total += c.Add
	}
	pred := make([]byte, 0, total)
	diff := make([]byte, 0, total)
	var newPos, oldPos int64
	for _, c := range cs {
		_ = addChunks(oldPos, c.Add, func(off, n int64) error { // fn never fails
			start := len(pred)
			pred = p.predict(oldb, oldPos+off, newPos+off, n, pred)
			for i := int64(0); i < n; i++ {
				diff = append(diff, newb[newPos+off+i]-pred[start+int(i)])
			}
			chunks = append(chunks, diffChunk{np: newPos + off, pred: pred[start:len(pred):len(pred)], diff: diff[start:len(diff):len(diff)]})
			return nil
		})
		newPos += c.Add
		oldPos += c.Add
		extra = append(extra, newb[newPos:newPos+c.Extra]...)
		newPos += c.Extra
		oldPos += c.Seek
	}
	return chunks, extra
}

// applyBsdiff writes the new file: prediction plus diff for added bytes,
// extra bytes as they are. The triples must have passed checkControl.
func applyBsdiff(oldb []byte, cs []ctrl, p predictor, diff *cmDecoder, extra io.Reader, w io.Writer) error {
	var newPos, oldPos int64
	pred := make([]byte, 0, addChunk)
	buf := make([]byte, addChunk)
	for _, c := range cs {
		err := addChunks(oldPos, c.Add, func(off, n int64) error {
			pred = p.predict(oldb, oldPos+off, newPos+off, n, pred[:0])
			if err := diff.decode(pred, buf[:n], newPos+off); err != nil {
				return err
			}
			for i := range n {
				buf[i] += pred[i]
			}
			_, err := w.Write(buf[:n])
			return err
		})
		if err != nil {
			return err
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
