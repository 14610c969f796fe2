package device_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/otter-fleet/otter/boot"
	"github.com/otter-fleet/otter/device"
	"github.com/otter-fleet/otter/internal/testutil"
	"github.com/otter-fleet/otter/sign"
)

// FuzzStateFiles: whatever bytes the state directory's JSON files hold
// (journal.json, last.json, failed.json, held.json, boot-trial.json:
// docs/device.md §1), on a device that boots its releases by EFI entries,
// opening the device, its status and its hold end in a value or an
// error, never a panic; a journal otter cannot read is refused, not
// acted on.
func FuzzStateFiles(f *testing.F) {
	f.Add(uint8(0), []byte(`{"target":"sha256:00","from":1,"phase":"fetch"}`))
	f.Add(uint8(1), []byte(`{"action":"update","from":1,"to":2,"result":"ok","time":"2026-11-30T00:00:00Z"}`))
	f.Add(uint8(2), []byte(`{"sha256:00":"health check failed"}`))
	f.Add(uint8(3), []byte(`{"kind":"rollout","message":"m","until":"2026-11-30T00:00:00Z","target":"sha256:00","fraction":0.2}`))
	f.Add(uint8(3), []byte(`[]`))
	f.Add(uint8(4), []byte(`{"phase":"staged","target":"sha256:00","version":2,"from":1,"to":2,"bootId":"b"}`))
	f.Add(uint8(4), []byte(`{"phase":"failed","to":0,"bootId":"a"}`))
	key, err := sign.GenerateKey(sign.Ed25519)
	if err != nil {
		f.Fatal(err)
	}
	trust, err := sign.NewTrust(1, 1, key.Public())
	if err != nil {
		f.Fatal(err)
	}
	names := []string{"journal.json", "last.json", "failed.json", "held.json", "boot-trial.json"}
	f.Fuzz(func(t *testing.T, which uint8, data []byte) {
		st := t.TempDir()
		if err := os.WriteFile(filepath.Join(st, names[int(which)%len(names)]), data, 0o644); err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		cmdline, bootID := filepath.Join(dir, "cmdline"), filepath.Join(dir, "boot_id")
		if err := os.WriteFile(cmdline, []byte("init="+filepath.Join(st, "generations", "2", "root", "init")), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(bootID, []byte("a"), 0o644); err != nil {
			t.Fatal(err)
		}
		d, rec, err := device.Open(context.Background(), device.Config{Store: testutil.TempStore(t), State: st, Trust: trust,
			System: "aarch64-linux", Channel: "stable", NoFsync: true, Now: func() time.Time { return time.Unix(1e9, 0) },
			Boot: &device.Boot{Loader: "efi", ESP: boot.Dir(dir), Cmdline: cmdline, BootID: bootID}})
		if err != nil {
			return
		}
		defer d.Close()
		_, _ = d.Status()
		_, _ = d.Held()
		_, _ = d.Trial()
		_, _ = d.Confirm(context.Background(), rec)
		if g, err := d.Current(); err == nil && g != nil {
			t.Fatalf("a state with no generations has current %+v", g)
		}
	})
}
