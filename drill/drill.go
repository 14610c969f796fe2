// Command drill brings a fleet of emulated devices on bad links through
// four releases (docs/benchmarks.md, "The fleet drill"): 20 static arm64
// otter agents under qemu-user, each in its own network namespace behind a
// 1 Mbit/s token bucket and a toxiproxy adding 300 ms and cutting
// connections; an origin docker-registry and a site cache (docker-registry
// in proxy mode) on the host. otter release publishes r1 → r2 → r3 → r4
// with patches; r3 is rolled out 20% → 100% while the origin restarts;
// r4, whose health check fails, is halted after the canaries roll back.
//
// It is its own module so that toxiproxy and its dependencies stay out of
// otter's go.mod. Run it as `go tool -modfile=tools/task/go.mod task
// drill`; `go test` here runs a three-device version.
package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/otter-fleet/otter/bundle"
	"github.com/otter-fleet/otter/nix"
	"github.com/otter-fleet/otter/sign"
)

// Options shape a drill.
type Options struct {
	Devices, Canaries int
	// Rate is each link's bandwidth, as tc reads it (1mbit).
	Rate   string
	Faults faults
	// Interval is the agents' poll interval (jitter: 40% of it).
	Interval time.Duration
	// R3Rollout and R4Rollout are how long r3's rollout (from 20%) and
	// r4's (from 0%) take to reach every device.
	R3Rollout, R4Rollout time.Duration
	// Cautious is the least wariness of a device that is not a canary:
	// the drill picks machine ids whose wariness is at least this, so
	// that no device but a canary is offered r4 before the halt can come.
	Cautious float64
	// Corpus is the release corpus (scripts/corpus.sh): r1…r4.
	Corpus string
	// Work is the drill's directory; Repo the otter repository.
	Work, Repo string
	Log        io.Writer
}

// ReleaseReport is what one release cost and how long the fleet took.
type ReleaseReport struct {
	Version uint64 `json:"version"`
	What    string `json:"what"`
	Patch   int64  `json:"patch"`
	// OriginBlobs and OriginTotal are what the origin served while the
	// release went out, blob bytes and every response byte, to the site
	// cache; DirectBlobs and DirectTotal to devices that came to the
	// origin themselves (a mirror that failed them).
	OriginBlobs int64 `json:"originBlobs"`
	OriginTotal int64 `json:"originTotal"`
	DirectBlobs int64 `json:"directBlobs"`
	DirectTotal int64 `json:"directTotal"`
	// Device is what each device's otter downloaded (blob bytes its
	// agent counts), and Wire what its link carried to it (tx_bytes of
	// the host end: headers, polls, TCP/IP and all): min, median, max.
	Device [3]int64 `json:"device"`
	Wire   [3]int64 `json:"wire"`
	// Installed is how many devices ended on this release; Converge the
	// time from the channel tag's move to the last of them.
	Installed int           `json:"installed"`
	Converge  time.Duration `json:"converge"`
}

// Report is the drill's outcome.
type Report struct {
	Devices  int             `json:"devices"`
	Canaries int             `json:"canaries"`
	Releases []ReleaseReport `json:"releases"`
	// OriginRestart is when (after r3's tag moved) the origin was killed
	// and started again.
	OriginRestart time.Duration `json:"originRestart"`
	// RolledBack is how many devices installed r4 and rolled back (the
	// canaries); InstalledAfterHalt how many tried r4 after the halt.
	RolledBack         int `json:"rolledBack"`
	InstalledAfterHalt int `json:"installedAfterHalt"`
	// HaltAfter is when, into r4's rollout, the halt was signed;
	// FirstOffer when the first device that is not a canary is offered
	// r4 (the halt must come first).
	HaltAfter  time.Duration `json:"haltAfter"`
	FirstOffer time.Duration `json:"firstOffer"`
	// HaltedWait is how long past r4's full rollout the drill watched.
	HaltedWait    time.Duration `json:"haltedWait"`
	StoresChecked int           `json:"storesChecked"`
	Total         time.Duration `json:"total"`
}

// device is one emulated device.
type device struct {
	i                  int
	dir, store, state  string
	link               *link
	cmd                *exec.Cmd
	canary             bool
	wariness           float64
	statusFile, config string
}

type drill struct {
	o             Options
	otter, arm64  string
	key, trust    string
	origin, cache *registry
	front         string
	meter         *originMeter
	proxies       *proxies
	devs          []*device
	digests       map[uint64]string // by release
	r4Root        string            // r4's root store path: its health check fails
	tag           string
	cancelFront   context.CancelFunc
	// r4 is r4's rollout schedule, and r4Start its start.
	r4      *sign.Rollout
	r4Start time.Time
}

func newDrill(o Options) *drill { return &drill{o: o, digests: map[uint64]string{}} }

func (d *drill) logf(format string, a ...any) {
	fmt.Fprintf(d.o.Log, "drill: "+format+"\n", a...)
}

// Run runs the drill and returns its report; everything it started is
// stopped and removed when it returns.
func Run(ctx context.Context, o Options) (*Report, error) {
	if o.Canaries < 1 || o.Canaries >= o.Devices {
		return nil, fmt.Errorf("drill: %d canaries of %d devices: want at least one canary and one other device", o.Canaries, o.Devices)
	}
	if o.Devices > 250 {
		return nil, fmt.Errorf("drill: at most 250 devices")
	}
	start := time.Now()
	d := newDrill(o)
	d.tag = strconv.Itoa(os.Getpid() % 10000)
	defer d.close()
	rep := &Report{Devices: o.Devices, Canaries: o.Canaries}
	if err := d.setUp(ctx); err != nil {
		return nil, err
	}
	what := map[uint64]string{2: "application update", 3: "openssl fix, rolled out 20% → 100%, origin restarted", 4: "health check fails: halted"}
	for v := uint64(2); v <= 4; v++ {
		rr, err := d.release(ctx, v, rep)
		if err != nil {
			return rep, err
		}
		rr.What = what[v]
		rep.Releases = append(rep.Releases, *rr)
	}
	// Every device's store holds its release, every NAR hash right.
	for _, dev := range d.devs {
		v, err := verifyStore(dev.state, dev.store)
		if err != nil {
			return rep, fmt.Errorf("device %d: %w", dev.i, err)
		}
		if v != 3 {
			return rep, fmt.Errorf("device %d ended on release %d, not 3", dev.i, v)
		}
		rep.StoresChecked++
	}
	rep.Total = time.Since(start).Round(time.Second)
	return rep, nil
}

func (d *drill) setUp(ctx context.Context) error {
	o := d.o
	if os.Geteuid() != 0 {
		return errors.New("drill: network namespaces need root")
	}
	for _, tool := range []string{"ip", "tc", "qemu-aarch64-static", "docker-registry"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("drill: %s: %w", tool, err)
		}
	}
	if err := d.buildAndKey(ctx, true); err != nil {
		return err
	}
	r4, err := os.ReadFile(filepath.Join(o.Corpus, "r4", "root"))
	if err != nil {
		return err
	}
	d.r4Root = strings.TrimSpace(string(r4))

	if d.origin, err = startRegistry(filepath.Join(o.Work, "origin"), ""); err != nil {
		return err
	}
	fctx, cancel := context.WithCancel(context.Background())
	d.cancelFront = cancel
	// The origin as the site cache and the devices reach it, counting
	// what it serves.
	if d.front, d.meter, err = meteredOrigin(fctx, d.origin.Addr); err != nil {
		return err
	}
	if d.cache, err = startRegistry(filepath.Join(o.Work, "cache"), "http://"+d.front); err != nil {
		return err
	}
	d.logf("origin %s (devices and the cache see it at %s), site cache %s", d.origin.Addr, d.front, d.cache.Addr)

	if _, err := d.publish(ctx, 1, ""); err != nil {
		return err
	}
	// Provisioning: what otter image writes, once, copied to each device.
	tmpl := filepath.Join(o.Work, "provisioned")
	if _, err := d.run(ctx, "update", d.origin.Addr+"/fleet/logger:stable", "--store", filepath.Join(tmpl, "store"),
		"--state", filepath.Join(tmpl, "state"), "--trust", d.trust, "--nix", "off", "--no-fsync", "--insecure"); err != nil {
		return err
	}
	if err := os.Remove(filepath.Join(tmpl, "state", "lock")); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}

	d.proxies = newProxies()
	ids := cautiousIDs(o.Devices-o.Canaries, o.Cautious)
	for i := 0; i < o.Devices; i++ {
		dev := &device{i: i, dir: filepath.Join(o.Work, fmt.Sprintf("device-%02d", i)), canary: i < o.Canaries}
		if err := exec.CommandContext(ctx, "cp", "-a", tmpl, dev.dir).Run(); err != nil {
			return fmt.Errorf("copying the provisioned device: %w", err)
		}
		dev.store, dev.state = filepath.Join(dev.dir, "store"), filepath.Join(dev.dir, "state")
		if err := relinkRoots(dev.state, dev.store); err != nil {
			return err
		}
		if dev.link, err = newLink(ctx, d.tag, i, o.Rate); err != nil {
			return err
		}
		d.devs = append(d.devs, dev)
		for name, up := range map[string]string{"cache": d.cache.Addr, "origin": d.front} {
			port := map[string]string{"cache": "5000", "origin": "5001"}[name]
			if _, err := d.proxies.add(fmt.Sprintf("%s-%d", name, i), dev.link.HostIP+":"+port, up, o.Faults); err != nil {
				return err
			}
		}
		if err := d.startAgent(ctx, dev, ids); err != nil {
			return err
		}
	}
	d.logf("%d devices on release 1 (%d canaries), each at %s, %v round trip, connections cut every %d bytes",
		o.Devices, o.Canaries, o.Rate, o.Faults.Latency, o.Faults.CutEvery)
	return nil
}

// relinkRoots points each generation's root link of a copied state
// directory into the copy's store.
func relinkRoots(state, store string) error {
	links, _ := filepath.Glob(filepath.Join(state, "generations", "*", "root"))
	for _, l := range links {
		t, err := os.Readlink(l)
		if err != nil {
			return err
		}
		if err := os.Remove(l); err != nil {
			return err
		}
		if err := os.Symlink(filepath.Join(store, filepath.Base(t)), l); err != nil {
			return err
		}
	}
	return nil
}

// buildAndKey builds otter for this machine (and, with arm64, the static
// arm64 otter the devices run) and makes the release key and trust file.
func (d *drill) buildAndKey(ctx context.Context, arm64 bool) error {
	o := d.o
	d.logf("building otter")
	d.otter, d.arm64 = filepath.Join(o.Work, "otter"), filepath.Join(o.Work, "otter-arm64")
	builds := []struct{ out, arch string }{{d.otter, "amd64"}}
	if arm64 {
		builds = append(builds, struct{ out, arch string }{d.arm64, "arm64"})
	}
	for _, b := range builds {
		cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", b.out, "./cmd/otter")
		cmd.Dir = o.Repo
		cmd.Env = append(os.Environ(), "GOOS=linux", "GOARCH="+b.arch, "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("building otter for %s: %v\n%s", b.arch, err, out)
		}
	}
	d.key, d.trust = filepath.Join(o.Work, "release.key"), filepath.Join(o.Work, "trust.json")
	if _, err := d.run(ctx, "keygen", "--prefix", filepath.Join(o.Work, "release"), "--no-passphrase", "--force"); err != nil {
		return err
	}
	_, err := d.run(ctx, "trust", "init", "--key", filepath.Join(o.Work, "release.pub"), "--out", d.trust)
	return err
}

// cautiousIDs are n machine ids (hex, as /etc/machine-id) whose wariness
// is at least min, in a fixed order.
func cautiousIDs(n int, min float64) []string {
	var ids []string
	for k := 0; len(ids) < n; k++ {
		h := sha256.Sum256([]byte("otter drill device " + strconv.Itoa(k)))
		id := hex.EncodeToString(h[:16])
		if sign.Wariness(id) >= min {
			ids = append(ids, id)
		}
	}
	return ids
}

func (d *drill) startAgent(ctx context.Context, dev *device, ids []string) error {
	o := d.o
	dev.statusFile = filepath.Join(dev.state, "otter.prom")
	r4root := filepath.Join(dev.store, filepath.Base(d.r4Root))
	who := "wariness: 0\n"
	if dev.canary {
		dev.wariness = 0
	} else {
		id := ids[dev.i-o.Canaries]
		mid := filepath.Join(dev.dir, "machine-id")
		if err := os.WriteFile(mid, []byte(id+"\n"), 0o644); err != nil {
			return err
		}
		dev.wariness = sign.Wariness(id)
		who = "machineId: " + mid + "\n"
	}
	// The health check fails on r4 (standing for an app that crashes).
	cfg := fmt.Sprintf(`version: 1
release: %s:5001/fleet/logger:stable
trust: %s
store: %s
state: %s
insecure: true
nix: "off"
keep: 2
mirrors: ["http://%s:5000"]
mirrorStall: 20s
healthCheck: '[ "$OTTER_ROOT" != "%s" ]'
healthTimeout: 5m
%sstatus: %s
schedule:
  interval: %s
  jitter: %s
  afterBoot: 0s
  maxBackoff: %s
`, dev.link.HostIP, d.trust, dev.store, dev.state, dev.link.HostIP, r4root, who, dev.statusFile,
		o.Interval, o.Interval*2/5, 4*o.Interval)
	dev.config = filepath.Join(dev.dir, "device.yaml")
	if err := os.WriteFile(dev.config, []byte(cfg), 0o644); err != nil {
		return err
	}
	log, err := os.Create(filepath.Join(dev.dir, "agent.log"))
	if err != nil {
		return err
	}
	dev.cmd = exec.Command("ip", "netns", "exec", dev.link.NS, "qemu-aarch64-static", d.arm64, "agent", "--config", dev.config, "--no-fsync")
	dev.cmd.Env = append(os.Environ(), "GOMAXPROCS=2")
	dev.cmd.Stdout, dev.cmd.Stderr = log, log
	if err := dev.cmd.Start(); err != nil {
		return err
	}
	go func() { _ = dev.cmd.Wait(); log.Close() }()
	return nil
}

// publish runs otter release for corpus release v as release v.
func (d *drill) publish(ctx context.Context, v uint64, rollout string) (int64, error) {
	return d.publishAs(ctx, v, v, rollout)
}

// publishAs runs otter release for corpus release c as release v, with a
// rollout schedule if given, and returns the size of its patch from the
// release before (0 for the first).
func (d *drill) publishAs(ctx context.Context, c, v uint64, rollout string) (int64, error) {
	rel := filepath.Join(d.o.Corpus, "r"+strconv.FormatUint(c, 10))
	root, err := os.ReadFile(filepath.Join(rel, "root"))
	if err != nil {
		return 0, err
	}
	file := fmt.Sprintf(`version: 1
registry: %s/fleet
insecure: true
channels: [stable]
release: %d
targets:
  - name: logger
    store: {dir: %s, pathInfo: %s, root: %s}
signing:
  key: %s
  expires: 30d
  cosign: false
patches:
  from: 1
  maxShare: 0.6
`, d.origin.Addr, v, rel, filepath.Join(rel, "path-info.json"), strings.TrimSpace(string(root)), d.key)
	f := filepath.Join(d.o.Work, fmt.Sprintf("otter-r%d.yaml", v))
	if err := os.WriteFile(f, []byte(file), 0o644); err != nil {
		return 0, err
	}
	args := []string{"release", "-f", f}
	if rollout != "" {
		args = append(args, "--rollout", rollout)
	}
	d.logf("publishing r%d%s", v, map[bool]string{true: " (rollout " + rollout + ")", false: ""}[rollout != ""])
	out, err := d.run(ctx, args...)
	if err != nil {
		return 0, err
	}
	var res struct {
		Targets []struct {
			Digest  string `json:"digest"`
			Patches []struct {
				Size    int64 `json:"size"`
				Skipped bool  `json:"skipped"`
			} `json:"patches"`
		} `json:"targets"`
	}
	if err := json.Unmarshal(out, &res); err != nil || len(res.Targets) != 1 {
		return 0, fmt.Errorf("otter release r%d: %v: %s", v, err, out)
	}
	d.digests[v] = res.Targets[0].Digest
	for _, p := range res.Targets[0].Patches {
		if !p.Skipped {
			return p.Size, nil
		}
	}
	if v > 1 {
		return 0, fmt.Errorf("otter release %d made no patch: %s", v, out)
	}
	return 0, nil
}

// release publishes release v and follows the fleet until it settles.
func (d *drill) release(ctx context.Context, v uint64, rep *Report) (*ReleaseReport, error) {
	rr := &ReleaseReport{Version: v}
	cb0, ca0, db0, da0 := d.meter.bytes()
	dl0, wire0 := d.counters()
	var rollout string
	switch v {
	case 3:
		rollout = fmt.Sprintf("20%%:%s", d.o.R3Rollout)
	case 4:
		// From 0% at a start after the patch is built: the canaries go at
		// the start, the first other device Cautious×R4Rollout later.
		d.r4Start = time.Now().Add(90 * time.Second).UTC().Truncate(time.Second)
		d.r4 = &sign.Rollout{Start: sign.FormatTime(d.r4Start), Fraction: 0, Duration: uint64(d.o.R4Rollout / time.Second)}
		rollout = d.r4.String()
	}
	var err error
	if rr.Patch, err = d.publish(ctx, v, rollout); err != nil {
		return nil, err
	}
	moved := time.Now() // otter release moves the channel tag last
	switch v {
	case 2:
		err = d.waitFor(ctx, "r2", 20*time.Minute, func() (bool, string) { return d.allOn(2) })
	case 3:
		restartAt := moved.Add(d.o.R3Rollout / 2)
		restarted := false
		err = d.waitFor(ctx, "r3", d.o.R3Rollout+20*time.Minute, func() (bool, string) {
			if !restarted && time.Now().After(restartAt) {
				restarted = true
				rep.OriginRestart = time.Since(moved).Round(time.Second)
				d.logf("restarting the origin (killed, 5 s down)")
				if err := d.origin.restart(5 * time.Second); err != nil {
					d.logf("origin restart: %v", err)
				}
			}
			ok, s := d.allOn(3)
			return ok && restarted, s
		})
	case 4:
		err = d.waitFor(ctx, "r4 canaries", 20*time.Minute, func() (bool, string) {
			n := d.triedR4()
			return n >= d.o.Canaries, fmt.Sprintf("%d devices rolled back", n)
		})
		if err != nil {
			break
		}
		rep.RolledBack = d.triedR4()
		rep.HaltAfter = time.Since(d.r4Start).Round(time.Second)
		rep.FirstOffer = d.firstOffer()
		d.logf("%d devices rolled back r4: halting it, %v into its rollout (the first other device is offered it at %v)", rep.RolledBack, rep.HaltAfter, rep.FirstOffer)
		if _, err = d.run(ctx, "halt", d.origin.Addr+"/fleet/logger:v4", "--key", d.key, "--reason",
			fmt.Sprintf("%d devices failed their health check", rep.RolledBack), "--expires", "2h", "--insecure"); err != nil {
			break
		}
		// Watch until every device would have been offered r4, and a few
		// polls more.
		until := d.r4Start.Add(d.o.R4Rollout + 4*d.o.Interval)
		rep.HaltedWait = time.Until(until).Round(time.Second)
		err = d.waitFor(ctx, "r4 halted", time.Until(until)+time.Minute, func() (bool, string) {
			_, s := d.allOn(3)
			f := d.r4.FractionAt(time.Now())
			return time.Now().After(until), fmt.Sprintf("%s, %d tried r4, rollout past %d%%", s, d.triedR4(), int(f*10)*10)
		})
		rep.InstalledAfterHalt = d.triedR4() - rep.RolledBack
		if ok, s := d.allOn(3); err == nil && !ok {
			err = fmt.Errorf("after the halt: %s", s)
		}
	}
	if err != nil {
		return nil, err
	}
	rr.Converge = time.Since(moved).Round(time.Second)
	cb, ca, db, da := d.meter.bytes()
	rr.OriginBlobs, rr.OriginTotal, rr.DirectBlobs, rr.DirectTotal = cb-cb0, ca-ca0, db-db0, da-da0
	dl1, wire1 := d.counters()
	for i := range d.devs {
		dl1[i] -= dl0[i]
		wire1[i] -= wire0[i]
	}
	rr.Device, rr.Wire = spread(dl1), spread(wire1)
	for _, dev := range d.devs {
		if v, _ := statusVersion(dev.statusFile); v == rr.Version {
			rr.Installed++
		}
	}
	return rr, nil
}

// counters reads each device's downloaded bytes (its agent's counter)
// and its link's bytes towards it.
func (d *drill) counters() (dl, wire []int64) {
	for _, dev := range d.devs {
		n, _ := statusMetric(dev.statusFile, "otter_downloaded_bytes_total")
		dl = append(dl, int64(n))
		wire = append(wire, dev.link.txBytes())
	}
	return dl, wire
}

func spread(xs []int64) [3]int64 {
	s := append([]int64(nil), xs...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return [3]int64{s[0], s[len(s)/2], s[len(s)-1]}
}

// allOn says whether every device runs release v, and how many do.
func (d *drill) allOn(v uint64) (bool, string) {
	n := 0
	for _, dev := range d.devs {
		if got, _ := statusVersion(dev.statusFile); got == v {
			n++
		}
	}
	return n == len(d.devs), fmt.Sprintf("%d/%d devices on r%d", n, len(d.devs), v)
}

// firstOffer is when, into r4's rollout, the least wary device that is
// not a canary is offered it.
func (d *drill) firstOffer() time.Duration {
	first := time.Duration(1 << 62)
	for _, dev := range d.devs {
		if !dev.canary {
			first = min(first, d.r4.OfferedAt(dev.wariness).Sub(d.r4Start))
		}
	}
	return first
}

// triedR4 counts the devices that installed r4 and rolled back: their
// failed.json names it.
func (d *drill) triedR4() int {
	n := 0
	for _, dev := range d.devs {
		var failed map[string]string
		if b, err := os.ReadFile(filepath.Join(dev.state, "failed.json")); err == nil && json.Unmarshal(b, &failed) == nil {
			if _, ok := failed[d.digests[4]]; ok {
				n++
			}
		}
	}
	return n
}

// waitFor polls cond every second until it holds, printing its progress
// when it changes.
func (d *drill) waitFor(ctx context.Context, what string, limit time.Duration, cond func() (bool, string)) error {
	deadline := time.Now().Add(limit)
	last := ""
	for {
		ok, s := cond()
		if s != last {
			d.logf("%s: %s", what, s)
			last = s
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("drill: %s: not done after %v: %s (agent logs in %s/device-*/agent.log)", what, limit, s, d.o.Work)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// run runs the amd64 otter with --json and returns its output.
func (d *drill) run(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, d.otter, append(args, "--json")...)
	cmd.Env = append(os.Environ(), "OTTER_PASSWORD=")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("otter %s: %v\n%s%s", strings.Join(args, " "), err, out, stderr.String())
	}
	return out, nil
}

func (d *drill) close() {
	for _, dev := range d.devs {
		if dev.cmd != nil && dev.cmd.Process != nil {
			_ = dev.cmd.Process.Signal(syscall.SIGTERM)
		}
	}
	for _, dev := range d.devs {
		if dev.cmd != nil && dev.cmd.Process != nil {
			for i := 0; i < 100 && dev.cmd.ProcessState == nil; i++ {
				time.Sleep(50 * time.Millisecond)
			}
			_ = dev.cmd.Process.Kill()
		}
		if dev.link != nil {
			dev.link.close()
		}
	}
	if d.proxies != nil {
		d.proxies.close()
	}
	if d.cache != nil {
		d.cache.stop()
	}
	if d.origin != nil {
		d.origin.stop()
	}
	if d.cancelFront != nil {
		d.cancelFront()
	}
}

// statusMetric reads one metric from a Prometheus text file.
func statusMetric(file, name string) (float64, error) {
	f, err := os.Open(file)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 2 && fields[0] == name {
			return strconv.ParseFloat(fields[1], 64)
		}
	}
	return 0, fmt.Errorf("%s: no %s", file, name)
}

func statusVersion(file string) (uint64, error) {
	v, err := statusMetric(file, "otter_release_version")
	return uint64(v), err
}

// verifyStore checks that every path of the current generation's closure
// is in the device's store with its NAR hash, and returns the release.
func verifyStore(state, store string) (uint64, error) {
	cur, err := os.Readlink(filepath.Join(state, "current"))
	if err != nil {
		return 0, err
	}
	gen := cur
	if !filepath.IsAbs(gen) {
		gen = filepath.Join(state, gen)
	}
	data, err := os.ReadFile(filepath.Join(gen, "config.json"))
	if err != nil {
		return 0, err
	}
	cfg, err := bundle.ParseConfig(data)
	if err != nil {
		return 0, err
	}
	for _, p := range cfg.Closure().Paths {
		h, n, err := nix.HashPath(filepath.Join(store, nix.BaseName(p.Path)))
		if err != nil {
			return 0, fmt.Errorf("%s: %w", p.Path, err)
		}
		if h != p.NarHash || n != p.NarSize {
			return 0, fmt.Errorf("%s: NAR hash %s size %d, want %s size %d", p.Path, h, n, p.NarHash, p.NarSize)
		}
	}
	return cfg.Version, nil
}
