// Package otter is the root of otter's module: small, signed, atomic
// updates of Nix closures for fleets of ARM devices. The command is
// cmd/otter; the libraries are nix (store paths, NAR, path-info), bundle
// (the bundle format), oci (layouts, registries, attachments), sign,
// delta and build. See README.md.
package otter
