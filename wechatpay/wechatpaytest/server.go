package wechatpaytest

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	mrand "math/rand/v2"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/couponq/couponq/wechatpay"
)

// TB is the part of testing.TB the server needs; *testing.T, *testing.B and
// *testing.F satisfy it. A nil TB is allowed (the demo, `couponq mock`): then
// the caller closes the server.
type TB interface {
	Helper()
	Cleanup(func())
}

// KeyMode is how the fake tells clients its signing key.
type KeyMode int

// Key modes.
const (
	// PublicKeyMode: responses are signed with a WeChat Pay public key
	// (id PUB_KEY_ID_…); /v3/certificates answers 404 RESOURCE_NOT_EXISTS.
	PublicKeyMode KeyMode = iota
	// CertificateMode: responses are signed with platform certificates served
	// by /v3/certificates, encrypted with the APIv3 key.
	CertificateMode
	// BothKeyModes: a migration; responses are signed by the public key and
	// the certificates in turn.
	BothKeyModes
)

func (k KeyMode) String() string {
	switch k {
	case PublicKeyMode:
		return "public-key"
	case CertificateMode:
		return "certificate"
	case BothKeyModes:
		return "both"
	}
	return fmt.Sprintf("KeyMode(%d)", int(k))
}

func (k KeyMode) hasPublicKey() bool    { return k == PublicKeyMode || k == BothKeyModes }
func (k KeyMode) hasCertificates() bool { return k == CertificateMode || k == BothKeyModes }

// RepeatAnswer is how the fake answers an identical repeat of a write (same
// out_request_no, same data). Either way nothing is applied again.
type RepeatAnswer int

// Repeat answers. WeChat Pay does not document which one it gives.
const (
	// RepeatOriginal answers 200 with the coupon as it is now.
	RepeatOriginal RepeatAnswer = iota
	// RepeatError answers 400 ALREADY_EXISTS.
	RepeatError
)

// Option configures a Server.
type Option func(*config)

type config struct {
	mode         wechatpay.Mode
	keyMode      KeyMode
	qps          int
	qpsModel     QPSModel
	jitterMin    time.Duration
	jitterMax    time.Duration
	spurious     float64
	latency      time.Duration
	seed         uint64
	repeat       RepeatAnswer
	now          func() time.Time
	skew         time.Duration
	mchID        string
	brandID      string
	mchKey       *rsa.PrivateKey
	mchSerial    string
	pubKeyID     string
	pubKey       *rsa.PrivateKey
	apiV3Key     string
	requestLimit int
}

// WithMode sets the access mode the fake expects (default partner).
func WithMode(m wechatpay.Mode) Option { return func(c *config) { c.mode = m } }

// WithKeyMode sets how the fake signs (default PublicKeyMode).
func WithKeyMode(k KeyMode) Option { return func(c *config) { c.keyMode = k } }

// WithQPS sets a ceiling of n calls per second per endpoint (update,
// deactivate, get) per identity (the mchid, or the brand_id in brand mode),
// read as WithQPSModel says. Over it the fake answers 429
// RATELIMIT_EXCEEDED without processing the request or counting it. 0 (the
// default) turns it off.
func WithQPS(n int) Option { return func(c *config) { c.qps = n } }

// WithQPSModel sets how the WithQPS ceiling is read (default
// SlidingWindow, the strictest).
func WithQPSModel(m QPSModel) Option { return func(c *config) { c.qpsModel = m } }

// WithJitter delays every request by a uniform random time in [min, max]
// before the ceiling sees it, as the network between a client and WeChat
// Pay does: calls a client spaces evenly can arrive bunched. The draws come
// from the WithSeed generator. Under WithClock the fake cannot wait on the
// test's clock, so it adds the delay to the time it reads instead of
// sleeping. NewServer panics unless 0 <= min <= max.
func WithJitter(min, max time.Duration) Option {
	return func(c *config) { c.jitterMin, c.jitterMax = min, max }
}

// WithSpurious429 answers a share (0 to 1) of the calls admitted by the
// ceiling 429 RATELIMIT_EXCEEDED anyway, as WeChat Pay now and then does
// below its quota. Such a call counts toward the window but is not
// processed; Request.Fault is FaultSpurious429 and Stats counts it in
// Spurious429. The draws come from the WithSeed generator. NewServer panics
// on a share outside [0, 1].
func WithSpurious429(share float64) Option { return func(c *config) { c.spurious = share } }

// WithLatency delays every answer by d.
func WithLatency(d time.Duration) Option { return func(c *config) { c.latency = d } }

// WithSeed seeds the random fault draws (default 1), making them repeatable.
func WithSeed(seed uint64) Option { return func(c *config) { c.seed = seed } }

// WithRepeatAnswer sets the answer to an identical repeat of a write.
func WithRepeatAnswer(r RepeatAnswer) Option { return func(c *config) { c.repeat = r } }

// WithClock sets the fake's clock: request clock window, response
// timestamps, the QPS ceiling's window and effect times. Client() passes it on.
func WithClock(now func() time.Time) Option { return func(c *config) { c.now = now } }

// WithClockSkew sets the fake's clock d ahead of the clock it would use
// otherwise (negative: behind), as a WeChat Pay whose clock differs from the
// client's: request timestamps are judged, and answers stamped, on the
// skewed clock, and Client() does not pass the skew on. SetClockSkew changes
// it while the server runs.
func WithClockSkew(d time.Duration) Option { return func(c *config) { c.skew = d } }

// WithIdentity sets the service provider's mchid and the brand id used in
// brand mode (defaults 1900000109 and 120344).
func WithIdentity(mchID, brandID string) Option {
	return func(c *config) { c.mchID, c.brandID = mchID, brandID }
}

// WithMerchantKey sets the merchant (or brand) API certificate serial and
// key the fake expects requests to be signed with (default: generated).
func WithMerchantKey(serial string, key *rsa.PrivateKey) Option {
	return func(c *config) { c.mchSerial, c.mchKey = strings.ToUpper(serial), key }
}

// WithWeChatPayKey sets the WeChat Pay public-key id and the private key the
// fake signs with in public-key mode (default: generated).
func WithWeChatPayKey(id string, key *rsa.PrivateKey) Option {
	return func(c *config) { c.pubKeyID, c.pubKey = id, key }
}

// WithAPIv3Key sets the 32-byte APIv3 key certificates are encrypted with.
func WithAPIv3Key(k string) Option { return func(c *config) { c.apiV3Key = k } }

// WithRequestLogLimit bounds the request log to the n most recent requests
// (default 100000). Effects are never dropped.
func WithRequestLogLimit(n int) Option { return func(c *config) { c.requestLimit = n } }

// Server is a fake WeChat Pay API v3 for product coupons. It is safe for
// concurrent use.
type Server struct {
	// URL is the base URL, http://127.0.0.1:port.
	URL string

	cfg       config
	hs        *httptest.Server
	closeOnce sync.Once
	now       func() time.Time
	ridPrefix string
	skew      atomic.Int64 // nanoseconds, WithClockSkew
	reqSeq    atomic.Uint64
	signSeq   atomic.Uint64

	certMu    sync.RWMutex
	certs     []*platformCert // oldest first
	retired   []string        // serials of certificates no longer served
	rotations int

	sigCache sigCache
	limiter  limiter

	mu       sync.Mutex
	coupons  map[string]*wechatpay.ProductCoupon
	idem     map[idemKey]idemEntry
	applied  map[string]int
	effects  []Effect
	requests []Request
	reqStart int // ring start when the log is full
	failNext []scripted
	faults   Faults
	rng      *mrand.Rand
	nextID   uint64
}

type platformCert struct {
	serial    string
	key       *rsa.PrivateKey
	pem       []byte
	notBefore time.Time
	notAfter  time.Time
}

// Keys are expensive to generate; every server of a process shares a few.
var keyPool struct {
	mu   sync.Mutex
	keys []*rsa.PrivateKey
}

// poolKey returns the i-th shared 2048-bit key, generating it on first use.
func poolKey(i int) *rsa.PrivateKey {
	keyPool.mu.Lock()
	defer keyPool.mu.Unlock()
	for len(keyPool.keys) <= i {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			panic("wechatpaytest: generating an RSA key: " + err.Error())
		}
		keyPool.keys = append(keyPool.keys, k)
	}
	return keyPool.keys[i]
}

// randomHex returns n random upper-case hex digits.
func randomHex(n int) string {
	const hexDigits = "0123456789ABCDEF"
	b := make([]byte, n)
	for i := range b {
		b[i] = hexDigits[mrand.IntN(16)]
	}
	if b[0] == '0' {
		b[0] = '1' // a serial's hex form has no leading zero
	}
	return string(b)
}

func randomAlnum(n int) string {
	const alnum = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
	b := make([]byte, n)
	for i := range b {
		b[i] = alnum[mrand.IntN(len(alnum))]
	}
	return string(b)
}

// validate checks the options that can be out of range; a test helper
// panics on them rather than run a fake other than the one asked for.
func (c *config) validate() error {
	switch {
	case c.qpsModel != SlidingWindow && c.qpsModel != TokenBucket:
		return fmt.Errorf("WithQPSModel: unknown model %v", c.qpsModel)
	case c.jitterMin < 0 || c.jitterMin > c.jitterMax:
		return fmt.Errorf("WithJitter: want 0 <= min <= max, got min %v, max %v", c.jitterMin, c.jitterMax)
	case !(c.spurious >= 0 && c.spurious <= 1): // also refuses NaN
		return fmt.Errorf("WithSpurious429: share %v is outside [0, 1]", c.spurious)
	}
	return nil
}

// NewServer starts a fake WeChat Pay on 127.0.0.1:0. With a non-nil tb it
// is closed by tb.Cleanup. It panics on an out-of-range option.
func NewServer(tb TB, opts ...Option) *Server {
	if tb != nil {
		tb.Helper()
	}
	cfg := config{mode: wechatpay.ModePartner, seed: 1, mchID: "1900000109", brandID: "120344", requestLimit: 100000}
	for _, o := range opts {
		o(&cfg)
	}
	if err := cfg.validate(); err != nil {
		panic("wechatpaytest: NewServer: " + err.Error())
	}
	if cfg.mchKey == nil {
		cfg.mchKey, cfg.mchSerial = poolKey(0), randomHex(40)
	}
	if cfg.keyMode.hasPublicKey() && cfg.pubKey == nil {
		cfg.pubKey = poolKey(1)
	}
	if cfg.pubKeyID == "" {
		cfg.pubKeyID = "PUB_KEY_ID_01" + strings.Map(func(r rune) rune { return '0' + (r % 10) }, randomAlnum(26))
	}
	if cfg.apiV3Key == "" {
		cfg.apiV3Key = randomAlnum(32)
	}
	s := &Server{
		cfg:       cfg,
		now:       cfg.now,
		ridPrefix: "08" + randomHex(8),
		coupons:   map[string]*wechatpay.ProductCoupon{},
		idem:      map[idemKey]idemEntry{},
		applied:   map[string]int{},
		rng:       mrand.New(mrand.NewPCG(cfg.seed, cfg.seed^0x9E3779B97F4A7C15)),
		nextID:    1000000000,
	}
	base := cfg.now
	if base == nil {
		base = time.Now
	}
	s.skew.Store(int64(cfg.skew))
	s.now = func() time.Time { return base().Add(time.Duration(s.skew.Load())) }
	s.limiter.init(cfg.qps, cfg.qpsModel)
	if cfg.keyMode.hasCertificates() {
		s.certs = append(s.certs, s.newCert(poolKey(2)))
	}
	s.hs = httptest.NewServer(s)
	s.URL = s.hs.URL
	if tb != nil {
		tb.Cleanup(s.Close)
	}
	return s
}

// newCert makes a self-signed platform certificate valid for five years.
func (s *Server) newCert(key *rsa.PrivateKey) *platformCert {
	// WeChat Pay's serials may start with a zero that %X would drop; the fake
	// lists every one that way so clients that compare text are caught.
	text := "0" + randomHex(39)
	serial, _ := new(big.Int).SetString(text, 16)
	now := s.now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "Tenpay.com Root CA (wechatpaytest)", Organization: []string{"wechatpaytest"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(5 * 365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		panic("wechatpaytest: creating a certificate: " + err.Error())
	}
	return &platformCert{
		serial: text, key: key,
		pem:       pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		notBefore: tmpl.NotBefore, notAfter: tmpl.NotAfter,
	}
}

// Close shuts the server down. It is safe to call more than once.
func (s *Server) Close() {
	s.closeOnce.Do(func() {
		s.hs.CloseClientConnections()
		s.hs.Close()
	})
}

// SetClockSkew moves the fake's clock d ahead of its base clock (see
// WithClockSkew); 0 puts it back.
func (s *Server) SetClockSkew(d time.Duration) { s.skew.Store(int64(d)) }

// Mode returns the access mode the fake expects.
func (s *Server) Mode() wechatpay.Mode { return s.cfg.mode }

// KeyMode returns how the fake signs.
func (s *Server) KeyMode() KeyMode { return s.cfg.keyMode }

// MchID returns the service provider's merchant id (partner mode identity).
func (s *Server) MchID() string { return s.cfg.mchID }

// BrandID returns the brand id that is the identity in brand mode.
func (s *Server) BrandID() string { return s.cfg.brandID }

// Identity returns the identity requests must carry in the current mode.
func (s *Server) Identity() string {
	if s.cfg.mode == wechatpay.ModeBrand {
		return s.cfg.brandID
	}
	return s.cfg.mchID
}

// MerchantKey returns the merchant certificate serial and private key
// clients sign with.
func (s *Server) MerchantKey() (serial string, key *rsa.PrivateKey) {
	return s.cfg.mchSerial, s.cfg.mchKey
}

// PublicKey returns the WeChat Pay public-key id and key (nil outside
// public-key modes).
func (s *Server) PublicKey() (id string, key *rsa.PublicKey) {
	if s.cfg.pubKey == nil {
		return s.cfg.pubKeyID, nil
	}
	return s.cfg.pubKeyID, &s.cfg.pubKey.PublicKey
}

// APIv3Key returns the key certificates are encrypted with.
func (s *Server) APIv3Key() string { return s.cfg.apiV3Key }

// CertificateSerials returns the serials of the platform certificates
// served, oldest first.
func (s *Server) CertificateSerials() []string {
	s.certMu.RLock()
	defer s.certMu.RUnlock()
	out := make([]string, len(s.certs))
	for i, c := range s.certs {
		out[i] = c.serial
	}
	return out
}

// RotateCertificates adds a new platform certificate. The older ones stay
// listed and keep signing in turn with it (the overlap WeChat Pay has), so a
// client that has not downloaded the new one meets an unknown serial. It is
// a no-op in PublicKeyMode.
func (s *Server) RotateCertificates() {
	if !s.cfg.keyMode.hasCertificates() {
		return
	}
	s.certMu.Lock()
	defer s.certMu.Unlock()
	s.rotations++
	s.certs = append(s.certs, s.newCert(poolKey(2+s.rotations)))
}

// RetireOldCertificates removes every platform certificate but the newest:
// the end of a rotation's overlap.
func (s *Server) RetireOldCertificates() {
	s.certMu.Lock()
	defer s.certMu.Unlock()
	if len(s.certs) > 1 {
		for _, c := range s.certs[:len(s.certs)-1] {
			s.retired = append(s.retired, c.serial)
		}
		s.certs = s.certs[len(s.certs)-1:]
	}
}

// ClientOptions returns the options that wire a wechatpay.Client to this
// server: base URL, identity and key, and the verification keys of its key mode.
func (s *Server) ClientOptions() []wechatpay.Option {
	opts := []wechatpay.Option{wechatpay.WithBaseURL(s.URL)}
	if s.cfg.mode == wechatpay.ModeBrand {
		opts = append(opts, wechatpay.WithBrand(s.cfg.brandID, s.cfg.mchSerial, s.cfg.mchKey))
	} else {
		opts = append(opts, wechatpay.WithPartner(s.cfg.mchID, s.cfg.mchSerial, s.cfg.mchKey))
	}
	if s.cfg.keyMode.hasPublicKey() {
		opts = append(opts, wechatpay.WithPublicKey(s.cfg.pubKeyID, &s.cfg.pubKey.PublicKey))
	}
	if s.cfg.keyMode.hasCertificates() {
		opts = append(opts, wechatpay.WithPlatformCertificates(s.cfg.apiV3Key))
	}
	if s.cfg.now != nil {
		opts = append(opts, wechatpay.WithClock(s.cfg.now))
	}
	return opts
}

// Client returns a wechatpay.Client wired to this server with verification
// on; opts are applied after the server's own. It panics if the options are
// invalid. The client is closed with the server's TB, if any.
func (s *Server) Client(opts ...wechatpay.Option) *wechatpay.Client {
	c, err := wechatpay.NewClient(append(s.ClientOptions(), opts...)...)
	if err != nil {
		panic("wechatpaytest: Client: " + err.Error())
	}
	return c
}

// WriteEnv writes the merchant private key (PKCS#8) and, in public-key
// modes, WeChat Pay's public key as PEM files of mode 0600 into dir (new
// files renamed over any there, symlinks replaced rather than followed),
// and returns the WECHATPAY_* environment a worker needs to use this server.
func (s *Server) WriteEnv(dir string) (map[string]string, error) {
	keyDER, err := x509.MarshalPKCS8PrivateKey(s.cfg.mchKey)
	if err != nil {
		return nil, fmt.Errorf("wechatpaytest: WriteEnv: %w", err)
	}
	keyFile := filepath.Join(dir, "apiclient_key.pem")
	if err := writePrivateFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})); err != nil {
		return nil, fmt.Errorf("wechatpaytest: WriteEnv: %w", err)
	}
	env := map[string]string{
		"WECHATPAY_MODE":                 string(s.cfg.mode),
		"WECHATPAY_MCH_CERT_SERIAL":      s.cfg.mchSerial,
		"WECHATPAY_MCH_PRIVATE_KEY_FILE": keyFile,
		"WECHATPAY_BASE_URL":             s.URL,
	}
	if s.cfg.mode == wechatpay.ModeBrand {
		env["WECHATPAY_BRAND_ID"] = s.cfg.brandID
	} else {
		env["WECHATPAY_MCHID"] = s.cfg.mchID
	}
	if s.cfg.keyMode.hasPublicKey() {
		pubDER, err := x509.MarshalPKIXPublicKey(&s.cfg.pubKey.PublicKey)
		if err != nil {
			return nil, fmt.Errorf("wechatpaytest: WriteEnv: %w", err)
		}
		pubFile := filepath.Join(dir, "pub_key.pem")
		if err := writePrivateFile(pubFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})); err != nil {
			return nil, fmt.Errorf("wechatpaytest: WriteEnv: %w", err)
		}
		env["WECHATPAY_PUBLIC_KEY_ID"] = s.cfg.pubKeyID
		env["WECHATPAY_PUBLIC_KEY_FILE"] = pubFile
	}
	if s.cfg.keyMode.hasCertificates() {
		env["WECHATPAY_APIV3_KEY"] = s.cfg.apiV3Key
	}
	return env, nil
}

// ServeHTTP implements http.Handler; NewServer serves it.
var _ http.Handler = (*Server)(nil)
