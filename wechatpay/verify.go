package wechatpay

import (
	"context"
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ClockWindow is how far a response timestamp may be from the local clock.
const ClockWindow = 300 * time.Second

// signTestPrefix starts the deliberately wrong signatures WeChat Pay sends to
// check that clients verify.
const signTestPrefix = "WECHATPAY/SIGNTEST/"

// platformCert is one decrypted WeChat Pay platform certificate.
type platformCert struct {
	serial    string // as the certificate list spells it (keyed by serialKey)
	key       *rsa.PublicKey
	notBefore time.Time
	notAfter  time.Time
}

// keyRing holds every key WeChat Pay may sign with: the public key (by id)
// and the platform certificates (by serial). Both at once during a migration.
type keyRing struct {
	mu       sync.RWMutex
	pubID    string
	pub      *rsa.PublicKey
	certs    map[string]platformCert // by serialKey
	newest   string                  // serial of the certificate that expires last, as listed
	loadedAt time.Time
}

func newKeyRing() *keyRing { return &keyRing{certs: map[string]platformCert{}} }

func (r *keyRing) setPublicKey(id string, k *rsa.PublicKey) {
	r.mu.Lock()
	r.pubID, r.pub = id, k
	r.mu.Unlock()
}

// setCerts replaces the certificate set.
func (r *keyRing) setCerts(certs map[string]platformCert, at time.Time) {
	newest, last := "", time.Time{}
	newestKey := ""
	for k, c := range certs {
		if c.notAfter.After(last) || (c.notAfter.Equal(last) && k > newestKey) {
			newest, newestKey, last = c.serial, k, c.notAfter
		}
	}
	r.mu.Lock()
	r.certs, r.newest, r.loadedAt = certs, newest, at
	r.mu.Unlock()
}

// lookup returns the key named by serial, nil when none is known or the
// certificate is outside its validity at now.
func (r *keyRing) lookup(serial string, now time.Time) *rsa.PublicKey {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if r.pub != nil && serial == r.pubID {
		return r.pub
	}
	c, ok := r.certs[serialKey(serial)]
	if !ok || now.Before(c.notBefore) || now.After(c.notAfter) {
		return nil
	}
	return c.key
}

func (r *keyRing) certState() (newest string, n int, loadedAt time.Time) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.newest, len(r.certs), r.loadedAt
}

// verifyResponse checks a response's signature headers against body: all
// four headers present, timestamp within ClockWindow of now, a known serial,
// and an RSA-SHA256 signature over "timestamp\nnonce\nbody\n". The error
// wraps one of ErrMissingHeaders, ErrClockSkew, ErrUnknownSerial, ErrSignature.
func verifyResponse(h http.Header, body []byte, now time.Time, lookup func(serial string) *rsa.PublicKey) error {
	ts, nonce := h.Get("Wechatpay-Timestamp"), h.Get("Wechatpay-Nonce")
	sig, serial := h.Get("Wechatpay-Signature"), h.Get("Wechatpay-Serial")
	var missing []string
	for _, f := range [...]struct{ name, v string }{
		{"Wechatpay-Timestamp", ts}, {"Wechatpay-Nonce", nonce}, {"Wechatpay-Signature", sig}, {"Wechatpay-Serial", serial},
	} {
		if f.v == "" {
			missing = append(missing, f.name)
		}
	}
	if missing != nil {
		return fmt.Errorf("%w: %s", ErrMissingHeaders, strings.Join(missing, ", "))
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return fmt.Errorf("%w: Wechatpay-Timestamp is not a Unix time", ErrMissingHeaders)
	}
	if skew := now.Unix() - sec; skew > int64(ClockWindow/time.Second) || -skew > int64(ClockWindow/time.Second) {
		return fmt.Errorf("%w: %d s from the local clock", ErrClockSkew, skew)
	}
	key := lookup(serial)
	if key == nil {
		return fmt.Errorf("%w: %.64q", ErrUnknownSerial, serial)
	}
	if strings.HasPrefix(sig, signTestPrefix) {
		return fmt.Errorf("%w: a %s probe", ErrSignature, signTestPrefix)
	}
	raw, err := base64.StdEncoding.DecodeString(sig)
	if err != nil {
		return fmt.Errorf("%w: not Base64", ErrSignature)
	}
	sum := sha256.Sum256(responseMessage(ts, nonce, body))
	if err := rsa.VerifyPKCS1v15(key, crypto.SHA256, sum[:], raw); err != nil {
		return fmt.Errorf("%w: serial %.64s", ErrSignature, serial)
	}
	return nil
}

// verify checks a 2xx answer. In platform-certificate mode an unknown serial
// triggers one (rate-limited) certificate download and a second look.
func (c *Client) verify(ctx context.Context, h http.Header, body []byte) error {
	lookup := func(s string) *rsa.PublicKey { return c.keys.lookup(s, c.now()) }
	err := verifyResponse(h, body, c.now(), lookup)
	if err != nil && c.certs != nil && isUnknownSerial(err) {
		if c.certs.refreshForUnknown(ctx) {
			err = verifyResponse(h, body, c.now(), lookup)
		}
	}
	return err
}

func isUnknownSerial(err error) bool { return errors.Is(err, ErrUnknownSerial) }

// errorBody is the JSON of a non-2xx answer.
type errorBody struct {
	Code    string          `json:"code"`
	Message string          `json:"message"`
	Detail  json.RawMessage `json:"detail"`
}

const maxDetailBytes = 4 << 10

// parseErrorBody extracts code, message and detail from an error answer. A
// body that is not the documented JSON yields a message saying so, never the
// body itself.
func parseErrorBody(raw []byte) (code, message string, detail json.RawMessage) {
	var eb errorBody
	if err := json.Unmarshal(raw, &eb); err != nil {
		if len(raw) == 0 {
			return "", "", nil
		}
		return "", fmt.Sprintf("undecodable error body of %d bytes", len(raw)), nil
	}
	if len(eb.Detail) > maxDetailBytes || string(eb.Detail) == "null" {
		eb.Detail = nil
	}
	return sanitize(eb.Code, 64), sanitize(eb.Message, 512), eb.Detail
}

// sanitize drops control characters and cuts s to at most n bytes.
func sanitize(s string, n int) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return -1
		}
		return r
	}, s)
	return truncate(s, n)
}

// checkResponse turns a non-2xx answer into an *APIError.
func (c *Client) checkResponse(method, path string, hr *http.Response, raw []byte) *APIError {
	e := &APIError{Method: method, Path: path, HTTPStatus: hr.StatusCode, RequestID: sanitize(hr.Header.Get("Request-Id"), 128)}
	e.Code, e.Message, e.Detail = parseErrorBody(raw)
	e.RetryAfter = parseRetryAfter(hr.Header.Get("Retry-After"), c.now())
	return e
}

// parseRetryAfter reads delay-seconds or an HTTP date; zero when absent or invalid.
func parseRetryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	if n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64); err == nil {
		if n <= 0 || n > 86400 {
			return 0
		}
		return time.Duration(n) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := t.Sub(now); d > 0 && d <= 24*time.Hour {
			return d.Round(time.Second)
		}
	}
	return 0
}
