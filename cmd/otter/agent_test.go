package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/otter-fleet/otter/agent"
	"github.com/otter-fleet/otter/device"
	"github.com/otter-fleet/otter/internal/testutil"
	"github.com/otter-fleet/otter/oci"
)

// agentDevice is a device config file following base:r<release>, with a
// status file, for otter agent.
func agentDevice(t *testing.T, base, trust string, release int, extra string) (conf, prom string, d deviceDirs) {
	t.Helper()
	d = deviceDirs{store: testutil.TempStore(t), state: t.TempDir(), trust: trust}
	dir := t.TempDir()
	conf, prom = filepath.Join(dir, "device.yaml"), filepath.Join(dir, "otter.prom")
	writeAgentConfig(t, conf, base, trust, release, d, prom, extra)
	return conf, prom, d
}

func writeAgentConfig(t *testing.T, conf, base, trust string, release int, d deviceDirs, prom, extra string) {
	t.Helper()
	body := "version: 1\nrelease: " + base + ":r" + itoa(release) + "\nchannel: stable\ntrust: " + trust +
		"\nstore: " + d.store + "\nstate: " + d.state + "\nstatus: " + prom + "\n" + extra
	if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

func metric(t *testing.T, prom, name string) string {
	t.Helper()
	data, err := os.ReadFile(prom)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(l, name+" ") || strings.HasPrefix(l, name+"{") {
			return l[strings.LastIndex(l, " ")+1:]
		}
	}
	t.Fatalf("%s has no %s:\n%s", prom, name, data)
	return ""
}

// TestAgentOnce: otter agent --once installs the release the config
// file follows, does nothing the next time, and writes the status file
// after a success, a rollback and a refusal.
func TestAgentOnce(t *testing.T) {
	base := "oci:" + filepath.Join(t.TempDir(), "l")
	trust, _, _ := fleet(t, base, 2)
	conf, prom, d := agentDevice(t, base, trust, 1, "")
	code, _, errs := otter(t, "agent", "--once", "--config", conf)
	if code != 0 || !strings.Contains(errs, "updated to release 1") {
		t.Fatalf("first poll: exit %d: %s", code, errs)
	}
	if metric(t, prom, "otter_release_version") != "1" || metric(t, prom, "otter_consecutive_failures") != "0" || metric(t, prom, "otter_downloaded_bytes_total") == "0" {
		t.Fatal("status after the first install")
	}
	code, _, errs = otter(t, "agent", "--once", "--config", conf)
	if code != 0 || !strings.Contains(errs, "unchanged") {
		t.Fatalf("second poll: exit %d: %s", code, errs)
	}
	// Another trust file: refused, counted, still on release 1.
	_, _, otherTrust := keys(t, t.TempDir(), "other")
	writeAgentConfig(t, conf, base, otherTrust, 2, d, prom, "")
	if code, _, _ = otter(t, "agent", "--once", "--config", conf); code != exitUnknownKey {
		t.Fatalf("a release of another key: exit %d", code)
	}
	if metric(t, prom, "otter_consecutive_failures") != "1" || metric(t, prom, "otter_release_version") != "1" {
		t.Fatal("status after a refusal")
	}
	// Release 2 fails its health check: rolled back, counted.
	writeAgentConfig(t, conf, base, trust, 2, d, prom, "healthCheck: exit 1\n")
	if code, _, errs = otter(t, "agent", "--once", "--config", conf); code != exitRolledBack {
		t.Fatalf("a failing release: exit %d: %s", code, errs)
	}
	if metric(t, prom, "otter_rollbacks_total") != "1" || metric(t, prom, "otter_consecutive_failures") != "2" || metric(t, prom, "otter_release_version") != "1" {
		t.Fatal("status after a rollback")
	}
	// otter status --prometheus says the same.
	_, out, _ := otter(t, "status", "--prometheus", "--config", conf)
	if !strings.Contains(out, "otter_consecutive_failures 2") || !strings.Contains(out, `otter_release_info{digest="sha256:`) {
		t.Fatalf("status --prometheus:\n%s", out)
	}
}

// TestAgentLoop runs the agent's loop with a recorded clock: against a
// registry that is down, the waits grow (backoff); once it is back, a
// poll succeeds and the waits fall back to the interval; an inhibit
// file holds a poll back until it goes.
func TestAgentLoop(t *testing.T) {
	// Release 1, published where the device looks only once the
	// "registry" comes back.
	ready := filepath.Join(t.TempDir(), "ready")
	trust, _, _ := fleet(t, "oci:"+ready, 1)
	dir := filepath.Join(t.TempDir(), "l")
	base := "oci:" + dir
	inhibit := filepath.Join(t.TempDir(), "busy")
	conf, _, d := agentDevice(t, base, trust, 1, "schedule:\n  interval: 1m\n  jitter: 0s\n  afterBoot: 0s\n  maxBackoff: 8m\ninhibit: ["+inhibit+"]\n")
	cfg, err := agent.Load(conf)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := loadTrust(trust)
	if err != nil {
		t.Fatal(err)
	}
	ref, _ := oci.ParseRef(base+":r1", false)
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	var waits []time.Duration
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a := &agent.Agent{Config: cfg, Ref: ref, Now: func() time.Time { return now }, Boot: now.Add(-time.Hour), InhibitPoll: 7 * time.Second,
		Device: device.Config{Store: d.store, State: d.state, Trust: tr, System: "aarch64-linux", Channel: "stable", NoFsync: true},
		Sleep: func(ctx context.Context, w time.Duration) error {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			waits = append(waits, w)
			now = now.Add(w)
			switch len(waits) {
			case 5: // the registry comes back
				if err := os.Rename(ready, dir); err != nil {
					t.Fatal(err)
				}
			case 7: // an acquisition starts
				os.WriteFile(inhibit, nil, 0o644)
			case 9:
				os.Remove(inhibit)
			case 12:
				cancel()
			}
			return nil
		}}
	if err := a.Run(ctx, false); err != nil {
		t.Fatal(err)
	}
	backoff := []time.Duration{0, 2 * time.Minute, 4 * time.Minute, 8 * time.Minute, 8 * time.Minute}
	if len(waits) < 10 {
		t.Fatalf("waits %v", waits)
	}
	for i, w := range backoff {
		if waits[i] != w {
			t.Fatalf("waits %v; want the backoff %v first", waits, backoff)
		}
	}
	if waits[5] != time.Minute || waits[6] != time.Minute {
		t.Fatalf("after the registry came back the waits are %v, want the interval", waits[5:7])
	}
	if waits[7] != 7*time.Second || waits[8] != 7*time.Second || waits[9] != time.Minute {
		t.Fatalf("an inhibit file did not hold the poll back: waits %v", waits)
	}
	if st := status(t, d); st.Current == nil {
		t.Fatal("the agent installed nothing once the registry was back")
	}
}

// TestAgentIdlePollBytes measures what a poll costs when nothing
// changed, on the wire to docker-registry (requests and responses,
// headers included): what a fleet on metered 3G pays per device and
// poll. Recorded in docs/benchmarks.md.
func TestAgentIdlePollBytes(t *testing.T) {
	host := testutil.RealRegistry(t)
	link := testutil.NewBadLink(t, host, 0, 0)
	base := link.Addr + "/" + testutil.Repository(t)
	trust, _, _ := fleet(t, base, 1)
	conf, _, _ := agentDevice(t, base, trust, 1, "insecure: true\n")
	if code, _, errs := otter(t, "agent", "--once", "--config", conf); code != 0 {
		t.Fatalf("first poll: %d %s", code, errs)
	}
	down, up := cheapPolls(t, link, conf, 5, "idle")
	t.Logf("idle poll: %d bytes down, %d bytes up (mean of 5 polls)", down, up)
}

// cheapPolls runs polls agent polls that must find nothing to do, and
// fails unless each is one HEAD request (at most 4 KB on the wire); it
// returns the mean bytes down and up.
func cheapPolls(t *testing.T, link *testutil.BadLink, conf string, polls int64, what string) (down, up int64) {
	t.Helper()
	link.Received.Store(0)
	link.Sent.Store(0)
	for range polls {
		if code, _, errs := otter(t, "agent", "--once", "--config", conf); code != 0 || !strings.Contains(errs, "unchanged") {
			t.Fatalf("%s poll: %d %s", what, code, errs)
		}
	}
	down, up = link.Received.Load()/polls, link.Sent.Load()/polls
	if down+up > 4096 {
		t.Fatalf("%s poll: %d bytes moved; it should be one HEAD request", what, down+up)
	}
	return down, up
}

// TestAgentSIGTERMResumes: SIGTERM while the agent downloads stops it
// within seconds, the device still on its release and the finished
// downloads kept; the agent started again completes the update without
// fetching those again.
func TestAgentSIGTERMResumes(t *testing.T) {
	host := testutil.RealRegistry(t)
	repo := testutil.Repository(t)
	trust, digests, _ := fleet(t, host+"/"+repo, 1)
	// Every chunk from the registry waits 300 ms: the update takes seconds.
	link := testutil.NewBadLink(t, host, 0, 300*time.Millisecond)
	conf, _, d := agentDevice(t, link.Addr+"/"+repo, trust, 1, "insecure: true\n")
	cmd := crashingOtter(t, "", "agent", "--once", "--config", conf)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Stop it once a download has finished.
	deadline := time.Now().Add(30 * time.Second)
	for {
		ents, _ := os.ReadDir(filepath.Join(d.state, "downloads"))
		done := 0
		for _, e := range ents {
			if strings.HasSuffix(e.Name(), ".layer") {
				done++
			}
		}
		if done > 0 {
			break
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatal("no download finished")
		}
		time.Sleep(20 * time.Millisecond)
	}
	start := time.Now()
	cmd.Process.Signal(syscall.SIGTERM)
	cmd.Wait()
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("SIGTERM took %v to stop the agent", took)
	}
	if st := status(t, d); st.Current != nil {
		t.Fatalf("a stopped first install left %+v installed", st.Current)
	}
	kept, _ := os.ReadDir(filepath.Join(d.state, "downloads"))
	if len(kept) == 0 {
		t.Fatal("the downloads were not kept")
	}
	before := link.Received.Load()
	if code, _, errs := otter(t, "agent", "--once", "--config", conf); code != 0 {
		t.Fatalf("the agent again: %d %s", code, errs)
	}
	if st := status(t, d); st.Current == nil || st.Current.Digest != digests[0] {
		t.Fatalf("after the restart: %+v", st.Current)
	}
	t.Logf("kept %d downloads; the restart moved %d bytes", len(kept), link.Received.Load()-before)
}

// TestAgentHeldPollIsCheap: once a staged release has held a device
// back, the agent's next polls cost what an idle poll costs (one HEAD)
// until the rollout reaches the device: it does not fetch the release's
// statements and halts again at every poll.
func TestAgentHeldPollIsCheap(t *testing.T) {
	host := testutil.RealRegistry(t)
	link := testutil.NewBadLink(t, host, 0, 0)
	base := link.Addr + "/" + testutil.Repository(t)
	key, _, trust := keys(t, t.TempDir(), "release")
	for _, v := range []string{"1", "2"} {
		tree, pi, root := demoReleaseTree(t, int(v[0]-'0'))
		otterJSON(t, &bundleResult{}, "bundle", "--store-dir", tree, "--path-info", pi, root, "--out", base+":r"+v, "--release-version", v)
	}
	otterJSON(t, &signResult{}, "sign", base+":r1", "--key", key, "--no-cosign")
	otterJSON(t, &signResult{}, "sign", base+":r2", "--key", key, "--no-cosign", "--rollout", "0%:1h")
	conf, _, d := agentDevice(t, base, trust, 1, "insecure: true\nwariness: 0.9\n")
	if code, _, errs := otter(t, "agent", "--once", "--config", conf); code != 0 {
		t.Fatalf("first poll: %d %s", code, errs)
	}
	writeAgentConfig(t, conf, base, trust, 2, d, filepath.Join(filepath.Dir(conf), "otter.prom"), "insecure: true\nwariness: 0.9\n")
	link.Received.Store(0)
	if code, _, errs := otter(t, "agent", "--once", "--config", conf); code != 0 || !strings.Contains(errs, "rolling out") {
		t.Fatalf("the poll that finds r2: %d %s", code, errs)
	}
	first := link.Received.Load()
	var held device.Hold
	if data, err := os.ReadFile(filepath.Join(d.state, "held.json")); err != nil || json.Unmarshal(data, &held) != nil || held.Kind != "rollout" {
		t.Fatalf("held.json: %s %v", data, err)
	}
	down, up := cheapPolls(t, link, conf, 3, "held")
	t.Logf("the poll that found r2 held: %d bytes down; each later poll: %d down, %d up", first, down, up)
	// When the rollout reaches the device (--at), the agent updates.
	until, _ := time.Parse(time.RFC3339, held.Until)
	if code, _, errs := otter(t, "agent", "--once", "--config", conf, "--at", until.Add(time.Second).Format(time.RFC3339)); code != 0 || !strings.Contains(errs, "updated to release 2") {
		t.Fatalf("at %s: %d %s", held.Until, code, errs)
	}
}
