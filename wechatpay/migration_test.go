package wechatpay_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/couponq/couponq/wechatpay"
	"github.com/couponq/couponq/wechatpay/wechatpaytest"
)

// serialRewriter names another WeChat Pay key in every product-coupon
// request, as a client in the middle of a migration may.
type serialRewriter struct{ serial string }

func (s serialRewriter) RoundTrip(r *http.Request) (*http.Response, error) {
	if !strings.HasSuffix(r.URL.Path, wechatpay.CertificatesPath) {
		r = r.Clone(r.Context())
		r.Header.Set("Wechatpay-Serial", s.serial)
	}
	return http.DefaultTransport.RoundTrip(r)
}

// During a migration the fake signs with the key a request names; the
// client verifies an answer by either kind, chosen by its Wechatpay-Serial.
func TestMigrationVerifiesEitherKind(t *testing.T) {
	t.Parallel()
	s := wechatpaytest.NewServer(t, wechatpaytest.WithKeyMode(wechatpaytest.BothKeyModes))
	id := s.SeedCoupons(s.BrandID(), 1)[0]
	pubID, _ := s.PublicKey()
	for _, named := range []string{pubID, s.CertificateSerials()[0]} {
		cp := &capture{}
		c := s.Client(wechatpay.WithHTTPClient(&http.Client{Transport: chain{cp, serialRewriter{named}}}))
		for range 3 {
			if _, err := c.GetProductCoupon(t.Context(), newGet(s.BrandID(), id)); err != nil {
				t.Fatalf("naming %s: %v", named, err)
			}
		}
		calls := 0
		for _, e := range cp.exchanges() {
			if e.uri == wechatpay.CertificatesPath {
				continue
			}
			calls++
			if e.respHeader.Get("Wechatpay-Serial") != named {
				t.Errorf("request naming %s answered by %s", named, e.respHeader.Get("Wechatpay-Serial"))
			}
		}
		if calls != 3 {
			t.Errorf("%d product-coupon exchanges seen, want 3", calls)
		}
		c.Close()
	}
}

// chain records with the capture, then sends through next.
type chain struct {
	cp   *capture
	next http.RoundTripper
}

func (c chain) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := c.next.RoundTrip(r)
	if err == nil {
		c.cp.mu.Lock()
		c.cp.seen = append(c.cp.seen, exchange{method: r.Method, uri: r.URL.RequestURI(), respHeader: resp.Header.Clone()})
		c.cp.mu.Unlock()
	}
	return resp, err
}
