package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

type pair struct{ From, To, Kind string }

// readPairs reads the corpus's release pairs.
func readPairs(corpus string) ([]pair, error) {
	data, err := os.ReadFile(filepath.Join(corpus, "pairs.json"))
	if err != nil {
		return nil, err
	}
	var pairs []pair
	return pairs, json.Unmarshal(data, &pairs)
}

// otterRun runs otter with OTTER_PASSWORD set for the bench's keys and
// returns its standard output.
func otterRun(otter string, args ...string) ([]byte, error) {
	cmd := exec.Command(otter, args...)
	cmd.Env = benchEnv()
	out, err := cmd.Output()
	if ee, ok := err.(*exec.ExitError); ok {
		return nil, fmt.Errorf("otter %s: %v\n%s", strings.Join(args, " "), err, ee.Stderr)
	}
	return out, err
}

// bundleRelease bundles corpus release r into the OCI reference ref.
func bundleRelease(otter, corpus, r, ref string) error {
	dir := filepath.Join(corpus, r)
	root, err := os.ReadFile(filepath.Join(dir, "root"))
	if err != nil {
		return err
	}
	_, err = otterRun(otter, "bundle", "-q", "--store-dir", dir, "--path-info", filepath.Join(dir, "path-info.json"), strings.TrimSpace(string(root)), "--out", ref)
	return err
}

func benchEnv() []string { return append(os.Environ(), "OTTER_PASSWORD=bench") }

// benchKeys makes a signing key and a trust file for it in dir.
func benchKeys(otter, dir string) (key, trust string, err error) {
	os.MkdirAll(dir, 0o755)
	key, trust = filepath.Join(dir, "k.key"), filepath.Join(dir, "trust.json")
	if _, err := otterRun(otter, "keygen", "-q", "--prefix", filepath.Join(dir, "k")); err != nil {
		return "", "", err
	}
	_, err = otterRun(otter, "trust", "init", "-q", "--key", filepath.Join(dir, "k.pub"), "--out", trust)
	return key, trust, err
}

// deltaBench measures otter's patch for every corpus pair against the
// general-purpose tools, each run here in the same pass: the bytes a device
// downloads, otter's build and apply time, and apply's peak memory.
func deltaBench(otter, work, corpus string, withBsdiff bool) (string, error) {
	pairs, err := readPairs(corpus)
	if err != nil {
		return "", err
	}
	// Bundles and closure tars, once per release.
	layout := filepath.Join(work, "releases")
	tars := map[string]string{}
	for _, p := range pairs {
		for _, r := range []string{p.From, p.To} {
			if tars[r] != "" {
				continue
			}
			dir := filepath.Join(corpus, r)
			if err := bundleRelease(otter, corpus, r, "oci:"+layout+":"+r); err != nil {
				return "", err
			}
			tars[r] = filepath.Join(work, r+".tar")
			if err := sh(fmt.Sprintf("tar --sort=name --mtime=@1 --owner=0 --group=0 --numeric-owner -C %s -cf %s nix/store", dir, tars[r])); err != nil {
				return "", err
			}
		}
	}
	var t strings.Builder
	fmt.Fprintf(&t, "| pair | Nix substitution (xz) | full closure (`zstd -19 --long`) | `zstd --patch-from -19 --long` | `xdelta3 -9 -B 1G` | `bsdiff` (tar) | **otter** | otter / best | build | apply | apply peak RSS |\n")
	fmt.Fprintf(&t, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for _, p := range pairs {
		from, to := tars[p.From], tars[p.To]
		out := filepath.Join(work, "out")
		size := func(cmd string) (int64, error) {
			if err := sh(cmd + " > " + out); err != nil {
				return 0, err
			}
			return fileSize(out), nil
		}
		// Nix substitution: every store path the device lacks, as xz.
		missing := missingPaths(filepath.Join(corpus, p.From), filepath.Join(corpus, p.To))
		nixSub, err := size(fmt.Sprintf("tar --sort=name --mtime=@1 --owner=0 --group=0 --numeric-owner -C %s -cf - %s | xz -6 -T1", filepath.Join(corpus, p.To), strings.Join(missing, " ")))
		if err != nil {
			return "", err
		}
		full, err := size("zstd -q -19 --long=27 -c " + to)
		if err != nil {
			return "", err
		}
		patchFrom, err := size(fmt.Sprintf("zstd -q -19 --long=27 --patch-from=%s -c %s", from, to))
		if err != nil {
			return "", err
		}
		xdelta, err := size(fmt.Sprintf("xdelta3 -9 -B 1073741824 -e -c -s %s %s", from, to))
		if err != nil {
			return "", err
		}
		bsd := int64(0)
		if withBsdiff {
			if err := sh(fmt.Sprintf("bsdiff %s %s %s", from, to, out)); err != nil {
				return "", err
			}
			bsd = fileSize(out)
		}
		best := min(nixSub, full, patchFrom, xdelta)
		if bsd > 0 {
			best = min(best, bsd)
		}
		// otter: build the patch, then apply it to a store holding the base.
		patches := filepath.Join(work, "patches-"+p.From+"-"+p.To)
		build, err := measure(otter, "delta", "-q", "--no-publish", "--max-share", "1", "--write", patches, "--from", "oci:"+layout+":"+p.From, "oci:"+layout+":"+p.To)
		if err != nil {
			return "", err
		}
		files, _ := filepath.Glob(filepath.Join(patches, "*.patch"))
		if len(files) != 1 {
			return "", fmt.Errorf("%s->%s: no patch written", p.From, p.To)
		}
		patchSize := fileSize(files[0])
		store := filepath.Join(work, "store")
		exec.Command("rm", "-rf", store).Run()
		if _, err := measure(otter, "extract", "-q", "--no-fsync", "oci:"+layout+":"+p.From, store); err != nil {
			return "", err
		}
		apply, err := measure(otter, "apply", "-q", "--store", store, files[0])
		if err != nil {
			return "", err
		}
		bsdCell := "(skipped)"
		if bsd > 0 {
			bsdCell = commas(bsd)
		}
		fmt.Fprintf(&t, "| %s→%s %s | %s | %s | %s | %s | %s | **%s** | %.2f× | %.1f s | %.1f s | %s |\n",
			p.From, p.To, p.Kind, commas(nixSub), commas(full), commas(patchFrom), commas(xdelta), bsdCell, commas(patchSize),
			float64(patchSize)/float64(best), build.wall.Seconds(), apply.wall.Seconds(), mib(apply.maxRSS))
	}
	return t.String(), nil
}

func sh(cmd string) error {
	out, err := exec.Command("bash", "-o", "pipefail", "-c", cmd).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v\n%s", cmd, err, out)
	}
	return nil
}

// missingPaths lists the store paths of release to that from lacks, as
// paths relative to the release directory.
func missingPaths(from, to string) []string {
	have := map[string]bool{}
	entries, _ := os.ReadDir(filepath.Join(from, "nix", "store"))
	for _, e := range entries {
		have[e.Name()] = true
	}
	var out []string
	entries, _ = os.ReadDir(filepath.Join(to, "nix", "store"))
	for _, e := range entries {
		if !have[e.Name()] {
			out = append(out, filepath.Join("nix", "store", e.Name()))
		}
	}
	return out
}
