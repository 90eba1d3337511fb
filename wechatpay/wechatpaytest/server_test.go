package wechatpaytest_test

import (
	"errors"
	"net/http"
	"testing"

	"github.com/couponq/couponq/wechatpay"
	"github.com/couponq/couponq/wechatpay/wechatpaytest"
)

func update(brand, id, key, name string) *wechatpay.UpdateProductCouponRequest {
	return &wechatpay.UpdateProductCouponRequest{ProductCouponID: id, BrandID: brand, OutRequestNo: key,
		DisplayInfo: &wechatpay.DisplayInfo{Name: name, ImageURL: "https://img.example/i.png", BackgroundURL: "https://img.example/b.png"}}
}

func deactivate(brand, id, key string) *wechatpay.DeactivateProductCouponRequest {
	return &wechatpay.DeactivateProductCouponRequest{ProductCouponID: id, BrandID: brand, OutRequestNo: key, DeactivateReason: "批次信息有误"}
}

func TestServerModes(t *testing.T) {
	t.Parallel()
	for _, mode := range []wechatpay.Mode{wechatpay.ModePartner, wechatpay.ModeBrand} {
		for _, km := range []wechatpaytest.KeyMode{wechatpaytest.PublicKeyMode, wechatpaytest.CertificateMode, wechatpaytest.BothKeyModes} {
			if mode == wechatpay.ModeBrand && km == wechatpaytest.CertificateMode {
				continue // brand mode needs the public key: NewClient refuses it (TestNewClientOptions)
			}
			t.Run(string(mode)+"/"+km.String(), func(t *testing.T) {
				t.Parallel()
				s := wechatpaytest.NewServer(t, wechatpaytest.WithMode(mode), wechatpaytest.WithKeyMode(km))
				c := s.Client()
				defer c.Close()
				brand := s.BrandID()
				ids := s.SeedCoupons(brand, 2)
				ctx := t.Context()
				for i := 0; i < 4; i++ { // several answers (certificate rotation signs in turn)
					if _, err := c.GetProductCoupon(ctx, &wechatpay.GetProductCouponRequest{ProductCouponID: ids[0], BrandID: brand}); err != nil {
						t.Fatalf("get: %v", err)
					}
				}
				pc, err := c.UpdateProductCoupon(ctx, update(brand, ids[0], "upd_000001", "新名字券"))
				if err != nil {
					t.Fatalf("update: %v", err)
				}
				if pc.DisplayInfo.Name != "新名字券" || len(pc.Raw) == 0 {
					t.Errorf("update answered %+v", pc)
				}
				pc, err = c.DeactivateProductCoupon(ctx, deactivate(brand, ids[1], "dea_000001"))
				if err != nil {
					t.Fatalf("deactivate: %v", err)
				}
				if pc.State != wechatpay.StateDeactivated || pc.DeactivateRequestNo != "dea_000001" {
					t.Errorf("deactivate answered %+v", pc)
				}
				_, err = c.DeactivateProductCoupon(ctx, deactivate(brand, ids[1], "dea_000002"))
				var ae *wechatpay.APIError
				if !errors.As(err, &ae) || ae.HTTPStatus != http.StatusBadRequest || ae.Code != wechatpay.CodeInvalidRequest {
					t.Errorf("second deactivation: %v", err)
				}
				if n := s.AppliedCount("dea_000001"); n != 1 {
					t.Errorf("AppliedCount = %d", n)
				}
			})
		}
	}
}
