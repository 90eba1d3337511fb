package wechatpay_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/couponq/couponq/wechatpay"
	"github.com/couponq/couponq/wechatpay/wechatpaytest"
)

// exchange is one request and answer seen by the capture transport.
type exchange struct {
	method, uri string
	reqHeader   http.Header
	reqBody     []byte
	respHeader  http.Header
	respBody    []byte
}

// capture records exchanges and may alter answers (a proxy in the middle).
type capture struct {
	mu     sync.Mutex
	seen   []exchange
	modify func(h http.Header, body []byte) []byte
}

func (c *capture) RoundTrip(r *http.Request) (*http.Response, error) {
	var reqBody []byte
	if r.Body != nil {
		reqBody, _ = io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(reqBody))
	}
	resp, err := http.DefaultTransport.RoundTrip(r)
	if err != nil {
		return nil, err
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if c.modify != nil && !strings.HasSuffix(r.URL.Path, "/v3/certificates") {
		body = c.modify(resp.Header, body)
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	c.mu.Lock()
	c.seen = append(c.seen, exchange{r.Method, r.URL.RequestURI(), r.Header.Clone(), reqBody, resp.Header.Clone(), body})
	c.mu.Unlock()
	return resp, nil
}

func (c *capture) exchanges() []exchange {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]exchange(nil), c.seen...)
}

func capturing(modify func(http.Header, []byte) []byte) (*capture, wechatpay.Option) {
	c := &capture{modify: modify}
	return c, wechatpay.WithHTTPClient(&http.Client{Transport: c, Timeout: 10 * time.Second})
}

// clock is a settable clock shared by a fake and its client.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newUpdate(brand, id, key, name string) *wechatpay.UpdateProductCouponRequest {
	return &wechatpay.UpdateProductCouponRequest{ProductCouponID: id, BrandID: brand, OutRequestNo: key,
		DisplayInfo: &wechatpay.DisplayInfo{Name: name, OriginalPrice: 9900, ImageURL: "https://img.example/i.png", BackgroundURL: "https://img.example/b.png"}}
}

func newDeactivate(brand, id, key string) *wechatpay.DeactivateProductCouponRequest {
	return &wechatpay.DeactivateProductCouponRequest{ProductCouponID: id, BrandID: brand, OutRequestNo: key, DeactivateReason: "批次信息有误,重新创建"}
}

func newGet(brand, id string) *wechatpay.GetProductCouponRequest {
	return &wechatpay.GetProductCouponRequest{ProductCouponID: id, BrandID: brand}
}

func countOp(s *wechatpaytest.Server, op string) int {
	n := 0
	for _, r := range s.Requests() {
		if r.Op == op {
			n++
		}
	}
	return n
}

func TestRequestShape(t *testing.T) {
	t.Parallel()
	tests := []struct {
		mode                 wechatpay.Mode
		scheme, prefix       string
		bodyBrand, queryPart bool
	}{
		{wechatpay.ModePartner, "WECHATPAY2-SHA256-RSA2048 ", "/v3/marketing/partner/product-coupon/product-coupons/", true, true},
		{wechatpay.ModeBrand, "WECHATPAY-BRAND-SHA256-RSA2048 ", "/brand/marketing/product-coupon/product-coupons/", false, false},
	}
	for _, tt := range tests {
		t.Run(string(tt.mode), func(t *testing.T) {
			t.Parallel()
			s := wechatpaytest.NewServer(t, wechatpaytest.WithMode(tt.mode))
			cp, opt := capturing(nil)
			c := s.Client(opt)
			defer c.Close()
			brand := s.BrandID()
			ids := s.SeedCoupons(brand, 2)
			ctx := t.Context()
			upd, err := c.UpdateProductCoupon(ctx, newUpdate(brand, ids[0], "shape_upd_1", "新名字券"))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.DeactivateProductCoupon(ctx, newDeactivate(brand, ids[1], "shape_dea_1")); err != nil {
				t.Fatal(err)
			}
			if _, err := c.GetProductCoupon(ctx, newGet(brand, ids[0])); err != nil {
				t.Fatal(err)
			}
			ex := cp.exchanges()
			if len(ex) != 3 {
				t.Fatalf("%d exchanges", len(ex))
			}
			pubID, _ := s.PublicKey()
			wantURIs := []string{tt.prefix + ids[0], tt.prefix + ids[1] + "/deactivate", tt.prefix + ids[0]}
			if tt.queryPart {
				wantURIs[2] += "?brand_id=" + brand
			}
			for i, e := range ex {
				if e.method != []string{"PATCH", "POST", "GET"}[i] || e.uri != wantURIs[i] {
					t.Errorf("%d: %s %s, want %s", i, e.method, e.uri, wantURIs[i])
				}
				if !strings.HasPrefix(e.reqHeader.Get("Authorization"), tt.scheme) {
					t.Errorf("%d: Authorization %.40s…", i, e.reqHeader.Get("Authorization"))
				}
				if e.reqHeader.Get("Accept") != "application/json" || !strings.HasPrefix(e.reqHeader.Get("User-Agent"), "couponq/") {
					t.Errorf("%d: headers %v", i, e.reqHeader)
				}
				if e.reqHeader.Get("Wechatpay-Serial") != pubID {
					t.Errorf("%d: Wechatpay-Serial %q, want %q", i, e.reqHeader.Get("Wechatpay-Serial"), pubID)
				}
				if (e.method == "GET") != (e.reqBody == nil) || (e.method != "GET") != (e.reqHeader.Get("Content-Type") == "application/json") {
					t.Errorf("%d: body %q, Content-Type %q", i, e.reqBody, e.reqHeader.Get("Content-Type"))
				}
				if e.reqBody != nil {
					var m map[string]any
					if err := json.Unmarshal(e.reqBody, &m); err != nil {
						t.Fatal(err)
					}
					if _, ok := m["brand_id"]; ok != tt.bodyBrand {
						t.Errorf("%d: brand_id in body = %v, want %v", i, ok, tt.bodyBrand)
					}
					if _, ok := m["product_coupon_id"]; ok {
						t.Errorf("%d: product_coupon_id sent in the body", i)
					}
				}
			}
			if !bytes.Equal(upd.Raw, ex[0].respBody) {
				t.Errorf("Raw %s is not the body received %s", upd.Raw, ex[0].respBody)
			}
			if upd.DisplayInfo.Name != "新名字券" || upd.DisplayInfo.OriginalPrice != 9900 {
				t.Errorf("update answered %+v", upd.DisplayInfo)
			}
		})
	}
}

func TestBrandModeRefusesOtherBrand(t *testing.T) {
	t.Parallel()
	s := wechatpaytest.NewServer(t, wechatpaytest.WithMode(wechatpay.ModeBrand))
	c := s.Client()
	defer c.Close()
	ctx := t.Context()
	for name, call := range map[string]func() error{
		"update": func() error {
			_, err := c.UpdateProductCoupon(ctx, newUpdate("999", "1", "key_123456", "名字券"))
			return err
		},
		"deactivate": func() error {
			_, err := c.DeactivateProductCoupon(ctx, newDeactivate("999", "1", "key_123456"))
			return err
		},
		"get": func() error { _, err := c.GetProductCoupon(ctx, newGet("999", "1")); return err },
		"nil": func() error { _, err := c.GetProductCoupon(ctx, nil); return err },
		"invalid": func() error {
			_, err := c.UpdateProductCoupon(ctx, newUpdate(s.BrandID(), "1", "short", "名字券"))
			return err
		},
	} {
		var ve *wechatpay.ValidationError
		if err := call(); !errors.As(err, &ve) {
			t.Errorf("%s: got %v, want a *ValidationError", name, err)
		}
	}
	if n := len(s.Requests()); n != 0 {
		t.Errorf("%d requests reached the server", n)
	}
}

// TestErrorClasses runs every row of the protocol's error table, and the
// local failures, against the fake, checking the error's type and IsRetryable.
func TestErrorClasses(t *testing.T) {
	t.Parallel()
	type want struct {
		status    int
		code      string
		internal  int
		sentinel  error
		retryable bool
	}
	type bundle struct {
		s     *wechatpaytest.Server
		c     *wechatpay.Client
		brand string
		id    string
	}
	setup := func(t *testing.T, sopts []wechatpaytest.Option, copts ...wechatpay.Option) *bundle {
		s := wechatpaytest.NewServer(t, sopts...)
		c := s.Client(copts...)
		t.Cleanup(func() { c.Close() })
		return &bundle{s: s, c: c, brand: s.BrandID(), id: s.SeedCoupons(s.BrandID(), 1)[0]}
	}
	scripted := func(status int, code string) func(t *testing.T) error {
		return func(t *testing.T) error {
			b := setup(t, nil)
			b.s.FailNext(status, code)
			_, err := b.c.UpdateProductCoupon(t.Context(), newUpdate(b.brand, b.id, "key_000001", "名字券"))
			if n := countOp(b.s, wechatpaytest.OpUpdate); n != 1 {
				t.Errorf("a write was sent %d times", n)
			}
			if b.s.AppliedCount("key_000001") != 0 {
				t.Error("a failed write was applied")
			}
			return err
		}
	}
	faulty := func(f wechatpaytest.Faults) func(t *testing.T) error {
		return func(t *testing.T) error {
			b := setup(t, nil)
			b.s.SetFaults(f)
			_, err := b.c.UpdateProductCoupon(t.Context(), newUpdate(b.brand, b.id, "key_000001", "名字券"))
			return err
		}
	}
	proxied := func(modify func(http.Header, []byte) []byte) func(t *testing.T) error {
		return func(t *testing.T) error {
			_, opt := capturing(modify)
			b := setup(t, nil, opt)
			_, err := b.c.UpdateProductCoupon(t.Context(), newUpdate(b.brand, b.id, "key_000001", "名字券"))
			return err
		}
	}
	tests := []struct {
		name string
		run  func(t *testing.T) error
		want want
	}{
		{"400 PARAM_ERROR", scripted(400, "PARAM_ERROR"), want{status: 400, code: "PARAM_ERROR"}},
		{"400 INVALID_REQUEST", scripted(400, "INVALID_REQUEST"), want{status: 400, code: "INVALID_REQUEST"}},
		{"400 ALREADY_EXISTS", scripted(400, "ALREADY_EXISTS"), want{status: 400, code: "ALREADY_EXISTS"}},
		{"401 SIGN_ERROR scripted", scripted(401, "SIGN_ERROR"), want{status: 401, code: "SIGN_ERROR"}},
		{"403 NO_AUTH scripted", scripted(403, "NO_AUTH"), want{status: 403, code: "NO_AUTH", internal: wechatpay.InternalNoAuth}},
		{"429 scripted", scripted(429, "RATELIMIT_EXCEEDED"), want{status: 429, code: "RATELIMIT_EXCEEDED", retryable: true}},
		{"500 SYSTEM_ERROR", scripted(500, "SYSTEM_ERROR"), want{status: 500, code: "SYSTEM_ERROR", retryable: true}},
		{"502", scripted(502, "SERVICE_UNAVAILABLE"), want{status: 502, code: "SERVICE_UNAVAILABLE", retryable: true}},
		{"503", scripted(503, "SERVICE_UNAVAILABLE"), want{status: 503, code: "SERVICE_UNAVAILABLE", retryable: true}},
		{"random 500", faulty(wechatpaytest.Faults{Status500: 1}), want{status: 500, code: "SYSTEM_ERROR", retryable: true}},
		{"random 503", faulty(wechatpaytest.Faults{Status503: 1}), want{status: 503, code: "SERVICE_UNAVAILABLE", retryable: true}},
		{"random 429", faulty(wechatpaytest.Faults{Status429: 1}), want{status: 429, code: "RATELIMIT_EXCEEDED", retryable: true}},
		{"401 signed with another key", func(t *testing.T) error {
			s := wechatpaytest.NewServer(t)
			serial, _ := s.MerchantKey()
			id, pub := s.PublicKey()
			c, err := wechatpay.NewClient(wechatpay.WithBaseURL(s.URL), wechatpay.WithPartner(s.MchID(), serial, otherKey(t)), wechatpay.WithPublicKey(id, pub))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_, err = c.GetProductCoupon(t.Context(), newGet(s.BrandID(), "1000000001"))
			return err
		}, want{status: 401, code: "SIGN_ERROR"}},
		{"401 wrong merchant serial", func(t *testing.T) error {
			s := wechatpaytest.NewServer(t)
			_, key := s.MerchantKey()
			id, pub := s.PublicKey()
			c, _ := wechatpay.NewClient(wechatpay.WithBaseURL(s.URL), wechatpay.WithPartner(s.MchID(), "ABCDEF", key), wechatpay.WithPublicKey(id, pub))
			defer c.Close()
			_, err := c.GetProductCoupon(t.Context(), newGet(s.BrandID(), "1000000001"))
			return err
		}, want{status: 401, code: "SIGN_ERROR"}},
		{"401 brand client on a partner server", func(t *testing.T) error {
			s := wechatpaytest.NewServer(t)
			serial, key := s.MerchantKey()
			id, pub := s.PublicKey()
			c, _ := wechatpay.NewClient(wechatpay.WithBaseURL(s.URL), wechatpay.WithBrand(s.BrandID(), serial, key), wechatpay.WithPublicKey(id, pub))
			defer c.Close()
			_, err := c.GetProductCoupon(t.Context(), newGet(s.BrandID(), "1000000001"))
			return err
		}, want{status: 401, code: "SIGN_ERROR"}},
		{"401 client clock 6 minutes fast", func(t *testing.T) error {
			b := setup(t, nil, wechatpay.WithClock(func() time.Time { return time.Now().Add(6 * time.Minute) }))
			_, err := b.c.GetProductCoupon(t.Context(), newGet(b.brand, b.id))
			return err
		}, want{status: 401, code: "SIGN_ERROR"}},
		{"403 coupon of another brand", func(t *testing.T) error {
			b := setup(t, nil)
			other := b.s.SeedCoupons("777777", 1)[0]
			_, err := b.c.UpdateProductCoupon(t.Context(), newUpdate(b.brand, other, "key_000001", "名字券"))
			return err
		}, want{status: 403, code: "NO_AUTH", internal: wechatpay.InternalNoAuth}},
		{"404 unknown coupon", func(t *testing.T) error {
			b := setup(t, nil)
			_, err := b.c.GetProductCoupon(t.Context(), newGet(b.brand, "42"))
			return err
		}, want{status: 404, code: "RESOURCE_NOT_EXISTS", internal: wechatpay.InternalNotFound}},
		{"429 over the QPS ceiling", func(t *testing.T) error {
			clk := newClock()
			b := setup(t, []wechatpaytest.Option{wechatpaytest.WithQPS(1), wechatpaytest.WithClock(clk.Now)})
			if _, err := b.c.GetProductCoupon(t.Context(), newGet(b.brand, b.id)); err != nil {
				t.Fatal(err)
			}
			_, err := b.c.GetProductCoupon(t.Context(), newGet(b.brand, b.id))
			if d, ok := wechatpay.IsRateLimited(err); !ok || d != time.Second {
				t.Errorf("IsRateLimited = %v, %v", d, ok)
			}
			if n := countOp(b.s, wechatpaytest.OpGet); n != 2 {
				t.Errorf("a 429 GET was retried: %d requests", n)
			}
			clk.Add(time.Second)
			if _, err := b.c.GetProductCoupon(t.Context(), newGet(b.brand, b.id)); err != nil {
				t.Errorf("after refill: %v", err)
			}
			return err
		}, want{status: 429, code: "RATELIMIT_EXCEEDED", retryable: true}},
		{"400 out_request_no reused with other data (268578927)", func(t *testing.T) error {
			b := setup(t, nil)
			if _, err := b.c.UpdateProductCoupon(t.Context(), newUpdate(b.brand, b.id, "key_000001", "名字一券")); err != nil {
				t.Fatal(err)
			}
			_, err := b.c.UpdateProductCoupon(t.Context(), newUpdate(b.brand, b.id, "key_000001", "名字二券"))
			if n := b.s.AppliedCount("key_000001"); n != 1 {
				t.Errorf("applied %d times", n)
			}
			return err
		}, want{status: 400, code: "INVALID_REQUEST", internal: wechatpay.InternalOutRequestNoReused}},
		{"400 deactivating a deactivated coupon", func(t *testing.T) error {
			b := setup(t, nil)
			if _, err := b.c.DeactivateProductCoupon(t.Context(), newDeactivate(b.brand, b.id, "key_000001")); err != nil {
				t.Fatal(err)
			}
			_, err := b.c.DeactivateProductCoupon(t.Context(), newDeactivate(b.brand, b.id, "key_000002"))
			return err
		}, want{status: 400, code: "INVALID_REQUEST"}},
		{"network error: server gone", func(t *testing.T) error {
			s := wechatpaytest.NewServer(nil)
			c := s.Client()
			defer c.Close()
			s.Close()
			_, err := c.GetProductCoupon(t.Context(), newGet(s.BrandID(), "1000000001"))
			var ue *url.Error
			if !errors.As(err, &ue) {
				t.Errorf("no *url.Error in %v", err)
			}
			return err
		}, want{retryable: true}},
		{"network error: dropped after apply", func(t *testing.T) error {
			b := setup(t, nil)
			b.s.SetFaults(wechatpaytest.Faults{DropAfterApply: 1})
			_, err := b.c.UpdateProductCoupon(t.Context(), newUpdate(b.brand, b.id, "key_000001", "名字券"))
			if n := b.s.AppliedCount("key_000001"); n != 1 {
				t.Errorf("applied %d times", n)
			}
			b.s.SetFaults(wechatpaytest.Faults{})
			pc, err2 := b.c.UpdateProductCoupon(t.Context(), newUpdate(b.brand, b.id, "key_000001", "名字券"))
			if err2 != nil || pc.DisplayInfo.Name != "名字券" || b.s.AppliedCount("key_000001") != 1 {
				t.Errorf("retry with the same key: %v, applied %d", err2, b.s.AppliedCount("key_000001"))
			}
			return err
		}, want{retryable: true}},
		{"timeout", func(t *testing.T) error {
			b := setup(t, []wechatpaytest.Option{wechatpaytest.WithLatency(time.Minute)})
			ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
			defer cancel()
			_, err := b.c.UpdateProductCoupon(ctx, newUpdate(b.brand, b.id, "key_000001", "名字券"))
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("not a deadline: %v", err)
			}
			return err
		}, want{retryable: true}},
		{"context canceled", func(t *testing.T) error {
			b := setup(t, nil)
			ctx, cancel := context.WithCancel(t.Context())
			cancel()
			_, err := b.c.GetProductCoupon(ctx, newGet(b.brand, b.id))
			if !errors.Is(err, context.Canceled) {
				t.Errorf("not canceled: %v", err)
			}
			if n := len(b.s.Requests()); n != 0 {
				t.Errorf("%d requests after cancel", n)
			}
			return err
		}, want{retryable: false}},
		{"2xx with a bad signature", faulty(wechatpaytest.Faults{BadSignature: 1}), want{status: 200, sentinel: wechatpay.ErrSignature, retryable: true}},
		{"2xx with a SIGNTEST signature", faulty(wechatpaytest.Faults{SignTest: 1}), want{status: 200, sentinel: wechatpay.ErrSignature, retryable: true}},
		{"2xx with a stale timestamp", faulty(wechatpaytest.Faults{StaleTimestamp: 1}), want{status: 200, sentinel: wechatpay.ErrClockSkew, retryable: true}},
		{"2xx with a tampered body", proxied(func(h http.Header, b []byte) []byte {
			return bytes.Replace(b, []byte("EFFECTIVE"), []byte("AUDITING"), 1)
		}), want{status: 200, sentinel: wechatpay.ErrSignature, retryable: true}},
		{"2xx without signature headers", proxied(func(h http.Header, b []byte) []byte {
			h.Del("Wechatpay-Signature")
			return b
		}), want{status: 200, sentinel: wechatpay.ErrMissingHeaders, retryable: true}},
		{"2xx with an unknown serial", proxied(func(h http.Header, b []byte) []byte {
			h.Set("Wechatpay-Serial", "PUB_KEY_ID_0000000000000000000000000000")
			return b
		}), want{status: 200, sentinel: wechatpay.ErrUnknownSerial, retryable: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := tt.run(t)
			if err == nil {
				t.Fatal("no error")
			}
			if got := wechatpay.IsRetryable(err); got != tt.want.retryable {
				t.Errorf("IsRetryable = %v, want %v (%v)", got, tt.want.retryable, err)
			}
			var ae *wechatpay.APIError
			var ve *wechatpay.VerifyError
			switch {
			case tt.want.sentinel != nil:
				if !errors.As(err, &ve) || !errors.Is(err, tt.want.sentinel) || ve.HTTPStatus != tt.want.status {
					t.Errorf("got %v, want a *VerifyError wrapping %v", err, tt.want.sentinel)
				}
			case tt.want.status != 0:
				if !errors.As(err, &ae) {
					t.Fatalf("got %T %v, want an *APIError", err, err)
				}
				if ae.HTTPStatus != tt.want.status || ae.Code != tt.want.code {
					t.Errorf("got %d %s, want %d %s", ae.HTTPStatus, ae.Code, tt.want.status, tt.want.code)
				}
				if ae.RequestID == "" || (tt.want.internal != 0 && ae.InternalCode() != tt.want.internal) {
					t.Errorf("Request-ID %q, want internal code %d", ae.RequestID, tt.want.internal)
				}
				if !strings.Contains(err.Error(), ae.RequestID) || !strings.Contains(err.Error(), ae.Path) {
					t.Errorf("error text %q lacks the path or Request-ID", err)
				}
			default:
				if errors.As(err, &ae) || errors.As(err, &ve) {
					t.Errorf("got %v, want a local error", err)
				}
			}
			if s := err.Error(); strings.Contains(s, "signature=") || strings.Contains(s, "PRIVATE KEY") || strings.Contains(s, "display_info") {
				t.Errorf("error text leaks request material: %s", s)
			}
		})
	}
}

// TestIsRetryableTable follows the protocol sheet's table row by row with
// constructed errors.
func TestIsRetryableTable(t *testing.T) {
	t.Parallel()
	api := func(status int, code, rid string) error {
		return &wechatpay.APIError{Method: "PATCH", Path: "/p", HTTPStatus: status, Code: code, RequestID: rid}
	}
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"400 PARAM_ERROR", api(400, "PARAM_ERROR", "x-0"), false},
		{"400 INVALID_REQUEST", api(400, "INVALID_REQUEST", "x-1"), false},
		{"400 ALREADY_EXISTS", api(400, "ALREADY_EXISTS", ""), false},
		{"401 SIGN_ERROR", api(401, "SIGN_ERROR", ""), false},
		{"403 NO_AUTH", api(403, "NO_AUTH", "x-268579803"), false},
		{"404", api(404, "RESOURCE_NOT_EXISTS", "x-268578608"), false},
		{"429 RATELIMIT_EXCEEDED", api(429, "RATELIMIT_EXCEEDED", ""), true},
		{"429 FREQUENCY_LIMITED", api(429, "FREQUENCY_LIMITED", ""), true},
		{"500 SYSTEM_ERROR", api(500, "SYSTEM_ERROR", ""), true},
		{"502", api(502, "", ""), true},
		{"503 SERVICE_UNAVAILABLE", api(503, "SERVICE_UNAVAILABLE", ""), true},
		{"504", api(504, "", ""), true},
		{"500 with 268578927", api(500, "SYSTEM_ERROR", "0123-268578927"), false},
		{"400 with 268578927", api(400, "INVALID_REQUEST", "0123-268578927"), false},
		{"wrapped 500", errors.Join(errors.New("ctx"), api(500, "SYSTEM_ERROR", "")), true},
		{"network", &url.Error{Op: "Post", URL: "/p", Err: io.ErrUnexpectedEOF}, true},
		{"timeout", context.DeadlineExceeded, true},
		{"unverifiable 2xx", &wechatpay.VerifyError{HTTPStatus: 200, Err: wechatpay.ErrSignature}, true},
		{"canceled", &url.Error{Op: "Get", URL: "/p", Err: context.Canceled}, false},
		{"validation", &wechatpay.ValidationError{Field: "f", Reason: "r"}, false},
		{"other", errors.New("boom"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := wechatpay.IsRetryable(tt.err); got != tt.want {
				t.Errorf("IsRetryable(%v) = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
}

func TestGetRetriedOnce(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		failures  int
		wantErr   bool
		wantCalls int
	}{
		{"one failure recovered", 1, false, 2},
		{"two failures", 2, true, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := wechatpaytest.NewServer(t)
			c := s.Client()
			defer c.Close()
			id := s.SeedCoupons(s.BrandID(), 1)[0]
			for range tt.failures {
				s.FailNext(500, "SYSTEM_ERROR")
			}
			_, err := c.GetProductCoupon(t.Context(), newGet(s.BrandID(), id))
			if (err != nil) != tt.wantErr {
				t.Errorf("err = %v", err)
			}
			if n := countOp(s, wechatpaytest.OpGet); n != tt.wantCalls {
				t.Errorf("%d calls, want %d", n, tt.wantCalls)
			}
		})
	}
}

func TestRepeatAnswers(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		answer wechatpaytest.RepeatAnswer
		want   int // 0 = success
	}{
		{"original", wechatpaytest.RepeatOriginal, 0},
		{"error", wechatpaytest.RepeatError, 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := wechatpaytest.NewServer(t, wechatpaytest.WithRepeatAnswer(tt.answer))
			c := s.Client()
			defer c.Close()
			ids := s.SeedCoupons(s.BrandID(), 2)
			ctx := t.Context()
			for _, call := range []func() (*wechatpay.ProductCoupon, error){
				func() (*wechatpay.ProductCoupon, error) {
					return c.UpdateProductCoupon(ctx, newUpdate(s.BrandID(), ids[0], "rep_upd_01", "名字券"))
				},
				func() (*wechatpay.ProductCoupon, error) {
					return c.DeactivateProductCoupon(ctx, newDeactivate(s.BrandID(), ids[1], "rep_dea_01"))
				},
			} {
				if _, err := call(); err != nil {
					t.Fatal(err)
				}
				pc, err := call()
				var ae *wechatpay.APIError
				switch {
				case tt.want == 0 && err != nil:
					t.Errorf("repeat: %v", err)
				case tt.want == 0 && pc.ProductCouponID == "":
					t.Error("repeat answered no coupon")
				case tt.want != 0 && (!errors.As(err, &ae) || ae.HTTPStatus != tt.want || ae.Code != wechatpay.CodeAlreadyExists):
					t.Errorf("repeat: %v", err)
				}
			}
			if s.AppliedCount("rep_upd_01") != 1 || s.AppliedCount("rep_dea_01") != 1 || len(s.Effects()) != 2 {
				t.Errorf("applied %d, %d; effects %v", s.AppliedCount("rep_upd_01"), s.AppliedCount("rep_dea_01"), s.Effects())
			}
			if c, _ := s.Coupon(ids[1]); c.State != wechatpay.StateDeactivated || c.DeactivateRequestNo != "rep_dea_01" {
				t.Errorf("coupon %+v", c)
			}
		})
	}
}
