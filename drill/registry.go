package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/otter-fleet/otter/internal/meter"
)

// registry is a docker-registry (Debian's distribution 2.8) on
// 127.0.0.1: the origin, or, with a remote, a pull-through site cache.
type registry struct {
	Addr   string
	dir    string
	remote string
	// argv runs the registry (default: docker-registry from PATH); debug,
	// when set, is the address of its debug server (expvar).
	argv  []string
	debug string
	cmd   *exec.Cmd
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// startRegistry serves dir's storage on a free port of 127.0.0.1; with a
// remote URL it is a pull-through cache of it.
func startRegistry(dir, remote string) (*registry, error) {
	return startRegistryWith(dir, remote, nil, "")
}

// startRegistryWith starts one run by argv (nil: docker-registry), with
// a debug server on debug if set.
func startRegistryWith(dir, remote string, argv []string, debug string) (*registry, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	r := &registry{Addr: addr, dir: dir, remote: remote, argv: argv, debug: debug}
	return r, r.start()
}

func (r *registry) start() error {
	argv := r.argv
	if argv == nil {
		bin, err := exec.LookPath("docker-registry")
		if err != nil {
			return fmt.Errorf("Debian's docker-registry: %w", err)
		}
		argv = []string{bin}
	}
	conf := fmt.Sprintf("version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: %s\n  delete:\n    enabled: true\nhttp:\n  addr: %s\n",
		filepath.Join(r.dir, "data"), r.Addr)
	if r.debug != "" {
		conf += "  debug:\n    addr: " + r.debug + "\n"
	}
	if r.remote != "" {
		conf += "proxy:\n  remoteurl: " + r.remote + "\n"
	}
	if err := os.MkdirAll(r.dir, 0o755); err != nil {
		return err
	}
	cf := filepath.Join(r.dir, "config.yml")
	if err := os.WriteFile(cf, []byte(conf), 0o644); err != nil {
		return err
	}
	log, err := os.OpenFile(filepath.Join(r.dir, "log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	r.cmd = exec.Command(argv[0], append(argv[1:], "serve", cf)...)
	r.cmd.Stdout, r.cmd.Stderr = log, log
	if err := r.cmd.Start(); err != nil {
		return err
	}
	go func() { _ = r.cmd.Wait(); log.Close() }()
	// Up to 30 s: under qemu-user it takes seconds.
	for i := 0; i < 600; i++ {
		if resp, err := http.Get("http://" + r.Addr + "/v2/"); err == nil {
			resp.Body.Close()
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("docker-registry on %s did not start (see %s/log)", r.Addr, r.dir)
}

// stop kills the registry, as a crash or a power cut would.
func (r *registry) stop() {
	if r.cmd != nil && r.cmd.Process != nil {
		_ = r.cmd.Process.Kill()
		for i := 0; i < 100; i++ {
			if c, err := net.Dial("tcp", r.Addr); err != nil {
				return
			} else {
				c.Close()
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// restart stops the registry and starts it again on the same address
// and storage after down.
func (r *registry) restart(down time.Duration) error {
	r.stop()
	time.Sleep(down)
	return r.start()
}

// originMeter counts what the origin serves: blob bytes and every
// response byte, for the site cache (docker-registry's user agent) and
// for devices that came to the origin themselves.
type originMeter struct {
	cacheBlobs, cacheAll, directBlobs, directAll *meter.Handler
}

// fromCache says whether a request comes from the site cache:
// docker-registry's proxy sends Go's default user agent, otter
// go-containerregistry's.
func fromCache(r *http.Request) bool {
	return strings.HasPrefix(r.UserAgent(), "Go-http-client/")
}

func (m *originMeter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if fromCache(r) {
		m.cacheAll.ServeHTTP(w, r)
	} else {
		m.directAll.ServeHTTP(w, r)
	}
}

// bytes gives blob bytes and all bytes, through the cache and direct.
func (m *originMeter) bytes() (cacheBlobs, cacheAll, directBlobs, directAll int64) {
	return m.cacheBlobs.Bytes(), m.cacheAll.Bytes(), m.directBlobs.Bytes(), m.directAll.Bytes()
}

// meteredOrigin serves a reverse proxy to the origin at addr on a free
// port of 127.0.0.1, counting what it serves.
func meteredOrigin(ctx context.Context, addr string) (string, *originMeter, error) {
	u, _ := url.Parse("http://" + addr)
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.ErrorLog = log.New(io.Discard, "", 0) // the origin's restart is expected
	m := &originMeter{cacheBlobs: &meter.Handler{H: rp, Match: meter.BlobGets}, directBlobs: &meter.Handler{H: rp, Match: meter.BlobGets}}
	m.cacheAll = &meter.Handler{H: m.cacheBlobs}
	m.directAll = &meter.Handler{H: m.directBlobs}
	addr, err := serve(ctx, m)
	return addr, m, err
}

// serve serves h on a free port of 127.0.0.1 until ctx ends.
func serve(ctx context.Context, h http.Handler) (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	srv := &http.Server{Handler: h}
	go func() { _ = srv.Serve(l) }()
	go func() { <-ctx.Done(); _ = srv.Close() }()
	return l.Addr().String(), nil
}

// meteredFront serves a reverse proxy to addr on a free port, counting
// every response byte it serves.
func meteredFront(ctx context.Context, addr string) (string, *meter.Handler, error) {
	u, _ := url.Parse("http://" + addr)
	m := &meter.Handler{H: httputil.NewSingleHostReverseProxy(u)}
	addr, err := serve(ctx, m)
	return addr, m, err
}
