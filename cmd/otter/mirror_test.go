package main

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/otter-fleet/otter/device"
	"github.com/otter-fleet/otter/internal/meter"
	"github.com/otter-fleet/otter/internal/testutil"
)

// siteCache starts Debian's docker-registry in proxy (pull-through) mode
// in front of remote, as docs/device.md §9 configures it, and returns its
// host:port.
func siteCache(t *testing.T, remote string) string {
	t.Helper()
	bin, err := exec.LookPath("docker-registry")
	testutil.Require(t, err == nil, "Debian's docker-registry")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	dir := t.TempDir()
	conf := fmt.Sprintf(`version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
http:
  addr: %s
proxy:
  remoteurl: %s
`, filepath.Join(dir, "data"), addr, remote)
	if err := os.WriteFile(filepath.Join(dir, "config.yml"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "serve", filepath.Join(dir, "config.yml"))
	log, err := os.Create(filepath.Join(dir, "log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait(); log.Close() })
	for i := 0; ; i++ {
		resp, err := http.Get("http://" + addr + "/v2/")
		if err == nil {
			resp.Body.Close()
			return addr
		}
		if i == 100 {
			out, _ := os.ReadFile(filepath.Join(dir, "log"))
			t.Fatalf("the site cache did not start: %v\n%s", err, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestSiteCache: two devices of one site update through a docker-registry
// pull-through cache (--mirror); the origin serves each blob once, not
// once per device. With the cache gone, the devices go to the origin.
func TestSiteCache(t *testing.T) {
	origin := testutil.RealRegistry(t)
	repo := testutil.Repository(t)
	trust, digests, closures := fleet(t, origin+"/"+repo, 2)

	// The origin as the devices and the cache see it, counting the blob
	// bytes it serves.
	u, _ := url.Parse("http://" + origin)
	blobBytes := &meter.Handler{H: httputil.NewSingleHostReverseProxy(u), Match: meter.BlobGets}
	front := httptest.NewServer(blobBytes)
	t.Cleanup(front.Close)
	originHost := strings.TrimPrefix(front.URL, "http://")
	cache := siteCache(t, front.URL)
	base := originHost + "/" + repo

	var afterFirst int64
	for i := 0; i < 2; i++ {
		d := deviceDirs{store: testutil.TempStore(t), state: t.TempDir(), trust: trust}
		var res device.UpdateResult
		otterJSON(t, &res, append([]string{"update", base + ":r1", "--mirror", cache}, d.args()...)...)
		otterJSON(t, &res, append([]string{"update", base + ":r2", "--method", "patch", "--mirror", cache}, d.args()...)...)
		if res.Target != digests[1] {
			t.Fatalf("device %d: %+v", i, res)
		}
		testutil.VerifyStore(t, closures[1], d.store)
		if i == 0 {
			afterFirst = blobBytes.Bytes()
		}
	}
	// The second device cost the origin nothing: every blob came from the
	// cache. (The first cost what one device downloads, twice:
	// distribution 2.8's proxy fetches a missed blob once to stream and
	// once to store.)
	if n := blobBytes.Bytes(); afterFirst == 0 || n != afterFirst {
		t.Errorf("the origin served %d blob bytes for the first device and %d for the second", afterFirst, n-afterFirst)
	}

	// The cache is gone: a third device still updates, from the origin.
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadHost := dead.Addr().String()
	dead.Close()
	d := deviceDirs{store: testutil.TempStore(t), state: t.TempDir(), trust: trust}
	var res device.UpdateResult
	otterJSON(t, &res, append([]string{"update", base + ":r2", "--mirror", deadHost}, d.args()...)...)
	testutil.VerifyStore(t, closures[1], d.store)
	if code, _, errs := otter(t, append([]string{"update", base + ":r2", "--mirror", "cache.local/fleet"}, d.args()...)...); code != exitUsage || !strings.Contains(errs, "HOST[:PORT]") {
		t.Errorf("--mirror with a path: exit %d, %s", code, errs)
	}
}
