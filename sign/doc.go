// Package sign makes and checks the signatures otter's devices trust:
// keys ([GenerateKey], PEM that cosign also reads), release and patch
// statements ([Release], [Patch]) in DSSE envelopes ([Envelope]), trust
// roots with thresholds and key rotation ([Trust]), and offline
// verification against a [Policy] that refuses rollback, freeze and
// mix-and-match ([VerifyRelease]). It also writes and checks cosign's
// "simple signing" payloads, so that cosign and otter accept each other's
// signatures.
//
// The package works on bytes only: it never reaches a registry (package
// bundle moves signatures around) and never reads the clock by itself.
// docs/signing.md is the normative format.
package sign
