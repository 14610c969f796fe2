// Package meter counts the bytes an HTTP server sends: what the demo
// reports as downloaded, and what tests measure at an origin.
package meter

import (
	"net/http"
	"strings"
	"sync/atomic"
)

// Handler serves through H and counts the response body bytes of the
// requests Match accepts (every request when Match is nil).
type Handler struct {
	H     http.Handler
	Match func(*http.Request) bool
	n     atomic.Int64
}

// Bytes is how many response body bytes have been counted so far.
func (h *Handler) Bytes() int64 { return h.n.Load() }

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if h.Match == nil || h.Match(r) {
		w = countingWriter{w, &h.n}
	}
	h.H.ServeHTTP(w, r)
}

type countingWriter struct {
	http.ResponseWriter
	n *atomic.Int64
}

func (w countingWriter) Write(b []byte) (int, error) {
	n, err := w.ResponseWriter.Write(b)
	w.n.Add(int64(n))
	return n, err
}

// BlobGets matches the GET requests for blobs.
func BlobGets(r *http.Request) bool {
	return r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/")
}
