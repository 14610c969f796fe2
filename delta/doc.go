// Package delta makes and applies otter's patches: one file that takes a
// device from the closure of one bundle to the closure of another, built
// with knowledge of how Nix store paths change.
//
// [Diff] matches every new store path of the target with its counterpart
// in the base (same package under another hash), rewrites the base's
// store-path hashes into the target's as Nix itself would, and encodes
// what still differs file by file: copied, bsdiff'ed, zstd-compressed
// against the old file as a dictionary, or sent literally, whichever is
// smallest. [Apply] rebuilds the target's new store paths on a device from
// the installed ones, in a staging directory, and moves a path into the
// store only after its NAR hash matches the target's closure.
//
// The patch format is docs/delta.md. The package reads and writes bytes
// and files; it never reaches a registry.
package delta
