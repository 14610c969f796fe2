package oci

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/otter-fleet/otter/bundle"
	"github.com/otter-fleet/otter/internal/fsutil"
	"github.com/otter-fleet/otter/internal/iox"
)

// FetchResult says what a resumable fetch moved.
type FetchResult struct {
	// Transferred is the bytes read from the source this time, resumed
	// retries included; Resumed is where the first request started.
	Transferred int64
	Resumed     int64
	Requests    int
}

// fetchSyncEvery is how often a download in progress is synced, so a
// reboot loses at most this much.
const fetchSyncEvery = 4 << 20

// FetchBlob copies the blob d of ref's repository (or layout) to dst,
// resumably: the bytes so far live in dst+".part", a dropped connection
// is resumed with an HTTP Range request where it stopped (also by a later
// call, after a reboot), and dst appears only once the whole blob is there
// and matches its digest and size. Retries continue as long as each
// attempt makes progress; stall attempts without progress end it.
func FetchBlob(ctx context.Context, ref Ref, d v1.Descriptor, dst string, stall int, opts ...IOOption) (*FetchResult, error) {
	o, err := makeIOOptions(opts)
	if err != nil {
		return nil, err
	}
	res := &FetchResult{}
	// A finished download is used only while it still has its digest: a
	// file damaged on the flash since is removed and fetched again.
	if fi, err := os.Lstat(dst); err == nil {
		if fi.Mode().IsRegular() && fi.Size() == d.Size {
			if got, err := hashFile(dst); err == nil && got == d.Digest.Hex {
				return res, nil
			}
		}
		if err := os.Remove(dst); err != nil {
			return nil, err
		}
	}
	part := dst + ".part"
	// Never through a symlink: a download writes only its own file.
	f, err := os.OpenFile(part, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW, 0o644)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			if err := os.Remove(part); err != nil {
				return nil, err
			}
			f, err = os.OpenFile(part, os.O_RDWR|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o644)
		}
		if err != nil {
			return nil, err
		}
	}
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%s is not a regular file", part)
	}
	defer f.Close()
	have, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return nil, err
	}
	if have > d.Size {
		if err := truncate(f, 0); err != nil {
			return nil, err
		}
		have = 0
	}
	res.Resumed = have
	open := layoutOpener(ref, d)
	if ref.Remote != nil {
		open, err = registryOpener(ctx, ref, d, o)
		if err != nil {
			return nil, err
		}
	}
	wait, failures := time.Duration(0), 0
	// A download a mirror spoiled starts again, once, from the next
	// source: the mirror that served it is passed over.
	mirrorRetried := false
	canRetry := func() bool { return o.mirrors != nil && ref.Remote != nil && !mirrorRetried }
	restartElsewhere := func() error {
		o.mirrors.distrust(blobPath(ref, d))
		have, failures, wait, mirrorRetried = 0, 0, 0, true
		return truncate(f, 0)
	}
again:
	for have < d.Size {
		if failures > stall {
			return res, fmt.Errorf("fetching %s: no progress after %d attempts: %w", d.Digest, failures, err)
		}
		if wait > 0 {
			select {
			case <-ctx.Done():
				return res, ctx.Err()
			case <-time.After(wait):
			}
		}
		var n int64
		n, err = fetchFrom(ctx, open, f, have, d.Size, o.progress, res)
		if errors.Is(err, errRestart) {
			have = 0 // the file was emptied; start over at once
			continue
		}
		have += n
		if err == nil {
			continue
		}
		if ctx.Err() != nil {
			_ = f.Sync() // keep what arrived; stopping is the error to report
			return res, ctx.Err()
		}
		var we *iox.WriteError
		if errors.As(err, &we) {
			// A full disk does not get better by asking again.
			return res, fmt.Errorf("fetching %s: %w", d.Digest, we.Err)
		}
		if errors.Is(err, bundle.ErrLayerDigest) && canRetry() && o.mirrors.Served(blobPath(ref, d)) != "" {
			// A mirror ended the blob short.
			if err := restartElsewhere(); err != nil {
				return res, err
			}
			continue
		}
		if errors.Is(err, ErrNotFound) || errors.Is(err, ErrUnauthorized) || errors.Is(err, bundle.ErrLayerDigest) {
			// Asking again gets the same answer: the source ended the blob
			// short of its size, cleanly, or refused.
			return res, fmt.Errorf("fetching %s: %w", d.Digest, err)
		}
		if n > 0 {
			failures, wait = 0, 0
		} else {
			failures++
			wait = min(max(2*wait, 250*time.Millisecond), 30*time.Second)
		}
	}
	// Check the whole file before it takes its name.
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return res, err
	}
	got, _, err := v1.SHA256(f)
	if err != nil {
		return res, err
	}
	if got != d.Digest && canRetry() {
		// A mirror served some of it.
		if err := restartElsewhere(); err != nil {
			return res, err
		}
		goto again
	}
	if got != d.Digest {
		// A corrupt partial download is no use: start over next time.
		f.Close()
		os.Remove(part)
		return res, fmt.Errorf("%w: downloaded %s hashes to %s", bundle.ErrLayerDigest, d.Digest, got)
	}
	if err := f.Sync(); err != nil {
		return res, err
	}
	if err := os.Rename(part, dst); err != nil {
		return res, err
	}
	return res, fsutil.SyncDir(filepath.Dir(dst))
}

// blobPath is the URL path of a blob in ref's repository.
func blobPath(ref Ref, d v1.Descriptor) string {
	return fmt.Sprintf("/v2/%s/blobs/%s", ref.Remote.Context().RepositoryStr(), d.Digest)
}

func truncate(f *os.File, n int64) error {
	if err := f.Truncate(n); err != nil {
		return err
	}
	_, err := f.Seek(n, io.SeekStart)
	return err
}

// errRestart: the source ignored the range; the download starts over.
var errRestart = errors.New("oci: source sent the whole blob")

// opener opens the blob at offset; full is true when it ignored offset and
// starts at byte 0.
type opener func(ctx context.Context, offset int64) (rc io.ReadCloser, full bool, err error)

func fetchFrom(ctx context.Context, open opener, f *os.File, have, size int64, p bundle.Progress, res *FetchResult) (int64, error) {
	rc, full, err := open(ctx, have)
	res.Requests++
	if err != nil {
		return 0, err
	}
	defer rc.Close()
	if full && have > 0 {
		if err := truncate(f, 0); err != nil {
			return 0, err
		}
		return 0, errRestart
	}
	buf := make([]byte, 64<<10)
	var n, unsynced int64
	for have+n < size {
		m, rerr := rc.Read(buf[:min(int64(len(buf)), size-have-n)])
		if m > 0 {
			if _, err := f.Write(buf[:m]); err != nil {
				return n, &iox.WriteError{Err: err}
			}
			n += int64(m)
			unsynced += int64(m)
			res.Transferred += int64(m)
			if p != nil {
				p(have+n, size)
			}
			if unsynced >= fetchSyncEvery {
				if err := f.Sync(); err != nil {
					return n, &iox.WriteError{Err: err}
				}
				unsynced = 0
			}
		}
		if rerr == io.EOF {
			if have+n < size {
				// The source says this is the end: a truncated blob, not
				// a dropped link (that reads as io.ErrUnexpectedEOF).
				return n, fmt.Errorf("%w: the blob ends at byte %d of %d", bundle.ErrLayerDigest, have+n, size)
			}
			break
		}
		if rerr != nil {
			return n, rerr
		}
	}
	return n, nil
}

func layoutOpener(ref Ref, d v1.Descriptor) opener {
	return func(_ context.Context, offset int64) (io.ReadCloser, bool, error) {
		f, err := os.Open(filepath.Join(ref.Layout, "blobs", d.Digest.Algorithm, d.Digest.Hex))
		if err != nil {
			if os.IsNotExist(err) {
				return nil, false, fmt.Errorf("%w: blob %s", ErrNotFound, d.Digest)
			}
			return nil, false, err
		}
		if _, err := f.Seek(offset, io.SeekStart); err != nil {
			f.Close()
			return nil, false, err
		}
		return f, false, nil
	}
}

func registryOpener(ctx context.Context, ref Ref, d v1.Descriptor, o *ioOptions) (opener, error) {
	repo := ref.Remote.Context()
	auth, err := o.keychain.Resolve(repo)
	if err != nil {
		return nil, err
	}
	inner := o.transport
	if inner == nil {
		inner = defaultTransport(o.insecure)
	}
	inner = o.mirrors.transport(inner)
	rt, err := transport.NewWithContext(ctx, repo.Registry, auth, inner, []string{repo.Scope(transport.PullScope)})
	if err != nil {
		return nil, classify(err)
	}
	client := &http.Client{Transport: rt}
	url := fmt.Sprintf("%s://%s/v2/%s/blobs/%s", repo.Registry.Scheme(), repo.RegistryStr(), repo.RepositoryStr(), d.Digest)
	return func(ctx context.Context, offset int64) (io.ReadCloser, bool, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return nil, false, err
		}
		if offset > 0 {
			// Both ends: go-containerregistry's registry reads no open range.
			req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", offset, d.Size-1))
		}
		resp, err := client.Do(req)
		if err != nil {
			return nil, false, err
		}
		switch resp.StatusCode {
		case http.StatusOK:
			return resp.Body, offset > 0, nil
		case http.StatusPartialContent:
			if cr := resp.Header.Get("Content-Range"); !strings.HasPrefix(cr, "bytes "+strconv.FormatInt(offset, 10)+"-") {
				resp.Body.Close()
				return nil, false, fmt.Errorf("oci: asked for bytes from %d, got range %q", offset, cr)
			}
			return resp.Body, false, nil
		}
		err = classify(transport.CheckError(resp, http.StatusOK, http.StatusPartialContent))
		resp.Body.Close()
		return nil, false, err
	}, nil
}
