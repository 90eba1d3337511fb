package wechatpaytest

import (
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/couponq/couponq/wechatpay"
)

// Authorization schemes.
const (
	SchemePartner = "WECHATPAY2-SHA256-RSA2048"
	SchemeBrand   = "WECHATPAY-BRAND-SHA256-RSA2048"
)

// clockWindow is how far a request timestamp may be from the fake's clock.
const clockWindow = 300

// Authorization is a parsed Authorization header.
type Authorization struct {
	Scheme string
	Params map[string]string // mchid or brand_id, nonce_str, timestamp, serial_no, signature
}

// ParseAuthorization parses `SCHEME k="v",k="v",…`. Pairs may come in any
// order and be separated by optional spaces; values must be quoted and hold
// no quote; a key may not repeat.
func ParseAuthorization(h string) (*Authorization, error) {
	scheme, rest, ok := strings.Cut(strings.TrimSpace(h), " ")
	if !ok || scheme == "" {
		return nil, errors.New("want `SCHEME key=\"value\",…`")
	}
	a := &Authorization{Scheme: scheme, Params: make(map[string]string, 5)}
	for rest = strings.TrimSpace(rest); rest != ""; {
		k, v, ok := strings.Cut(rest, "=")
		if !ok {
			return nil, fmt.Errorf("pair %.32q lacks '='", rest)
		}
		k = strings.TrimSpace(k)
		if k == "" || strings.ContainsAny(k, "\", ") {
			return nil, fmt.Errorf("bad key %.32q", k)
		}
		v = strings.TrimLeft(v, " ")
		if len(v) < 2 || v[0] != '"' {
			return nil, fmt.Errorf("value of %s is not quoted", k)
		}
		end := strings.IndexByte(v[1:], '"')
		if end < 0 {
			return nil, fmt.Errorf("value of %s lacks its closing quote", k)
		}
		if _, dup := a.Params[k]; dup {
			return nil, fmt.Errorf("key %s repeats", k)
		}
		a.Params[k] = v[1 : 1+end]
		rest = strings.TrimLeft(v[2+end:], " ")
		if rest == "" {
			break
		}
		if rest[0] != ',' {
			return nil, fmt.Errorf("want ',' after %s", k)
		}
		rest = strings.TrimLeft(rest[1:], " ")
		if rest == "" {
			return nil, errors.New("trailing ','")
		}
	}
	return a, nil
}

// authenticate checks a request as WeChat Pay does: scheme of the mode,
// identity, merchant certificate serial, clock window and signature over
// "METHOD\nURI\nTIMESTAMP\nNONCE\nBODY\n". The error text becomes the
// message of the 401 SIGN_ERROR answer.
func (s *Server) authenticate(r *http.Request, body []byte, now time.Time) error {
	h := r.Header.Get("Authorization")
	if h == "" {
		return errors.New("Authorization header missing")
	}
	a, err := ParseAuthorization(h)
	if err != nil {
		return fmt.Errorf("Authorization header malformed: %v", err)
	}
	wantScheme, idKey, id := SchemePartner, "mchid", s.cfg.mchID
	if s.cfg.mode == wechatpay.ModeBrand {
		wantScheme, idKey, id = SchemeBrand, "brand_id", s.cfg.brandID
	}
	if a.Scheme != wantScheme {
		return fmt.Errorf("scheme %.40q, this access mode wants %s", a.Scheme, wantScheme)
	}
	if got := a.Params[idKey]; got != id {
		return fmt.Errorf("%s %.40q is not the caller", idKey, got)
	}
	if !strings.EqualFold(a.Params["serial_no"], s.cfg.mchSerial) {
		return fmt.Errorf("serial_no %.64q is not the merchant certificate's", a.Params["serial_no"])
	}
	nonce := a.Params["nonce_str"]
	if nonce == "" || len(nonce) > 32 {
		return errors.New("nonce_str missing or longer than 32 characters")
	}
	ts, err := strconv.ParseInt(a.Params["timestamp"], 10, 64)
	if err != nil {
		return errors.New("timestamp is not a Unix time")
	}
	if d := now.Unix() - ts; d > clockWindow || d < -clockWindow {
		return fmt.Errorf("timestamp %d s from WeChat Pay's clock", d)
	}
	sig, err := base64.StdEncoding.DecodeString(a.Params["signature"])
	if err != nil || len(sig) == 0 {
		return errors.New("signature is not Base64")
	}
	msg := make([]byte, 0, len(r.Method)+len(r.RequestURI)+len(body)+64)
	msg = append(msg, r.Method...)
	msg = append(msg, '\n')
	msg = append(msg, r.RequestURI...)
	msg = append(msg, '\n')
	msg = append(msg, a.Params["timestamp"]...)
	msg = append(msg, '\n')
	msg = append(msg, nonce...)
	msg = append(msg, '\n')
	msg = append(msg, body...)
	msg = append(msg, '\n')
	sum := sha256.Sum256(msg)
	if rsa.VerifyPKCS1v15(&s.cfg.mchKey.PublicKey, crypto.SHA256, sum[:], sig) != nil {
		return errors.New("signature does not verify")
	}
	return nil
}

// knownSerial reports whether serial names a key WeChat Pay signs with.
func (s *Server) knownSerial(serial string) bool {
	if s.cfg.keyMode.hasPublicKey() && serial == s.cfg.pubKeyID {
		return true
	}
	s.certMu.RLock()
	defer s.certMu.RUnlock()
	for _, c := range s.certs {
		if strings.EqualFold(c.serial, serial) {
			return true
		}
	}
	return false
}

// issuedSerial reports whether serial names a key WeChat Pay signs with or
// signed with (a retired certificate).
func (s *Server) issuedSerial(serial string) bool {
	if s.knownSerial(serial) {
		return true
	}
	s.certMu.RLock()
	defer s.certMu.RUnlock()
	for _, r := range s.retired {
		if strings.EqualFold(r, serial) {
			return true
		}
	}
	return false
}

// signer picks the key for the next answer. During a migration
// (BothKeyModes) it is the key the request's Wechatpay-Serial names, as a
// client there verifies with the key it names; otherwise the public key,
// the platform certificates, or all of them in turn (rotation overlap).
// preferCert picks a certificate when there is one (the certificate list,
// which the certificates it carries verify).
func (s *Server) signer(preferCert bool, named string) (serial string, key *rsa.PrivateKey) {
	s.certMu.RLock()
	defer s.certMu.RUnlock()
	if s.cfg.keyMode == BothKeyModes && !preferCert && named != "" {
		if named == s.cfg.pubKeyID {
			return s.cfg.pubKeyID, s.cfg.pubKey
		}
		for _, c := range s.certs {
			if strings.EqualFold(c.serial, named) {
				return c.serial, c.key
			}
		}
	}
	n := len(s.certs)
	hasPub := s.cfg.keyMode.hasPublicKey()
	if preferCert && n > 0 {
		hasPub = false
	}
	total := n
	if hasPub {
		total++
	}
	if total == 0 {
		return "", nil
	}
	i := int(s.signSeq.Add(1) % uint64(total))
	if hasPub {
		if i == 0 {
			return s.cfg.pubKeyID, s.cfg.pubKey
		}
		i--
	}
	c := s.certs[i]
	return c.serial, c.key
}

// sigMode is how an answer is signed.
type sigMode int

const (
	sigGood sigMode = iota
	sigBad
	sigTest
	sigStale
)

// signHeaders sets the Wechatpay-* headers of an answer.
func (s *Server) signHeaders(h http.Header, body []byte, mode sigMode, preferCert bool, named string) {
	serial, key := s.signer(preferCert, named)
	if key == nil {
		return
	}
	ts := s.now().Unix()
	if mode == sigStale {
		ts -= 2 * clockWindow
	}
	nonce, sig := s.sigCache.sign(serial, key, ts, body)
	switch mode {
	case sigBad:
		raw, _ := base64.StdEncoding.DecodeString(sig)
		raw = append([]byte(nil), raw...)
		raw[len(raw)/2] ^= 0x01
		sig = base64.StdEncoding.EncodeToString(raw)
	case sigTest:
		sig = "WECHATPAY/SIGNTEST/" + sig
	}
	h["Wechatpay-Timestamp"] = []string{strconv.FormatInt(ts, 10)}
	h["Wechatpay-Nonce"] = []string{nonce}
	h["Wechatpay-Signature"] = []string{sig}
	h["Wechatpay-Serial"] = []string{serial}
}

// sigCache remembers the signatures of the current second: identical
// answers (the same coupon, the same error) are signed once. It keeps the
// fake cheap under load; clients do not track nonces.
type sigCache struct {
	mu      sync.Mutex
	ts      int64
	entries map[sigKey]sigEntry
}

type sigKey struct {
	serial string
	sum    [32]byte
}

type sigEntry struct{ nonce, sig string }

const sigCacheMax = 4096

func (c *sigCache) sign(serial string, key *rsa.PrivateKey, ts int64, body []byte) (nonce, sig string) {
	k := sigKey{serial: serial, sum: sha256.Sum256(body)}
	c.mu.Lock()
	if c.ts == ts {
		if e, ok := c.entries[k]; ok {
			c.mu.Unlock()
			return e.nonce, e.sig
		}
	}
	c.mu.Unlock()
	nonce = randomAlnum(32)
	tsText := strconv.FormatInt(ts, 10)
	msg := make([]byte, 0, len(tsText)+len(nonce)+len(body)+3)
	msg = append(append(append(append(append(append(msg, tsText...), '\n'), nonce...), '\n'), body...), '\n')
	sum := sha256.Sum256(msg)
	raw, err := rsa.SignPKCS1v15(nil, key, crypto.SHA256, sum[:])
	if err != nil {
		panic("wechatpaytest: signing: " + err.Error())
	}
	sig = base64.StdEncoding.EncodeToString(raw)
	c.mu.Lock()
	if c.ts != ts || c.entries == nil || len(c.entries) >= sigCacheMax {
		c.ts, c.entries = ts, make(map[sigKey]sigEntry)
	}
	c.entries[k] = sigEntry{nonce, sig}
	c.mu.Unlock()
	return nonce, sig
}
