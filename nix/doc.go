// Package nix holds the Nix nouns the rest of otter works on: store paths,
// NAR serialisation and hashes, and closures described by path-info.
//
// Use [ReadPathInfo] to read the JSON that `nix path-info --json --recursive`
// prints (both the list shape of Nix 2.8 and the object shape of newer Nix),
// [Closure.Verify] to check a store tree against it, and [HashPath] to compute
// a store path's NAR hash the way `nix-store --dump PATH | sha256sum` does.
//
// This package does not talk to a Nix daemon or evaluate Nix expressions; the
// only process it starts is `nix path-info`, in [QueryClosure].
package nix
