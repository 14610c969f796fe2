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
	pairs, err := readPairs(corpus)
	if err != nil {
		return "", err
	}
	layout := "oci:" + filepath.Join(work, "device-releases")
	key, trust, err := benchKeys(otter, filepath.Join(work, "keys"))
	if err != nil {
		return "", err
	}
	run := func(args ...string) ([]byte, error) { return otterRun(otter, args...) }
	done := map[string]bool{}
	for _, p := range pairs {
		for _, r := range []string{p.From, p.To} {
			if done[r] {
				continue
			}
			if err := bundleRelease(otter, corpus, r, layout+":"+r); err != nil {
				return "", err
			}
			if _, err := run("sign", "-q", layout+":"+r, "--key", key, "--no-cosign"); err != nil {
				return "", err
			}
			done[r] = true
		}
		if _, err := run("delta", "-q", "--from", layout+":"+p.From, layout+":"+p.To, "--key", key, "--max-share", "1"); err != nil {
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
		m, err := measureEnv(benchEnv(), otter, append([]string{"update", "-q", "--json", layout + ":" + p.To, "--method", "patch"}, dev...)...)
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
