package wechatpay_test

import (
	"net/http"
	"regexp"
	"strings"
	"testing"

	"github.com/couponq/couponq/wechatpay"
)

func TestNewClientOptions(t *testing.T) {
	t.Parallel()
	key := otherKey(t)
	pub := &key.PublicKey
	partner := wechatpay.WithPartner("1900000109", "5157F09EFDC096DE", key)
	pk := wechatpay.WithPublicKey("PUB_KEY_ID_1", pub)
	tests := []struct {
		name    string
		opts    []wechatpay.Option
		wantErr string
	}{
		{"defaults", []wechatpay.Option{partner, pk}, ""},
		{"brand", []wechatpay.Option{wechatpay.WithBrand("120344", "ABC", key), pk}, ""},
		{"certificates only", []wechatpay.Option{partner, wechatpay.WithPlatformCertificates(strings.Repeat("k", 32))}, ""},
		{"https base", []wechatpay.Option{wechatpay.WithBaseURL("https://api2.mch.weixin.qq.com/"), partner, pk}, ""},
		{"http loopback v4", []wechatpay.Option{wechatpay.WithBaseURL("http://127.0.0.1:8080"), partner, pk}, ""},
		{"http loopback v6", []wechatpay.Option{wechatpay.WithBaseURL("http://[::1]:8080"), partner, pk}, ""},
		{"http localhost", []wechatpay.Option{wechatpay.WithBaseURL("http://localhost:8080"), partner, pk}, ""},
		{"http remote", []wechatpay.Option{wechatpay.WithBaseURL("http://api.mch.weixin.qq.com"), partner, pk}, "https required"},
		{"ftp", []wechatpay.Option{wechatpay.WithBaseURL("ftp://127.0.0.1"), partner, pk}, "scheme must be https"},
		{"no host", []wechatpay.Option{wechatpay.WithBaseURL("https://"), partner, pk}, "want scheme://host"},
		{"user info in base", []wechatpay.Option{wechatpay.WithBaseURL("https://u:p@x.example"), partner, pk}, "must not carry user info"},
		{"brand with certificates only", []wechatpay.Option{wechatpay.WithBrand("120344", "ABC", key), wechatpay.WithPlatformCertificates(strings.Repeat("k", 32))}, "brand mode requires the WeChat Pay public key"},
		{"brand migrating to the public key", []wechatpay.Option{wechatpay.WithBrand("120344", "ABC", key), pk, wechatpay.WithPlatformCertificates(strings.Repeat("k", 32))}, ""},
		{"query in base", []wechatpay.Option{wechatpay.WithBaseURL("https://x.example?a=1"), partner, pk}, "want scheme://host"},
		{"no identity", []wechatpay.Option{pk}, "no identity"},
		{"two identities", []wechatpay.Option{partner, wechatpay.WithBrand("1", "AB", key), pk}, "already set"},
		{"no verification", []wechatpay.Option{partner}, "no way to verify"},
		{"empty mchid", []wechatpay.Option{wechatpay.WithPartner("", "AB", key), pk}, "mchid"},
		{"quote in brand id", []wechatpay.Option{wechatpay.WithBrand(`1"2`, "AB", key), pk}, "brand_id"},
		{"serial not hex", []wechatpay.Option{wechatpay.WithPartner("1", "XYZ", key), pk}, "hexadecimal"},
		{"nil key", []wechatpay.Option{wechatpay.WithPartner("1", "AB", nil), pk}, "nil"},
		{"nil public key", []wechatpay.Option{partner, wechatpay.WithPublicKey("PUB_KEY_ID_1", nil)}, "nil"},
		{"empty public key id", []wechatpay.Option{partner, wechatpay.WithPublicKey("", pub)}, "id"},
		{"short APIv3 key", []wechatpay.Option{partner, wechatpay.WithPlatformCertificates("short")}, "32 bytes"},
		{"nil http client", []wechatpay.Option{partner, pk, wechatpay.WithHTTPClient(nil)}, "nil"},
		{"nil logger", []wechatpay.Option{partner, pk, wechatpay.WithLogger(nil)}, "nil"},
		{"nil clock", []wechatpay.Option{partner, pk, wechatpay.WithClock(nil)}, "nil"},
		{"user agent with newline", []wechatpay.Option{partner, pk, wechatpay.WithUserAgent("a\r\nb")}, "single line"},
		{"refresh too rare", []wechatpay.Option{partner, pk, wechatpay.WithCertificateRefresh(13 * 3600e9)}, "1s–12h"},
		{"custom http client", []wechatpay.Option{partner, pk, wechatpay.WithHTTPClient(&http.Client{})}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, err := wechatpay.NewClient(tt.opts...)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				c.Close()
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("got %v, want an error mentioning %q", err, tt.wantErr)
			}
		})
	}
}

func TestClientIdentity(t *testing.T) {
	t.Parallel()
	key := otherKey(t)
	pk := wechatpay.WithPublicKey("PUB_KEY_ID_1", &key.PublicKey)
	p, _ := wechatpay.NewClient(wechatpay.WithPartner("1900000109", "AB", key), pk)
	b, _ := wechatpay.NewClient(wechatpay.WithBrand("120344", "AB", key), pk)
	defer p.Close()
	defer b.Close()
	if p.Mode() != wechatpay.ModePartner || p.Identity() != "1900000109" {
		t.Errorf("partner: %s %s", p.Mode(), p.Identity())
	}
	if b.Mode() != wechatpay.ModeBrand || b.Identity() != "120344" {
		t.Errorf("brand: %s %s", b.Mode(), b.Identity())
	}
	if err := p.Ready(t.Context()); err != nil {
		t.Errorf("Ready in public-key mode: %v", err)
	}
	if err := p.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestDefaultUserAgent(t *testing.T) {
	t.Parallel()
	if ua := wechatpay.DefaultUserAgent(); !regexp.MustCompile(`^couponq/\d+\.\d+\.\d+ \([a-z0-9]+/[a-z0-9]+\) Go/\S+$`).MatchString(ua) {
		t.Errorf("User-Agent %q", ua)
	}
}

func TestDefaultHTTPClient(t *testing.T) {
	t.Parallel()
	hc := wechatpay.NewHTTPClient()
	tr, ok := hc.Transport.(*http.Transport)
	if !ok || hc.Timeout == 0 || tr.MaxIdleConnsPerHost < 64 || tr.ResponseHeaderTimeout == 0 || tr.TLSHandshakeTimeout == 0 {
		t.Errorf("default client %+v", hc)
	}
}

// TestBaseURLSecretNotEchoed: a base URL carrying a password is refused
// without repeating it, whether or not it parses.
func TestBaseURLSecretNotEchoed(t *testing.T) {
	t.Parallel()
	key := otherKey(t)
	for _, u := range []string{
		"https://couponq:s3cr3t-pw@api.mch.weixin.qq.com",
		"https://s3cr3t-pw@api.mch.weixin.qq.com",
		"http://couponq:s3cr3t-pw@127.0.0.1:8080",
		"https://couponq:s3cr3t-pw@[::1",      // does not parse
		"https://couponq:s3cr3t-pw@host:port", // nor this
	} {
		_, err := wechatpay.NewClient(wechatpay.WithBaseURL(u), wechatpay.WithPartner("1900000109", "AB", key), wechatpay.WithPublicKey("PUB_KEY_ID_1", &key.PublicKey))
		if err == nil {
			t.Errorf("%s: accepted", u)
			continue
		}
		if strings.Contains(err.Error(), "s3cr3t-pw") {
			t.Errorf("the error echoes the password: %v", err)
		}
	}
}
