package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// sh runs a command and returns its error with its output.
func sh(ctx context.Context, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out.String())
	}
	return nil
}

// link is one device's network: a namespace holding eth0, a veth pair
// whose host end is HostIP and whose namespace end is DeviceIP, and a
// token bucket (tc tbf) at Rate on both ends. This kernel has no netem:
// latency and cuts come from the proxy in front of the registries.
type link struct {
	NS, Host         string
	HostIP, DeviceIP string
}

// newLink makes device i's namespace and link. tag keeps names unique
// to this drill (interface names have at most 15 bytes).
func newLink(ctx context.Context, tag string, i int, rate string) (*link, error) {
	l := &link{
		NS: fmt.Sprintf("otter-drill-%s-%d", tag, i), Host: fmt.Sprintf("od%s-%d", tag, i),
		HostIP: fmt.Sprintf("10.213.%d.1", i+1), DeviceIP: fmt.Sprintf("10.213.%d.2", i+1),
	}
	steps := [][]string{
		{"ip", "netns", "add", l.NS},
		{"ip", "link", "add", l.Host, "type", "veth", "peer", "name", "eth0", "netns", l.NS},
		{"ip", "addr", "add", l.HostIP + "/24", "dev", l.Host},
		{"ip", "link", "set", l.Host, "up"},
		{"ip", "netns", "exec", l.NS, "ip", "addr", "add", l.DeviceIP + "/24", "dev", "eth0"},
		{"ip", "netns", "exec", l.NS, "ip", "link", "set", "eth0", "up"},
		{"ip", "netns", "exec", l.NS, "ip", "link", "set", "lo", "up"},
		// Downloads leave the host end; uploads the device's.
		{"tc", "qdisc", "add", "dev", l.Host, "root", "tbf", "rate", rate, "burst", "16kb", "latency", "1s"},
		{"ip", "netns", "exec", l.NS, "tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", rate, "burst", "16kb", "latency", "1s"},
	}
	for _, s := range steps {
		if err := sh(ctx, s[0], s[1:]...); err != nil {
			l.close()
			return nil, err
		}
	}
	return l, nil
}

// close removes the namespace (and with it both ends of the veth).
func (l *link) close() {
	_ = sh(context.Background(), "ip", "netns", "del", l.NS)
	_ = sh(context.Background(), "ip", "link", "del", l.Host)
}

// txBytes is what the host end has sent to the device: every byte of
// its downloads on the wire, headers and TCP/IP included.
func (l *link) txBytes() int64 {
	b, err := os.ReadFile("/sys/class/net/" + l.Host + "/statistics/tx_bytes")
	if err != nil {
		return -1
	}
	var n int64
	fmt.Sscan(string(b), &n)
	return n
}
