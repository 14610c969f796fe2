package oci

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"runtime"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/otter-fleet/otter/bundle"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

type ioOptions struct {
	keychain  authn.Keychain
	transport http.RoundTripper
	insecure  bool
	jobs      int
	progress  bundle.Progress
	backoff   remote.Backoff
	mirrors   *Mirrors
}

// IOOption configures reading and writing bundles.
type IOOption func(*ioOptions) error

// WithKeychain sets where registry credentials come from (default: the
// Docker config and its credential helpers).
func WithKeychain(k authn.Keychain) IOOption {
	return func(o *ioOptions) error { o.keychain = k; return nil }
}

// WithTransport sets the HTTP transport to registries.
func WithTransport(rt http.RoundTripper) IOOption {
	return func(o *ioOptions) error { o.transport = rt; return nil }
}

// WithInsecure allows plain HTTP and unverified TLS to registries.
func WithInsecure(insecure bool) IOOption {
	return func(o *ioOptions) error { o.insecure = insecure; return nil }
}

// WithIOJobs sets how many blobs move at once (default 4).
func WithIOJobs(n int) IOOption {
	return func(o *ioOptions) error {
		if n < 1 {
			return fmt.Errorf("oci: jobs %d < 1", n)
		}
		o.jobs = n
		return nil
	}
}

// WithIOProgress reports bytes moved.
func WithIOProgress(p bundle.Progress) IOOption {
	return func(o *ioOptions) error { o.progress = p; return nil }
}

// WithRetry sets how failed registry requests are retried: steps tries,
// the first after initial, each wait factor times the one before.
func WithRetry(steps int, initial time.Duration, factor float64) IOOption {
	return func(o *ioOptions) error {
		if steps < 1 || initial <= 0 || factor < 1 {
			return fmt.Errorf("oci: invalid retry %d×%v×%v", steps, initial, factor)
		}
		o.backoff = remote.Backoff{Steps: steps, Duration: initial, Factor: factor, Jitter: 0.1}
		return nil
	}
}

func makeIOOptions(opts []IOOption) (*ioOptions, error) {
	o := &ioOptions{
		keychain: authn.DefaultKeychain,
		jobs:     max(4, runtime.GOMAXPROCS(0)),
		backoff:  remote.Backoff{Steps: 5, Duration: time.Second, Factor: 2, Jitter: 0.1},
	}
	for _, opt := range opts {
		if err := opt(o); err != nil {
			return nil, err
		}
	}
	return o, nil
}

func (o *ioOptions) remote(ctx context.Context) []remote.Option {
	rt := o.transport
	if rt == nil {
		rt = defaultTransport(o.insecure)
	}
	rt = o.mirrors.transport(rt)
	return []remote.Option{
		remote.WithContext(ctx),
		remote.WithAuthFromKeychain(o.keychain),
		remote.WithTransport(rt),
		remote.WithJobs(o.jobs),
		remote.WithRetryBackoff(o.backoff),
		remote.WithRetryStatusCodes(http.StatusRequestTimeout, http.StatusTooManyRequests,
			http.StatusInternalServerError, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout),
	}
}

func defaultTransport(insecure bool) http.RoundTripper {
	t := remote.DefaultTransport.(*http.Transport).Clone()
	if insecure {
		t.TLSClientConfig = &tls.Config{InsecureSkipVerify: true} //nolint:gosec // asked for with --insecure
	}
	return t
}

// ErrNotFound is returned when a reference names nothing.
var ErrNotFound = errors.New("oci: not found")

// ErrUnauthorized is returned when a registry refuses the credentials.
var ErrUnauthorized = errors.New("oci: registry refused the credentials")

// classify maps registry errors onto otter's sentinels.
func classify(err error) error {
	var te *transport.Error
	if errors.As(err, &te) {
		switch te.StatusCode {
		case http.StatusUnauthorized, http.StatusForbidden:
			return fmt.Errorf("%w: %v", ErrUnauthorized, err)
		case http.StatusNotFound:
			return fmt.Errorf("%w: %v", ErrNotFound, err)
		}
	}
	return err
}

// Open returns the bundle ref names. It checks that it is an otter bundle
// with a valid config, but reads no layer.
func Open(ctx context.Context, ref Ref, opts ...IOOption) (v1.Image, *bundle.Config, error) {
	img, err := OpenManifest(ctx, ref, opts...)
	if err != nil {
		return nil, nil, err
	}
	cfg, err := bundle.ReadConfig(img)
	if err != nil {
		return nil, nil, fmt.Errorf("opening %s: %w", ref, err)
	}
	return img, cfg, nil
}

// OpenManifest returns the bundle ref names having read only its manifest:
// a device that updates by a patch gets the config from the patch and
// saves the download. bundle.ReadConfig reads and checks the config.
func OpenManifest(ctx context.Context, ref Ref, opts ...IOOption) (v1.Image, error) {
	o, err := makeIOOptions(opts)
	if err != nil {
		return nil, err
	}
	var img v1.Image
	if ref.Remote != nil {
		img, err = remote.Image(ref.Remote, o.remote(ctx)...)
		err = classify(err)
	} else {
		img, err = openLayout(ref)
	}
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", ref, err)
	}
	m, err := img.Manifest()
	if err == nil {
		err = bundle.CheckManifest(m)
	}
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", ref, err)
	}
	return img, nil
}

// Head returns the descriptor a registry tag names, nil when the tag does
// not exist.
func Head(ctx context.Context, ref Ref, opts ...IOOption) (*v1.Descriptor, error) {
	o, err := makeIOOptions(opts)
	if err != nil {
		return nil, err
	}
	if ref.Remote == nil {
		return nil, fmt.Errorf("%w: %s is not in a registry", ErrRef, ref)
	}
	d, err := remote.Head(ref.Remote, o.remote(ctx)...)
	if err = classify(err); errors.Is(err, ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", ref, err)
	}
	return d, nil
}

// Tag points tag, in ref's repository, at img.
func Tag(ctx context.Context, ref Ref, tag string, img v1.Image, opts ...IOOption) error {
	o, err := makeIOOptions(opts)
	if err != nil {
		return err
	}
	if ref.Remote == nil {
		return fmt.Errorf("%w: %s is not in a registry", ErrRef, ref)
	}
	if err := remote.Tag(ref.Remote.Context().Tag(tag), img, o.remote(ctx)...); err != nil {
		return fmt.Errorf("tagging %s:%s: %w", ref.Remote.Context(), tag, classify(err))
	}
	return nil
}

// ListTags lists the tags of ref's repository.
func ListTags(ctx context.Context, ref Ref, opts ...IOOption) ([]string, error) {
	o, err := makeIOOptions(opts)
	if err != nil {
		return nil, err
	}
	if ref.Remote == nil {
		return nil, fmt.Errorf("%w: %s is not in a registry", ErrRef, ref)
	}
	tags, err := remote.List(ref.Remote.Context(), o.remote(ctx)...)
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w", ref.Remote.Context(), classify(err))
	}
	return tags, nil
}

// Write stores img at ref and returns the manifest's descriptor. A
// registry receives only the blobs it lacks; a layout gets blobs first and
// its index.json last, each replaced atomically, so neither ever names an
// incomplete bundle.
func Write(ctx context.Context, img v1.Image, ref Ref, opts ...IOOption) (v1.Descriptor, error) {
	o, err := makeIOOptions(opts)
	if err != nil {
		return v1.Descriptor{}, err
	}
	if ref.Remote == nil {
		return writeLayout(ctx, img, ref, o)
	}
	desc, err := DescriptorOf(img)
	if err != nil {
		return desc, err
	}
	ropts := o.remote(ctx)
	var updates chan v1.Update
	done := make(chan struct{})
	if o.progress != nil {
		updates = make(chan v1.Update, 16)
		ropts = append(ropts, remote.WithProgress(updates))
		go func() {
			defer close(done)
			for u := range updates {
				o.progress(u.Complete, u.Total)
			}
		}()
	} else {
		close(done)
	}
	err = remote.Write(ref.Remote, img, ropts...)
	<-done
	if err != nil {
		return desc, fmt.Errorf("pushing to %s: %w", ref, classify(err))
	}
	return desc, nil
}

// DescriptorOf is the descriptor of img's manifest.
func DescriptorOf(img v1.Image) (v1.Descriptor, error) {
	d, err := img.Digest()
	if err != nil {
		return v1.Descriptor{}, err
	}
	n, err := img.Size()
	if err != nil {
		return v1.Descriptor{}, err
	}
	mt, err := img.MediaType()
	if err != nil {
		return v1.Descriptor{}, err
	}
	m, err := img.Manifest()
	if err != nil {
		return v1.Descriptor{}, err
	}
	return v1.Descriptor{MediaType: mt, Size: n, Digest: d, ArtifactType: m.ArtifactType}, nil
}
