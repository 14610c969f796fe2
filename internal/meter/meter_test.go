package meter_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/otter-fleet/otter/internal/meter"
)

func TestHandlerCountsWhatMatches(t *testing.T) {
	h := &meter.Handler{
		H: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.WriteString(w, strings.Repeat("x", len(r.URL.Path)))
		}),
		Match: meter.BlobGets,
	}
	s := httptest.NewServer(h)
	defer s.Close()
	for _, p := range []string{"/v2/a/blobs/sha256:1", "/v2/a/manifests/x", "/v2/a/blobs/sha256:22"} {
		resp, err := http.Get(s.URL + p)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	if got, want := h.Bytes(), int64(len("/v2/a/blobs/sha256:1")+len("/v2/a/blobs/sha256:22")); got != want {
		t.Errorf("counted %d bytes, want %d (blob GETs only)", got, want)
	}
}
