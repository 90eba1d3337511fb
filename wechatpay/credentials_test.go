package wechatpay_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/couponq/couponq/wechatpay"
	"github.com/couponq/couponq/wechatpay/wechatpaytest"
)

// TestCheckCredentials: one probe tells a client WeChat Pay accepts from
// one with a wrong setting, and names the likely culprit.
func TestCheckCredentials(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		keyMode wechatpaytest.KeyMode
		skew    time.Duration
		opts    func(fake *wechatpaytest.Server) []wechatpay.Option // nil: fake.Client()
		want    wechatpay.Credential                                // "" means nil
	}{
		{name: "public key, right", keyMode: wechatpaytest.PublicKeyMode},
		{name: "certificates, right", keyMode: wechatpaytest.CertificateMode},
		{name: "migration, right", keyMode: wechatpaytest.BothKeyModes},
		{name: "clock 4m30s behind: WeChat Pay accepts, the client stops", keyMode: wechatpaytest.PublicKeyMode,
			skew: 270 * time.Second, want: wechatpay.CredentialClock},
		{name: "clock 3m behind", keyMode: wechatpaytest.PublicKeyMode, skew: 3 * time.Minute},
		{name: "clock 10m ahead", keyMode: wechatpaytest.CertificateMode, skew: -10 * time.Minute, want: wechatpay.CredentialClock},
		{name: "wrong serial", keyMode: wechatpaytest.PublicKeyMode, want: wechatpay.CredentialMerchantKey,
			opts: func(f *wechatpaytest.Server) []wechatpay.Option {
				_, key := f.MerchantKey()
				id, pub := f.PublicKey()
				return []wechatpay.Option{wechatpay.WithBaseURL(f.URL), wechatpay.WithPartner(f.MchID(), "1234ABCD", key), wechatpay.WithPublicKey(id, pub)}
			}},
		{name: "wrong merchant key", keyMode: wechatpaytest.PublicKeyMode, want: wechatpay.CredentialMerchantKey,
			opts: func(f *wechatpaytest.Server) []wechatpay.Option {
				serial, _ := f.MerchantKey()
				id, pub := f.PublicKey()
				return []wechatpay.Option{wechatpay.WithBaseURL(f.URL), wechatpay.WithPartner(f.MchID(), serial, otherKey(t)), wechatpay.WithPublicKey(id, pub)}
			}},
		{name: "wrong WeChat Pay public key", keyMode: wechatpaytest.PublicKeyMode, want: wechatpay.CredentialWeChatPayKey,
			opts: func(f *wechatpaytest.Server) []wechatpay.Option {
				serial, key := f.MerchantKey()
				id, _ := f.PublicKey()
				return []wechatpay.Option{wechatpay.WithBaseURL(f.URL), wechatpay.WithPartner(f.MchID(), serial, key), wechatpay.WithPublicKey(id, &otherKey(t).PublicKey)}
			}},
		{name: "wrong WeChat Pay public key id", keyMode: wechatpaytest.PublicKeyMode, want: wechatpay.CredentialWeChatPayKey,
			opts: func(f *wechatpaytest.Server) []wechatpay.Option {
				serial, key := f.MerchantKey()
				_, pub := f.PublicKey()
				return []wechatpay.Option{wechatpay.WithBaseURL(f.URL), wechatpay.WithPartner(f.MchID(), serial, key), wechatpay.WithPublicKey("PUB_KEY_ID_0000000000000000000000000000", pub)}
			}},
		{name: "wrong APIv3 key", keyMode: wechatpaytest.CertificateMode, want: wechatpay.CredentialAPIv3Key,
			opts: func(f *wechatpaytest.Server) []wechatpay.Option {
				serial, key := f.MerchantKey()
				return []wechatpay.Option{wechatpay.WithBaseURL(f.URL), wechatpay.WithPartner(f.MchID(), serial, key),
					wechatpay.WithPlatformCertificates(strings.Repeat("x", 32))}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			fake := wechatpaytest.NewServer(t, wechatpaytest.WithKeyMode(tt.keyMode), wechatpaytest.WithClockSkew(tt.skew))
			var c *wechatpay.Client
			if tt.opts == nil {
				c = fake.Client()
			} else {
				var err error
				if c, err = wechatpay.NewClient(tt.opts(fake)...); err != nil {
					t.Fatal(err)
				}
			}
			defer c.Close()
			err := c.CheckCredentials(t.Context())
			var ce *wechatpay.CredentialsError
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("CheckCredentials = %v, want nil", err)
			case tt.want != "" && (!errors.As(err, &ce) || ce.Credential != tt.want):
				t.Fatalf("CheckCredentials = %v, want a *CredentialsError of %q", err, tt.want)
			}
			if skew, ok := c.ClockSkew(); !ok || (skew-tt.skew).Abs() > 3*time.Second {
				t.Errorf("ClockSkew = %v, %v; want about %v", skew, ok, tt.skew)
			}
			for _, q := range fake.Requests() {
				if q.Path != wechatpay.CertificatesPath {
					t.Errorf("the probe sent %s %s", q.Method, q.Path)
				}
			}
		})
	}
}

// TestClientRefusesToSignOffClock: once an answer shows the clock beyond
// MaxClockSkew, calls are not sent (WeChat Pay would refuse them); the
// probe still is, and a fixed clock lets calls through again.
func TestClientRefusesToSignOffClock(t *testing.T) {
	t.Parallel()
	fake := wechatpaytest.NewServer(t, wechatpaytest.WithClockSkew(6*time.Minute))
	ids := fake.SeedCoupons(fake.BrandID(), 1)
	c := fake.Client()
	defer c.Close()
	get := &wechatpay.GetProductCouponRequest{ProductCouponID: ids[0], BrandID: fake.BrandID()}

	// The first call goes out: nothing is known of the clock yet.
	_, err := c.GetProductCoupon(t.Context(), get)
	var ce *wechatpay.CredentialsError
	var ae *wechatpay.APIError
	if !errors.As(err, &ce) || ce.Credential != wechatpay.CredentialClock || !errors.As(err, &ae) || ae.Code != wechatpay.CodeSignError {
		t.Fatalf("first call = %v, want 401 SIGN_ERROR blamed on the clock", err)
	}
	sent := len(fake.Requests())
	_, err = c.GetProductCoupon(t.Context(), get)
	if !errors.Is(err, wechatpay.ErrNotSent) || !errors.As(err, &ce) || ce.Credential != wechatpay.CredentialClock {
		t.Fatalf("second call = %v, want ErrNotSent for the clock", err)
	}
	if n := len(fake.Requests()); n != sent {
		t.Errorf("%d requests sent while the clock is off", n-sent)
	}
	if err := c.CheckCredentials(t.Context()); !errors.As(err, &ce) || ce.Credential != wechatpay.CredentialClock {
		t.Errorf("CheckCredentials = %v, want the clock", err)
	}
	fake.SetClockSkew(0)
	if err := c.CheckCredentials(t.Context()); err != nil {
		t.Fatalf("CheckCredentials after the fix = %v", err)
	}
	if _, err := c.GetProductCoupon(t.Context(), get); err != nil {
		t.Errorf("call after the fix = %v", err)
	}
}
