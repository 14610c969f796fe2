package main

import (
	"cmp"
	"context"
	"crypto"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/urfave/cli/v2"
	"golang.org/x/term"

	"github.com/otter-fleet/otter/bundle"
	"github.com/otter-fleet/otter/internal/fsutil"
	"github.com/otter-fleet/otter/oci"
	"github.com/otter-fleet/otter/release"
	"github.com/otter-fleet/otter/sign"
)

// passphraseEnv holds the private key's passphrase for CI.
const passphraseEnv = "OTTER_PASSWORD"

// readPassphrase takes the passphrase from OTTER_PASSWORD, else asks on
// the terminal (twice when confirm), else it is empty.
func readPassphrase(u *ui, confirm bool) ([]byte, error) {
	if p, ok := os.LookupEnv(passphraseEnv); ok {
		return []byte(p), nil
	}
	fd := int(os.Stdin.Fd())
	if !term.IsTerminal(fd) {
		return nil, nil
	}
	fmt.Fprint(u.errw, "passphrase for the private key: ")
	p, err := term.ReadPassword(fd)
	fmt.Fprintln(u.errw)
	if err != nil || !confirm {
		return p, err
	}
	fmt.Fprint(u.errw, "again: ")
	again, err := term.ReadPassword(fd)
	fmt.Fprintln(u.errw)
	if err != nil {
		return nil, err
	}
	if string(again) != string(p) {
		return nil, usageErrorf("the passphrases differ")
	}
	return p, nil
}

// loadKey reads a private key from a file or, as env://VAR, from an
// environment variable (for CI secret stores).
func loadKey(u *ui, spec string) (crypto.Signer, error) {
	var data []byte
	if name, ok := strings.CutPrefix(spec, "env://"); ok {
		v, ok := os.LookupEnv(name)
		if !ok || v == "" {
			return nil, usageErrorf("--key %s: the environment variable %s is not set", spec, name)
		}
		data = []byte(v)
	} else {
		var err error
		if data, err = os.ReadFile(spec); err != nil {
			return nil, fmt.Errorf("reading the private key: %w", err)
		}
	}
	pass, err := readPassphrase(u, false)
	if err != nil {
		return nil, err
	}
	k, err := sign.ParsePrivateKey(data, pass)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", spec, err)
	}
	return k, nil
}

// signing is what sign, halt and delta start from: the --key keys, the
// time and --expires, the bundle named by the first argument, and the
// release version (--release-version, else the bundle's).
type signing struct {
	keys         []crypto.Signer
	now, expires time.Time
	ref          oci.Ref
	img          v1.Image
	cfg          *bundle.Config
	desc         v1.Descriptor
	version      uint64
}

// signingOpts are the --key, --expires and --release-version flags of
// sign, halt and delta.
type signingOpts struct {
	keys    []string
	expires string
	version *uint64 // nil: the bundle's
}

func signingOptsFrom(c *cli.Context) signingOpts {
	o := signingOpts{keys: c.StringSlice("key"), expires: c.String("expires")}
	if c.IsSet("release-version") {
		v := c.Uint64("release-version")
		o.version = &v
	}
	return o
}

// signingInputs loads the keys, reads the expiry and opens the bundle arg.
func signingInputs(ctx context.Context, reg registryOpts, so signingOpts, arg string, u *ui) (*signing, error) {
	in := &signing{now: time.Now().UTC()}
	var err error
	if in.keys, err = loadKeys(u, so.keys); err != nil {
		return nil, err
	}
	if in.expires, err = parseExpiry(so.expires, in.now); err != nil {
		return nil, err
	}
	if in.ref, in.img, in.cfg, err = reg.open(ctx, arg); err != nil {
		return nil, err
	}
	if in.desc, err = oci.DescriptorOf(in.img); err != nil {
		return nil, err
	}
	in.version = in.cfg.Version
	if so.version != nil {
		in.version = *so.version
	}
	return in, nil
}

// loadKeys loads every --key.
func loadKeys(u *ui, specs []string) ([]crypto.Signer, error) {
	var keys []crypto.Signer
	for _, spec := range specs {
		k, err := loadKey(u, spec)
		if err != nil {
			return nil, err
		}
		keys = append(keys, k)
	}
	return keys, nil
}

// keygenResult is the --json output of otter keygen.
type keygenResult struct {
	PrivateKey string `json:"privateKey"`
	PublicKey  string `json:"publicKey"`
	KeyID      string `json:"keyid"`
	Algorithm  string `json:"algorithm"`
	Encrypted  bool   `json:"encrypted"`
}

func keygenCommand() *cli.Command {
	return &cli.Command{
		Name:  "keygen",
		Usage: "make a signing key pair (PEM that cosign reads too)",
		Description: `Writes PREFIX.key (the private key, encrypted with a passphrase the way cosign
encrypts its keys) and PREFIX.pub (the public key, PKIX PEM). The passphrase
comes from OTTER_PASSWORD, else a prompt; --no-passphrase leaves it empty.
ECDSA P-256 is the default and interoperates with cosign; Ed25519 is for
otter-only verification.`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "prefix", Value: "otter", Usage: "write PREFIX.key and PREFIX.pub"},
			&cli.StringFlag{Name: "algorithm", Value: string(sign.ECDSAP256), Usage: "ecdsa-p256 or ed25519"},
			&cli.BoolFlag{Name: "no-passphrase", Usage: "encrypt with an empty passphrase"},
			&cli.BoolFlag{Name: "force", Usage: "overwrite existing files"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 0 {
				return usageErrorf("keygen takes no arguments (--prefix names the files)")
			}
			o := keygenOpts{prefix: c.String("prefix"), algorithm: c.String("algorithm"), noPassphrase: c.Bool("no-passphrase"), force: c.Bool("force")}
			return runKeygen(o, newUI(c))
		},
	}
}

// keygenOpts are otter keygen's flags.
type keygenOpts struct {
	prefix, algorithm   string
	noPassphrase, force bool
}

func runKeygen(o keygenOpts, u *ui) error {
	keyFile, pubFile := o.prefix+".key", o.prefix+".pub"
	if !o.force {
		for _, f := range []string{keyFile, pubFile} {
			if _, err := os.Stat(f); err == nil {
				return usageErrorf("%s exists (--force to overwrite)", f)
			}
		}
	}
	var pass []byte
	if !o.noPassphrase {
		var err error
		if pass, err = readPassphrase(u, true); err != nil {
			return err
		}
		if pass == nil {
			return usageErrorf("no passphrase: set %s, run on a terminal, or pass --no-passphrase", passphraseEnv)
		}
	}
	k, err := sign.GenerateKey(sign.Algorithm(o.algorithm))
	if err != nil {
		return usageErrorf("%v", err)
	}
	priv, err := sign.MarshalPrivateKey(k, pass)
	if err != nil {
		return err
	}
	pub, err := sign.MarshalPublicKey(k.Public())
	if err != nil {
		return err
	}
	if err := fsutil.AtomicWrite(keyFile, priv, 0o600); err != nil {
		return err
	}
	if err := fsutil.AtomicWrite(pubFile, pub, 0o644); err != nil {
		return err
	}
	id, _ := sign.KeyID(k.Public())
	res := keygenResult{PrivateKey: keyFile, PublicKey: pubFile, KeyID: id, Algorithm: o.algorithm, Encrypted: len(pass) > 0}
	return u.result(res, func(w io.Writer) {
		fmt.Fprintf(w, "wrote %s and %s\n  key id %s (%s)\n", keyFile, pubFile, id, res.Algorithm)
	})
}

// parseRollout reads --rollout, else the release file's value (empty:
// no schedule), as of now.
func parseRollout(flag, file string, now time.Time) (*sign.Rollout, error) {
	s := cmp.Or(flag, file)
	if s == "" {
		return nil, nil
	}
	r, err := sign.ParseRollout(s, now)
	if err != nil {
		return nil, usageErrorf("--rollout: %v", err)
	}
	return r, nil
}

// parseExpiry reads --expires: a duration from now (720h) or a time.
func parseExpiry(s string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil {
		if d <= 0 {
			return time.Time{}, usageErrorf("--expires %s is not in the future", s)
		}
		return now.Add(d), nil
	}
	if strings.HasSuffix(s, "d") {
		var days int
		if _, err := fmt.Sscanf(s, "%dd", &days); err == nil && days > 0 {
			return now.AddDate(0, 0, days), nil
		}
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, usageErrorf("--expires %q: want a duration (720h, 30d) or an RFC 3339 time", s)
	}
	return t, nil
}

// signResult is the --json output of otter sign.
type signResult struct {
	Reference string        `json:"reference"`
	Digest    v1.Hash       `json:"digest"`
	Statement *sign.Release `json:"statement"`
	Signers   []string      `json:"signers"`
	Attached  v1.Hash       `json:"attached"`
	Cosign    bool          `json:"cosign"`
	Envelope  string        `json:"envelope,omitempty"`
}

func signCommand() *cli.Command {
	return &cli.Command{
		Name:      "sign",
		Usage:     "sign a bundle: a release statement, and a cosign signature",
		ArgsUsage: "REF",
		Description: `Signs a release statement for the bundle at REF (its digest, release version,
channel, system, root store path, creation and expiry time) and attaches it as
an OCI 1.1 referrer of the bundle (with the sha256-<hex> tag fallback). With an
ECDSA key it also writes a cosign signature (sha256-<hex>.sig) carrying the
channel, version and expiry as claims, so cosign verify --key accepts the
bundle. --key may be given several times for k-of-n trust roots.`,
		Flags: append([]cli.Flag{
			&cli.StringSliceFlag{Name: "key", Aliases: []string{"k"}, Required: true, Usage: "private key file, or env://VAR (repeatable)"},
			&cli.StringFlag{Name: "channel", Value: "stable", Usage: "the channel this release is for"},
			&cli.StringFlag{Name: "expires", Value: "30d", Usage: "expiry: a duration (720h, 30d) or an RFC 3339 time"},
			&cli.Uint64Flag{Name: "release-version", Usage: "the release version (default: the bundle's)"},
			&cli.BoolFlag{Name: "no-cosign", Usage: "do not write a cosign signature"},
			&cli.StringFlag{Name: "envelope-out", Usage: "also write the signed statement to this file"},
			&cli.StringFlag{Name: "rollout", Usage: "stage the release: PERCENT%:DURATION[@START], e.g. 10%:48h (docs/signing.md §7)"},
		}, registryFlags()...),
		Action: func(c *cli.Context) error {
			o := signOpts{
				registry: registryOptsFrom(c), signing: signingOptsFrom(c), channel: c.String("channel"),
				noCosign: c.Bool("no-cosign"), envelopeOut: c.String("envelope-out"), rollout: c.String("rollout"),
			}
			return runSign(c.Context, o, c.Args().Slice(), newUI(c))
		},
	}
}

// signOpts are otter sign's flags.
type signOpts struct {
	registry             registryOpts
	signing              signingOpts
	channel, envelopeOut string
	rollout              string
	noCosign             bool
}

func runSign(ctx context.Context, o signOpts, args []string, u *ui) error {
	if len(args) != 1 {
		return usageErrorf("sign takes one bundle reference, got %d arguments", len(args))
	}
	in, err := signingInputs(ctx, o.registry, o.signing, args[0], u)
	if err != nil {
		return err
	}
	ref, cfg, desc, keys, now, expires := in.ref, in.cfg, in.desc, in.keys, in.now, in.expires
	version := in.version
	rollout, err := parseRollout(o.rollout, "", now)
	if err != nil {
		return err
	}
	signer := release.Signer{Keys: keys, Now: now, Expires: expires, Rollout: rollout, IO: o.registry.io(nil)}
	st, err := signer.Statement(desc, cfg, version, o.channel)
	if err != nil {
		return usageErrorf("%v", err)
	}
	payload, err := st.Marshal()
	if err != nil {
		return usageErrorf("%v", err)
	}
	envBytes, err := signer.Seal(sign.ReleaseType, payload)
	if err != nil {
		return err
	}
	res := signResult{Reference: ref.String(), Digest: desc.Digest, Statement: st}
	for _, k := range keys {
		id, _ := sign.KeyID(k.Public())
		res.Signers = append(res.Signers, id)
	}
	if f := o.envelopeOut; f != "" {
		if err := fsutil.AtomicWrite(f, envBytes, 0o644); err != nil {
			return err
		}
		res.Envelope = f
	}
	att, n, err := signer.AttachRelease(ctx, ref, desc, st, envBytes, !o.noCosign)
	if err != nil {
		return err
	}
	res.Attached, res.Cosign = att.Digest, n > 0
	return u.result(res, func(w io.Writer) {
		fmt.Fprintf(w, "signed %s\n  release %d on %s for %s, expires %s\n", res.Reference, st.Version, st.Channel, st.System, st.Expires)
		if st.Rollout != nil {
			fmt.Fprintf(w, "  staged: %s\n", st.Rollout)
		}
		fmt.Fprintf(w, "  statement %s, %d signature(s)", res.Attached, len(res.Signers))
		if res.Cosign {
			fmt.Fprint(w, "; cosign signature written")
		}
		fmt.Fprintln(w)
	})
}

// verifyResult is the --json output of otter verify.
type verifyResult struct {
	Reference string        `json:"reference"`
	Digest    v1.Hash       `json:"digest"`
	Verified  bool          `json:"verified"`
	Via       string        `json:"via"` // "otter" or "cosign"
	Release   *sign.Release `json:"release,omitempty"`
	Cosign    *sign.Claim   `json:"cosign,omitempty"`
}

func verifyCommand() *cli.Command {
	return &cli.Command{
		Name:      "verify",
		Usage:     "check a bundle's signatures offline against a trust file",
		ArgsUsage: "REF",
		Description: `Needs nothing but the bundle (a registry, or an OCI layout for offline and USB
updates) and a trust file (otter trust init). Refuses, each with its own exit
code: a bad signature, an unknown key, too few signatures for the threshold, an
expired statement (freeze), a version lower than --installed-version
(rollback) unless --allow-downgrade, another system or channel, a statement for
another bundle (mix-and-match), a malformed or oversized statement. It applies
exactly the rule a device applies: an otter release statement is required
(exit 19 without one). --cosign checks the bundle's cosign signatures instead
(cosign sign --key with -a otter.dev/expires=… and -a otter.dev/channel=…), for
interoperability; a device does not accept them alone (docs/signing.md).`,
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "trust", Required: true, Usage: "the trust file"},
			&cli.StringFlag{Name: "channel", Value: "stable", Usage: "the channel this device follows"},
			&cli.StringFlag{Name: "system", Value: "aarch64-linux", Usage: "this device's system"},
			&cli.Uint64Flag{Name: "installed-version", Usage: "the installed release's version (anti-rollback)"},
			&cli.BoolFlag{Name: "allow-downgrade", Usage: "accept a version lower than the installed one"},
			&cli.StringFlag{Name: "envelope", Usage: "verify this detached statement instead of the attached ones"},
			&cli.BoolFlag{Name: "cosign", Usage: "verify the cosign signatures instead of otter's statements (not what a device accepts)"},
			&cli.StringFlag{Name: "at", Usage: "verify as of this RFC 3339 time instead of now", Hidden: true},
		}, registryFlags()...),
		Action: func(c *cli.Context) error {
			o := verifyOpts{
				registry: registryOptsFrom(c), trust: c.String("trust"), channel: c.String("channel"), system: c.String("system"),
				allowDowngrade: c.Bool("allow-downgrade"), envelope: c.String("envelope"), cosign: c.Bool("cosign"),
			}
			if c.IsSet("installed-version") {
				v := c.Uint64("installed-version")
				o.installed = &v
			}
			if at := c.String("at"); at != "" {
				t, err := time.Parse(time.RFC3339, at)
				if err != nil {
					return usageErrorf("--at: %v", err)
				}
				o.at = t
			}
			return runVerify(c.Context, o, c.Args().Slice(), newUI(c))
		},
	}
}

// verifyOpts are otter verify's flags.
type verifyOpts struct {
	registry                         registryOpts
	trust, channel, system, envelope string
	installed                        *uint64 // nil: no anti-rollback check
	allowDowngrade, cosign           bool
	at                               time.Time // zero: now
}

func (o verifyOpts) validate() error {
	if o.cosign && o.envelope != "" {
		return usageErrorf("--cosign checks the attached cosign signatures; --envelope a detached otter statement: one or the other")
	}
	return nil
}

func runVerify(ctx context.Context, o verifyOpts, args []string, u *ui) error {
	if len(args) != 1 {
		return usageErrorf("verify takes one bundle reference, got %d arguments", len(args))
	}
	if err := o.validate(); err != nil {
		return err
	}
	trust, err := loadTrust(o.trust)
	if err != nil {
		return err
	}
	now := o.at
	if now.IsZero() {
		now = time.Now()
	}
	ref, img, cfg, err := o.registry.open(ctx, args[0])
	if err != nil {
		return err
	}
	d, err := img.Digest()
	if err != nil {
		return err
	}
	p := sign.Policy{Trust: trust, Now: now, Digest: d.String(), System: o.system, Channel: o.channel, AllowDowngrade: o.allowDowngrade}
	if o.installed != nil {
		p.Installed, p.HasInstalled = *o.installed, true
	}
	res := verifyResult{Reference: ref.String(), Digest: d}
	if o.cosign {
		claim, err := release.VerifyCosign(ctx, ref, d, cfg, p, o.registry.io(nil)...)
		if err != nil {
			return fmt.Errorf("%s: %w", ref, err)
		}
		res.Verified, res.Via, res.Cosign = true, "cosign", claim
	} else {
		// The device's rule (release.Verify), or the same rule over one
		// detached statement.
		var r *sign.Release
		if o.envelope != "" {
			data, rerr := os.ReadFile(o.envelope)
			if rerr != nil {
				return rerr
			}
			_, r, err = sign.VerifyReleases([][]byte{data}, p)
		} else {
			_, r, err = release.Verify(ctx, ref, d, p, o.registry.io(nil)...)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", ref, err)
		}
		res.Verified, res.Via, res.Release = true, "otter", r
	}
	return u.result(res, func(w io.Writer) {
		if r := res.Release; r != nil {
			fmt.Fprintf(w, "verified %s\n  release %d on %s for %s, expires %s, signed by %s\n", res.Reference, r.Version, r.Channel, r.System, r.Expires, r.KeyID)
		} else {
			cl := res.Cosign
			fmt.Fprintf(w, "verified %s (cosign signature)\n  release %d on %s for %s, expires %s\n", res.Reference, cl.Version, cl.Channel, cl.System, cl.Expires)
		}
	})
}

func loadTrust(path string) (*sign.Trust, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading the trust file: %w", err)
	}
	t, err := sign.ParseTrust(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return t, nil
}

// trustResult is the --json output of otter trust commands.
type trustResult struct {
	File      string   `json:"file"`
	Version   uint64   `json:"version"`
	Threshold int      `json:"threshold"`
	KeyIDs    []string `json:"keyids"`
	Rotation  string   `json:"rotation,omitempty"`
}

func describeTrust(file string, t *sign.Trust) trustResult {
	r := trustResult{File: file, Version: t.Version, Threshold: t.Threshold}
	for _, k := range t.Keys {
		r.KeyIDs = append(r.KeyIDs, k.KeyID)
	}
	return r
}

func printTrust(w io.Writer, r trustResult) {
	fmt.Fprintf(w, "%s: trust root version %d, %d of %d keys must sign\n", r.File, r.Version, r.Threshold, len(r.KeyIDs))
	for _, id := range r.KeyIDs {
		fmt.Fprintf(w, "  %s\n", id)
	}
}

func readPublicKeys(files []string) ([]crypto.PublicKey, error) {
	var pubs []crypto.PublicKey
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		pub, err := sign.ParsePublicKey(data)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		pubs = append(pubs, pub)
	}
	return pubs, nil
}

func trustCommand() *cli.Command {
	return &cli.Command{
		Name:  "trust",
		Usage: "make and rotate the trust file devices verify against",
		Subcommands: []*cli.Command{
			{
				Name:  "init",
				Usage: "make a trust file from public keys",
				Flags: []cli.Flag{
					&cli.StringSliceFlag{Name: "key", Required: true, Usage: "a public key (repeatable)"},
					&cli.IntFlag{Name: "threshold", Value: 1, Usage: "how many of the keys must sign"},
					&cli.StringFlag{Name: "out", Aliases: []string{"o"}, Value: "trust.json", Usage: "the trust file to write"},
				},
				Action: func(c *cli.Context) error {
					o := trustOpts{keys: c.StringSlice("key"), threshold: c.Int("threshold"), out: c.String("out")}
					return runTrustInit(o, newUI(c))
				},
			},
			{
				Name:  "rotate",
				Usage: "sign a new trust root with the current keys and the new ones",
				Description: `Makes a rotation file: the new trust root (the public keys given, version one
higher) signed by the current root's keys and the new root's keys. Devices
accept it with otter trust update only if enough of both signed.`,
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "trust", Required: true, Usage: "the current trust file"},
					&cli.StringSliceFlag{Name: "new-key", Required: true, Usage: "a public key of the new root (repeatable)"},
					&cli.IntFlag{Name: "threshold", Value: 1, Usage: "the new root's threshold"},
					&cli.StringSliceFlag{Name: "key", Required: true, Usage: "private keys to sign with, current and new (repeatable)"},
					&cli.StringFlag{Name: "out", Aliases: []string{"o"}, Value: "rotation.json", Usage: "the rotation file to write"},
				},
				Action: func(c *cli.Context) error {
					o := trustOpts{trust: c.String("trust"), keys: c.StringSlice("new-key"), threshold: c.Int("threshold"),
						signers: c.StringSlice("key"), out: c.String("out")}
					return runTrustRotate(o, newUI(c))
				},
			},
			{
				Name:      "update",
				Usage:     "replace a trust file by a rotation signed by its keys (on the device)",
				ArgsUsage: "ROTATION",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "trust", Required: true, Usage: "the trust file to update"},
				},
				Action: func(c *cli.Context) error {
					return runTrustUpdate(trustOpts{trust: c.String("trust")}, c.Args().Slice(), newUI(c))
				},
			},
		},
	}
}

// trustOpts are the flags of otter trust init, rotate and update.
type trustOpts struct {
	trust, out string
	keys       []string // public keys of the (new) root
	signers    []string // private keys that sign a rotation
	threshold  int
}

// newRoot makes the trust root of version v from the public keys.
func (o trustOpts) newRoot(v uint64) (*sign.Trust, error) {
	if o.threshold < 1 || o.threshold > len(o.keys) {
		return nil, usageErrorf("--threshold %d for %d keys", o.threshold, len(o.keys))
	}
	pubs, err := readPublicKeys(o.keys)
	if err != nil {
		return nil, err
	}
	t, err := sign.NewTrust(v, o.threshold, pubs...)
	if err != nil {
		return nil, fmt.Errorf("trust root: %w", err) // a duplicate or bad key: invalid input
	}
	return t, nil
}

func runTrustInit(o trustOpts, u *ui) error {
	t, err := o.newRoot(1)
	if err != nil {
		return err
	}
	data, err := t.Marshal()
	if err != nil {
		return err
	}
	if err := fsutil.AtomicWrite(o.out, data, 0o644); err != nil {
		return err
	}
	res := describeTrust(o.out, t)
	return u.result(res, func(w io.Writer) { printTrust(w, res) })
}

func runTrustRotate(o trustOpts, u *ui) error {
	cur, err := loadTrust(o.trust)
	if err != nil {
		return err
	}
	next, err := o.newRoot(cur.Version + 1)
	if err != nil {
		return err
	}
	payload, err := next.Marshal()
	if err != nil {
		return err
	}
	keys, err := loadKeys(u, o.signers)
	if err != nil {
		return err
	}
	data, err := release.Signer{Keys: keys}.Seal(sign.TrustType, payload)
	if err != nil {
		return err
	}
	if _, err := cur.Rotate(data); err != nil {
		return fmt.Errorf("the rotation would be refused: %w", err)
	}
	if err := fsutil.AtomicWrite(o.out, data, 0o644); err != nil {
		return err
	}
	res := describeTrust(o.trust, next)
	res.Rotation = o.out
	return u.result(res, func(w io.Writer) {
		fmt.Fprintf(w, "wrote %s\n", res.Rotation)
		printTrust(w, res)
	})
}

func runTrustUpdate(o trustOpts, args []string, u *ui) error {
	if len(args) != 1 {
		return usageErrorf("trust update takes one rotation file")
	}
	cur, err := loadTrust(o.trust)
	if err != nil {
		return err
	}
	data, err := os.ReadFile(args[0])
	if err != nil {
		return err
	}
	next, err := cur.Rotate(data)
	if err != nil {
		return err
	}
	out, err := next.Marshal()
	if err != nil {
		return err
	}
	if err := fsutil.AtomicWrite(o.trust, out, 0o644); err != nil {
		return err
	}
	res := describeTrust(o.trust, next)
	return u.result(res, func(w io.Writer) { printTrust(w, res) })
}
