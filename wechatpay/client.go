package wechatpay

import (
	"bytes"
	"context"
	"crypto/rsa"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"strings"
	"sync"
	"time"
)

// Mode is the access mode: how the client identifies itself and which
// paths it calls.
type Mode string

// Access modes.
const (
	// ModePartner is service-provider (服务商) access: WECHATPAY2-SHA256-RSA2048
	// with mchid, brand_id in the body or query, /v3/marketing/partner/… paths.
	ModePartner Mode = "partner"
	// ModeBrand is brand-direct (品牌直连) access: WECHATPAY-BRAND-SHA256-RSA2048
	// with brand_id in the header, /brand/marketing/… paths.
	ModeBrand Mode = "brand"
)

// DefaultBaseURL is WeChat Pay's API host. The backup host is
// https://api2.mch.weixin.qq.com.
const DefaultBaseURL = "https://api.mch.weixin.qq.com"

// Version is the client version reported in the default User-Agent.
const Version = "0.1.0"

const (
	defaultTimeout      = 30 * time.Second
	maxResponseBytes    = 4 << 20
	getRetryPause       = 200 * time.Millisecond
	minRSABits          = 2048
	defaultCertRefresh  = time.Hour
	minUnknownSerialGap = time.Minute
)

// Option configures a Client. Each option validates its arguments; NewClient
// returns the first error.
type Option func(*clientConfig) error

type clientConfig struct {
	baseURL     *url.URL
	mode        Mode
	identity    string
	certSerial  string
	key         *rsa.PrivateKey
	pubKeyID    string
	pubKey      *rsa.PublicKey
	apiV3Key    []byte
	httpClient  *http.Client
	logger      *slog.Logger
	now         func() time.Time
	userAgent   string
	certRefresh time.Duration
}

// WithBaseURL sets the API base URL (default DefaultBaseURL). HTTPS is
// required unless the host is a loopback address (a local fake). A path
// prefix (a gateway that strips it before WeChat Pay) is sent but not
// signed: the signature covers the API path only.
func WithBaseURL(u string) Option {
	return func(c *clientConfig) error {
		p, err := url.Parse(strings.TrimSuffix(u, "/"))
		if err != nil {
			// url.Error repeats the whole URL, user info and all: keep its reason only.
			var ue *url.Error
			if errors.As(err, &ue) {
				err = ue.Err
			}
			return fmt.Errorf("wechatpay: WithBaseURL: not a URL: %v", err)
		}
		if p.User != nil {
			// Never echo it: the user info is a secret WeChat Pay does not use.
			return errors.New("wechatpay: WithBaseURL: the URL must not carry user info (user:password@)")
		}
		if p.Host == "" || p.RawQuery != "" || p.Fragment != "" {
			return fmt.Errorf("wechatpay: WithBaseURL: want scheme://host[:port][/prefix], got %q", u)
		}
		switch p.Scheme {
		case "https":
		case "http":
			if !isLoopback(p.Hostname()) {
				return fmt.Errorf("wechatpay: WithBaseURL: https required for non-loopback host %q", p.Hostname())
			}
		default:
			return fmt.Errorf("wechatpay: WithBaseURL: scheme must be https, got %q", p.Scheme)
		}
		c.baseURL = p
		return nil
	}
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// headerSafe reports whether s can go into a quoted Authorization value.
func headerSafe(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x21 || c > 0x7e || c == '"' || c == ',' || c == '\\' {
			return false
		}
	}
	return s != ""
}

func checkSigningKey(key *rsa.PrivateKey) error {
	if key == nil {
		return errors.New("private key is nil")
	}
	if key.N.BitLen() < minRSABits {
		return fmt.Errorf("RSA key has %d bits, WeChat Pay requires %d", key.N.BitLen(), minRSABits)
	}
	return nil
}

func identityOption(name string, mode Mode, idName, id, certSerial string, key *rsa.PrivateKey) Option {
	return func(c *clientConfig) error {
		if c.mode != "" {
			return fmt.Errorf("wechatpay: %s: access mode already set to %s; use one of WithPartner and WithBrand", name, c.mode)
		}
		if !headerSafe(id) {
			return fmt.Errorf("wechatpay: %s: %s must be non-empty printable ASCII without quotes or commas", name, idName)
		}
		if !isHex(certSerial) {
			return fmt.Errorf("wechatpay: %s: certificate serial must be hexadecimal, got %q", name, certSerial)
		}
		if err := checkSigningKey(key); err != nil {
			return fmt.Errorf("wechatpay: %s: %w", name, err)
		}
		c.mode, c.identity, c.certSerial, c.key = mode, id, strings.ToUpper(certSerial), key
		return nil
	}
}

func isHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
			return false
		}
	}
	return s != ""
}

// WithPartner selects partner (service-provider) mode: mchID is the
// provider's merchant id, certSerial the serial of its merchant API
// certificate and key that certificate's private key.
func WithPartner(mchID, certSerial string, key *rsa.PrivateKey) Option {
	return identityOption("WithPartner", ModePartner, "mchid", mchID, certSerial, key)
}

// WithBrand selects brand-direct mode: brandID is the brand's id, certSerial
// the serial of the brand's API certificate and key its private key.
func WithBrand(brandID, certSerial string, key *rsa.PrivateKey) Option {
	return identityOption("WithBrand", ModeBrand, "brand_id", brandID, certSerial, key)
}

// WithPublicKey selects WeChat Pay public-key mode: responses signed with
// Wechatpay-Serial equal to id (PUB_KEY_ID_…) are verified with key. It may
// be combined with WithPlatformCertificates during a migration; each response
// is then checked with the key its Wechatpay-Serial names.
func WithPublicKey(id string, key *rsa.PublicKey) Option {
	return func(c *clientConfig) error {
		if !headerSafe(id) {
			return fmt.Errorf("wechatpay: WithPublicKey: id must be non-empty printable ASCII, got %q", id)
		}
		if key == nil {
			return errors.New("wechatpay: WithPublicKey: key is nil")
		}
		if key.N.BitLen() < minRSABits {
			return fmt.Errorf("wechatpay: WithPublicKey: RSA key has %d bits, want at least %d", key.N.BitLen(), minRSABits)
		}
		c.pubKeyID, c.pubKey = id, key
		return nil
	}
}

// WithPlatformCertificates selects platform-certificate mode: the client
// downloads /v3/certificates, decrypts them with apiV3Key (32 bytes),
// refreshes them in the background and re-downloads when a response names an
// unknown serial.
func WithPlatformCertificates(apiV3Key string) Option {
	return func(c *clientConfig) error {
		if len(apiV3Key) != 32 {
			return fmt.Errorf("wechatpay: WithPlatformCertificates: the APIv3 key must be 32 bytes, got %d", len(apiV3Key))
		}
		c.apiV3Key = []byte(apiV3Key)
		return nil
	}
}

// WithCertificateRefresh sets how often platform certificates are
// downloaded again in the background (default 1h, at most 12h).
func WithCertificateRefresh(d time.Duration) Option {
	return func(c *clientConfig) error {
		if d < time.Second || d > 12*time.Hour {
			return fmt.Errorf("wechatpay: WithCertificateRefresh: want 1s–12h, got %v", d)
		}
		c.certRefresh = d
		return nil
	}
}

// WithHTTPClient sets the HTTP client. The default has a 30 s timeout and a
// connection pool sized for many concurrent callers.
func WithHTTPClient(hc *http.Client) Option {
	return func(c *clientConfig) error {
		if hc == nil {
			return errors.New("wechatpay: WithHTTPClient: client is nil")
		}
		c.httpClient = hc
		return nil
	}
}

// WithLogger sets the logger (default: discard). The client logs at Debug
// level and never logs keys, the Authorization header or bodies.
func WithLogger(l *slog.Logger) Option {
	return func(c *clientConfig) error {
		if l == nil {
			return errors.New("wechatpay: WithLogger: logger is nil")
		}
		c.logger = l
		return nil
	}
}

// WithClock sets the clock used for request timestamps and the response
// clock window (default time.Now).
func WithClock(now func() time.Time) Option {
	return func(c *clientConfig) error {
		if now == nil {
			return errors.New("wechatpay: WithClock: clock is nil")
		}
		c.now = now
		return nil
	}
}

// WithUserAgent replaces the default User-Agent
// ("couponq/<version> (<os>) Go/<go version>").
func WithUserAgent(ua string) Option {
	return func(c *clientConfig) error {
		if ua == "" || strings.ContainsAny(ua, "\r\n") {
			return fmt.Errorf("wechatpay: WithUserAgent: want a non-empty single line, got %q", ua)
		}
		c.userAgent = ua
		return nil
	}
}

// DefaultUserAgent is the User-Agent sent unless WithUserAgent replaces it.
func DefaultUserAgent() string {
	return fmt.Sprintf("couponq/%s (%s/%s) Go/%s", Version, runtime.GOOS, runtime.GOARCH, strings.TrimPrefix(runtime.Version(), "go"))
}

// NewHTTPClient returns the default HTTP client: a 30 s overall timeout and
// a transport whose pool keeps up to 64 idle connections per host.
func NewHTTPClient() *http.Client {
	dialer := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}
	return &http.Client{
		Timeout: defaultTimeout,
		Transport: &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			DialContext:           dialer.DialContext,
			ForceAttemptHTTP2:     true,
			MaxIdleConns:          256,
			MaxIdleConnsPerHost:   64,
			IdleConnTimeout:       90 * time.Second,
			TLSHandshakeTimeout:   10 * time.Second,
			ResponseHeaderTimeout: 20 * time.Second,
			ExpectContinueTimeout: time.Second,
			TLSClientConfig:       &tls.Config{MinVersion: tls.VersionTLS12},
		},
		// Redirects are not part of the API; never follow one with a signed request.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// Client calls the WeChat Pay API v3 product-coupon endpoints. It signs every
// request, verifies every 2xx answer and is safe for concurrent use.
type Client struct {
	base      string // scheme://host[/prefix], no trailing slash
	mode      Mode
	identity  string
	serial    string
	key       *rsa.PrivateKey
	pubKeyID  string
	hc        *http.Client
	ownHC     bool
	log       *slog.Logger
	now       func() time.Time
	userAgent string
	authHead  string // "SCHEME idname=\"id\",serial_no=\"…\","

	keys  *keyRing
	certs *certManager // nil unless platform-certificate mode
	skew  skewClock    // WeChat Pay's clock, as its answers show it

	closeOnce sync.Once
}

// NewClient returns a client configured by opts. One of WithPartner and
// WithBrand is required, and at least one of WithPublicKey and
// WithPlatformCertificates (responses are always verified).
func NewClient(opts ...Option) (*Client, error) {
	cfg := clientConfig{certRefresh: defaultCertRefresh}
	if err := WithBaseURL(DefaultBaseURL)(&cfg); err != nil {
		return nil, err
	}
	for _, o := range opts {
		if o == nil {
			continue
		}
		if err := o(&cfg); err != nil {
			return nil, err
		}
	}
	if cfg.mode == "" {
		return nil, errors.New("wechatpay: NewClient: no identity: use WithPartner or WithBrand")
	}
	if cfg.pubKey == nil && cfg.apiV3Key == nil {
		return nil, errors.New("wechatpay: NewClient: no way to verify responses: use WithPublicKey and/or WithPlatformCertificates")
	}
	if cfg.mode == ModeBrand && cfg.pubKey == nil {
		// Brand-direct calls must name the WeChat Pay public-key id in
		// Wechatpay-Serial; a certificate serial there is refused.
		return nil, errors.New("wechatpay: NewClient: brand mode requires the WeChat Pay public key (WithPublicKey); platform certificates alone are not enough")
	}
	c := &Client{
		base:      cfg.baseURL.String(),
		mode:      cfg.mode,
		identity:  cfg.identity,
		serial:    cfg.certSerial,
		key:       cfg.key,
		pubKeyID:  cfg.pubKeyID,
		hc:        cfg.httpClient,
		log:       cfg.logger,
		now:       cfg.now,
		userAgent: cfg.userAgent,
		keys:      newKeyRing(),
	}
	if c.hc == nil {
		c.hc, c.ownHC = NewHTTPClient(), true
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if c.now == nil {
		c.now = time.Now
	}
	if c.userAgent == "" {
		c.userAgent = DefaultUserAgent()
	}
	scheme, idName := schemePartner, "mchid"
	if c.mode == ModeBrand {
		scheme, idName = schemeBrand, "brand_id"
	}
	c.authHead = scheme + " " + idName + `="` + c.identity + `",serial_no="` + c.serial + `",`
	if cfg.pubKey != nil {
		c.keys.setPublicKey(cfg.pubKeyID, cfg.pubKey)
	}
	if cfg.apiV3Key != nil {
		c.certs = newCertManager(c, cfg.apiV3Key, cfg.certRefresh)
	}
	return c, nil
}

// Mode returns the access mode.
func (c *Client) Mode() Mode { return c.mode }

// Identity returns the caller identity WeChat Pay counts quotas against: the
// mchid in partner mode, the brand_id in brand mode.
func (c *Client) Identity() string { return c.identity }

// Ready reports whether the client can verify answers: always in public-key
// mode; in platform-certificate mode once certificates were downloaded within
// the last 12 hours (it downloads them when they are not).
func (c *Client) Ready(ctx context.Context) error {
	if c.certs == nil {
		return nil
	}
	return c.certs.ready(ctx)
}

// Close stops the background certificate refresh and releases idle
// connections of the default HTTP client. It is safe to call more than once.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		if c.certs != nil {
			c.certs.close()
		}
		if c.ownHC {
			c.hc.CloseIdleConnections()
		}
	})
	return nil
}

// requestSerial is the Wechatpay-Serial request header: the public-key id when
// known, else the newest platform certificate's serial.
func (c *Client) requestSerial() string {
	if c.pubKeyID != "" {
		return c.pubKeyID
	}
	if c.certs != nil {
		return c.certs.newestSerial()
	}
	return ""
}

// response is a verified (2xx) answer.
type response struct {
	status    int
	requestID string
	body      []byte
}

// do sends one API call. GET is retried once, quickly, after a retryable
// failure; writes are never retried here (asynq is the retry loop, and the
// caller's out_request_no makes its retries safe). query is already encoded.
func (c *Client) do(ctx context.Context, method, path, query string, body []byte) (*response, error) {
	if c.certs != nil {
		// Certificates are needed to verify the answer and, in brand
		// mode, to name a serial in the request.
		if err := c.certs.ensure(ctx); err != nil {
			return nil, fmt.Errorf("wechatpay: %s %s: %w: %w", method, path, ErrNotSent, err)
		}
	}
	attempts := 1
	if method == http.MethodGet {
		attempts = 2
	}
	var err error
	for attempt := 1; ; attempt++ {
		var resp *response
		resp, err = c.attempt(ctx, method, path, query, body, attempt, c.verify)
		if err == nil {
			return resp, nil
		}
		if attempt >= attempts || !IsRetryable(err) {
			break
		}
		if _, limited := IsRateLimited(err); limited {
			break
		}
		t := time.NewTimer(getRetryPause)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("wechatpay: %s %s: giving up after %d attempts: %w (last: %w)", method, path, attempt, ctx.Err(), err)
		case <-t.C:
		}
	}
	return nil, err
}

// verifyFunc checks the signature headers of a 2xx answer.
type verifyFunc func(ctx context.Context, h http.Header, body []byte) error

// sendFunc is attempt or attemptAnyClock.
type sendFunc func(ctx context.Context, method, path, query string, body []byte, attempt int, verify verifyFunc) (*response, error)

// attempt makes one signed request and checks the answer: non-2xx becomes an
// *APIError, a 2xx failing verify a *VerifyError, each in a
// *CredentialsError when it implicates the client's settings. It refuses to
// sign while the clock is measured beyond MaxClockSkew: WeChat Pay would
// refuse the call anyway, and a refusal sent is a call spent.
func (c *Client) attempt(ctx context.Context, method, path, query string, body []byte, attempt int, verify verifyFunc) (*response, error) {
	if err := c.skewRefusal(method, path); err != nil {
		return nil, err
	}
	return c.attemptAnyClock(ctx, method, path, query, body, attempt, verify)
}

// attemptAnyClock is attempt without the clock check (CheckCredentials
// must send to measure the skew again).
func (c *Client) attemptAnyClock(ctx context.Context, method, path, query string, body []byte, attempt int, verify verifyFunc) (*response, error) {
	rt, err := c.roundTrip(ctx, method, path, query, body, attempt)
	if err != nil {
		return nil, err
	}
	if rt.status < 200 || rt.status > 299 {
		return nil, c.credentials(c.checkResponse(method, path, rt.hr, rt.body))
	}
	if err := verify(ctx, rt.hr.Header, rt.body); err != nil {
		return nil, c.credentials(&VerifyError{Method: method, Path: path, HTTPStatus: rt.status, RequestID: rt.requestID,
			Serial: rt.hr.Header.Get("Wechatpay-Serial"), Err: err})
	}
	return &response{status: rt.status, requestID: rt.requestID, body: rt.body}, nil
}

// exchange is an answer as received, unverified; hr.Body is closed.
type exchange struct {
	hr        *http.Response
	status    int
	requestID string
	body      []byte
}

// roundTrip signs and sends one request and reads the answer, measuring the
// clock skew from it.
func (c *Client) roundTrip(ctx context.Context, method, path, query string, body []byte, attempt int) (*exchange, error) {
	start := time.Now()
	uri := path
	if query != "" {
		uri += "?" + query
	}
	auth, err := c.authorization(method, uri, body)
	if err != nil {
		return nil, err
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+uri, rd)
	if err != nil {
		return nil, fmt.Errorf("wechatpay: %s %s: %w", method, path, err)
	}
	h := req.Header
	h["Authorization"] = []string{auth}
	h["Accept"] = []string{"application/json"}
	h["User-Agent"] = []string{c.userAgent}
	if body != nil {
		h["Content-Type"] = []string{"application/json"}
	}
	if s := c.requestSerial(); s != "" {
		h["Wechatpay-Serial"] = []string{s}
	}
	sent := c.now()
	hr, err := c.hc.Do(req)
	if err != nil {
		c.log.DebugContext(ctx, "wechatpay call failed", "method", method, "path", path, "attempt", attempt, "error", err)
		// *url.Error: IsRetryable classifies it; a cancelled ctx stays visible to errors.Is.
		return nil, fmt.Errorf("wechatpay: %s %s: %w", method, path, redactURLError(err))
	}
	c.skew.observe(hr.Header, sent, c.now())
	defer hr.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(hr.Body, maxResponseBytes+1))
	if err == nil && len(raw) > maxResponseBytes {
		err = fmt.Errorf("answer larger than %d bytes", maxResponseBytes)
	}
	requestID := hr.Header.Get("Request-Id")
	if err != nil {
		return nil, fmt.Errorf("wechatpay: %s %s: reading answer (request_id=%s): %w", method, path, requestID,
			&url.Error{Op: method, URL: path, Err: err})
	}
	c.log.DebugContext(ctx, "wechatpay call", "method", method, "path", path, "status", hr.StatusCode,
		"request_id", requestID, "attempt", attempt, "duration", time.Since(start))
	return &exchange{hr: hr, status: hr.StatusCode, requestID: requestID, body: raw}, nil
}

// redactURLError drops the query from a *url.Error's URL; the rest is kept.
func redactURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		if i := strings.IndexByte(ue.URL, '?'); i >= 0 {
			ue.URL = ue.URL[:i]
		}
	}
	return err
}
