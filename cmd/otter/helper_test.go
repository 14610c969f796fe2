package main

import (
	"os"
	"os/exec"
	"syscall"
	"testing"

	"github.com/otter-fleet/otter/device"
)

// The helper-process pattern of the standard library's os/exec tests:
// the test binary runs itself as otter, with a crash point the test names,
// so that the shipped binary carries no kill switch.
const helperEnv = "OTTER_TEST_HELPER_CRASH"

func TestMain(m *testing.M) {
	if point, ok := os.LookupEnv(helperEnv); ok {
		device.SetTestHook(func(p string) {
			if p == point {
				syscall.Kill(os.Getpid(), syscall.SIGKILL)
				select {}
			}
		})
		os.Exit(run(append([]string{"otter"}, os.Args[1:]...), os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// crashingOtter is a command running otter with args, killed by SIGKILL
// when it reaches the named point ("" runs it to the end).
func crashingOtter(t *testing.T, point string, args ...string) *exec.Cmd {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), helperEnv+"="+point)
	return cmd
}
