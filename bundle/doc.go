// Package bundle is otter's bundle format: one release of a Nix closure
// as an OCI artifact (docs/bundle.md). [Build] packs a closure from a
// store tree, checking every NAR hash; [ReadConfig] reads and checks a
// bundle's config; [ReadLayer] streams one store path's verified entries;
// [Extract] unpacks a bundle into a store directory.
//
// The package works on go-containerregistry's v1.Image values and never
// reaches a registry itself: package oci reads and writes bundles in
// layouts and registries.
package bundle
