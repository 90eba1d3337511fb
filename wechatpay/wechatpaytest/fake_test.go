package wechatpaytest_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/couponq/couponq/wechatpay"
	"github.com/couponq/couponq/wechatpay/wechatpaytest"
)

func fixedClock() func() time.Time {
	t := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	return func() time.Time { return t }
}

func TestQPSPerEndpointAndIdentity(t *testing.T) {
	t.Parallel()
	s := wechatpaytest.NewServer(t, wechatpaytest.WithQPS(2), wechatpaytest.WithClock(fixedClock()))
	c := s.Client()
	defer c.Close()
	brand := s.BrandID()
	ids := s.SeedCoupons(brand, 3)
	ctx := t.Context()
	var got []string
	for i := range 3 {
		_, err := c.GetProductCoupon(ctx, &wechatpay.GetProductCouponRequest{ProductCouponID: ids[i], BrandID: brand})
		got = append(got, errString(err))
	}
	// The update bucket is separate from the get bucket.
	_, err := c.UpdateProductCoupon(ctx, update(brand, ids[0], "qps_upd_01", "名字券"))
	got = append(got, errString(err))
	want := []string{"ok", "ok", "429 RATELIMIT_EXCEEDED", "ok"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("got %v, want %v", got, want)
	}
	for _, r := range s.Requests() {
		if r.Status == 429 && (r.Fault != wechatpaytest.FaultQPS || r.OutRequestNo != "") {
			t.Errorf("429 logged as %+v", r)
		}
	}
}

func errString(err error) string {
	var ae *wechatpay.APIError
	switch {
	case err == nil:
		return "ok"
	case errors.As(err, &ae):
		return fmt.Sprintf("%d %s", ae.HTTPStatus, ae.Code)
	}
	return err.Error()
}

// TestFaultsRepeatable: the same seed draws the same faults.
func TestFaultsRepeatable(t *testing.T) {
	t.Parallel()
	run := func() []string {
		s := wechatpaytest.NewServer(t, wechatpaytest.WithSeed(7))
		s.SetFaults(wechatpaytest.Faults{Status500: 0.2, Status503: 0.1, BadSignature: 0.1, SignTest: 0.1, StaleTimestamp: 0.1})
		c := s.Client()
		defer c.Close()
		id := s.SeedCoupons(s.BrandID(), 1)[0]
		for i := range 30 {
			_, _ = c.UpdateProductCoupon(t.Context(), update(s.BrandID(), id, fmt.Sprintf("seed_%04d", i), "名字券"))
		}
		var out []string
		for _, r := range s.Requests() {
			out = append(out, r.Fault)
		}
		return out
	}
	a, b := run(), run()
	if fmt.Sprint(a) != fmt.Sprint(b) {
		t.Errorf("fault draws differ:\n%v\n%v", a, b)
	}
	if n := strings.Count(fmt.Sprint(a), "500"); n == 0 {
		t.Errorf("no 500 drawn in %v", a)
	}
}

func TestRequestAndEffectLogs(t *testing.T) {
	t.Parallel()
	s := wechatpaytest.NewServer(t, wechatpaytest.WithClock(fixedClock()))
	c := s.Client()
	defer c.Close()
	brand := s.BrandID()
	id := s.SeedCoupons(brand, 1)[0]
	s.FailNext(503, wechatpay.CodeServiceUnavailable)
	_, _ = c.DeactivateProductCoupon(t.Context(), deactivate(brand, id, "log_dea_01"))
	if _, err := c.DeactivateProductCoupon(t.Context(), deactivate(brand, id, "log_dea_01")); err != nil {
		t.Fatal(err)
	}
	reqs := s.Requests()
	if len(reqs) != 2 {
		t.Fatalf("%d requests logged", len(reqs))
	}
	if r := reqs[0]; r.Op != wechatpaytest.OpDeactivate || r.Status != 503 || r.Fault != wechatpaytest.FaultScripted ||
		r.OutRequestNo != "log_dea_01" || r.BrandID != brand || r.CouponID != id || !strings.HasSuffix(r.RequestID, "-268500000") {
		t.Errorf("first request logged as %+v", r)
	}
	if r := reqs[1]; r.Status != 200 || r.Fault != "" || !strings.HasSuffix(r.RequestID, "-0") {
		t.Errorf("second request logged as %+v", r)
	}
	eff := s.Effects()
	want := []wechatpaytest.Effect{{Time: fixedClock()(), Op: wechatpaytest.OpDeactivate, CouponID: id, BrandID: brand, OutRequestNo: "log_dea_01"}}
	if fmt.Sprint(eff) != fmt.Sprint(want) {
		t.Errorf("effects %v, want %v", eff, want)
	}
}

func TestRequestLogLimit(t *testing.T) {
	t.Parallel()
	s := wechatpaytest.NewServer(t, wechatpaytest.WithRequestLogLimit(3))
	c := s.Client()
	defer c.Close()
	for i := range 5 {
		_, _ = c.GetProductCoupon(t.Context(), &wechatpay.GetProductCouponRequest{ProductCouponID: fmt.Sprint(i), BrandID: s.BrandID()})
	}
	var ids []string
	for _, r := range s.Requests() {
		ids = append(ids, r.CouponID)
	}
	// Each 404 GET is retried? No: 404 is not retryable, one request each.
	if fmt.Sprint(ids) != "[2 3 4]" {
		t.Errorf("kept %v", ids)
	}
}

// TestRejectsLikeWeChatPay sends hand-made requests.
func TestRejectsLikeWeChatPay(t *testing.T) {
	t.Parallel()
	s := wechatpaytest.NewServer(t)
	tests := []struct {
		name   string
		auth   string
		ua     string
		path   string
		status int
		code   string
	}{
		{"no Authorization", "", "ua", "/v3/marketing/partner/product-coupon/product-coupons/1?brand_id=120344", 401, "SIGN_ERROR"},
		{"malformed", "WECHATPAY2-SHA256-RSA2048", "ua", "/v3/marketing/partner/product-coupon/product-coupons/1?brand_id=120344", 401, "SIGN_ERROR"},
		{"wrong scheme", `WECHATPAY-BRAND-SHA256-RSA2048 brand_id="120344"`, "ua", "/v3/marketing/partner/product-coupon/product-coupons/1", 401, "SIGN_ERROR"},
		{"forged signature", `WECHATPAY2-SHA256-RSA2048 mchid="1900000109",nonce_str="abc",timestamp="` + fmt.Sprint(time.Now().Unix()) +
			`",serial_no="` + serialOf(s) + `",signature="AAAA"`, "ua", "/v3/certificates", 401, "SIGN_ERROR"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			req, _ := http.NewRequestWithContext(t.Context(), "GET", s.URL+tt.path, nil)
			if tt.auth != "" {
				req.Header.Set("Authorization", tt.auth)
			}
			req.Header.Set("User-Agent", tt.ua)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var eb struct{ Code, Message string }
			body, _ := io.ReadAll(resp.Body)
			_ = json.Unmarshal(body, &eb)
			if resp.StatusCode != tt.status || eb.Code != tt.code {
				t.Errorf("got %d %s (%s)", resp.StatusCode, eb.Code, eb.Message)
			}
			if resp.Header.Get("Wechatpay-Signature") == "" || resp.Header.Get("Request-Id") == "" {
				t.Errorf("answer not signed: %v", resp.Header)
			}
		})
	}
}

func serialOf(s *wechatpaytest.Server) string { serial, _ := s.MerchantKey(); return serial }

func TestWriteEnv(t *testing.T) {
	t.Parallel()
	tests := []struct {
		mode    wechatpay.Mode
		keyMode wechatpaytest.KeyMode
		want    []string
	}{
		{wechatpay.ModePartner, wechatpaytest.PublicKeyMode, []string{"WECHATPAY_MCHID", "WECHATPAY_PUBLIC_KEY_ID", "WECHATPAY_PUBLIC_KEY_FILE"}},
		{wechatpay.ModeBrand, wechatpaytest.BothKeyModes, []string{"WECHATPAY_BRAND_ID", "WECHATPAY_PUBLIC_KEY_ID", "WECHATPAY_PUBLIC_KEY_FILE", "WECHATPAY_APIV3_KEY"}},
		{wechatpay.ModePartner, wechatpaytest.BothKeyModes, []string{"WECHATPAY_MCHID", "WECHATPAY_PUBLIC_KEY_ID", "WECHATPAY_PUBLIC_KEY_FILE", "WECHATPAY_APIV3_KEY"}},
	}
	for _, tt := range tests {
		t.Run(string(tt.mode)+"/"+tt.keyMode.String(), func(t *testing.T) {
			t.Parallel()
			s := wechatpaytest.NewServer(t, wechatpaytest.WithMode(tt.mode), wechatpaytest.WithKeyMode(tt.keyMode))
			env, err := s.WriteEnv(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			for _, k := range append([]string{"WECHATPAY_MODE", "WECHATPAY_MCH_CERT_SERIAL", "WECHATPAY_MCH_PRIVATE_KEY_FILE", "WECHATPAY_BASE_URL"}, tt.want...) {
				if env[k] == "" {
					t.Errorf("%s missing from %v", k, env)
				}
			}
			if len(env) != 4+len(tt.want) {
				t.Errorf("unexpected variables: %v", env)
			}
			// A client built from the variables alone works, as a worker's would.
			key, err := wechatpay.LoadPrivateKeyFile(env["WECHATPAY_MCH_PRIVATE_KEY_FILE"])
			if err != nil {
				t.Fatal(err)
			}
			if fi, _ := os.Stat(env["WECHATPAY_MCH_PRIVATE_KEY_FILE"]); fi.Mode().Perm() != 0o600 {
				t.Errorf("key file mode %v", fi.Mode())
			}
			opts := []wechatpay.Option{wechatpay.WithBaseURL(env["WECHATPAY_BASE_URL"])}
			if env["WECHATPAY_MODE"] == "brand" {
				opts = append(opts, wechatpay.WithBrand(env["WECHATPAY_BRAND_ID"], env["WECHATPAY_MCH_CERT_SERIAL"], key))
			} else {
				opts = append(opts, wechatpay.WithPartner(env["WECHATPAY_MCHID"], env["WECHATPAY_MCH_CERT_SERIAL"], key))
			}
			if f := env["WECHATPAY_PUBLIC_KEY_FILE"]; f != "" {
				pub, err := wechatpay.LoadPublicKeyFile(f)
				if err != nil {
					t.Fatal(err)
				}
				opts = append(opts, wechatpay.WithPublicKey(env["WECHATPAY_PUBLIC_KEY_ID"], pub))
			}
			if k := env["WECHATPAY_APIV3_KEY"]; k != "" {
				opts = append(opts, wechatpay.WithPlatformCertificates(k))
			}
			c, err := wechatpay.NewClient(opts...)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			id := s.SeedCoupons(s.BrandID(), 1)[0]
			if _, err := c.GetProductCoupon(t.Context(), &wechatpay.GetProductCouponRequest{ProductCouponID: id, BrandID: s.BrandID()}); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestConcurrentWrites: 40 goroutines, each change sent twice; every key
// applies exactly once.
func TestConcurrentWrites(t *testing.T) {
	t.Parallel()
	s := wechatpaytest.NewServer(t, wechatpaytest.WithRequestLogLimit(100))
	c := s.Client()
	defer c.Close()
	brand := s.BrandID()
	ids := s.SeedCoupons(brand, 8)
	const workers, each = 40, 10
	var wg sync.WaitGroup
	errs := make(chan error, workers*each*2)
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				req := update(brand, ids[(w+i)%len(ids)], fmt.Sprintf("conc_%02d_%02d", w, i), fmt.Sprintf("名字%02d券", i))
				for range 2 {
					if _, err := c.UpdateProductCoupon(t.Context(), req); err != nil {
						errs <- err
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := len(s.Effects()); n != workers*each {
		t.Errorf("%d effects, want %d", n, workers*each)
	}
	for w := range workers {
		for i := range each {
			if n := s.AppliedCount(fmt.Sprintf("conc_%02d_%02d", w, i)); n != 1 {
				t.Fatalf("applied %d times", n)
			}
		}
	}
}

func TestCouponCopies(t *testing.T) {
	t.Parallel()
	s := wechatpaytest.NewServer(t)
	in := wechatpay.ProductCoupon{ProductCouponID: "77", BrandID: s.BrandID(), State: wechatpay.StateAuditing,
		DisplayInfo: &wechatpay.DisplayInfo{Name: "审核中的券"}}
	s.AddCoupon(in)
	in.DisplayInfo.Name = "changed"
	got, ok := s.Coupon("77")
	if !ok || got.DisplayInfo.Name != "审核中的券" {
		t.Errorf("Coupon = %+v, %v", got, ok)
	}
	c := s.Client()
	defer c.Close()
	_, err := c.DeactivateProductCoupon(t.Context(), deactivate(s.BrandID(), "77", "copy_dea_1"))
	if errString(err) != "400 INVALID_REQUEST" {
		t.Errorf("deactivating an AUDITING coupon: %v", err)
	}
	if _, ok := s.Coupon("missing"); ok {
		t.Error("found a missing coupon")
	}
}

// TestClockSkewAndSerial: a fake whose clock is off refuses requests
// stamped more than 5 minutes from it (401 SIGN_ERROR, as WeChat Pay does)
// and accepts them within; a wrong merchant serial is refused the same
// way; every answer carries Date and Wechatpay-Timestamp of its clock.
func TestClockSkewAndSerial(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		skew     time.Duration
		serial   string // "" = the right one
		wantCode string // "" = accepted
	}{
		{name: "in step", skew: 0},
		{name: "4m59s ahead", skew: 299 * time.Second},
		{name: "5m01s ahead", skew: 301 * time.Second, wantCode: wechatpay.CodeSignError},
		{name: "5m01s behind", skew: -301 * time.Second, wantCode: wechatpay.CodeSignError},
		{name: "wrong serial", serial: "5157F09EFDC096DE15EBE81A47057A72", wantCode: wechatpay.CodeSignError},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := wechatpaytest.NewServer(t, wechatpaytest.WithClockSkew(tt.skew))
			ids := s.SeedCoupons(s.BrandID(), 1)
			opts := []wechatpay.Option{}
			if tt.serial != "" {
				_, key := s.MerchantKey()
				id, pub := s.PublicKey()
				opts = []wechatpay.Option{wechatpay.WithBaseURL(s.URL), wechatpay.WithPartner(s.MchID(), tt.serial, key), wechatpay.WithPublicKey(id, pub)}
			}
			var c *wechatpay.Client
			if len(opts) == 0 {
				c = s.Client() // the real clock: the skew is not passed on
			} else {
				var err error
				if c, err = wechatpay.NewClient(opts...); err != nil {
					t.Fatal(err)
				}
			}
			defer c.Close()
			_, err := c.GetProductCoupon(t.Context(), &wechatpay.GetProductCouponRequest{ProductCouponID: ids[0], BrandID: s.BrandID()})
			var ae *wechatpay.APIError
			switch {
			case tt.wantCode == "" && err != nil:
				t.Errorf("refused: %v", err)
			case tt.wantCode != "" && (!errors.As(err, &ae) || ae.HTTPStatus != 401 || ae.Code != tt.wantCode):
				t.Errorf("got %v, want 401 %s", err, tt.wantCode)
			}
			if skew, ok := c.ClockSkew(); !ok || (skew-tt.skew).Abs() > 2*time.Second {
				t.Errorf("the client measured %v (%v) from Date, want about %v", skew, ok, tt.skew)
			}
		})
	}
}
