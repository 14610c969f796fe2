// Package iox holds small io helpers otter's packages share.
package iox

import (
	"archive/tar"
	"context"
	"io"
	"strings"
)

// ContextReader stops reading once ctx is done.
type ContextReader struct {
	Ctx context.Context
	R   io.Reader
}

func (c ContextReader) Read(b []byte) (int, error) {
	if err := c.Ctx.Err(); err != nil {
		return 0, err
	}
	return c.R.Read(b)
}

// LimitReader yields at most max bytes of R; reading past them is the
// error Over returns, not a silent end: a stream that decompresses to more
// than its bound is refused, not cut short.
type LimitReader struct {
	R    io.Reader
	Left int64
	Over func() error
}

func (l *LimitReader) Read(b []byte) (int, error) {
	if l.Left <= 0 {
		// One byte more tells "exactly at the bound" from "over it".
		var one [1]byte
		n, err := l.R.Read(one[:])
		if n > 0 {
			return 0, l.Over()
		}
		return 0, err
	}
	if int64(len(b)) > l.Left {
		b = b[:l.Left]
	}
	n, err := l.R.Read(b)
	l.Left -= int64(n)
	return n, err
}

// WriteError is a failure to write the destination of a copy (a full
// disk), as opposed to a failure to read its source (bad input).
type WriteError struct{ Err error }

func (e *WriteError) Error() string { return e.Err.Error() }
func (e *WriteError) Unwrap() error { return e.Err }

// Copy copies src to dst like io.Copy, but returns a failure to write
// dst as a *WriteError, so that callers can tell a full disk from a
// corrupt source.
func Copy(dst io.Writer, src io.Reader) (int64, error) {
	buf := make([]byte, 256<<10)
	var n int64
	for {
		m, rerr := src.Read(buf)
		if m > 0 {
			w, err := dst.Write(buf[:m])
			n += int64(w)
			if err == nil && w < m {
				err = io.ErrShortWrite
			}
			if err != nil {
				return n, &WriteError{Err: err}
			}
		}
		if rerr == io.EOF {
			return n, nil
		}
		if rerr != nil {
			return n, rerr
		}
	}
}

// SparseTar reports a tar entry that is a sparse file (old GNU or PAX
// GNU.sparse.*): its holes read as zeros the archive does not hold, so
// its size says nothing of the archive's. otter refuses them everywhere.
func SparseTar(h *tar.Header) bool {
	if h.Typeflag == tar.TypeGNUSparse {
		return true
	}
	for k := range h.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return true
		}
	}
	return false
}

// ExactReader yields exactly Left bytes of R, then io.EOF: a source that
// ends first is the error Short returns (io.ErrUnexpectedEOF when Short
// is nil). Left says how many bytes were not read yet; R can be read on
// to find out whether the source holds more than declared.
type ExactReader struct {
	R     io.Reader
	Left  int64
	Short func(left int64) error
}

func (e *ExactReader) Read(b []byte) (int, error) {
	if e.Left <= 0 {
		return 0, io.EOF
	}
	if int64(len(b)) > e.Left {
		b = b[:e.Left]
	}
	n, err := e.R.Read(b)
	e.Left -= int64(n)
	if err == io.EOF && e.Left > 0 {
		err = io.ErrUnexpectedEOF
		if e.Short != nil {
			err = e.Short(e.Left)
		}
	}
	return n, err
}
