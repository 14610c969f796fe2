// Package iox holds small io helpers otter's packages share.
package iox

import (
	"context"
	"io"
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
