package wechatpay

import (
	"context"
	"crypto/rsa"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// MaxClockSkew is how far the local clock may be from WeChat Pay's before
// the client refuses to sign a call. WeChat Pay refuses a request timestamp
// more than 5 minutes from its clock (401 SIGN_ERROR). The skew is measured
// from answers to about a second (Date and Wechatpay-Timestamp are whole
// seconds, plus half a round trip), and a clock that drifts keeps drifting
// between measurements: stopping at 4 minutes leaves a minute for both,
// while no clock kept by NTP comes near it.
const MaxClockSkew = 4 * time.Minute

// skewMaxAge is how long a measurement may refuse calls. An older one lets
// the next call go out and measure again, so a clock fixed meanwhile is
// noticed even by a caller that never calls CheckCredentials.
const skewMaxAge = time.Minute

// ErrNotSent marks the error of a call that was never sent: WeChat Pay has
// not seen it, so it cannot have taken effect. Test with errors.Is.
var ErrNotSent = errors.New("request not sent")

// errDecrypt: a resource did not decrypt with the APIv3 key.
var errDecrypt = errors.New("decryption failed (wrong APIv3 key?)")

// Credential names the part of a client's settings that an answer
// implicates.
type Credential string

// Credentials an error may implicate.
const (
	// CredentialClock: the local clock is more than MaxClockSkew (or, for an
	// answer, ClockWindow) off WeChat Pay's.
	CredentialClock Credential = "clock"
	// CredentialMerchantKey: WeChat Pay refuses the request signature — the
	// merchant private key, its certificate serial, the mchid or brand_id,
	// or the access mode.
	CredentialMerchantKey Credential = "merchant key"
	// CredentialWeChatPayKey: WeChat Pay's answers do not verify — the
	// WeChat Pay public key or its id, or the platform certificates (or a
	// proxy that strips the signature headers).
	CredentialWeChatPayKey Credential = "wechatpay key"
	// CredentialAPIv3Key: the platform certificates do not decrypt with the
	// APIv3 key.
	CredentialAPIv3Key Credential = "apiv3 key"
)

// Hint says, for a log line, which settings to look at.
func (c Credential) Hint() string {
	switch c {
	case CredentialClock:
		return "the local clock is off WeChat Pay's: fix the host's time (NTP)"
	case CredentialMerchantKey:
		return "WeChat Pay refuses the request signature: check the merchant certificate serial, its private key, the mchid or brand_id and the access mode"
	case CredentialWeChatPayKey:
		return "WeChat Pay's answers do not verify: check the WeChat Pay public key and its id (or the platform certificates), or a proxy stripping Wechatpay-* headers"
	case CredentialAPIv3Key:
		return "the platform certificates do not decrypt: check the APIv3 key"
	}
	return string(c)
}

// CredentialsError is an error that implicates the client's own settings or
// clock rather than the call: every call made the same way fails the same
// way, whatever its data. It wraps the *APIError (401 SIGN_ERROR), the
// *VerifyError or the refusal to sign (ErrNotSent) it comes from, so
// errors.As finds those too.
type CredentialsError struct {
	Credential Credential
	// Skew is the last measured offset of WeChat Pay's clock from the local
	// one (positive: WeChat Pay is ahead), when SkewKnown.
	Skew      time.Duration
	SkewKnown bool
	Err       error
}

func (e *CredentialsError) Error() string {
	s := e.Err.Error() + " (likely cause: " + string(e.Credential)
	if e.SkewKnown {
		s += fmt.Sprintf("; clock skew %v", e.Skew.Round(time.Second))
	}
	return s + ")"
}

// Unwrap returns the error it comes from.
func (e *CredentialsError) Unwrap() error { return e.Err }

// skewClock holds the last measured offset of WeChat Pay's clock.
type skewClock struct {
	mu   sync.Mutex
	skew time.Duration
	at   time.Time // local time of the measurement; zero: none yet
}

// observe measures the offset from an answer: its Date (the time the
// answer left the server) or, without one, its Wechatpay-Timestamp (which
// may be a stale signature's). sent and received bracket the exchange on
// the local clock.
func (s *skewClock) observe(h http.Header, sent, received time.Time) {
	var server time.Time
	if d, err := http.ParseTime(h.Get("Date")); err == nil {
		server = d
	} else if ts, err := strconv.ParseInt(h.Get("Wechatpay-Timestamp"), 10, 64); err == nil {
		server = time.Unix(ts, 0)
	} else {
		return
	}
	// Both are whole seconds: the server's time lay within [t, t+1s).
	mid := sent.Add(received.Sub(sent) / 2)
	skew := server.Add(500 * time.Millisecond).Sub(mid)
	s.mu.Lock()
	s.skew, s.at = skew, received
	s.mu.Unlock()
}

// get returns the last measurement, if one was made within skewMaxAge.
func (s *skewClock) get(now time.Time) (time.Duration, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.at.IsZero() || now.Sub(s.at) > skewMaxAge || s.at.Sub(now) > skewMaxAge {
		return 0, false
	}
	return s.skew, true
}

func absDuration(d time.Duration) time.Duration {
	if d < 0 {
		return -d
	}
	return d
}

// ClockSkew returns the offset of WeChat Pay's clock from the client's
// (positive: WeChat Pay is ahead) as last measured from an answer, and
// whether a measurement from the last minute exists.
func (c *Client) ClockSkew() (time.Duration, bool) { return c.skew.get(c.now()) }

// skewRefusal is the error of a call the client refuses to sign because its
// clock is beyond MaxClockSkew; nil when it may sign.
func (c *Client) skewRefusal(method, path string) error {
	skew, ok := c.skew.get(c.now())
	if !ok || absDuration(skew) <= MaxClockSkew {
		return nil
	}
	return &CredentialsError{Credential: CredentialClock, Skew: skew, SkewKnown: true,
		Err: fmt.Errorf("wechatpay: %s %s: %w: the local clock is %v off WeChat Pay's, beyond %v (WeChat Pay refuses more than 5m)",
			method, path, ErrNotSent, skew.Round(time.Second), MaxClockSkew)}
}

// credentials wraps err in a *CredentialsError when it implicates the
// client's settings: a 401 SIGN_ERROR, or an answer that does not verify or
// decrypt. Other errors pass unchanged.
func (c *Client) credentials(err error) error {
	if err == nil {
		return nil
	}
	var ce *CredentialsError
	if errors.As(err, &ce) {
		return err
	}
	skew, known := c.skew.get(c.now())
	cred, ok := credentialOf(err, skew, known)
	if !ok {
		return err
	}
	return &CredentialsError{Credential: cred, Skew: skew, SkewKnown: known, Err: err}
}

func credentialOf(err error, skew time.Duration, skewKnown bool) (Credential, bool) {
	var ae *APIError
	if errors.As(err, &ae) {
		if ae.HTTPStatus != http.StatusUnauthorized || ae.Code != CodeSignError {
			return "", false
		}
		if skewKnown && absDuration(skew) > MaxClockSkew {
			return CredentialClock, true
		}
		return CredentialMerchantKey, true
	}
	switch {
	case errors.Is(err, errDecrypt):
		return CredentialAPIv3Key, true
	case errors.Is(err, ErrClockSkew):
		return CredentialClock, true
	case errors.Is(err, ErrSignature), errors.Is(err, ErrUnknownSerial), errors.Is(err, ErrMissingHeaders):
		return CredentialWeChatPayKey, true
	}
	return "", false
}

// CheckCredentials asks WeChat Pay whether it accepts this client's
// signature and whether its answers verify, with one signed GET
// /v3/certificates (an endpoint with a quota of its own, 1000/s). It is
// sent even while the clock is believed off, so that it measures the skew
// again. In platform-certificate mode it downloads the certificates (and
// keeps them); in public-key mode the 404 RESOURCE_NOT_EXISTS that recent
// merchants get shows the signature accepted, and its signature headers,
// when present, are verified.
//
// nil: both hold and the clock is within MaxClockSkew. A *CredentialsError:
// WeChat Pay refused the signature, the answer did not verify or decrypt,
// or the clock is off. Any other error (network, 429, 5xx) says nothing
// about the credentials.
func (c *Client) CheckCredentials(ctx context.Context) error {
	var err error
	if c.certs != nil {
		c.certs.mu.Lock()
		err = c.certs.download(ctx, c.attemptAnyClock)
		c.certs.mu.Unlock()
	} else {
		err = c.probePublicKey(ctx)
	}
	if err != nil {
		return c.credentials(err)
	}
	if skew, ok := c.skew.get(c.now()); ok && absDuration(skew) > MaxClockSkew {
		return &CredentialsError{Credential: CredentialClock, Skew: skew, SkewKnown: true,
			Err: fmt.Errorf("wechatpay: GET %s: the local clock is %v off WeChat Pay's, beyond %v", CertificatesPath, skew.Round(time.Second), MaxClockSkew)}
	}
	return nil
}

// probePublicKey is CheckCredentials in public-key mode. An answer signed
// by a platform certificate (a merchant that still has some) cannot be
// checked with the public key; it shows the request signature accepted.
func (c *Client) probePublicKey(ctx context.Context) error {
	rt, err := c.roundTrip(ctx, http.MethodGet, CertificatesPath, "", nil, 1)
	if err != nil {
		return err
	}
	if rt.status < 200 || rt.status > 299 {
		ae := c.checkResponse(http.MethodGet, CertificatesPath, rt.hr, rt.body)
		if rt.status == http.StatusUnauthorized || rt.status == http.StatusTooManyRequests || rt.status >= 500 {
			return ae // refused, or nothing learnt
		}
		// Any other answer got past the signature check.
		if rt.hr.Header.Get("Wechatpay-Signature") == "" {
			return nil
		}
	}
	serial := rt.hr.Header.Get("Wechatpay-Serial")
	if serial != "" && !strings.HasPrefix(serial, "PUB_KEY_ID_") && c.keys.lookup(serial, c.now()) == nil {
		return nil // a platform certificate's serial: not ours to check
	}
	now := c.now()
	if err := verifyResponse(rt.hr.Header, rt.body, now, func(s string) *rsa.PublicKey { return c.keys.lookup(s, now) }); err != nil {
		return &VerifyError{Method: http.MethodGet, Path: CertificatesPath, HTTPStatus: rt.status, RequestID: rt.requestID,
			Serial: serial, Err: err}
	}
	return nil
}
