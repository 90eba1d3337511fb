package wechatpay

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"log/slog"
	"math/big"
	"strings"
	"testing"
	"time"
)

// certEntry is one data[] element of a GET /v3/certificates answer.
type certEntry struct {
	SerialNo           string `json:"serial_no"`
	EncryptCertificate struct {
		Algorithm      string `json:"algorithm"`
		Nonce          string `json:"nonce"`
		AssociatedData string `json:"associated_data"`
		Ciphertext     string `json:"ciphertext"`
	} `json:"encrypt_certificate"`
}

// encryptedCert makes a self-signed certificate of key with serial (hex)
// and encrypts it as WeChat Pay lists it, serial_no listed as listed.
func encryptedCert(t *testing.T, apiV3Key []byte, key *rsa.PrivateKey, serial, listed string) certEntry {
	t.Helper()
	n, ok := new(big.Int).SetString(serial, 16)
	if !ok {
		t.Fatalf("bad serial %q", serial)
	}
	tmpl := &x509.Certificate{SerialNumber: n, Subject: pkix.Name{CommonName: "test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := aes.NewCipher(apiV3Key)
	aead, _ := cipher.NewGCM(block)
	nonce := "0123456789ab"
	ct := aead.Seal(nil, []byte(nonce), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), []byte("certificate"))
	var e certEntry
	e.SerialNo = listed
	e.EncryptCertificate.Algorithm = "AEAD_AES_256_GCM"
	e.EncryptCertificate.Nonce = nonce
	e.EncryptCertificate.AssociatedData = "certificate"
	e.EncryptCertificate.Ciphertext = base64.StdEncoding.EncodeToString(ct)
	return e
}

// TestCertificateListSerials: serials compare as numbers (a leading zero
// in serial_no is the same certificate), the certificate is named as
// listed, and a bad entry is skipped with a warning while the rest verify.
func TestCertificateListSerials(t *testing.T) {
	t.Parallel()
	apiV3Key := []byte(strings.Repeat("k", 32))
	_, wk := testKeys(t)
	good := encryptedCert(t, apiV3Key, wk, "0A1B2C3D4E5F", "0A1B2C3D4E5F")
	mismatch := encryptedCert(t, apiV3Key, wk, "0ABCDEF0", "0ABCDEF1")
	undecryptable := encryptedCert(t, apiV3Key, wk, "0DEAD", "0DEAD")
	undecryptable.EncryptCertificate.Ciphertext = base64.StdEncoding.EncodeToString([]byte("not an encrypted certificate"))
	otherAlg := encryptedCert(t, apiV3Key, wk, "0BEEF", "0BEEF")
	otherAlg.EncryptCertificate.Algorithm = "SM4"
	notHex := encryptedCert(t, apiV3Key, wk, "0CAFE", "not-hex")

	tests := []struct {
		name     string
		data     []certEntry
		warnings int
		wantErr  string
	}{
		{"leading zero", []certEntry{good}, 0, ""},
		{"lower-case serial_no", []certEntry{func() certEntry { e := good; e.SerialNo = strings.ToLower(e.SerialNo); return e }()}, 0, ""},
		{"one bad entry of several", []certEntry{mismatch, good, undecryptable, otherAlg, notHex}, 4, ""},
		{"only bad entries", []certEntry{mismatch, undecryptable}, 0, "2 of 2 unusable, the first: serial_no 0ABCDEF1 does not match"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var logs bytes.Buffer
			c := newInternalClient(t, WithLogger(slog.New(slog.NewJSONHandler(&logs, nil))))
			m := &certManager{c: c, apiV3Key: apiV3Key}
			body, _ := json.Marshal(map[string]any{"data": tt.data})
			got, err := m.decode(body)
			if n := strings.Count(logs.String(), "skipping a platform certificate"); n != tt.warnings {
				t.Errorf("%d warnings, want %d:\n%s", n, tt.warnings, logs.String())
			}
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("decode: %v, want an error with %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 1 {
				t.Fatalf("%d certificates kept, want 1: %v", len(got), got)
			}
			c.keys.setCerts(got, time.Now())
			newest, _, _ := c.keys.certState()
			if want := tt.data[indexOf(tt.data, good.EncryptCertificate.Ciphertext)].SerialNo; newest != want {
				t.Errorf("the certificate is named %q, want serial_no as listed", newest)
			}
			for _, spelling := range []string{"0A1B2C3D4E5F", "A1B2C3D4E5F", "0a1b2c3d4e5f", "000A1B2C3D4E5F"} {
				if c.keys.lookup(spelling, time.Now()) == nil {
					t.Errorf("Wechatpay-Serial %q does not find the certificate", spelling)
				}
			}
			if c.keys.lookup("A1B2C3D4E5E", time.Now()) != nil {
				t.Error("another serial finds the certificate")
			}
		})
	}
}

func indexOf(es []certEntry, ciphertext string) int {
	for i, e := range es {
		if e.EncryptCertificate.Ciphertext == ciphertext {
			return i
		}
	}
	return -1
}
