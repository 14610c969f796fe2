package oci

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/otter-fleet/otter/bundle"
)

// mirrorCheckWhole is the largest answer for a digest that is read and
// checked before it is passed on.
const mirrorCheckWhole = 4 << 20

// MirrorRetryAfter is how long a mirror that failed is passed over.
const MirrorRetryAfter = 5 * time.Minute

// errMirrorDigest is a mirror's answer whose bytes do not match the
// digest asked for (exit 6, as any digest mismatch); the mirror is passed
// over, so asking again goes to the next mirror or the origin.
var errMirrorDigest = fmt.Errorf("%w: a mirror served bytes that do not match their digest", bundle.ErrLayerDigest)

// Mirrors is an ordered list of registries (pull-through caches of the
// origin, docs/device.md) that reads try before the registry a reference
// names. A mirror needs no trust: what it serves is checked against the
// digests and signatures the origin's statements name, as everything is.
// A mirror that cannot be reached, answers with an error, stalls for the
// stall timeout, or serves bytes that do not match their digest is passed
// over for MirrorRetryAfter; a connection cut on the way is not held
// against it (the download resumes from it). One Mirrors is shared by every operation
// that uses it, so that a failed mirror is not asked again at once.
type Mirrors struct {
	mirrors []mirror
	stall   time.Duration

	mu     sync.Mutex
	down   map[string]time.Time // mirror host → until when it is passed over
	served map[string]string    // URL path → the mirror that served it last ("" the origin)
}

type mirror struct{ scheme, host string }

// NewMirrors checks the mirrors: each HOST[:PORT], or http:// or https://
// before it. A bare host is spoken to as go-containerregistry would
// (HTTPS, or HTTP for localhost and with insecure). stall is how long a
// mirror may go without sending a byte (at least a second).
func NewMirrors(hosts []string, insecure bool, stall time.Duration) (*Mirrors, error) {
	if stall < time.Second {
		return nil, fmt.Errorf("oci: mirror stall timeout %v is under a second", stall)
	}
	m := &Mirrors{stall: stall, down: map[string]time.Time{}, served: map[string]string{}}
	seen := map[string]bool{}
	for _, h := range hosts {
		scheme := ""
		for _, s := range []string{"http://", "https://"} {
			if strings.HasPrefix(h, s) {
				scheme, h = strings.TrimSuffix(s, "://"), strings.TrimPrefix(h, s)
			}
		}
		var opts []name.Option
		if insecure || scheme == "http" {
			opts = append(opts, name.Insecure)
		}
		reg, err := name.NewRegistry(h, append(opts, name.StrictValidation)...)
		if err != nil || strings.ContainsAny(h, "/?#@") {
			return nil, fmt.Errorf("oci: mirror %q is not HOST[:PORT] (with http:// or https:// if need be)", h)
		}
		if scheme == "" {
			scheme = reg.Scheme()
		}
		if seen[h] {
			return nil, fmt.Errorf("oci: mirror %q appears twice", h)
		}
		seen[h] = true
		m.mirrors = append(m.mirrors, mirror{scheme: scheme, host: h})
	}
	return m, nil
}

// WithMirrors makes reads try m's mirrors first (nil: none).
func WithMirrors(m *Mirrors) IOOption {
	return func(o *ioOptions) error { o.mirrors = m; return nil }
}

// Served says which mirror served the last answer for a URL path, ""
// for the origin.
func (m *Mirrors) Served(path string) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.served[path]
}

// distrust passes over the mirror that served path last.
func (m *Mirrors) distrust(path string) {
	m.mu.Lock()
	host := m.served[path]
	m.mu.Unlock()
	if host != "" {
		m.markDown(host)
	}
}

func (m *Mirrors) markDown(host string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.down[host] = time.Now().Add(MirrorRetryAfter)
}

func (m *Mirrors) isDown(host string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return time.Now().Before(m.down[host])
}

func (m *Mirrors) setServed(path, host string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.served[path] = host
}

func (m *Mirrors) isMirror(host string) bool {
	for _, mi := range m.mirrors {
		if mi.host == host {
			return true
		}
	}
	return false
}

// transport wraps inner: reads go to the mirrors first.
func (m *Mirrors) transport(inner http.RoundTripper) http.RoundTripper {
	if m == nil || len(m.mirrors) == 0 {
		return inner
	}
	return &mirrorTransport{m: m, inner: inner}
}

type mirrorTransport struct {
	m     *Mirrors
	inner http.RoundTripper
}

func (t *mirrorTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	m := t.m
	if req.Method != http.MethodGet && req.Method != http.MethodHead || m.isMirror(req.URL.Host) || !strings.HasPrefix(req.URL.Path, "/v2/") {
		return t.inner.RoundTrip(req)
	}
	// The ping goes to the origin, which says how to authenticate; only
	// when no connection to the origin can be made do the mirrors answer
	// it (an origin restarting, a site whose uplink is down).
	if req.URL.Path == "/v2/" {
		resp, err := t.inner.RoundTrip(req)
		var op *net.OpError
		if err == nil || req.Context().Err() != nil || !errors.As(err, &op) || op.Op != "dial" {
			return resp, err
		}
		if r, ok := t.fromMirrors(req); ok {
			return r, nil
		}
		return nil, err
	}
	if r, ok := t.fromMirrors(req); ok {
		return r, nil
	}
	m.setServed(req.URL.Path, "")
	return t.inner.RoundTrip(req)
}

// fromMirrors asks each mirror that is not passed over, in order.
func (t *mirrorTransport) fromMirrors(req *http.Request) (*http.Response, bool) {
	m := t.m
	for _, mi := range m.mirrors {
		if m.isDown(mi.host) {
			continue
		}
		ctx, cancel := context.WithCancel(req.Context())
		r := req.Clone(ctx)
		r.URL.Scheme, r.URL.Host, r.Host = mi.scheme, mi.host, mi.host
		// The origin's credentials are not the mirror's business.
		r.Header.Del("Authorization")
		timer := time.AfterFunc(m.stall, cancel)
		release := func() { timer.Stop(); cancel() }
		resp, err := t.inner.RoundTrip(r)
		if err != nil {
			release()
			if req.Context().Err() != nil {
				// The caller gave up; the mirror is not to blame.
				return nil, false
			}
			if mirrorFault(err, ctx) {
				m.markDown(mi.host)
			}
			continue
		}
		if resp.StatusCode >= 400 {
			release()
			resp.Body.Close()
			// A 404 is not there (a cache that cannot reach the origin
			// either, or a path it does not proxy): ask the next, without
			// passing this one over.
			if resp.StatusCode != http.StatusNotFound {
				m.markDown(mi.host)
			}
			continue
		}
		want := digestIn(req.URL.Path)
		whole := want != "" && req.Method == http.MethodGet && req.Header.Get("Range") == "" && resp.StatusCode == http.StatusOK
		if whole && resp.ContentLength >= 0 && resp.ContentLength <= mirrorCheckWhole {
			// A small answer for a digest (a manifest, a config, a
			// statement) is checked whole here, so that a bad one is
			// asked of the next source within this request.
			body, err := io.ReadAll(io.LimitReader(resp.Body, mirrorCheckWhole+1))
			fault := err != nil && mirrorFault(err, ctx) // before release cancels ctx
			release()
			resp.Body.Close()
			if err != nil && req.Context().Err() == nil && !fault {
				// Cut on the way: what arrived is passed on with the
				// error, and the caller resumes from this mirror (a
				// download checks the whole blob at its end).
				m.setServed(req.URL.Path, mi.host)
				resp.Body = io.NopCloser(io.MultiReader(bytes.NewReader(body), errorReader{err}))
				return resp, true
			}
			sum := sha256.Sum256(body)
			if err != nil || hex.EncodeToString(sum[:]) != want {
				if req.Context().Err() != nil {
					return nil, false
				}
				m.markDown(mi.host)
				continue
			}
			m.setServed(req.URL.Path, mi.host)
			resp.Body = io.NopCloser(bytes.NewReader(body))
			return resp, true
		}
		m.setServed(req.URL.Path, mi.host)
		w := &watchedBody{rc: resp.Body, timer: timer, ctx: ctx, cancel: cancel, stall: m.stall, m: m, host: mi.host, parent: req.Context()}
		if whole {
			// A larger whole answer for a digest is checked as it streams.
			w.h, w.want = sha256.New(), want
		}
		resp.Body = w
		return resp, true
	}
	return nil, false
}

// errorReader fails every read with its error.
type errorReader struct{ err error }

func (r errorReader) Read([]byte) (int, error) { return 0, r.err }

// mirrorFault says whether a mirror's failed answer is the mirror's
// fault, so that it is passed over: it could not be reached, or it
// stalled (ctx, the mirror request's, was cancelled by the stall timer).
// A connection cut on the way is the link's fault, not the mirror's: the
// next attempt (a download resumes from where it stopped) asks it again.
// On a flaky link in front of a site cache, passing the cache over at
// every cut would send every device to the origin.
func mirrorFault(err error, ctx context.Context) bool {
	var op *net.OpError
	return ctx.Err() != nil || errors.As(err, &op) && op.Op == "dial"
}

// digestIn is the sha256 hex a blob or manifest URL path names, if any.
func digestIn(path string) string {
	i := strings.LastIndex(path, "/sha256:")
	if i < 0 || !(strings.Contains(path, "/blobs/") || strings.Contains(path, "/manifests/")) {
		return ""
	}
	hexd := path[i+len("/sha256:"):]
	if len(hexd) != 64 {
		return ""
	}
	return hexd
}

// watchedBody is a mirror's answer: a stall cancels it, and a digest
// mismatch is an error at its end; either passes the mirror over.
type watchedBody struct {
	rc     io.ReadCloser
	timer  *time.Timer
	ctx    context.Context // the mirror request's: cancelled by a stall
	cancel context.CancelFunc
	stall  time.Duration
	m      *Mirrors
	host   string
	h      hash.Hash
	want   string
	parent context.Context
}

func (w *watchedBody) Read(p []byte) (int, error) {
	n, err := w.rc.Read(p)
	if n > 0 {
		w.timer.Reset(w.stall)
		if w.h != nil {
			w.h.Write(p[:n])
		}
	}
	switch {
	case err == io.EOF && w.h != nil && hex.EncodeToString(w.h.Sum(nil)) != w.want:
		w.m.markDown(w.host)
		return n, fmt.Errorf("%w (mirror %s)", errMirrorDigest, w.host)
	case err != nil && err != io.EOF && w.parent.Err() == nil && mirrorFault(err, w.ctx):
		w.m.markDown(w.host)
	}
	return n, err
}

func (w *watchedBody) Close() error {
	w.timer.Stop()
	err := w.rc.Close()
	w.cancel()
	return err
}
