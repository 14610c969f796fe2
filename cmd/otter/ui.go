package main

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"

	"github.com/schollz/progressbar/v3"
	"github.com/urfave/cli/v2"
	"golang.org/x/term"

	"github.com/otter-fleet/otter/bundle"
)

// ui is what a command writes through: the result on stdout (text or
// JSON), messages and progress on stderr.
type ui struct {
	out, errw io.Writer
	json      bool
	quiet     bool
	progress  bool
	log       *slog.Logger
}

// flagSet reports whether a boolean flag is set on the command or before it.
func flagSet(c *cli.Context, name string) bool {
	for _, ctx := range c.Lineage() {
		if ctx.IsSet(name) && ctx.Bool(name) {
			return true
		}
	}
	return false
}

func newUI(c *cli.Context) *ui {
	u := &ui{out: c.App.Writer, errw: c.App.ErrWriter, json: flagSet(c, "json"), quiet: flagSet(c, "quiet")}
	level := slog.LevelInfo
	switch {
	case flagSet(c, "verbose"):
		level = slog.LevelDebug
	case u.quiet:
		level = slog.LevelError
	}
	u.log = slog.New(slog.NewTextHandler(u.errw, &slog.HandlerOptions{Level: level}))
	u.progress = !u.json && !u.quiet && !flagSet(c, "no-progress") && isTerminal(u.out) && isTerminal(u.errw)
	return u
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// result prints v as JSON under --json, or calls human otherwise.
func (u *ui) result(v any, human func(w io.Writer)) error {
	if u.json {
		enc := json.NewEncoder(u.out)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	human(u.out)
	return nil
}

// info prints a line for a person on stderr, unless quiet or JSON.
func (u *ui) info(format string, a ...any) {
	if !u.quiet && !u.json {
		fmt.Fprintf(u.errw, format+"\n", a...)
	}
}

// bar returns a progress callback drawing a byte bar on a terminal, and a
// function that finishes it; both are no-ops when progress is off.
func (u *ui) bar(label string) (bundle.Progress, func()) {
	if !u.progress {
		return nil, func() {}
	}
	var (
		mu  sync.Mutex
		bar *progressbar.ProgressBar
	)
	update := func(done, total int64) {
		mu.Lock()
		defer mu.Unlock()
		if bar == nil {
			bar = progressbar.NewOptions64(total,
				progressbar.OptionSetWriter(u.errw),
				progressbar.OptionSetDescription(label),
				progressbar.OptionShowBytes(true),
				progressbar.OptionSetWidth(30),
				progressbar.OptionThrottle(100_000_000),
				progressbar.OptionClearOnFinish())
		}
		if total != bar.GetMax64() {
			bar.ChangeMax64(total)
		}
		_ = bar.Set64(done)
	}
	return update, func() {
		mu.Lock()
		defer mu.Unlock()
		if bar != nil {
			_ = bar.Finish()
		}
	}
}

// humanBytes formats n bytes for a person.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
