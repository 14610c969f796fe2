package boot

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
)

// ErrAutoboot is an autoboot.txt otter did not write and cannot read.
var ErrAutoboot = errors.New("boot: unreadable autoboot.txt")

// Pi is the tryboot A/B of a Raspberry Pi 4 or 5 (docs/image.md §2): two
// FAT boot partitions, 1 (A) and 2 (B), each holding a whole boot: the
// firmware, kernel, device trees, config.txt, and a cmdline.txt whose
// init= names that slot's generation. autoboot.txt, on partition 1 only,
// says which partition boots (boot_partition in its all section) and which one a
// `reboot '0 tryboot'` boots once (boot_partition in its tryboot section).
//
// An update that needs a reboot writes the inactive slot, then reboots
// with the tryboot flag: the firmware boots the new slot once. Confirm,
// after the new system's health check, makes it the one that boots. A
// tried boot that never confirms (a panic, a hang the watchdog ends, a
// failed health check) comes back on the old slot at the next reset,
// with nothing to undo. Nothing the running slot boots from is written
// but autoboot.txt, and that by Replace.
type Pi struct {
	Slots [2]Volume
	// Cut, when set, is called between two writes: tests stop there, as
	// a power cut would.
	Cut func(step string)
}

// PiState is what autoboot.txt says.
type PiState struct {
	// Active is the partition that boots (1 or 2); Tryboot the one a
	// tryboot reboot boots.
	Active, Tryboot int
	// Missing says there is no autoboot.txt: the firmware then boots
	// partition 1 as an ordinary boot partition.
	Missing bool
}

// Autoboot gives the autoboot.txt that boots active and tries the other.
func Autoboot(active int) []byte {
	return fmt.Appendf(nil, "[all]\ntryboot_a_b=1\nboot_partition=%d\n[tryboot]\nboot_partition=%d\n", active, 3-active)
}

// ParseAutoboot reads an autoboot.txt as the firmware does for otter's
// two slots: boot_partition in the all section, and in the tryboot section.
func ParseAutoboot(data []byte) (PiState, error) {
	st := PiState{Active: 1, Tryboot: 1}
	section := "all"
	sc := bufio.NewScanner(bytes.NewReader(data))
	seen := false
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		switch {
		case l == "" || strings.HasPrefix(l, "#"):
		case strings.HasPrefix(l, "[") && strings.HasSuffix(l, "]"):
			section = strings.Trim(l, "[]")
		case strings.HasPrefix(l, "boot_partition="):
			n, err := strconv.Atoi(strings.TrimPrefix(l, "boot_partition="))
			if err != nil || n < 1 || n > 2 {
				return st, fmt.Errorf("%w: %q", ErrAutoboot, l)
			}
			switch section {
			case "all":
				st.Active, seen = n, true
			case "tryboot":
				st.Tryboot = n
			}
		}
	}
	if !seen {
		return st, fmt.Errorf("%w: no boot_partition in [all]", ErrAutoboot)
	}
	return st, nil
}

// State reads autoboot.txt from partition 1.
func (p *Pi) State() (PiState, error) {
	data, err := p.Slots[0].ReadFile("autoboot.txt")
	if errors.Is(err, os.ErrNotExist) {
		return PiState{Active: 1, Tryboot: 1, Missing: true}, nil
	}
	if err != nil {
		return PiState{}, err
	}
	return ParseAutoboot(data)
}

func (p *Pi) cut(step string) {
	if p.Cut != nil {
		p.Cut(step)
	}
}

// Recover finishes a replacement of autoboot.txt that a power cut
// stopped inside its rename (autoboot.txt gone, autoboot.new complete).
// Until it runs the firmware boots partition 1, a whole slot either way.
func (p *Pi) Recover() error {
	if _, err := p.Slots[0].ReadFile("autoboot.txt"); !errors.Is(err, os.ErrNotExist) {
		return err
	}
	data, err := p.Slots[0].ReadFile("autoboot.new")
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if _, err := ParseAutoboot(data); err != nil {
		return p.Slots[0].Remove("autoboot.new") // cut while it was written
	}
	return Replace(p.Slots[0], "autoboot.txt", data, p.cut)
}

// Stage writes a release's boot files and its cmdline.txt to the slot
// that does not boot, and makes sure autoboot.txt tries that slot: after
// it, `reboot '0 tryboot'` boots the new release once. It returns the
// slot written. The running slot is not touched; autoboot.txt only if it
// does not already try the other slot (then by Replace).
func (p *Pi) Stage(files map[string][]byte, cmdline string) (int, error) {
	if err := p.Recover(); err != nil {
		return 0, err
	}
	st, err := p.State()
	if err != nil {
		return 0, err
	}
	slot := 3 - st.Active
	fs := p.Slots[slot-1]
	// cmdline.txt goes first and comes back last: a half-written slot
	// names no generation to start. (It is not booted unless tried, and a
	// tried boot that fails comes back on the running slot.)
	if err := fs.Remove("cmdline.txt"); err != nil {
		return 0, err
	}
	p.cut("removed cmdline.txt")
	// The previous release's files go: the slot holds exactly the new
	// boot part, and all its room is the boot part's.
	old, err := fs.List("")
	if err != nil {
		return 0, err
	}
	for _, n := range old {
		if n == "autoboot.txt" || n == "autoboot.new" {
			continue // partition 1's: which slot boots, not the slot's boot files
		}
		if err := fs.RemoveAll(n); err != nil {
			return 0, err
		}
	}
	p.cut("emptied the slot")
	names := make([]string, 0, len(files))
	for n := range files {
		if n == "cmdline.txt" || n == "autoboot.txt" {
			return 0, fmt.Errorf("boot: %s is otter's to write", n)
		}
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if err := fs.WriteFile(n, files[n]); err != nil {
			return 0, err
		}
		p.cut("wrote " + n)
	}
	if err := fs.WriteFile("cmdline.txt", []byte(cmdline)); err != nil {
		return 0, err
	}
	p.cut("wrote cmdline.txt")
	if st.Missing || st.Tryboot != slot {
		if err := Replace(p.Slots[0], "autoboot.txt", Autoboot(st.Active), p.cut); err != nil {
			return 0, err
		}
		p.cut("wrote autoboot.txt")
	}
	return slot, nil
}

// Confirm makes slot the one that boots, trying the other next time.
func (p *Pi) Confirm(slot int) error {
	if slot != 1 && slot != 2 {
		return fmt.Errorf("boot: slot %d: 1 or 2", slot)
	}
	if err := p.Recover(); err != nil {
		return err
	}
	return Replace(p.Slots[0], "autoboot.txt", Autoboot(slot), p.cut)
}

// Firmware is what the Raspberry Pi firmware does at a reset, for
// otter's layout: it reads autoboot.txt on partition 1 (none: it boots
// partition 1 itself), picks the tryboot section's partition when the reset was a
// tryboot and the all section's otherwise, and reads that partition's cmdline.txt.
// Tests assert what a device would boot with it.
func Firmware(p *Pi, tryboot bool) (slot int, cmdline string, err error) {
	st, err := p.State()
	if err != nil {
		return 0, "", err
	}
	slot = st.Active
	if tryboot && !st.Missing {
		slot = st.Tryboot
	}
	data, err := p.Slots[slot-1].ReadFile("cmdline.txt")
	if err != nil {
		return slot, "", err
	}
	return slot, strings.TrimSpace(string(data)), nil
}

// Cmdline is the cmdline.txt of the slot whose init= is init ("" when
// neither slot's is).
func (p *Pi) Cmdline(init string) (string, error) {
	for _, fs := range p.Slots {
		data, err := fs.ReadFile("cmdline.txt")
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return "", err
		}
		if l := strings.TrimSpace(string(data)); InitOf(l) == init {
			return l, nil
		}
	}
	return "", nil
}

// InitOf is the init= of a kernel command line.
func InitOf(cmdline string) string {
	for _, f := range strings.Fields(cmdline) {
		if v, ok := strings.CutPrefix(f, "init="); ok {
			return v
		}
	}
	return ""
}
