package boot

import (
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// Tries is how many times a new EFI entry is tried before systemd-boot
// gives up on it.
const Tries = 3

// EFI is the boot-level A/B of a generic (UEFI) device with systemd-boot
// on its EFI system partition, by the Boot Loader Specification (Type
// #1) and systemd-boot's boot counting: one entry per kept generation,
// loader/entries/otter-N.conf, whose kernel and initrd are copied to
// /otter/N/ on the ESP and whose options start generation N's init.
//
// A new generation's entry is written with tries left in its name
// (otter-N+3.conf): systemd-boot boots the newest entry, renaming it at
// each try (+2-1, +1-2, +0-3); an entry with no tries left is bad and
// sorted last, so the next reset boots the newest good one. Confirm drops
// the counter (otter-N.conf), as systemd-bless-boot does. No entry the
// running system booted from is written.
type EFI struct {
	ESP Volume
	// Cut, when set, is called between two writes (tests).
	Cut func(step string)
}

var entryRE = regexp.MustCompile(`^otter-([0-9]+)(?:\+([0-9]+)(?:-([0-9]+))?)?\.conf$`)

// Entry is one boot entry.
type Entry struct {
	Generation int
	// Counted says the name carries a counter; Left and Done are its
	// tries left and done.
	Counted    bool
	Left, Done int
	Name       string
}

// Bad says systemd-boot will not pick the entry by default any more.
func (e Entry) Bad() bool { return e.Counted && e.Left == 0 }

func (e Entry) name() string {
	switch {
	case !e.Counted:
		return fmt.Sprintf("otter-%d.conf", e.Generation)
	case e.Done == 0:
		return fmt.Sprintf("otter-%d+%d.conf", e.Generation, e.Left)
	default:
		return fmt.Sprintf("otter-%d+%d-%d.conf", e.Generation, e.Left, e.Done)
	}
}

func (x *EFI) cut(step string) {
	if x.Cut != nil {
		x.Cut(step)
	}
}

// Entries lists otter's entries in systemd-boot's order: good entries
// newest generation first, then bad ones.
func (x *EFI) Entries() ([]Entry, error) {
	names, err := x.ESP.List("loader/entries")
	if err != nil {
		return nil, err
	}
	var es []Entry
	for _, base := range names {
		m := entryRE.FindStringSubmatch(base)
		if m == nil {
			continue
		}
		e := Entry{Name: base}
		e.Generation, _ = strconv.Atoi(m[1])
		if m[2] != "" {
			e.Counted = true
			e.Left, _ = strconv.Atoi(m[2])
			if m[3] != "" {
				e.Done, _ = strconv.Atoi(m[3])
			}
		}
		es = append(es, e)
	}
	sort.Slice(es, func(i, j int) bool {
		if es[i].Bad() != es[j].Bad() {
			return !es[i].Bad()
		}
		return es[i].Generation > es[j].Generation
	})
	return es, nil
}

// Stage copies generation n's kernel and initrd to /otter/N/ on the ESP
// (initrd nil: none) and writes its entry, last, with Tries tries left: the next reset tries
// it. options is the kernel command line; it must start n's init.
func (x *EFI) Stage(n int, kernel, initrd []byte, title, options string) error {
	if InitOf(options) == "" {
		return errors.New("boot: the entry's options name no init=")
	}
	dir := fmt.Sprintf("otter/%d", n)
	for _, d := range []string{dir, "loader/entries"} {
		if err := x.ESP.MkdirAll(d); err != nil {
			return err
		}
	}
	if err := x.ESP.WriteFile(dir+"/linux", kernel); err != nil {
		return err
	}
	x.cut("wrote the kernel")
	conf := fmt.Sprintf("title %s\nsort-key otter\nversion %d\nlinux /%s/linux\n", title, n, dir)
	if initrd != nil {
		if err := x.ESP.WriteFile(dir+"/initrd", initrd); err != nil {
			return err
		}
		x.cut("wrote the initrd")
		conf += fmt.Sprintf("initrd /%s/initrd\n", dir)
	}
	conf += fmt.Sprintf("options %s\n", strings.TrimSpace(options))
	e := Entry{Generation: n, Counted: true, Left: Tries}
	// The entry appears complete or not at all: written aside, renamed.
	if err := x.ESP.WriteFile("loader/entries/otter.new", []byte(conf)); err != nil {
		return err
	}
	x.cut("wrote the entry aside")
	return x.ESP.Rename("loader/entries/otter.new", "loader/entries/"+e.name())
}

// Options is the options line of generation n's entry ("" when it has
// none).
func (x *EFI) Options(n int) (string, error) {
	es, err := x.Entries()
	if err != nil {
		return "", err
	}
	for _, e := range es {
		if e.Generation != n {
			continue
		}
		data, err := x.ESP.ReadFile("loader/entries/" + e.Name)
		if err != nil {
			return "", err
		}
		return optionsOf(data), nil
	}
	return "", nil
}

func optionsOf(entry []byte) string {
	for _, l := range strings.Split(string(entry), "\n") {
		if v, ok := strings.CutPrefix(l, "options "); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// Confirm drops the counter from generation n's entry: it is good.
func (x *EFI) Confirm(n int) error {
	es, err := x.Entries()
	if err != nil {
		return err
	}
	for _, e := range es {
		if e.Generation == n && e.Counted {
			good := Entry{Generation: n}
			return x.ESP.Rename("loader/entries/"+e.Name, "loader/entries/"+good.name())
		}
	}
	return nil
}

// Remove drops generation n's entry (first, so nothing names the files)
// and then its kernel and initrd.
func (x *EFI) Remove(n int) error {
	es, err := x.Entries()
	if err != nil {
		return err
	}
	for _, e := range es {
		if e.Generation == n {
			if err := x.ESP.Remove("loader/entries/" + e.Name); err != nil {
				return err
			}
		}
	}
	return x.ESP.RemoveAll(fmt.Sprintf("otter/%d", n))
}

// Firmware is what systemd-boot does at a reset, for otter's entries: it
// picks the first entry in its order, and if that entry is counted it
// renames it to count the try before booting it. It returns the entry
// booted and its options line.
func FirmwareEFI(x *EFI) (Entry, string, error) {
	es, err := x.Entries()
	if err != nil || len(es) == 0 {
		return Entry{}, "", fmt.Errorf("boot: no entry to boot (%v)", err)
	}
	e := es[0]
	if e.Counted && e.Left > 0 {
		next := Entry{Generation: e.Generation, Counted: true, Left: e.Left - 1, Done: e.Done + 1}
		if err := x.ESP.Rename("loader/entries/"+e.Name, "loader/entries/"+next.name()); err != nil {
			return e, "", err
		}
		next.Name = next.name()
		e = next
	}
	data, err := x.ESP.ReadFile("loader/entries/" + e.Name)
	if err != nil {
		return e, "", err
	}
	if o := optionsOf(data); o != "" {
		return e, o, nil
	}
	return e, "", fmt.Errorf("boot: %s has no options", e.Name)
}
