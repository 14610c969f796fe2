package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// CacheCost is what a site cache costs on a device: Debian's arm64
// docker-registry, run under qemu-user, serving two devices r1 (whole)
// and the patches to r2 and r3.
type CacheCost struct {
	Package       string `json:"package"`
	InstalledSize int64  `json:"installedSize"` // bytes, the package's Installed-Size
	Binary        int64  `json:"binary"`        // bytes of usr/bin/docker-registry
	// Stored is the cache's storage after the three releases; Served
	// what the two devices downloaded through it; FromOrigin the blob
	// bytes the origin sent the cache.
	Stored, Served, FromOrigin int64
	// Direct is what the origin sent the devices themselves (0: the
	// cache served every blob).
	Direct int64
	// GoSys is the most memory the registry's Go runtime held from the
	// system (expvar memstats.Sys, sampled every 100 ms); PeakRSS the
	// qemu-user process's VmHWM, which includes the emulator.
	GoSys, PeakRSS int64
}

// measureCacheCost runs the measurement in o.Work.
func measureCacheCost(ctx context.Context, o Options) (*CacheCost, error) {
	d := newDrill(o)
	defer d.close()
	cc := &CacheCost{}
	// The arm64 package and the C library it links, unpacked (not
	// installed: this machine is amd64).
	sysroot := filepath.Join(o.Work, "sysroot")
	debs := filepath.Join(o.Work, "debs")
	if err := os.MkdirAll(debs, 0o755); err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, "apt-get", "download", "docker-registry:arm64", "libc6:arm64")
	cmd.Dir = debs
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("apt-get download (the setup adds the arm64 architecture): %v\n%s", err, out)
	}
	files, _ := filepath.Glob(filepath.Join(debs, "*.deb"))
	for _, f := range files {
		if out, err := exec.CommandContext(ctx, "dpkg-deb", "-x", f, sysroot).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("dpkg-deb -x %s: %v\n%s", f, err, out)
		}
		if strings.Contains(filepath.Base(f), "docker-registry") {
			cc.Package = filepath.Base(f)
			out, err := exec.CommandContext(ctx, "dpkg-deb", "-f", f, "Installed-Size").Output()
			if err != nil {
				return nil, err
			}
			kb, _ := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
			cc.InstalledSize = kb * 1024
		}
	}
	bin := filepath.Join(sysroot, "usr", "bin", "docker-registry")
	fi, err := os.Stat(bin)
	if err != nil {
		return nil, err
	}
	cc.Binary = fi.Size()

	if err := d.buildAndKey(ctx, false); err != nil {
		return nil, err
	}
	if d.origin, err = startRegistry(filepath.Join(o.Work, "origin"), ""); err != nil {
		return nil, err
	}
	fctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if d.front, d.meter, err = meteredOrigin(fctx, d.origin.Addr); err != nil {
		return nil, err
	}
	for v := uint64(1); v <= 3; v++ {
		if _, err := d.publish(ctx, v, ""); err != nil {
			return nil, err
		}
	}

	// The cache: the arm64 docker-registry under qemu-user.
	debug, err := freeAddr()
	if err != nil {
		return nil, err
	}
	reg, err := startRegistryWith(filepath.Join(o.Work, "device-cache"), "http://"+d.front,
		[]string{"qemu-aarch64-static", "-L", sysroot, bin}, debug)
	if err != nil {
		return nil, err
	}
	defer reg.stop()
	addr, dir := reg.Addr, reg.dir
	stop := make(chan struct{})
	sampled := make(chan int64)
	go func() {
		var most int64
		for {
			select {
			case <-stop:
				sampled <- most
				return
			case <-time.After(100 * time.Millisecond):
				most = max(most, goSys("http://"+debug+"/debug/vars"))
			}
		}
	}()
	blobs0, _, direct0, _ := d.meter.bytes()
	for dev := 0; dev < 2; dev++ {
		ddir := filepath.Join(o.Work, fmt.Sprintf("device-%d", dev))
		for v := 1; v <= 3; v++ {
			out, err := d.run(ctx, "update", d.front+"/fleet/logger:v"+strconv.Itoa(v), "--mirror", "http://"+addr,
				"--store", filepath.Join(ddir, "store"), "--state", filepath.Join(ddir, "state"), "--trust", d.trust,
				"--nix", "off", "--no-fsync", "--insecure")
			if err != nil {
				return nil, err
			}
			var res struct {
				Transferred int64 `json:"transferred"`
			}
			if err := json.Unmarshal(out, &res); err != nil {
				return nil, err
			}
			cc.Served += res.Transferred
		}
	}
	close(stop)
	cc.GoSys = <-sampled
	cb, _, db, _ := d.meter.bytes()
	cc.FromOrigin, cc.Direct = cb-blobs0, db-direct0
	cc.PeakRSS = vmHWM(reg.cmd.Process.Pid)
	cc.Stored, err = du(filepath.Join(dir, "data"))
	return cc, err
}

// goSys reads memstats.Sys from a Go program's expvar page.
func goSys(url string) int64 {
	resp, err := http.Get(url)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	var v struct {
		Memstats struct {
			Sys int64 `json:"Sys"`
		} `json:"memstats"`
	}
	if json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&v) != nil {
		return 0
	}
	return v.Memstats.Sys
}

// vmHWM is a process's peak resident set size, in bytes.
func vmHWM(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmHWM:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb * 1024
		}
	}
	return 0
}

// du is the disk space the files under dir take (blocks allocated).
func du(dir string) (int64, error) {
	out, err := exec.Command("du", "-s", "-B1", dir).Output()
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(out))
	if len(f) == 0 {
		return 0, fmt.Errorf("du %s: %q", dir, out)
	}
	return strconv.ParseInt(f[0], 10, 64)
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

func printCacheCost(w io.Writer, cc *CacheCost) {
	fmt.Fprintf(w, "| %s | |\n| --- | ---: |\n", cc.Package)
	fmt.Fprintf(w, "| flash: the package installed (Installed-Size) | %s |\n", mib(cc.InstalledSize))
	fmt.Fprintf(w, "| flash: the cache after r1 + patches to r2, r3 | %s |\n", mib(cc.Stored))
	fmt.Fprintf(w, "| memory: Go runtime's Sys, at most | %s |\n", mib(cc.GoSys))
	fmt.Fprintf(w, "| memory: peak RSS under qemu-user (emulator included) | %s |\n", mib(cc.PeakRSS))
	fmt.Fprintf(w, "| served to 2 devices | %s |\n", mib(cc.Served))
	fmt.Fprintf(w, "| blob bytes the origin sent the cache | %s |\n", mib(cc.FromOrigin))
	fmt.Fprintf(w, "| blob bytes the origin sent the devices directly | %s |\n", mib(cc.Direct))
}
