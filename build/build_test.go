package build_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/otter-fleet/otter/build"
	"github.com/otter-fleet/otter/internal/testutil"
	"github.com/otter-fleet/otter/nix"
)

func TestSelfTestProgramUnderQemu(t *testing.T) {
	qemu := testutil.Tool(t, "qemu-aarch64-static")
	p := filepath.Join(t.TempDir(), "selftest")
	if err := os.WriteFile(p, build.SelfTestProgram(), 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(qemu, p).CombinedOutput()
	if err != nil || string(out) != build.SelfTestOutput {
		t.Fatalf("qemu-aarch64-static selftest: %v %q", err, out)
	}
	if file, err := exec.LookPath("file"); err == nil {
		desc, _ := exec.Command(file, p).Output()
		if !strings.Contains(string(desc), "ARM aarch64") {
			t.Fatalf("file(1) says %s", desc)
		}
	}
}

// fakeBinfmt makes a directory that looks like binfmt_misc with the given
// entries.
func fakeBinfmt(t *testing.T, entries map[string]string) string {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "register"), nil, 0o200)
	os.WriteFile(filepath.Join(dir, "status"), []byte("enabled\n"), 0o644)
	for name, content := range entries {
		os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644)
	}
	return dir
}

const aarch64Entry = "enabled\ninterpreter /usr/bin/qemu-aarch64-static\nflags: %s\noffset 0\nmagic 7f454c460201010000000000000000000200b700\nmask ffffffffffffff00fffffffffffffffffeffffff\n"

func TestStatusReadsHandlers(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name    string
		entries map[string]string
		mounted bool
		want    error
	}{
		{"not mounted", nil, false, build.ErrNoBinfmt},
		{"no handler", map[string]string{"qemu-arm": "enabled\ninterpreter /usr/bin/qemu-arm\nflags: F\noffset 0\nmagic 7f454c4601010100000000000000000002002800\nmask ffffffffffffff00fffffffffffffffffeffffff\n"}, true, build.ErrNoHandler},
		{"no F flag", map[string]string{"qemu-aarch64": strings.Replace(aarch64Entry, "%s", "OC", 1)}, true, build.ErrNoFixBinary},
		{"good", map[string]string{"qemu-aarch64": strings.Replace(aarch64Entry, "%s", "OCF", 1)}, true, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if tc.mounted {
				dir = fakeBinfmt(t, tc.entries)
			}
			st, err := build.Status(ctx, dir)
			if err != nil {
				t.Fatal(err)
			}
			if st.Mounted != tc.mounted {
				t.Fatalf("mounted %v", st.Mounted)
			}
			got := st.Err()
			if tc.want == nil {
				// The self-test runs on the real machine; only the handler is fake here.
				if st.Handler == nil || st.Handler.Interpreter != "/usr/bin/qemu-aarch64-static" || !st.Handler.FixBinary() {
					t.Fatalf("handler %+v", st.Handler)
				}
				return
			}
			if !errors.Is(got, tc.want) {
				t.Fatalf("want %v, got %v", tc.want, got)
			}
			if build.Fix(got) == "" {
				t.Fatalf("no fix for %v", got)
			}
		})
	}
}

func TestInstallErrors(t *testing.T) {
	if _, err := build.Install(t.TempDir(), "/nonexistent/qemu-aarch64-static"); !errors.Is(err, build.ErrNoQemu) {
		t.Fatalf("missing interpreter: %v", err)
	}
	if build.Fix(build.ErrNoQemu) == "" || !strings.Contains(build.Fix(build.ErrNoQemu), "qemu-user-static") {
		t.Fatal("the fix for a missing qemu does not name the package")
	}
}

// TestInstallOnThisMachine registers the handler for real: idempotently,
// and replacing a registration without the F flag.
func TestInstallOnThisMachine(t *testing.T) {
	testutil.Require(t, os.Geteuid() == 0, "root, to register binfmt handlers")
	testutil.LockBinfmt(t, true)
	ctx := context.Background()
	qemu, err := build.FindInterpreter()
	testutil.Require(t, err == nil, "qemu-aarch64-static (apt-get install qemu-user-static)")
	dir := build.DefaultBinfmtDir
	if _, err := build.Install(dir, qemu); err != nil {
		t.Fatal(err)
	}
	again, err := build.Install(dir, qemu)
	if err != nil || again.Registered || len(again.Replaced) != 0 {
		t.Fatalf("second install changed something: %+v %v", again, err)
	}
	// Replace it with a registration lacking F, as Debian's own may be.
	if err := os.WriteFile(filepath.Join(dir, build.EntryName), []byte("-1"), 0); err != nil {
		t.Fatal(err)
	}
	noF := ":" + build.EntryName + ":M::\\x7f\\x45\\x4c\\x46\\x02\\x01\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x02\\x00\\xb7\\x00:\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\x00\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xfe\\xff\\xff\\xff:" + qemu + ":"
	if err := os.WriteFile(filepath.Join(dir, "register"), []byte(noF), 0); err != nil {
		t.Fatal(err)
	}
	st, _ := build.Status(ctx, dir)
	if !errors.Is(st.Err(), build.ErrNoFixBinary) {
		t.Fatalf("after registering without F: %v", st.Err())
	}
	res, err := build.Install(dir, qemu)
	if err != nil || !res.Registered || len(res.Replaced) != 1 {
		t.Fatalf("install over a registration without F: %+v %v", res, err)
	}
	st, _ = build.Status(ctx, dir)
	if err := st.Err(); err != nil || !st.SelfTest.OK {
		t.Fatalf("after install: %v %+v", err, st.SelfTest)
	}
}

func TestArgs(t *testing.T) {
	flake := strings.Join(build.Args(build.Installable{Flake: ".#packages.aarch64-linux.app"}, build.Options{
		MaxJobs: 4, Cores: 2, Substituters: "https://cache.example", TrustedPublicKeys: "k:1", Builders: "ssh://arm aarch64-linux",
	}), " ")
	for _, want := range []string{"build --json --no-link --print-build-logs", "--option extra-platforms aarch64-linux", "--max-jobs 4", "--cores 2",
		"--option substituters https://cache.example", "--option trusted-public-keys k:1", "--option builders ssh://arm aarch64-linux", " .#packages.aarch64-linux.app"} {
		if !strings.Contains(flake, want) {
			t.Errorf("flake args %q lack %q", flake, want)
		}
	}
	if strings.Contains(flake, "--system") {
		t.Errorf("a flake names its system itself: %q", flake)
	}
	file := strings.Join(build.Args(build.Installable{File: "default.nix", Attr: "app", Args: map[string]string{"b": "2", "a": "1"}}, build.Options{}), " ")
	if !strings.HasSuffix(file, "--system aarch64-linux --argstr a 1 --argstr b 2 --file default.nix app") {
		t.Errorf("file args %q", file)
	}
}

func TestCheckSaysWhatIsMissing(t *testing.T) {
	ctx := context.Background()
	t.Run("no nix", func(t *testing.T) {
		t.Setenv("PATH", t.TempDir())
		err := build.Check(ctx, build.Options{})
		if !errors.Is(err, build.ErrNoNix) || !strings.Contains(err.Error(), "apt-get install nix-bin") {
			t.Fatalf("got %v", err)
		}
	})
	_, err := exec.LookPath("nix")
	testutil.Require(t, err == nil, "nix (apt-get install nix-bin)")
	t.Run("no binfmt", func(t *testing.T) {
		err := build.Check(ctx, build.Options{BinfmtDir: t.TempDir()})
		if !errors.Is(err, build.ErrNoBinfmt) || !strings.Contains(err.Error(), "otter binfmt install") {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("no F flag", func(t *testing.T) {
		dir := fakeBinfmt(t, map[string]string{"qemu-aarch64": strings.Replace(aarch64Entry, "%s", "", 1)})
		if err := build.Check(ctx, build.Options{BinfmtDir: dir}); !errors.Is(err, build.ErrNoFixBinary) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("remote builders need no emulation", func(t *testing.T) {
		if err := build.Check(ctx, build.Options{BinfmtDir: t.TempDir(), Builders: "ssh://arm aarch64-linux"}); err != nil {
			t.Fatal(err)
		}
	})
}

// crossFile is the test expression, with a fresh tag so Nix really builds.
func crossFile(t *testing.T) (build.Installable, string) {
	tag := testutil.Nonce()
	return build.Installable{File: "../testdata/cross/closure.nix", Attr: "app", Args: map[string]string{"bbdir": testutil.ArmBusybox(t), "tag": tag}}, tag
}

// TestCrossBuild builds the three-path aarch64 closure with real Nix,
// sandboxed, through qemu binfmt: as a file attribute and as a flake.
func TestCrossBuild(t *testing.T) {
	_, err := exec.LookPath("nix")
	testutil.Require(t, err == nil, "nix (apt-get install nix-bin)")
	testutil.LockBinfmt(t, false)
	t.Setenv("NIX_CONFIG", "sandbox = true\nsandbox-fallback = false")
	ctx := context.Background()
	check := func(t *testing.T, res *build.Result, tag string) {
		if len(res.Outputs) != 1 || !strings.HasSuffix(res.Outputs[0].Path, "-otter-cross-app-"+tag) {
			t.Fatalf("outputs %+v", res.Outputs)
		}
		infos, err := nix.QueryClosure(ctx, res.Outputs[0].Path)
		if err != nil {
			t.Fatal(err)
		}
		c, err := nix.NewClosure(res.Outputs[0].Path, infos)
		if err != nil || len(c.Paths) != 3 {
			t.Fatalf("closure of %d paths (%v), want 3", len(c.Paths), err)
		}
		greeting, err := filepath.Glob("/nix/store/*-otter-cross-greeting-" + tag + "/share/greeting")
		if err != nil || len(greeting) != 1 {
			t.Fatal("no greeting built")
		}
		data, _ := os.ReadFile(greeting[0])
		if !strings.Contains(string(data), "built on aarch64") {
			t.Fatalf("the builder did not run as aarch64: %q", data)
		}
	}
	t.Run("file", func(t *testing.T) {
		inst, tag := crossFile(t)
		var log strings.Builder
		res, err := build.Build(ctx, inst, build.Options{Log: &log})
		if err != nil {
			t.Fatalf("%v\n%s", err, log.String())
		}
		if !strings.Contains(log.String(), "building '") {
			t.Errorf("Nix's log was not streamed: %q", log.String())
		}
		check(t, res, tag)
	})
	t.Run("flake", func(t *testing.T) {
		dir := t.TempDir()
		tag := "flake-" + testutil.Nonce()
		for _, f := range []string{"closure.nix", "flake.nix"} {
			data, err := os.ReadFile(filepath.Join("..", "testdata", "cross", f))
			if err != nil {
				t.Fatal(err)
			}
			if f == "flake.nix" {
				data = []byte(strings.Replace(string(data), `tag = "flake"`, `tag = "`+tag+`"`, 1))
			}
			os.WriteFile(filepath.Join(dir, f), data, 0o644)
		}
		os.Mkdir(filepath.Join(dir, "busybox"), 0o755)
		bb, _ := os.ReadFile(filepath.Join(testutil.ArmBusybox(t), "busybox"))
		os.WriteFile(filepath.Join(dir, "busybox", "busybox"), bb, 0o555)
		res, err := build.Build(ctx, build.Installable{Flake: "path:" + dir + "#packages.aarch64-linux.app"}, build.Options{})
		if err != nil {
			t.Fatal(err)
		}
		check(t, res, tag)
		_, err = build.Build(ctx, build.Installable{Flake: "path:" + dir + "#packages.aarch64-linux.nope"}, build.Options{})
		if !errors.Is(err, build.ErrNoAttribute) || !strings.Contains(err.Error(), "nope") {
			t.Fatalf("missing flake attribute: %v", err)
		}
	})
	t.Run("missing attribute", func(t *testing.T) {
		inst, _ := crossFile(t)
		inst.Attr = "nope"
		if _, err := build.Build(ctx, inst, build.Options{}); !errors.Is(err, build.ErrNoAttribute) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("failing build", func(t *testing.T) {
		inst, _ := crossFile(t)
		inst.Args["fail"] = "1"
		_, err := build.Build(ctx, inst, build.Options{})
		if !errors.Is(err, build.ErrBuildFailed) || !strings.Contains(err.Error(), "otter-cross-tools") {
			t.Fatalf("got %v", err)
		}
	})
}
