// Package touch proves that code under test touched nothing outside the
// directories it may: inotify watches and before-and-after snapshots.
package touch

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// Touches is the inotify mask Watch reports by default: any open, read,
// write, new, changed, moved or deleted entry.
const Touches = unix.IN_OPEN | unix.IN_ACCESS | unix.IN_MODIFY | unix.IN_CREATE | unix.IN_ATTRIB |
	unix.IN_DELETE | unix.IN_MOVED_TO | unix.IN_MOVED_FROM

// Watch starts watching the directories (not their subdirectories) for
// the events in mask, through inotify, and returns a function that stops
// and lists what happened: the safety tests' proof that nothing outside
// the store was read or written.
func Watch(t testing.TB, mask uint32, dirs ...string) func() []string {
	t.Helper()
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range dirs {
		if _, err := unix.InotifyAddWatch(fd, d, mask); err != nil {
			unix.Close(fd)
			t.Fatal(err)
		}
	}
	return func() []string {
		defer unix.Close(fd)
		var events []string
		buf := make([]byte, 64<<10)
		for {
			n, err := unix.Read(fd, buf)
			if n <= 0 || err != nil {
				return events
			}
			for off := 0; off+unix.SizeofInotifyEvent <= n; {
				m := binary.NativeEndian.Uint32(buf[off+4:])
				l := int(binary.NativeEndian.Uint32(buf[off+12:]))
				name := strings.TrimRight(string(buf[off+unix.SizeofInotifyEvent:off+unix.SizeofInotifyEvent+l]), "\x00")
				if m&unix.IN_IGNORED == 0 {
					events = append(events, fmt.Sprintf("%#x %s", m, name))
				}
				off += unix.SizeofInotifyEvent + l
			}
		}
	}
}

// Snapshot lists every node under dir with its kind, symlink target and
// content hash, to compare before and after.
func Snapshot(t testing.TB, dir string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "%s %v", strings.TrimPrefix(p, dir), d.Type())
		if d.Type().IsRegular() {
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			fmt.Fprintf(&b, " %x", sha256.Sum256(data))
		}
		if d.Type()&fs.ModeSymlink != 0 {
			l, _ := os.Readlink(p)
			b.WriteString(" -> " + l)
		}
		b.WriteByte('\n')
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}
