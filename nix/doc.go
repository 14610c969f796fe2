// Package nix holds the Nix nouns the rest of otter works on: store paths,
// NAR serialisation and hashes, and closures described by path-info.
//
// Use [ParsePathInfo] to read the JSON that `nix path-info --json --recursive`
// prints (both the list shape of Nix 2.8 and the object shape of newer Nix),
// [NewClosure] to make a closure of it (refused unless it is closed), and
// [HashPath] to compute a store path's NAR hash the way
// `nix-store --dump PATH | sha256sum` does; bundle.Build checks a store tree
// against the closure with it.
//
// This package does not talk to a Nix daemon or evaluate Nix expressions; the
// only process it starts is `nix path-info`, in [QueryClosure].
package nix
