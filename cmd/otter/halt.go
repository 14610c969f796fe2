package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/urfave/cli/v2"

	"github.com/otter-fleet/otter/release"
	"github.com/otter-fleet/otter/sign"
)

// haltResult is the --json output of otter halt.
type haltResult struct {
	Reference string     `json:"reference"`
	Digest    v1.Hash    `json:"digest"`
	Halt      *sign.Halt `json:"halt"`
	Attached  v1.Hash    `json:"attached"`
}

func haltCommand() *cli.Command {
	return &cli.Command{
		Name:      "halt",
		Usage:     "stop a release's rollout: devices not yet on it stay where they are",
		ArgsUsage: "REF",
		Description: `Signs a halt statement for the bundle at REF (its digest, release version,
channel and system, and the reason) and attaches it beside the release
statement. While it is in force (until --expires), a device that has not
installed the release does not install it (otter update says why and exits 0);
devices already on it stay on it. To move on, publish a newer release; to
resume the rollout, let the halt expire (docs/signing.md §7).`,
		Flags: append([]cli.Flag{
			&cli.StringSliceFlag{Name: "key", Aliases: []string{"k"}, Required: true, Usage: "private key file, or env://VAR (repeatable)"},
			&cli.StringFlag{Name: "channel", Value: "stable", Usage: "the channel whose rollout stops"},
			&cli.StringFlag{Name: "expires", Value: "30d", Usage: "until when the halt is in force: a duration (720h, 30d) or an RFC 3339 time"},
			&cli.StringFlag{Name: "reason", Required: true, Usage: "why, in one line (shown on every device it holds back)"},
			&cli.Uint64Flag{Name: "release-version", Usage: "the release version (default: the bundle's)"},
		}, registryFlags()...),
		Action: func(c *cli.Context) error {
			o := haltOpts{registry: registryOptsFrom(c), signing: signingOptsFrom(c), channel: c.String("channel"), reason: c.String("reason")}
			return runHalt(c.Context, o, c.Args().Slice(), newUI(c))
		},
	}
}

// haltOpts are otter halt's flags.
type haltOpts struct {
	registry        registryOpts
	signing         signingOpts
	channel, reason string
}

func runHalt(ctx context.Context, o haltOpts, args []string, u *ui) error {
	if len(args) != 1 {
		return usageErrorf("halt takes one bundle reference, got %d arguments", len(args))
	}
	in, err := signingInputs(ctx, o.registry, o.signing, args[0], u)
	if err != nil {
		return err
	}
	signer := release.Signer{Keys: in.keys, Now: in.now, Expires: in.expires, IO: o.registry.io(nil)}
	h, att, err := signer.Halt(ctx, in.ref, in.desc, in.version, o.channel, in.cfg.System, o.reason)
	if errors.Is(err, sign.ErrMalformed) {
		return usageErrorf("%v", err) // --reason or --channel
	}
	if err != nil {
		return err
	}
	res := haltResult{Reference: in.ref.String(), Digest: in.desc.Digest, Halt: h, Attached: att.Digest}
	return u.result(res, func(w io.Writer) {
		fmt.Fprintf(w, "halted %s\n  release %d on %s for %s, until %s: %s\n  statement %s\n",
			res.Reference, h.Version, h.Channel, h.System, h.Expires, h.Reason, res.Attached)
	})
}
