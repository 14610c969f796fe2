package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"syscall"

	"github.com/otter-fleet/otter/agent"
	"github.com/otter-fleet/otter/boot"
	"github.com/otter-fleet/otter/build"
	"github.com/otter-fleet/otter/bundle"
	"github.com/otter-fleet/otter/delta"
	"github.com/otter-fleet/otter/device"
	"github.com/otter-fleet/otter/image"
	"github.com/otter-fleet/otter/nix"
	"github.com/otter-fleet/otter/nixdb"
	"github.com/otter-fleet/otter/oci"
	"github.com/otter-fleet/otter/pipelines"
	"github.com/otter-fleet/otter/sign"
)

// Exit codes. docs/cli.md documents them; keep the two in step.
const (
	exitOK        = 0
	exitError     = 1 // anything not listed below
	exitUsage     = 2 // bad flags, arguments or references
	exitInvalid   = 3 // input that otter refuses: NAR hash mismatch, closure not closed, missing store path, not a bundle
	exitNotFound  = 4 // the reference names nothing
	exitRegistry  = 5 // the registry refused the credentials
	exitIntegrity = 6 // stored content does not match its digest: a tampered or truncated blob, a corrupt store path
	exitSetup     = 7 // this machine is not set up: no Nix, no qemu, no binfmt handler or one without the F flag, not root
	exitBuild     = 8 // Nix ran and the build failed
	// Verification refusals, one code each (docs/signing.md).
	exitBadSignature = 10 // a signature does not verify
	exitUnknownKey   = 11 // signed only by keys the trust file does not hold
	exitThreshold    = 12 // fewer trusted signatures than the threshold
	exitExpired      = 13 // the statement expired (freeze attack)
	exitRollback     = 14 // a version lower than the installed one
	exitWrongSystem  = 15 // a statement for another system
	exitWrongChannel = 16 // a statement for another channel
	exitMixAndMatch  = 17 // a statement for another artifact, or of another kind
	exitMalformed    = 18 // a malformed, truncated or oversized statement
	exitNotSigned    = 19 // no signature at all
	exitPatchBase    = 20 // a patch for another base release
	exitPatchInvalid = 21 // a truncated, corrupt, tampered or oversized patch, or one that does not build the target
	// Device refusals (docs/device.md).
	exitRolledBack  = 22  // the new release failed activation, its health check or its tried boot; the device is back on the old one
	exitKnownBad    = 23  // the release failed its health check here before (--retry installs it)
	exitNoSpace     = 24  // not enough free space for the update; nothing changed
	exitBusy        = 25  // another otter holds the device state, or a tried boot waits for otter confirm
	exitInterrupted = 130 // interrupted (Ctrl-C or SIGTERM)
)

var errInterrupted = errors.New("interrupted")

type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usageErrorf(format string, a ...any) error { return &usageError{fmt.Sprintf(format, a...)} }

// exitCode maps an error to otter's exit code: the one place that does.
func exitCode(err error) int {
	var ue *usageError
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, errInterrupted), errors.Is(err, context.Canceled):
		return exitInterrupted
	case errors.As(err, &ue), errors.Is(err, oci.ErrRef), strings.HasPrefix(err.Error(), "Required flag"),
		strings.HasPrefix(err.Error(), "flag provided but not defined"):
		return exitUsage
	case errors.Is(err, device.ErrNoSpace), errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		// Before the integrity checks: a full disk is never tampering.
		return exitNoSpace
	case errors.Is(err, sign.ErrBadSignature):
		return exitBadSignature
	case errors.Is(err, sign.ErrUnknownKey):
		return exitUnknownKey
	case errors.Is(err, sign.ErrThreshold):
		return exitThreshold
	case errors.Is(err, sign.ErrExpired):
		return exitExpired
	case errors.Is(err, sign.ErrRollback):
		return exitRollback
	case errors.Is(err, sign.ErrWrongSystem):
		return exitWrongSystem
	case errors.Is(err, sign.ErrWrongChannel):
		return exitWrongChannel
	case errors.Is(err, sign.ErrDigestMismatch), errors.Is(err, sign.ErrWrongType):
		return exitMixAndMatch
	case errors.Is(err, sign.ErrMalformed), errors.Is(err, sign.ErrOversized):
		return exitMalformed
	case errors.Is(err, sign.ErrNotSigned):
		return exitNotSigned
	case errors.Is(err, sign.ErrKey), errors.Is(err, sign.ErrPassphrase), errors.Is(err, sign.ErrTrust):
		return exitInvalid
	case errors.Is(err, delta.ErrBaseMismatch), errors.Is(err, device.ErrNoPatch):
		return exitPatchBase
	case errors.Is(err, delta.ErrTruncated), errors.Is(err, delta.ErrCorrupt), errors.Is(err, delta.ErrPatchDigest),
		errors.Is(err, delta.ErrTargetMismatch), errors.Is(err, delta.ErrFormat), errors.Is(err, delta.ErrTooLarge):
		return exitPatchInvalid
	case errors.Is(err, bundle.ErrLayerDigest), errors.Is(err, bundle.ErrCorruptPath), errors.Is(err, bundle.ErrLayerFormat):
		return exitIntegrity
	case errors.Is(err, bundle.ErrNarHashMismatch), errors.Is(err, nix.ErrNotClosed), errors.Is(err, nix.ErrNotInClosure),
		errors.Is(err, bundle.ErrMissingPath), errors.Is(err, bundle.ErrNotBundle), errors.Is(err, bundle.ErrConfig),
		errors.Is(err, nix.ErrStorePath), errors.Is(err, nix.ErrHashFormat), errors.Is(err, bundle.ErrBootPart):
		return exitInvalid
	case errors.Is(err, build.ErrNoNix), errors.Is(err, build.ErrNoQemu), errors.Is(err, build.ErrNoBinfmt),
		errors.Is(err, build.ErrNoHandler), errors.Is(err, build.ErrNoFixBinary), errors.Is(err, build.ErrSelfTest),
		errors.Is(err, build.ErrNotRoot):
		return exitSetup
	case errors.Is(err, build.ErrBuildFailed), errors.Is(err, build.ErrNix):
		return exitBuild
	case errors.Is(err, oci.ErrNotFound), errors.Is(err, build.ErrNoAttribute):
		return exitNotFound
	case errors.Is(err, oci.ErrUnauthorized):
		return exitRegistry
	case errors.Is(err, boot.ErrAutoboot):
		return exitInvalid
	case errors.Is(err, oci.ErrTooLarge), errors.Is(err, nix.ErrNARFormat), errors.Is(err, device.ErrState), errors.Is(err, device.ErrNoPrevious):
		return exitInvalid
	case errors.Is(err, pipelines.ErrReleaseFile), errors.Is(err, agent.ErrConfig), errors.Is(err, device.ErrNoWariness):
		return exitUsage
	case errors.Is(err, pipelines.ErrTagTaken):
		return exitInvalid
	case errors.Is(err, image.ErrUnknownBoard):
		return exitUsage
	case errors.Is(err, image.ErrTooSmall), errors.Is(err, image.ErrBootFiles):
		return exitInvalid
	case errors.Is(err, device.ErrHealthCheck), errors.Is(err, device.ErrActivation), errors.Is(err, device.ErrBootFailed):
		return exitRolledBack
	case errors.Is(err, device.ErrKnownBad):
		return exitKnownBad
	case errors.Is(err, device.ErrBusy), errors.Is(err, nixdb.ErrBusy), errors.Is(err, device.ErrOnTrial):
		return exitBusy
	case errors.Is(err, nixdb.ErrConflict):
		return exitIntegrity
	case errors.Is(err, nixdb.ErrNoNix):
		return exitSetup
	}
	return exitError
}

// errorResult is the JSON printed on stdout for a failure under --json.
type errorResult struct {
	Error    string `json:"error"`
	ExitCode int    `json:"exitCode"`
}

func reportError(stdout, stderr io.Writer, args []string, err error, code int) {
	fmt.Fprintf(stderr, "otter: %v\n", err)
	if slices.Contains(args, "--json") {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(errorResult{Error: err.Error(), ExitCode: code})
	}
}
