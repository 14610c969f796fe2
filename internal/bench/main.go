// Command bench measures otter on the release corpus and prints markdown
// tables; with -write it also replaces the generated sections of
// docs/benchmarks.md. Run it as `go tool -modfile=tools/task/go.mod task bench`, which generates the
// corpus and sets OTTER_CORPUS.
//
// Each command runs as its own process, -runs times after one warm-up run
// (the page cache is warm for every contender alike); the table gives the
// median wall time and the largest peak RSS (wait4's ru_maxrss, which
// covers the children of a shell pipeline).
package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"syscall"
	"time"
)

type measurement struct {
	wall   time.Duration
	maxRSS int64 // bytes
	out    []byte
}

func measure(name string, args ...string) (measurement, error) {
	return measureEnv(nil, name, args...)
}

// measureEnv runs a command (env nil: this process's) and returns its wall
// time, peak RSS and standard output.
func measureEnv(env []string, name string, args ...string) (measurement, error) {
	cmd := exec.Command(name, args...)
	cmd.Env = env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	if err := cmd.Run(); err != nil {
		return measurement{}, fmt.Errorf("%s %s: %v\n%s", name, strings.Join(args, " "), err, stderr.String())
	}
	ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	return measurement{wall: time.Since(start), maxRSS: ru.Maxrss * 1024, out: stdout.Bytes()}, nil
}

// repeat runs setup then the command, runs+1 times, dropping the first.
func repeat(runs int, setup func(), name string, args ...string) (measurement, error) {
	var walls []time.Duration
	var rss int64
	for i := 0; i <= runs; i++ {
		setup()
		m, err := measure(name, args...)
		if err != nil {
			return m, err
		}
		if i == 0 {
			continue
		}
		walls = append(walls, m.wall)
		rss = max(rss, m.maxRSS)
	}
	sort.Slice(walls, func(i, j int) bool { return walls[i] < walls[j] })
	return measurement{wall: walls[len(walls)/2], maxRSS: rss}, nil
}

func dirSize(dir string) int64 {
	var n int64
	filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			n += fi.Size()
		}
		return nil
	})
	return n
}

func fileSize(p string) int64 {
	fi, err := os.Stat(p)
	if err != nil {
		return 0
	}
	return fi.Size()
}

func main() {
	runs := flag.Int("runs", 5, "measured runs of each command")
	release := flag.String("release", "r1", "corpus release to bundle")
	write := flag.String("write", "", "replace the generated sections of this markdown file")
	only := flag.String("only", "", "run only this section: delta, device or image")
	flag.BoolVar(&withBsdiff, "bsdiff", true, "run bsdiff over the whole tar too (about a minute and 1 GB a pair)")
	flag.Parse()
	if err := run(*runs, *release, *write, *only); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

var withBsdiff bool

func run(runs int, release, write, only string) error {
	corpus := os.Getenv("OTTER_CORPUS")
	if corpus == "" {
		return fmt.Errorf("OTTER_CORPUS is not set (run it as `go tool -modfile=tools/task/go.mod task bench`)")
	}
	dir := filepath.Join(corpus, release)
	rootBytes, err := os.ReadFile(filepath.Join(dir, "root"))
	if err != nil {
		return err
	}
	root := strings.TrimSpace(string(rootBytes))
	work, err := os.MkdirTemp("", "otter-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	otter := filepath.Join(work, "otter")
	if out, err := exec.Command("go", "build", "-o", otter, "./cmd/otter").CombinedOutput(); err != nil {
		return fmt.Errorf("building otter: %v\n%s", err, out)
	}
	layout := filepath.Join(work, "layout")
	store := filepath.Join(work, "store")
	tarOut := filepath.Join(work, "closure.tar.zst")
	clean := func(p string) func() {
		return func() { exec.Command("rm", "-rf", p).Run() }
	}

	if only == "image" {
		table, err := imageBench(runs, otter, work, corpus, release)
		if err != nil {
			return err
		}
		fmt.Print(table)
		if write != "" {
			return replaceSection(write, "image", table)
		}
		return nil
	}
	if only == "device" {
		table, err := deviceBench(otter, work, corpus)
		if err != nil {
			return err
		}
		fmt.Print(table)
		if write != "" {
			return replaceSection(write, "device", table)
		}
		return nil
	}
	if only == "delta" {
		table, err := deltaBench(otter, work, corpus, withBsdiff)
		if err != nil {
			return err
		}
		fmt.Print(table)
		if write != "" {
			return replaceSection(write, "delta", table)
		}
		return nil
	}
	bundleM, err := repeat(runs, clean(layout), otter, "bundle", "-q", "--store-dir", dir, "--path-info", filepath.Join(dir, "path-info.json"), root, "--out", "oci:"+layout+":"+release)
	if err != nil {
		return err
	}
	bundleBytes := dirSize(filepath.Join(layout, "blobs"))
	pipeline := fmt.Sprintf("tar --sort=name --mtime=@1 --owner=0 --group=0 --numeric-owner -C %s -cf - nix/store | zstd -q -T0 -3 > %s", dir, tarOut)
	tarM, err := repeat(runs, clean(tarOut), "sh", "-c", pipeline)
	if err != nil {
		return err
	}
	tarBytes := fileSize(tarOut)
	extractM, err := repeat(runs, clean(store), otter, "extract", "-q", "oci:"+layout+":"+release, store)
	if err != nil {
		return err
	}
	untar := fmt.Sprintf("mkdir -p %s && zstd -q -d -c %s | tar -x -C %s", store, tarOut, store)
	untarM, err := repeat(runs, clean(store), "sh", "-c", untar)
	if err != nil {
		return err
	}
	clean(store)()

	var t strings.Builder
	fmt.Fprintf(&t, "Corpus release `%s` (%s of NAR), %d runs after a warm-up, median wall time, largest peak RSS; %d CPUs, %s.\n\n",
		release, mib(narSize(dir)), runs, runtime.NumCPU(), runtime.Version())
	fmt.Fprintf(&t, "| step | command | wall time | peak RSS | output |\n| --- | --- | ---: | ---: | ---: |\n")
	row := func(step, cmd string, m measurement, out int64) {
		fmt.Fprintf(&t, "| %s | %s | %.2f s | %s | %s |\n", step, cmd, m.wall.Seconds(), mib(m.maxRSS), outSize(out))
	}
	row("pack", "`otter bundle` (NAR hashes checked, OCI layout written)", bundleM, bundleBytes)
	row("pack", "`tar --sort=name … \\| zstd -T0 -3` (baseline)", tarM, tarBytes)
	row("unpack", "`otter extract` (digests and NAR hashes checked, fsync)", extractM, 0)
	row("unpack", "`zstd -d \\| tar -x` (baseline)", untarM, 0)
	fmt.Fprintf(&t, "\n`otter bundle` / baseline wall time: **%.2f×** (goal ≤ 1.2×).\n", bundleM.wall.Seconds()/tarM.wall.Seconds())
	table := t.String()
	fmt.Print(table)
	emu, err := emulationCost(runs, work, corpus)
	if err != nil {
		return err
	}
	fmt.Print("\n" + emu)
	gobench, err := goBench()
	if err != nil {
		return err
	}
	fmt.Print("\n" + gobench)
	deltaTable, deviceTable, imageTable := "", "", ""
	if only == "" {
		if deltaTable, err = deltaBench(otter, work, corpus, withBsdiff); err != nil {
			return err
		}
		fmt.Print("\n" + deltaTable)
		if deviceTable, err = deviceBench(otter, work, corpus); err != nil {
			return err
		}
		fmt.Print("\n" + deviceTable)
		if imageTable, err = imageBench(runs, otter, work, corpus, release); err != nil {
			return err
		}
		fmt.Print("\n" + imageTable)
	}
	if write != "" {
		if err := replaceSection(write, "bundle", table); err != nil {
			return err
		}
		if deltaTable != "" {
			if err := replaceSection(write, "delta", deltaTable); err != nil {
				return err
			}
			if err := replaceSection(write, "device", deviceTable); err != nil {
				return err
			}
			if err := replaceSection(write, "image", imageTable); err != nil {
				return err
			}
		}
		if err := replaceSection(write, "emulation", emu); err != nil {
			return err
		}
		return replaceSection(write, "gobench", gobench)
	}
	return nil
}

// goBench runs the bundle package's Go benchmarks and returns their lines.
func goBench() (string, error) {
	out, err := exec.Command("go", "test", "./bundle", "-run", "^$", "-bench", ".", "-benchmem", "-benchtime", "3x").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go test -bench: %v\n%s", err, out)
	}
	var b strings.Builder
	b.WriteString("```\n")
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "Benchmark") || strings.HasPrefix(l, "cpu:") {
			b.WriteString(l + "\n")
		}
	}
	b.WriteString("```\n")
	return b.String(), nil
}

func narSize(dir string) int64 {
	data, err := os.ReadFile(filepath.Join(dir, "path-info.json"))
	if err != nil {
		return 0
	}
	var n int64
	for _, f := range strings.Split(string(data), "\"narSize\":") {
		var v int64
		if _, err := fmt.Sscanf(strings.TrimSpace(f), "%d", &v); err == nil {
			n += v
		}
	}
	return n
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

func outSize(n int64) string {
	if n == 0 {
		return "—"
	}
	return fmt.Sprintf("%s B", commas(n))
}

func commas(n int64) string {
	s := fmt.Sprint(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

// replaceSection replaces the text between <!-- bench:NAME --> and
// <!-- /bench:NAME --> in the markdown file p.
func replaceSection(p, name, body string) error {
	data, err := os.ReadFile(p)
	if err != nil {
		return err
	}
	open, end := "<!-- bench:"+name+" -->", "<!-- /bench:"+name+" -->"
	s := string(data)
	i, j := strings.Index(s, open), strings.Index(s, end)
	if i < 0 || j < i {
		return fmt.Errorf("%s has no %s … %s section", p, open, end)
	}
	s = s[:i+len(open)] + "\n" + body + s[j:]
	return os.WriteFile(p, []byte(s), 0o644)
}

// emulationCost runs the same busybox work natively (the host's busybox)
// and as aarch64 under qemu through binfmt (the corpus's arm64 busybox).
func emulationCost(runs int, work, corpus string) (string, error) {
	native, err := exec.LookPath("busybox")
	if err != nil {
		return "", fmt.Errorf("busybox: %w (apt-get install busybox-static)", err)
	}
	arm, _ := filepath.Glob(filepath.Join(corpus, "r1", "nix", "store", "*-busybox-*", "bin", "busybox"))
	if len(arm) != 1 {
		return "", fmt.Errorf("no arm64 busybox in the corpus")
	}
	data := filepath.Join(work, "data")
	// 64 MiB of the corpus's files: real binaries, not zeros.
	script := fmt.Sprintf("find %s/r1/nix/store -type f -size +100k | head -40 | xargs cat | head -c 67108864 > %s", corpus, data)
	if out, err := exec.Command("sh", "-c", script).CombinedOutput(); err != nil {
		return "", fmt.Errorf("%v: %s", err, out)
	}
	var t strings.Builder
	fmt.Fprintf(&t, "| work (64 MiB of corpus binaries) | x86_64 native | aarch64 under qemu | slowdown |\n| --- | ---: | ---: | ---: |\n")
	for _, w := range []struct{ name, cmd string }{
		{"`busybox sha256sum`", "sha256sum " + data},
		{"`busybox gzip -6`", "gzip -6 -c " + data},
	} {
		n, err := repeat(runs, func() {}, "sh", "-c", native+" "+w.cmd+" > /dev/null")
		if err != nil {
			return "", err
		}
		a, err := repeat(runs, func() {}, "sh", "-c", arm[0]+" "+w.cmd+" > /dev/null")
		if err != nil {
			return "", err
		}
		fmt.Fprintf(&t, "| %s | %.2f s | %.2f s | %.1f× |\n", w.name, n.wall.Seconds(), a.wall.Seconds(), a.wall.Seconds()/n.wall.Seconds())
	}
	return t.String(), nil
}
