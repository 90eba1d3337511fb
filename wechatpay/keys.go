package wechatpay

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"
)

// ErrKeyFormat is wrapped by every error of LoadPrivateKey and LoadPublicKey.
var ErrKeyFormat = errors.New("wechatpay: unsupported key")

func keyErr(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrKeyFormat}, args...)...)
}

// firstPEM returns the first PEM block, skipping nothing else: text before
// it is allowed (openssl writes "Bag Attributes" lines), but no block is an error.
func firstPEM(pemBytes []byte) (*pem.Block, error) {
	b, _ := pem.Decode(pemBytes)
	if b == nil {
		return nil, keyErr("no PEM block found (want -----BEGIN PRIVATE KEY----- or -----BEGIN PUBLIC KEY-----)")
	}
	return b, nil
}

// LoadPrivateKey parses an RSA private key from PEM, PKCS#8 ("BEGIN PRIVATE
// KEY", what WeChat Pay's certificate tool writes) or PKCS#1 ("BEGIN RSA
// PRIVATE KEY"). Encrypted keys, EC and Ed25519 keys, certificates and
// public keys are refused with an error saying so. The key must have at
// least 2048 bits.
func LoadPrivateKey(pemBytes []byte) (*rsa.PrivateKey, error) {
	b, err := firstPEM(pemBytes)
	if err != nil {
		return nil, err
	}
	if _, encrypted := b.Headers["DEK-Info"]; encrypted || strings.Contains(b.Type, "ENCRYPTED") {
		return nil, keyErr("the private key is encrypted (%s); decrypt it first, e.g. openssl pkcs8 -topk8 -nocrypt", b.Type)
	}
	var key *rsa.PrivateKey
	switch b.Type {
	case "PRIVATE KEY":
		k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
		if err != nil {
			return nil, keyErr("PKCS#8 private key: %v", err)
		}
		switch k := k.(type) {
		case *rsa.PrivateKey:
			key = k
		case *ecdsa.PrivateKey:
			return nil, keyErr("an EC private key; WeChat Pay API v3 needs RSA")
		case ed25519.PrivateKey:
			return nil, keyErr("an Ed25519 private key; WeChat Pay API v3 needs RSA")
		default:
			return nil, keyErr("a %T private key; WeChat Pay API v3 needs RSA", k)
		}
	case "RSA PRIVATE KEY":
		k, err := x509.ParsePKCS1PrivateKey(b.Bytes)
		if err != nil {
			return nil, keyErr("PKCS#1 private key: %v", err)
		}
		key = k
	case "EC PRIVATE KEY":
		return nil, keyErr("an EC private key; WeChat Pay API v3 needs RSA")
	case "CERTIFICATE":
		return nil, keyErr("a certificate, not a private key (apiclient_cert.pem given where apiclient_key.pem is expected?)")
	case "PUBLIC KEY", "RSA PUBLIC KEY":
		return nil, keyErr("a public key, not a private key")
	default:
		return nil, keyErr("PEM block %q is not a private key", b.Type)
	}
	if err := key.Validate(); err != nil {
		return nil, keyErr("invalid RSA key: %v", err)
	}
	if n := key.N.BitLen(); n < minRSABits {
		return nil, keyErr("RSA key has %d bits, WeChat Pay requires %d", n, minRSABits)
	}
	return key, nil
}

// LoadPrivateKeyFile reads and parses a private key file (see LoadPrivateKey).
func LoadPrivateKeyFile(path string) (*rsa.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("wechatpay: reading private key: %w", err)
	}
	k, err := LoadPrivateKey(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

// LoadPublicKey parses WeChat Pay's public key from PEM ("BEGIN PUBLIC KEY",
// as downloaded from the merchant platform, or PKCS#1 "BEGIN RSA PUBLIC
// KEY"). A certificate is accepted too: its RSA public key is returned.
func LoadPublicKey(pemBytes []byte) (*rsa.PublicKey, error) {
	b, err := firstPEM(pemBytes)
	if err != nil {
		return nil, err
	}
	var pub any
	switch b.Type {
	case "PUBLIC KEY":
		pub, err = x509.ParsePKIXPublicKey(b.Bytes)
	case "RSA PUBLIC KEY":
		pub, err = x509.ParsePKCS1PublicKey(b.Bytes)
	case "CERTIFICATE":
		var cert *x509.Certificate
		if cert, err = x509.ParseCertificate(b.Bytes); err == nil {
			pub = cert.PublicKey
		}
	case "PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY", "ENCRYPTED PRIVATE KEY":
		return nil, keyErr("a private key where WeChat Pay's public key is expected")
	default:
		return nil, keyErr("PEM block %q is not a public key", b.Type)
	}
	if err != nil {
		return nil, keyErr("%s: %v", b.Type, err)
	}
	k, ok := pub.(*rsa.PublicKey)
	if !ok {
		return nil, keyErr("a %T public key; WeChat Pay API v3 uses RSA", pub)
	}
	if n := k.N.BitLen(); n < minRSABits {
		return nil, keyErr("RSA key has %d bits, want at least %d", n, minRSABits)
	}
	return k, nil
}

// LoadPublicKeyFile reads and parses a public key file (see LoadPublicKey).
func LoadPublicKeyFile(path string) (*rsa.PublicKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("wechatpay: reading public key: %w", err)
	}
	k, err := LoadPublicKey(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}
