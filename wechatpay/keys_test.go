package wechatpay_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/couponq/couponq/wechatpay"
)

var (
	extKeyOnce sync.Once
	extKey     *rsa.PrivateKey
)

// otherKey is a 2048-bit key that no fake server uses.
func otherKey(t testing.TB) *rsa.PrivateKey {
	t.Helper()
	extKeyOnce.Do(func() {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			panic(err)
		}
		extKey = k
	})
	return extKey
}

func pemOf(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func TestLoadPrivateKey(t *testing.T) {
	t.Parallel()
	key := otherKey(t)
	pkcs8, _ := x509.MarshalPKCS8PrivateKey(key)
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ecPKCS8, _ := x509.MarshalPKCS8PrivateKey(ec)
	ecSEC1, _ := x509.MarshalECPrivateKey(ec)
	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	pubDER, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "x"}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	certDER, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	legacyEncrypted := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY",
		Headers: map[string]string{"Proc-Type": "4,ENCRYPTED", "DEK-Info": "AES-256-CBC,00112233445566778899AABBCCDDEEFF"}, Bytes: []byte("ciphertext")})

	tests := []struct {
		name    string
		pem     []byte
		wantErr string // substring; "" = success
	}{
		{"PKCS#8", pemOf("PRIVATE KEY", pkcs8), ""},
		{"PKCS#1", pemOf("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(key)), ""},
		{"PKCS#8 after bag attributes", append([]byte("Bag Attributes\n    friendlyName: x\n"), pemOf("PRIVATE KEY", pkcs8)...), ""},
		{"encrypted PKCS#8", pemOf("ENCRYPTED PRIVATE KEY", []byte("x")), "encrypted"},
		{"encrypted legacy PEM", legacyEncrypted, "encrypted"},
		{"EC in PKCS#8", pemOf("PRIVATE KEY", ecPKCS8), "EC private key"},
		{"EC SEC 1", pemOf("EC PRIVATE KEY", ecSEC1), "EC private key"},
		{"certificate", pemOf("CERTIFICATE", certDER), "a certificate"},
		{"public key", pemOf("PUBLIC KEY", pubDER), "a public key"},
		{"1024-bit RSA", pemOf("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(small)), "1024 bits"},
		{"not PEM", []byte("MIIEvQIBADANBgkqhkiG9w0BAQEFAASC"), "no PEM block"},
		{"corrupt PKCS#8", pemOf("PRIVATE KEY", []byte{0x30, 0x01}), "PKCS#8"},
		{"unknown block", pemOf("OPENSSH PRIVATE KEY", []byte("x")), "not a private key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			k, err := wechatpay.LoadPrivateKey(tt.pem)
			if tt.wantErr == "" {
				if err != nil || !k.Equal(key) {
					t.Fatalf("got %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, wechatpay.ErrKeyFormat) {
				t.Fatalf("got %v, want an ErrKeyFormat mentioning %q", err, tt.wantErr)
			}
			if strings.Contains(err.Error(), "MII") {
				t.Errorf("error leaks key material: %v", err)
			}
		})
	}
}

func TestLoadPublicKey(t *testing.T) {
	t.Parallel()
	key := otherKey(t)
	pubDER, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ecPub, _ := x509.MarshalPKIXPublicKey(&ec.PublicKey)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "x"}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	certDER, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	pkcs8, _ := x509.MarshalPKCS8PrivateKey(key)
	tests := []struct {
		name    string
		pem     []byte
		wantErr string
	}{
		{"PKIX", pemOf("PUBLIC KEY", pubDER), ""},
		{"PKCS#1", pemOf("RSA PUBLIC KEY", x509.MarshalPKCS1PublicKey(&key.PublicKey)), ""},
		{"certificate", pemOf("CERTIFICATE", certDER), ""},
		{"EC", pemOf("PUBLIC KEY", ecPub), "public key"},
		{"private key", pemOf("PRIVATE KEY", pkcs8), "a private key"},
		{"garbage", []byte("hello"), "no PEM block"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			k, err := wechatpay.LoadPublicKey(tt.pem)
			if tt.wantErr == "" {
				if err != nil || !k.Equal(&key.PublicKey) {
					t.Fatalf("got %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, wechatpay.ErrKeyFormat) {
				t.Fatalf("got %v, want an error mentioning %q", err, tt.wantErr)
			}
		})
	}
}

func TestLoadKeyFiles(t *testing.T) {
	t.Parallel()
	key := otherKey(t)
	dir := t.TempDir()
	pkcs8, _ := x509.MarshalPKCS8PrivateKey(key)
	pubDER, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	keyFile, pubFile := filepath.Join(dir, "apiclient_key.pem"), filepath.Join(dir, "pub_key.pem")
	if err := os.WriteFile(keyFile, pemOf("PRIVATE KEY", pkcs8), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pubFile, pemOf("PUBLIC KEY", pubDER), 0o600); err != nil {
		t.Fatal(err)
	}
	if k, err := wechatpay.LoadPrivateKeyFile(keyFile); err != nil || !k.Equal(key) {
		t.Errorf("LoadPrivateKeyFile: %v", err)
	}
	if k, err := wechatpay.LoadPublicKeyFile(pubFile); err != nil || !k.Equal(&key.PublicKey) {
		t.Errorf("LoadPublicKeyFile: %v", err)
	}
	if _, err := wechatpay.LoadPrivateKeyFile(filepath.Join(dir, "missing.pem")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
	if _, err := wechatpay.LoadPrivateKeyFile(pubFile); err == nil || !strings.Contains(err.Error(), pubFile) {
		t.Errorf("public key as private key: %v", err)
	}
	if _, err := wechatpay.LoadPublicKeyFile(filepath.Join(dir, "missing.pem")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}
