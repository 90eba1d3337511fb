package wechatpay

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"strings"
	"sync"
	"time"
)

// CertificatesPath is where WeChat Pay serves its platform certificates.
const CertificatesPath = "/v3/certificates"

// ErrNoCertificates means the client holds no usable platform certificate.
var ErrNoCertificates = errors.New("wechatpay: no usable platform certificate")

// certMaxAge is how old a downloaded set may be before Ready downloads again.
const certMaxAge = 12 * time.Hour

// certificatesAnswer is the JSON of GET /v3/certificates.
type certificatesAnswer struct {
	Data []struct {
		SerialNo           string `json:"serial_no"`
		EffectiveTime      string `json:"effective_time"`
		ExpireTime         string `json:"expire_time"`
		EncryptCertificate struct {
			Algorithm      string `json:"algorithm"`
			Nonce          string `json:"nonce"`
			AssociatedData string `json:"associated_data"`
			Ciphertext     string `json:"ciphertext"`
		} `json:"encrypt_certificate"`
	} `json:"data"`
}

// certManager downloads and refreshes platform certificates into the
// client's key ring.
type certManager struct {
	c        *Client
	apiV3Key []byte
	every    time.Duration

	mu          sync.Mutex // serialises downloads
	lastAttempt time.Time  // of a download triggered by an unknown serial

	cancel context.CancelFunc
	done   chan struct{}
}

func newCertManager(c *Client, apiV3Key []byte, every time.Duration) *certManager {
	ctx, cancel := context.WithCancel(context.Background())
	m := &certManager{c: c, apiV3Key: apiV3Key, every: every, cancel: cancel, done: make(chan struct{})}
	go m.loop(ctx)
	return m
}

// loop refreshes the certificates every m.every until close.
func (m *certManager) loop(ctx context.Context) {
	defer close(m.done)
	t := time.NewTicker(m.every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			dctx, cancel := context.WithTimeout(ctx, time.Minute)
			m.mu.Lock()
			err := m.download(dctx, m.c.attempt)
			m.mu.Unlock()
			cancel()
			if err != nil && ctx.Err() == nil {
				m.c.log.Warn("wechatpay: refreshing platform certificates failed", "error", err)
			}
		}
	}
}

func (m *certManager) close() {
	m.cancel()
	<-m.done
}

func (m *certManager) newestSerial() string {
	s, _, _ := m.c.keys.certState()
	return s
}

// ensure downloads the certificates unless some are held. With a public key
// configured as well (a migration), a failed download does not block calls.
func (m *certManager) ensure(ctx context.Context) error {
	if _, n, _ := m.c.keys.certState(); n > 0 {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, n, _ := m.c.keys.certState(); n > 0 {
		return nil
	}
	err := m.download(ctx, m.c.attempt)
	if err != nil && m.c.pubKeyID != "" {
		m.c.log.WarnContext(ctx, "wechatpay: platform certificates unavailable; verifying with the public key", "error", err)
		return nil
	}
	return err
}

// ready downloads the certificates when none are held or the set is older
// than 12 hours.
func (m *certManager) ready(ctx context.Context) error {
	if _, n, at := m.c.keys.certState(); n > 0 && m.c.now().Sub(at) < certMaxAge {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, n, at := m.c.keys.certState(); n > 0 && m.c.now().Sub(at) < certMaxAge {
		return nil
	}
	return m.download(ctx, m.c.attempt)
}

// refreshForUnknown downloads the certificates again because an answer
// named an unknown serial, at most once a minute. It reports whether a
// download succeeded.
func (m *certManager) refreshForUnknown(ctx context.Context) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.c.now()
	if !m.lastAttempt.IsZero() && now.Sub(m.lastAttempt) < minUnknownSerialGap {
		return false
	}
	m.lastAttempt = now
	if err := m.download(ctx, m.c.attempt); err != nil {
		m.c.log.WarnContext(ctx, "wechatpay: re-downloading platform certificates failed", "error", err)
		return false
	}
	return true
}

// download fetches, decrypts and verifies the certificate set and installs
// it. The answer is verified with the keys already trusted or, on the first
// download, with the certificates it carries (their decryption with the
// APIv3 key authenticates them), sent by send. m.mu must be held.
func (m *certManager) download(ctx context.Context, send sendFunc) error {
	var fresh map[string]platformCert
	verify := func(ctx context.Context, h http.Header, body []byte) error {
		var err error
		if fresh, err = m.decode(body); err != nil {
			return err
		}
		now := m.c.now()
		return verifyResponse(h, body, now, func(serial string) *rsa.PublicKey {
			if k := m.c.keys.lookup(serial, now); k != nil {
				return k
			}
			if c, ok := fresh[serialKey(serial)]; ok {
				return c.key
			}
			return nil
		})
	}
	if _, err := send(ctx, http.MethodGet, CertificatesPath, "", nil, 1, verify); err != nil {
		return fmt.Errorf("wechatpay: downloading platform certificates: %w", err)
	}
	m.c.keys.setCerts(fresh, m.c.now())
	return nil
}

// decode decrypts every certificate of the answer and keeps those valid now.
// An entry that cannot be used (another algorithm, no decryption, not a
// certificate, a serial_no that is not the certificate's) is skipped with a
// warning: the others still verify, as in the official SDK. Only a list with
// no usable certificate is an error, carrying the first entry's reason (and
// no warnings).
func (m *certManager) decode(body []byte) (map[string]platformCert, error) {
	var ans certificatesAnswer
	if err := json.Unmarshal(body, &ans); err != nil {
		return nil, fmt.Errorf("%w: decoding the certificate list: %v", ErrNoCertificates, err)
	}
	now := m.c.now()
	out := make(map[string]platformCert, len(ans.Data))
	type skipped struct {
		serial string
		err    error
	}
	var skips []skipped
	for _, d := range ans.Data {
		pc, err := m.decodeOne(d.SerialNo, d.EncryptCertificate.Algorithm, d.EncryptCertificate.Nonce, d.EncryptCertificate.AssociatedData, d.EncryptCertificate.Ciphertext)
		if err != nil {
			skips = append(skips, skipped{fmt.Sprintf("%.64s", d.SerialNo), err})
			continue
		}
		if now.After(pc.notAfter) {
			continue
		}
		out[serialKey(pc.serial)] = pc
	}
	if len(out) == 0 {
		// The error says it once; a warning per entry would repeat it at
		// every probe of a worker whose APIv3 key is wrong.
		if len(skips) > 0 {
			return nil, fmt.Errorf("%w: %d of %d unusable, the first: %w", ErrNoCertificates, len(skips), len(ans.Data), skips[0].err)
		}
		return nil, fmt.Errorf("%w: the answer holds no certificate valid now", ErrNoCertificates)
	}
	for _, s := range skips {
		m.c.log.Warn("wechatpay: skipping a platform certificate", "serial_no", s.serial, "error", s.err)
	}
	return out, nil
}

// decodeOne decrypts and checks one entry of the list. The certificate keeps
// serialNo as received, so the Wechatpay-Serial sent names it in WeChat Pay's
// own spelling (a leading zero that %X would drop included).
func (m *certManager) decodeOne(serialNo, algorithm, nonce, associatedData, ciphertext string) (platformCert, error) {
	if algorithm != "AEAD_AES_256_GCM" {
		return platformCert{}, fmt.Errorf("certificate %.64s: algorithm %.32q", serialNo, algorithm)
	}
	want, ok := parseSerial(serialNo)
	if !ok {
		return platformCert{}, fmt.Errorf("serial_no %.64q is not hexadecimal", serialNo)
	}
	pemBytes, err := DecryptAES256GCM(m.apiV3Key, nonce, associatedData, ciphertext)
	if err != nil {
		return platformCert{}, fmt.Errorf("certificate %.64s: %w", serialNo, err)
	}
	pc, number, err := parsePlatformCert(pemBytes)
	if err != nil {
		return platformCert{}, fmt.Errorf("certificate %.64s: %v", serialNo, err)
	}
	// Serials are numbers: "0A1B" and "A1B" name the same certificate.
	if number.Cmp(want) != 0 {
		return platformCert{}, fmt.Errorf("serial_no %.64s does not match the certificate's %X", serialNo, number)
	}
	pc.serial = serialNo
	return pc, nil
}

// parseSerial reads a hexadecimal certificate serial as a number.
func parseSerial(s string) (*big.Int, bool) {
	if s == "" || !isHex(s) {
		return nil, false
	}
	return new(big.Int).SetString(s, 16)
}

// serialKey is the key of a certificate serial in the key ring: its number
// in upper-case hex without leading zeros, so any spelling of one serial
// finds the certificate. What is not hexadecimal (a public-key id) is only
// upper-cased.
func serialKey(s string) string {
	if n, ok := parseSerial(s); ok {
		return fmt.Sprintf("%X", n)
	}
	return strings.ToUpper(s)
}

// parsePlatformCert parses a PEM certificate; it returns its serial number
// beside it, the certificate's serial field left for the caller.
func parsePlatformCert(pemBytes []byte) (platformCert, *big.Int, error) {
	b, _ := pem.Decode(pemBytes)
	if b == nil || b.Type != "CERTIFICATE" {
		return platformCert{}, nil, errors.New("not a PEM certificate")
	}
	cert, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return platformCert{}, nil, err
	}
	k, ok := cert.PublicKey.(*rsa.PublicKey)
	if !ok {
		return platformCert{}, nil, fmt.Errorf("a %T key, want RSA", cert.PublicKey)
	}
	return platformCert{key: k, notBefore: cert.NotBefore, notAfter: cert.NotAfter}, cert.SerialNumber, nil
}

// DecryptAES256GCM decrypts a resource WeChat Pay encrypted with the APIv3
// key (AEAD_AES_256_GCM): ciphertext is standard Base64 with the 16-byte tag
// appended, nonce and associatedData are used as given.
func DecryptAES256GCM(apiV3Key []byte, nonce, associatedData, ciphertext string) ([]byte, error) {
	if len(apiV3Key) != 32 {
		return nil, fmt.Errorf("the APIv3 key must be 32 bytes, got %d", len(apiV3Key))
	}
	ct, err := base64.StdEncoding.DecodeString(ciphertext)
	if err != nil {
		return nil, errors.New("ciphertext is not Base64")
	}
	block, err := aes.NewCipher(apiV3Key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCMWithNonceSize(block, len(nonce))
	if err != nil || len(nonce) == 0 {
		return nil, fmt.Errorf("bad nonce length %d", len(nonce))
	}
	pt, err := aead.Open(nil, []byte(nonce), ct, []byte(associatedData))
	if err != nil {
		return nil, errDecrypt
	}
	return pt, nil
}
