package bundle_test

import (
	"strings"
	"syscall"
)

func mkfifo(p string) error { return syscall.Mkfifo(p, 0o644) }

func contains(s, sub string) bool { return strings.Contains(s, sub) }
