package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// deviceBench publishes the corpus releases signed, with a signed patch
// for every pair, into an OCI layout, and measures otter update on a
// device state holding the pair's base: wall time, peak RSS, and the
// flash the update uses (the download, kept until the switch, plus the
// new store paths; staging is renamed into place, not copied).
func deviceBench(otter, work, corpus string) (string, error) {
	data, err := os.ReadFile(filepath.Join(corpus, "pairs.json"))
	if err != nil {
		return "", err
	}
	var pairs []pair
	if err := json.Unmarshal(data, &pairs); err != nil {
		return "", err
	}
	layout := "oci:" + filepath.Join(work, "device-releases")
	keyDir := filepath.Join(work, "keys")
	os.MkdirAll(keyDir, 0o755)
	env := append(os.Environ(), "OTTER_PASSWORD=bench")
	run := func(args ...string) ([]byte, error) {
		cmd := exec.Command(otter, args...)
		cmd.Env = env
		out, err := cmd.Output()
		if err != nil {
			if ee, ok := err.(*exec.ExitError); ok {
				return nil, fmt.Errorf("otter %s: %v\n%s", strings.Join(args, " "), err, ee.Stderr)
			}
		}
		return out, err
	}
	if _, err := run("keygen", "-q", "--prefix", filepath.Join(keyDir, "k")); err != nil {
		return "", err
	}
	trust := filepath.Join(keyDir, "trust.json")
	if _, err := run("trust", "init", "-q", "--key", filepath.Join(keyDir, "k.pub"), "--out", trust); err != nil {
		return "", err
	}
	done := map[string]bool{}
	for _, p := range pairs {
		for _, r := range []string{p.From, p.To} {
			if done[r] {
				continue
			}
			dir := filepath.Join(corpus, r)
			root, err := os.ReadFile(filepath.Join(dir, "root"))
			if err != nil {
				return "", err
			}
			if _, err := run("bundle", "-q", "--store-dir", dir, "--path-info", filepath.Join(dir, "path-info.json"), strings.TrimSpace(string(root)), "--out", layout+":"+r); err != nil {
				return "", err
			}
			if _, err := run("sign", "-q", layout+":"+r, "--key", filepath.Join(keyDir, "k.key"), "--no-cosign"); err != nil {
				return "", err
			}
			done[r] = true
		}
		if _, err := run("delta", "-q", "--from", layout+":"+p.From, layout+":"+p.To, "--key", filepath.Join(keyDir, "k.key"), "--max-share", "1"); err != nil {
			return "", err
		}
	}
	var t strings.Builder
	fmt.Fprintf(&t, "| pair | patch | update wall time | peak RSS | largest file | flash used (download + new paths) |\n| --- | ---: | ---: | ---: | ---: | ---: |\n")
	for _, p := range pairs {
		store, state := filepath.Join(work, "dev-store"), filepath.Join(work, "dev-state")
		exec.Command("rm", "-rf", store, state).Run()
		dev := []string{"--store", store, "--state", state, "--trust", trust}
		if _, err := run(append([]string{"update", "-q", layout + ":" + p.From, "--no-fsync"}, dev...)...); err != nil {
			return "", err
		}
		before := dirSize(store)
		m, err := measureEnv(env, otter, append([]string{"update", "-q", "--json", layout + ":" + p.To, "--method", "patch"}, dev...)...)
		if err != nil {
			return "", err
		}
		var res struct {
			Download int64
		}
		if err := json.Unmarshal(m.out, &res); err != nil {
			return "", err
		}
		grown := dirSize(store) - before
		fmt.Fprintf(&t, "| %s→%s %s | %s | %.1f s | %s | %s | %s |\n", p.From, p.To, p.Kind, commas(res.Download), m.wall.Seconds(),
			mib(m.maxRSS), mib(largestFile(store)), mib(res.Download+max(grown, 0)))
	}
	exec.Command("rm", "-rf", filepath.Join(work, "dev-store"), filepath.Join(work, "dev-state")).Run()
	return t.String(), nil
}

func largestFile(dir string) int64 {
	var n int64
	filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			n = max(n, fi.Size())
		}
		return nil
	})
	return n
}
