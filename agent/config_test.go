package agent_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/otter-fleet/otter/agent"
)

// example is testdata/device.yaml with its trust file where the test
// made one.
func example(t testing.TB) (string, []byte) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", "device.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	trust := filepath.Join(t.TempDir(), "trust.json")
	os.WriteFile(trust, []byte("{}"), 0o644)
	return trust, []byte(strings.ReplaceAll(string(data), "/etc/otter/trust.json", trust))
}

func TestParseConfig(t *testing.T) {
	_, data := example(t)
	c, err := agent.Parse("device.yaml", data)
	if err != nil {
		t.Fatal(err)
	}
	if c.Channel != "stable" || c.Schedule.Interval.Duration != 30*time.Minute || c.Schedule.Jitter.Duration != 10*time.Minute ||
		c.HealthTimeout.Duration != 90*time.Second || c.Store != "/nix/store" || c.Nix != "auto" || len(c.Inhibit) != 1 ||
		len(c.Mirrors) != 1 || c.MirrorStall.Duration != 20*time.Second {
		t.Fatalf("parsed %+v", c)
	}
	w, _ := agent.ParseWindow(c.Schedule.Window)
	at := func(h, m int) time.Time { return time.Date(2026, 11, 30, h, m, 0, 0, time.Local) }
	if !w.Open(at(23, 0)) || !w.Open(at(4, 59)) || w.Open(at(5, 0)) || w.Open(at(12, 0)) {
		t.Fatal("the window that wraps midnight is wrong")
	}
	if got := w.Next(at(12, 0)); !got.Equal(at(22, 0)) {
		t.Fatalf("next opening after noon: %v", got)
	}
	if got := w.Next(at(23, 30)); !got.Equal(at(23, 30)) {
		t.Fatalf("inside the window: %v", got)
	}
}

// TestConfigErrors: each mistake is refused naming file:line and field.
func TestConfigErrors(t *testing.T) {
	_, good := example(t)
	for _, tc := range []struct {
		name, from, to, want string
	}{
		{"misspelt field", "keep: 3", "kep: 3", "device.yaml:9: unknown field kep"},
		{"wrong type", "keep: 3", "keep: three", "device.yaml:9"},
		{"bad duration", "interval: 30m", "interval: half an hour", "device.yaml:11"},
		{"jitter over the interval", "jitter: 10m", "jitter: 2h", "device.yaml:12: schedule.jitter"},
		{"keep 0", "keep: 3", "keep: 0", "device.yaml:9: keep"},
		{"bad window", `window: "22:00-05:00"`, `window: "late"`, "device.yaml:15: schedule.window"},
		{"relative inhibit", "- /run/logger/acquiring", "- logger/acquiring", "device.yaml:17: inhibit[0]"},
		{"no trust file", "trust: ", "trust: /nonexistent/trust.json #", "device.yaml:4: trust"},
		{"mirror with a path", "- http://10.0.0.2:5000", "- 10.0.0.2:5000/fleet", ": mirrors: "},
		{"mirror stall 0", "mirrorStall: 20s", "mirrorStall: 0s", ": mirrorStall: "},
		{"wariness 1", "wariness: 0.05", "wariness: 1", ": wariness: "},
		{"wariness -0.1", "wariness: 0.05", "wariness: -0.1", ": wariness: "},
		{"relative machine id", "wariness: 0.05", "machineId: etc/machine-id", ": machineId: "},
		{"nix maybe", "system: aarch64-linux", "system: aarch64-linux\nnix: maybe", "device.yaml:6: nix"},
		{"boot loader grub", "system: aarch64-linux", "system: aarch64-linux\nboot: {loader: grub}", `device.yaml:6: boot: loader "grub": efi or pi`},
		{"pi with one slot", "system: aarch64-linux", "system: aarch64-linux\nboot: {loader: pi, slots: [/dev/mmcblk0p1]}", "boot: pi: two boot partitions, got 1"},
		{"efi without its partition", "system: aarch64-linux", "system: aarch64-linux\nboot: {loader: efi, esp: /nonexistent/esp}", "boot: boot: FAT file system"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := strings.Replace(string(good), tc.from, tc.to, 1)
			if tc.name == "no trust file" {
				lines := strings.Split(string(good), "\n")
				lines[3] = "trust: /nonexistent/trust.json"
				data = strings.Join(lines, "\n")
			}
			_, err := agent.Parse("device.yaml", []byte(data))
			if !errors.Is(err, agent.ErrConfig) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("want %q, got %v", tc.want, err)
			}
		})
	}
}

// FuzzParseConfig: whatever the bytes, Parse returns a config that
// validates or an ErrConfig, never a panic.
func FuzzParseConfig(f *testing.F) {
	trust, good := example(f)
	f.Add(good)
	f.Add([]byte("version: 1\nrelease: r:stable\ntrust: " + trust + "\n"))
	f.Add([]byte("schedule: {interval: 1s, jitter: 2s}"))
	f.Add([]byte("version: 1\nrelease: r:stable\ntrust: " + trust + "\nboot: {loader: efi, esp: /nonexistent}\n"))
	f.Add([]byte("version: 1\nrelease: r:stable\ntrust: " + trust + "\nboot: {loader: pi, slots: [/a]}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := agent.Parse("device.yaml", data)
		if err != nil {
			if !errors.Is(err, agent.ErrConfig) {
				t.Fatalf("an error that is not ErrConfig: %v", err)
			}
			return
		}
		if c.Keep < 1 || c.Schedule.Interval.Duration < time.Second || c.Trust == "" || c.Channel == "" ||
			c.Wariness != nil && (*c.Wariness < 0 || *c.Wariness >= 1) {
			t.Fatalf("an invalid config passed: %+v", c)
		}
	})
}
