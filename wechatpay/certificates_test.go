package wechatpay_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/couponq/couponq/internal/testutil"
	"github.com/couponq/couponq/wechatpay"
	"github.com/couponq/couponq/wechatpay/wechatpaytest"
)

func TestCertificateRotation(t *testing.T) {
	t.Parallel()
	clk := newClock()
	s := wechatpaytest.NewServer(t, wechatpaytest.WithKeyMode(wechatpaytest.CertificateMode), wechatpaytest.WithClock(clk.Now))
	cp, opt := capturing(nil)
	c := s.Client(opt)
	defer c.Close()
	brand := s.BrandID()
	id := s.SeedCoupons(brand, 1)[0]
	ctx := t.Context()
	get := func() error { _, err := c.GetProductCoupon(ctx, newGet(brand, id)); return err }

	if err := get(); err != nil {
		t.Fatal(err)
	}
	if n := countOp(s, wechatpaytest.OpCertificates); n != 1 {
		t.Fatalf("%d certificate downloads before the first call, want 1", n)
	}
	// The fake lists serials with a leading zero; the request names the
	// certificate as listed.
	if !strings.HasPrefix(s.CertificateSerials()[0], "0") {
		t.Fatalf("the fake's serial %q has no leading zero", s.CertificateSerials()[0])
	}
	if ex := cp.exchanges(); ex[len(ex)-1].reqHeader.Get("Wechatpay-Serial") != s.CertificateSerials()[0] {
		t.Errorf("Wechatpay-Serial %q", ex[len(ex)-1].reqHeader.Get("Wechatpay-Serial"))
	}

	// A new certificate signs alongside the old: the first unknown serial
	// triggers one download, then both verify.
	s.RotateCertificates()
	for i := range 6 {
		if err := get(); err != nil {
			t.Fatalf("call %d after rotation: %v", i, err)
		}
	}
	if n := countOp(s, wechatpaytest.OpCertificates); n != 2 {
		t.Errorf("%d certificate downloads after a rotation, want 2", n)
	}
	serials := map[string]bool{}
	for _, e := range cp.exchanges() {
		serials[e.respHeader.Get("Wechatpay-Serial")] = true
	}
	if len(serials) != 2 {
		t.Errorf("answers signed by %v, want both certificates", serials)
	}

	// Another rotation within the minute: the re-download is rate-limited,
	// so answers by the newest certificate cannot be verified yet.
	s.RotateCertificates()
	s.RetireOldCertificates()
	err := get()
	if !errors.Is(err, wechatpay.ErrUnknownSerial) || !wechatpay.IsRetryable(err) {
		t.Fatalf("within the minute: %v", err)
	}
	if n := countOp(s, wechatpaytest.OpCertificates); n != 2 {
		t.Errorf("%d certificate downloads, want 2 (rate-limited)", n)
	}
	clk.Add(61 * time.Second)
	if err := get(); err != nil {
		t.Fatalf("after a minute: %v", err)
	}
	if n := countOp(s, wechatpaytest.OpCertificates); n != 3 {
		t.Errorf("%d certificate downloads, want 3", n)
	}
}

func TestCertificateModes(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		server  wechatpaytest.KeyMode
		client  func(s *wechatpaytest.Server) []wechatpay.Option
		wantErr string
	}{
		{"migration: both kinds sign", wechatpaytest.BothKeyModes, func(*wechatpaytest.Server) []wechatpay.Option { return nil }, ""},
		{"brand mode migrating: both kinds sign", wechatpaytest.BothKeyModes, func(*wechatpaytest.Server) []wechatpay.Option { return nil }, ""},
		{"certificates asked of a public-key merchant", wechatpaytest.PublicKeyMode, func(s *wechatpaytest.Server) []wechatpay.Option {
			return []wechatpay.Option{wechatpay.WithPlatformCertificates(s.APIv3Key())}
		}, "404"},
		{"public key and certificates, server has no certificates", wechatpaytest.PublicKeyMode, func(s *wechatpaytest.Server) []wechatpay.Option {
			return []wechatpay.Option{wechatpay.WithPlatformCertificates(s.APIv3Key())}
		}, ""},
		{"wrong APIv3 key", wechatpaytest.CertificateMode, func(s *wechatpaytest.Server) []wechatpay.Option {
			return []wechatpay.Option{wechatpay.WithPlatformCertificates(strings.Repeat("x", 32))}
		}, "decryption failed"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			mode := wechatpay.ModePartner
			if i == 1 {
				mode = wechatpay.ModeBrand
			}
			s := wechatpaytest.NewServer(t, wechatpaytest.WithKeyMode(tt.server), wechatpaytest.WithMode(mode))
			opts := append([]wechatpay.Option{wechatpay.WithBaseURL(s.URL)}, tt.client(s)...)
			serial, key := s.MerchantKey()
			if mode == wechatpay.ModeBrand {
				opts = append(opts, wechatpay.WithBrand(s.BrandID(), serial, key))
			} else {
				opts = append(opts, wechatpay.WithPartner(s.MchID(), serial, key))
			}
			if id, pub := s.PublicKey(); pub != nil && (tt.wantErr == "" || tt.server == wechatpaytest.BothKeyModes) {
				opts = append(opts, wechatpay.WithPublicKey(id, pub))
			}
			if tt.server != wechatpaytest.PublicKeyMode && len(tt.client(s)) == 0 {
				opts = append(opts, wechatpay.WithPlatformCertificates(s.APIv3Key()))
			}
			cp, opt := capturing(nil)
			c, err := wechatpay.NewClient(append(opts, opt)...)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			id := s.SeedCoupons(s.BrandID(), 1)[0]
			for range 4 {
				_, err = c.GetProductCoupon(t.Context(), newGet(s.BrandID(), id))
				if err != nil {
					break
				}
			}
			readyErr := c.Ready(t.Context())
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("call: %v, want an error mentioning %q", err, tt.wantErr)
				}
				if readyErr == nil {
					t.Error("Ready reports success")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tt.server == wechatpaytest.BothKeyModes {
				kinds := map[bool]bool{}
				for _, e := range cp.exchanges() {
					kinds[strings.HasPrefix(e.respHeader.Get("Wechatpay-Serial"), "PUB_KEY_ID_")] = true
				}
				if len(kinds) != 2 {
					t.Errorf("answers signed by one kind of key only: %v", kinds)
				}
			}
		})
	}
}

func TestReadyRefreshesStaleCertificates(t *testing.T) {
	t.Parallel()
	clk := newClock()
	s := wechatpaytest.NewServer(t, wechatpaytest.WithKeyMode(wechatpaytest.CertificateMode), wechatpaytest.WithClock(clk.Now))
	c := s.Client()
	defer c.Close()
	for _, step := range []struct {
		advance time.Duration
		want    int
	}{{0, 1}, {0, 1}, {11 * time.Hour, 1}, {2 * time.Hour, 2}} {
		clk.Add(step.advance)
		if err := c.Ready(t.Context()); err != nil {
			t.Fatal(err)
		}
		if n := countOp(s, wechatpaytest.OpCertificates); n != step.want {
			t.Errorf("after +%v: %d downloads, want %d", step.advance, n, step.want)
		}
	}
}

func TestBackgroundRefresh(t *testing.T) {
	t.Parallel()
	s := wechatpaytest.NewServer(t, wechatpaytest.WithKeyMode(wechatpaytest.CertificateMode))
	c := s.Client(wechatpay.WithCertificateRefresh(time.Second))
	if err := c.Ready(t.Context()); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 20*time.Second, 50*time.Millisecond, func() error {
		if n := countOp(s, wechatpaytest.OpCertificates); n < 2 {
			return fmt.Errorf("%d certificate download(s), want 2", n)
		}
		return nil
	}, "no background refresh")
	c.Close()
	n := countOp(s, wechatpaytest.OpCertificates)
	// After Close the loop is gone: Close waits for it.
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if m := countOp(s, wechatpaytest.OpCertificates); m != n {
		t.Errorf("downloads went on after Close: %d → %d", n, m)
	}
}

func TestDecryptAES256GCM(t *testing.T) {
	t.Parallel()
	key := []byte(strings.Repeat("k", 32))
	tests := []struct {
		name                 string
		key                  []byte
		nonce, ad, ct, wantE string
	}{
		{"short key", key[:16], "n", "", "", "32 bytes"},
		{"not base64", key, "nonce1234567", "certificate", "%%%", "Base64"},
		{"no nonce", key, "", "certificate", "AAAA", "nonce"},
		{"wrong data", key, "nonce1234567", "certificate", "AAAAAAAAAAAAAAAAAAAAAAAAAAAA", "decryption failed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if _, err := wechatpay.DecryptAES256GCM(tt.key, tt.nonce, tt.ad, tt.ct); err == nil || !strings.Contains(err.Error(), tt.wantE) {
				t.Errorf("got %v, want %q", err, tt.wantE)
			}
		})
	}
}
