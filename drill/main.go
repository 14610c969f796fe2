package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"
)

func main() {
	o := Options{Log: os.Stderr}
	var cut int64
	var latency time.Duration
	var keep, asJSON, cacheCost bool
	flag.IntVar(&o.Devices, "devices", 20, "devices in the fleet")
	flag.IntVar(&o.Canaries, "canaries", 2, "devices with wariness 0 (r4 reaches them first; the halt comes after they roll back)")
	flag.StringVar(&o.Rate, "rate", "1mbit", "each device's bandwidth, each way (tc tbf)")
	flag.DurationVar(&latency, "latency", 300*time.Millisecond, "round-trip latency added by the proxy")
	flag.Int64Var(&cut, "cut", 64<<10, "cut every connection after this many bytes towards the device (0: never)")
	flag.DurationVar(&o.Interval, "interval", 10*time.Second, "the agents' poll interval")
	flag.DurationVar(&o.R3Rollout, "r3-rollout", 4*time.Minute, "r3's rollout, 20% to 100%")
	flag.DurationVar(&o.R4Rollout, "r4-rollout", 10*time.Minute, "r4's rollout, 0% to 100%")
	flag.Float64Var(&o.Cautious, "cautious", 0.3, "the least wariness of a device that is not a canary")
	flag.StringVar(&o.Corpus, "corpus", os.Getenv("OTTER_CORPUS"), "the release corpus (scripts/corpus.sh)")
	flag.StringVar(&o.Work, "work", "", "working directory (default: a temporary one, removed afterwards)")
	flag.BoolVar(&keep, "keep", false, "keep the working directory")
	flag.BoolVar(&asJSON, "json", false, "print the report as JSON")
	flag.BoolVar(&cacheCost, "cache-cost", false, "instead of the drill, measure a site cache on a device: Debian's arm64 docker-registry under qemu-user")
	flag.Parse()
	o.Faults = faults{Latency: latency, CutEvery: cut}
	if err := run(o, keep, asJSON, cacheCost, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func run(o Options, keep, asJSON, cacheCost bool, out io.Writer) error {
	if o.Corpus == "" {
		return fmt.Errorf("drill: no corpus: set OTTER_CORPUS=$(scripts/corpus.sh) or -corpus")
	}
	repo, err := filepath.Abs("..")
	if err != nil {
		return err
	}
	o.Repo = repo
	if o.Work == "" {
		if o.Work, err = os.MkdirTemp("", "otter-drill-"); err != nil {
			return err
		}
		if !keep {
			defer os.RemoveAll(o.Work)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if cacheCost {
		cc, err := measureCacheCost(ctx, o)
		if err != nil {
			return err
		}
		if asJSON {
			return json.NewEncoder(out).Encode(cc)
		}
		printCacheCost(out, cc)
		return nil
	}
	rep, err := Run(ctx, o)
	if err != nil {
		return err
	}
	if asJSON {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	printReport(out, o, rep)
	return nil
}

func kib(n int64) string { return fmt.Sprintf("%.1f KiB", float64(n)/1024) }

// printReport writes the drill's table (docs/benchmarks.md).
func printReport(w io.Writer, o Options, rep *Report) {
	fmt.Fprintf(w, "%d devices (%d canaries) at %s each way, %v round trip, connections cut every %d bytes; agents poll every %v\n\n",
		rep.Devices, rep.Canaries, o.Rate, o.Faults.Latency, o.Faults.CutEvery, o.Interval)
	fmt.Fprintln(w, "| release | patch | origin → site cache: blobs (all) | origin → devices directly: blobs (all) | per device: otter downloaded (min / median / max) | per device: link bytes (median) | devices on it | converged |")
	fmt.Fprintln(w, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
	for _, r := range rep.Releases {
		fmt.Fprintf(w, "| r%d %s | %s | %s = %.2f× the patch (%s) | %s (%s) | %s / %s / %s | %s | %d/%d | %v |\n",
			r.Version, r.What, kib(r.Patch), kib(r.OriginBlobs), float64(r.OriginBlobs)/float64(max(r.Patch, 1)), kib(r.OriginTotal),
			kib(r.DirectBlobs), kib(r.DirectTotal), kib(r.Device[0]), kib(r.Device[1]), kib(r.Device[2]), kib(r.Wire[1]), r.Installed, rep.Devices, r.Converge)
	}
	fmt.Fprintf(w, "\norigin restarted %v after r3's tag moved; %d devices rolled r4 back before the halt (signed %v into r4's rollout; the first other device would have been offered r4 at %v), %d tried it after (watched %v past its full rollout); %d stores verified; %v in all\n",
		rep.OriginRestart, rep.RolledBack, rep.HaltAfter, rep.FirstOffer, rep.InstalledAfterHalt, rep.HaltedWait, rep.StoresChecked, rep.Total)
}
