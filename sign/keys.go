package sign

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"

	"github.com/secure-systems-lab/go-securesystemslib/encrypted"
)

// Algorithm is a signing algorithm otter supports.
type Algorithm string

const (
	// ECDSAP256 is ECDSA on P-256 with SHA-256: cosign's default, and the
	// one that interoperates with cosign.
	ECDSAP256 Algorithm = "ecdsa-p256"
	// Ed25519 is pure Ed25519, for otter-native verification.
	Ed25519 Algorithm = "ed25519"
)

// PEM block types. Private keys are written the way cosign writes them
// (scrypt and NaCl secretbox over PKCS#8), so cosign reads otter's keys.
const (
	PrivateKeyPEMType       = "ENCRYPTED SIGSTORE PRIVATE KEY"
	cosignPrivateKeyPEMType = "ENCRYPTED COSIGN PRIVATE KEY"
	PublicKeyPEMType        = "PUBLIC KEY"
)

var (
	// ErrKey is returned for a key otter cannot read or use.
	ErrKey = errors.New("sign: invalid key")
	// ErrPassphrase is returned when a private key does not decrypt.
	ErrPassphrase = errors.New("sign: wrong passphrase for the private key")
)

// GenerateKey makes a new private key.
func GenerateKey(alg Algorithm) (crypto.Signer, error) {
	switch alg {
	case ECDSAP256, "":
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case Ed25519:
		_, k, err := ed25519.GenerateKey(rand.Reader)
		return k, err
	}
	return nil, fmt.Errorf("%w: unknown algorithm %q (want %s or %s)", ErrKey, alg, ECDSAP256, Ed25519)
}

// AlgorithmOf names the algorithm of a public key.
func AlgorithmOf(pub crypto.PublicKey) (Algorithm, error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve == elliptic.P256() {
			return ECDSAP256, nil
		}
	case ed25519.PublicKey:
		return Ed25519, nil
	}
	return "", fmt.Errorf("%w: unsupported public key type %T", ErrKey, pub)
}

// MarshalPrivateKey encrypts k with passphrase (which may be empty) into
// cosign's PEM format.
func MarshalPrivateKey(k crypto.Signer, passphrase []byte) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrKey, err)
	}
	enc, err := encrypted.Encrypt(der, passphrase)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: PrivateKeyPEMType, Bytes: enc}), nil
}

// ParsePrivateKey reads a private key: cosign's encrypted PEM (with
// passphrase), or an unencrypted PKCS#8 or SEC 1 PEM.
func ParsePrivateKey(data, passphrase []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("%w: no PEM block", ErrKey)
	}
	der := block.Bytes
	switch block.Type {
	case PrivateKeyPEMType, cosignPrivateKeyPEMType:
		var err error
		if der, err = encrypted.Decrypt(block.Bytes, passphrase); err != nil {
			return nil, fmt.Errorf("%w (%v)", ErrPassphrase, err)
		}
	case "PRIVATE KEY":
	case "EC PRIVATE KEY":
		k, err := x509.ParseECPrivateKey(der)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrKey, err)
		}
		return checkSigner(k)
	default:
		return nil, fmt.Errorf("%w: PEM type %q is not a private key", ErrKey, block.Type)
	}
	k, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrKey, err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%w: %T cannot sign", ErrKey, k)
	}
	return checkSigner(s)
}

func checkSigner(s crypto.Signer) (crypto.Signer, error) {
	if _, err := AlgorithmOf(s.Public()); err != nil {
		return nil, err
	}
	return s, nil
}

// MarshalPublicKey writes a public key as PKIX PEM.
func MarshalPublicKey(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrKey, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: PublicKeyPEMType, Bytes: der}), nil
}

// ParsePublicKey reads a PKIX PEM public key (cosign's cosign.pub too).
func ParsePublicKey(data []byte) (crypto.PublicKey, error) {
	block, _ := pem.Decode(data)
	if block == nil || block.Type != PublicKeyPEMType {
		return nil, fmt.Errorf("%w: want a %q PEM block", ErrKey, PublicKeyPEMType)
	}
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrKey, err)
	}
	if _, err := AlgorithmOf(pub); err != nil {
		return nil, err
	}
	return pub, nil
}

// KeyID is "sha256:" and the hex SHA-256 of the key's PKIX DER encoding.
func KeyID(pub crypto.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrKey, err)
	}
	sum := sha256.Sum256(der)
	return "sha256:" + hex.EncodeToString(sum[:]), nil
}

// signBytes signs msg: ECDSA over its SHA-256 (ASN.1 DER signature), or
// Ed25519 over msg itself.
func signBytes(k crypto.Signer, msg []byte) ([]byte, error) {
	switch k.Public().(type) {
	case *ecdsa.PublicKey:
		sum := sha256.Sum256(msg)
		return k.Sign(rand.Reader, sum[:], crypto.SHA256)
	case ed25519.PublicKey:
		return k.Sign(rand.Reader, msg, crypto.Hash(0))
	}
	return nil, fmt.Errorf("%w: cannot sign with %T", ErrKey, k.Public())
}

// verifyBytes checks a signature made by signBytes.
func verifyBytes(pub crypto.PublicKey, msg, sig []byte) bool {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		sum := sha256.Sum256(msg)
		return ecdsa.VerifyASN1(k, sum[:], sig)
	case ed25519.PublicKey:
		return ed25519.Verify(k, msg, sig)
	}
	return false
}
