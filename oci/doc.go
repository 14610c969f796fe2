// Package oci is where bundles live: references (oci:DIR[:TAG],
// oci-archive:FILE, HOST/REPO:TAG), OCI image layouts written atomically,
// registries reached through go-containerregistry, and what is attached to
// a bundle there (signed statements as OCI 1.1 referrers with the tag
// fallback, cosign signatures, patches).
//
// Use [Open] and [Write] for bundles, [Copy] to move one with its
// attachments, [Attach] and [Attached] for statements. The bundle format
// itself is package bundle; this package moves its bytes and never
// interprets a layer.
package oci
