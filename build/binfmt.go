package build

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// DefaultBinfmtDir is where the kernel's binfmt_misc file system is mounted.
const DefaultBinfmtDir = "/proc/sys/fs/binfmt_misc"

// EntryName is the name otter registers the aarch64 handler under, the
// same name Debian's qemu-user-static and NixOS use.
const EntryName = "qemu-aarch64"

// aarch64 ELF magic and mask, as in qemu's scripts/qemu-binfmt-conf.sh.
var (
	aarch64Magic = []byte("\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00")
	aarch64Mask  = []byte("\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff")
)

var (
	// ErrNoBinfmt is returned when binfmt_misc is not mounted.
	ErrNoBinfmt = errors.New("build: binfmt_misc is not mounted")
	// ErrNoHandler is returned when no aarch64 handler is registered.
	ErrNoHandler = errors.New("build: no aarch64 binfmt handler is registered")
	// ErrNoFixBinary is returned when the handler lacks the F flag.
	ErrNoFixBinary = errors.New("build: the aarch64 binfmt handler lacks the F flag")
	// ErrNoQemu is returned when qemu-aarch64-static cannot be found.
	ErrNoQemu = errors.New("build: qemu-aarch64-static not found")
	// ErrNotRoot is returned when registering without the privilege to.
	ErrNotRoot = errors.New("build: registering a binfmt handler needs root")
	// ErrSelfTest is returned when the aarch64 test program does not run.
	ErrSelfTest = errors.New("build: the aarch64 self-test failed")
)

// Fix says how to fix a binfmt problem, as a command a person can run.
func Fix(err error) string {
	switch {
	case errors.Is(err, ErrNoQemu):
		return "apt-get install qemu-user-static (or pass --interpreter)"
	case errors.Is(err, ErrNotRoot):
		return "sudo otter binfmt install"
	case errors.Is(err, ErrNoBinfmt), errors.Is(err, ErrNoHandler), errors.Is(err, ErrNoFixBinary), errors.Is(err, ErrSelfTest):
		return "sudo otter binfmt install (NixOS: boot.binfmt.emulatedSystems = [ \"aarch64-linux\" ])"
	}
	return ""
}

// Handler is a registered binfmt_misc entry.
type Handler struct {
	Name        string `json:"name"`
	Enabled     bool   `json:"enabled"`
	Interpreter string `json:"interpreter"`
	Flags       string `json:"flags"`
	Offset      int    `json:"offset"`
	Magic       string `json:"magic"` // hex
	Mask        string `json:"mask"`  // hex
}

// FixBinary reports the F flag: the kernel opens the interpreter when the
// handler is registered, so it works inside chroots and the Nix sandbox.
func (h *Handler) FixBinary() bool { return strings.Contains(h.Flags, "F") }

// matchesAArch64 reports whether the handler's magic and mask select
// aarch64 ELF executables.
func (h *Handler) matchesAArch64() bool {
	magic, err1 := hex.DecodeString(h.Magic)
	mask, err2 := hex.DecodeString(h.Mask)
	if err1 != nil || h.Offset != 0 || len(magic) < len(aarch64Magic) {
		return false
	}
	if err2 != nil || len(mask) == 0 {
		mask = bytes.Repeat([]byte{0xff}, len(magic))
	}
	for i := range magic {
		if i < len(aarch64Magic) && magic[i]&mask[i] != aarch64Magic[i]&mask[i] {
			return false
		}
	}
	return true
}

// SelfTest is what running the aarch64 test program gave.
type SelfTest struct {
	OK     bool   `json:"ok"`
	Output string `json:"output"`
	Error  string `json:"error,omitempty"`
}

// BinfmtStatus is the state of aarch64 emulation on this machine.
type BinfmtStatus struct {
	Dir      string    `json:"dir"`
	Mounted  bool      `json:"mounted"`
	Handler  *Handler  `json:"handler"`
	SelfTest *SelfTest `json:"selfTest"`
}

// Err returns the first problem the status shows, or nil when aarch64
// programs run and Nix's sandbox can use the handler.
func (s *BinfmtStatus) Err() error {
	switch {
	case !s.Mounted:
		return fmt.Errorf("%w at %s", ErrNoBinfmt, s.Dir)
	case s.Handler == nil:
		return ErrNoHandler
	case !s.Handler.FixBinary():
		return fmt.Errorf("%w (%s registers %s with flags %q); sandboxed Nix builds cannot see the interpreter", ErrNoFixBinary, s.Handler.Name, s.Handler.Interpreter, s.Handler.Flags)
	case s.SelfTest != nil && !s.SelfTest.OK:
		return fmt.Errorf("%w: %s", ErrSelfTest, s.SelfTest.Error)
	}
	return nil
}

// Status inspects binfmt_misc in dir and runs the self-test.
func Status(ctx context.Context, dir string) (*BinfmtStatus, error) {
	s := &BinfmtStatus{Dir: dir}
	if _, err := os.Stat(filepath.Join(dir, "register")); err != nil {
		return s, nil
	}
	s.Mounted = true
	h, err := findHandler(dir)
	if err != nil {
		return s, err
	}
	s.Handler = h
	if h != nil {
		s.SelfTest = RunSelfTest(ctx)
	}
	return s, nil
}

// findHandler returns the handler for aarch64 ELF, preferring the one
// named EntryName.
func findHandler(dir string) (*Handler, error) {
	hs, err := aarch64Handlers(dir)
	if err != nil {
		return nil, err
	}
	var found *Handler
	for _, h := range hs {
		if found == nil || h.Name == EntryName {
			found = h
		}
	}
	return found, nil
}

// aarch64Handlers lists the registered handlers that select aarch64 ELF.
func aarch64Handlers(dir string) ([]*Handler, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var hs []*Handler
	for _, e := range entries {
		if e.Name() == "register" || e.Name() == "status" {
			continue
		}
		if h, err := readHandler(dir, e.Name()); err == nil && h.matchesAArch64() {
			hs = append(hs, h)
		}
	}
	return hs, nil
}

// readHandler parses a binfmt_misc entry file:
//
//	enabled
//	interpreter /usr/bin/qemu-aarch64-static
//	flags: F
//	offset 0
//	magic 7f454c46…
//	mask ffffffff…
func readHandler(dir, name string) (*Handler, error) {
	data, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		return nil, err
	}
	h := &Handler{Name: name}
	for _, line := range strings.Split(string(data), "\n") {
		key, val, _ := strings.Cut(strings.TrimSpace(line), " ")
		switch key {
		case "enabled":
			h.Enabled = true
		case "interpreter":
			h.Interpreter = val
		case "flags:":
			h.Flags = val
		case "offset":
			if _, err := fmt.Sscanf(val, "%d", &h.Offset); err != nil {
				return nil, fmt.Errorf("%w: %s: offset %q", ErrNoHandler, filepath.Join(dir, name), val)
			}
		case "magic":
			h.Magic = val
		case "mask":
			h.Mask = val
		}
	}
	return h, nil
}

// InstallResult says what Install did.
type InstallResult struct {
	Mounted     bool     `json:"mounted"`  // binfmt_misc was mounted by otter
	Replaced    []string `json:"replaced"` // entries removed first (no F flag, other interpreter)
	Registered  bool     `json:"registered"`
	Interpreter string   `json:"interpreter"`
}

// FindInterpreter finds qemu-aarch64-static on PATH.
func FindInterpreter() (string, error) {
	p, err := exec.LookPath("qemu-aarch64-static")
	if err != nil {
		return "", fmt.Errorf("%w on PATH", ErrNoQemu)
	}
	return filepath.Abs(p)
}

// Install registers interpreter for aarch64 ELF with the F flag in dir,
// mounting binfmt_misc there first if it is not. It is idempotent: a
// correct registration is left alone; one without the F flag or with
// another interpreter is removed and registered again.
func Install(dir, interpreter string) (*InstallResult, error) {
	res := &InstallResult{Replaced: []string{}, Interpreter: interpreter}
	fi, err := os.Stat(interpreter)
	if err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
		return res, fmt.Errorf("%w: %s is not an executable file", ErrNoQemu, interpreter)
	}
	if os.Geteuid() != 0 {
		return res, ErrNotRoot
	}
	if _, err := os.Stat(filepath.Join(dir, "register")); err != nil {
		if out, err := exec.Command("mount", "-t", "binfmt_misc", "binfmt_misc", dir).CombinedOutput(); err != nil {
			return res, fmt.Errorf("mounting binfmt_misc at %s: %v: %s", dir, err, strings.TrimSpace(string(out)))
		}
		res.Mounted = true
	}
	hs, err := aarch64Handlers(dir)
	if err != nil {
		return res, err
	}
	for _, h := range hs {
		if h.Name == EntryName && h.Enabled && h.FixBinary() && h.Interpreter == interpreter {
			return res, nil // already right
		}
		// Any other aarch64 handler would shadow or be shadowed by ours.
		if err := os.WriteFile(filepath.Join(dir, h.Name), []byte("-1"), 0); err != nil {
			return res, fmt.Errorf("removing binfmt entry %s: %w", h.Name, err)
		}
		res.Replaced = append(res.Replaced, h.Name)
	}
	if err := os.WriteFile(filepath.Join(dir, "register"), []byte(registration(interpreter)), 0); err != nil {
		return res, fmt.Errorf("registering %s: %w", interpreter, err)
	}
	res.Registered = true
	return res, nil
}

// registration is the line written to binfmt_misc's register file.
func registration(interpreter string) string {
	esc := func(b []byte) string {
		var s strings.Builder
		for _, c := range b {
			fmt.Fprintf(&s, "\\x%02x", c)
		}
		return s.String()
	}
	return fmt.Sprintf(":%s:M::%s:%s:%s:F", EntryName, esc(aarch64Magic), esc(aarch64Mask), interpreter)
}

// SelfTestOutput is what the self-test program prints.
const SelfTestOutput = "otter: aarch64 emulation works\n"

// SelfTestProgram returns a minimal static aarch64 Linux executable that
// writes SelfTestOutput to standard output and exits 0: an ELF header,
// one loadable segment, eight instructions and the message.
func SelfTestProgram() []byte {
	const base = 0x400000
	const codeOff = 64 + 56 // after the ELF and program headers
	msg := []byte(SelfTestOutput)
	code := []uint32{
		0xd2800020,                           // mov x0, #1        (stdout)
		0x10000000 | (28>>2)<<5 | 1,          // adr x1, msg       (28 bytes ahead)
		0xd2800000 | uint32(len(msg))<<5 | 2, // mov x2, #len(msg)
		0xd2800808,                           // mov x8, #64       (write)
		0xd4000001,                           // svc #0
		0xd2800000,                           // mov x0, #0
		0xd2800ba8,                           // mov x8, #93       (exit)
		0xd4000001,                           // svc #0
	}
	var b bytes.Buffer
	le := binary.LittleEndian
	total := uint64(codeOff + 4*len(code) + len(msg))
	b.Write([]byte{0x7f, 'E', 'L', 'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	binary.Write(&b, le, uint16(2))                     // e_type: ET_EXEC
	binary.Write(&b, le, uint16(183))                   // e_machine: EM_AARCH64
	binary.Write(&b, le, uint32(1))                     // e_version
	binary.Write(&b, le, uint64(base+codeOff))          // e_entry
	binary.Write(&b, le, uint64(64))                    // e_phoff
	binary.Write(&b, le, uint64(0))                     // e_shoff
	binary.Write(&b, le, uint32(0))                     // e_flags
	binary.Write(&b, le, []uint16{64, 56, 1, 64, 0, 0}) // ehsize, phentsize, phnum, shentsize, shnum, shstrndx
	binary.Write(&b, le, uint32(1))                     // p_type: PT_LOAD
	binary.Write(&b, le, uint32(5))                     // p_flags: R+X
	binary.Write(&b, le, []uint64{0, base, base, total, total, 0x1000})
	binary.Write(&b, le, code)
	b.Write(msg)
	return b.Bytes()
}

// RunSelfTest writes the self-test program to a temporary file and runs
// it as the kernel would any aarch64 program: through binfmt_misc.
func RunSelfTest(ctx context.Context) *SelfTest {
	st := &SelfTest{}
	f, err := os.CreateTemp("", "otter-aarch64-selftest-")
	if err != nil {
		st.Error = err.Error()
		return st
	}
	defer os.Remove(f.Name())
	_, err = f.Write(SelfTestProgram())
	if err == nil {
		err = f.Chmod(0o755)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		st.Error = err.Error()
		return st
	}
	out, err := exec.CommandContext(ctx, f.Name()).CombinedOutput()
	st.Output = string(out)
	switch {
	case err != nil:
		st.Error = fmt.Sprintf("running an aarch64 program: %v", err)
	case st.Output != SelfTestOutput:
		st.Error = fmt.Sprintf("the aarch64 program printed %q", st.Output)
	default:
		st.OK = true
	}
	return st
}
