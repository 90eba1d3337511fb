package wechatpay_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/couponq/couponq/wechatpay"
	"github.com/couponq/couponq/wechatpay/wechatpaytest"
)

// The client against the fake WeChat Pay: an update, then a deactivation
// that fails once with a 500 and is retried with the same out_request_no.
func Example() {
	srv := wechatpaytest.NewServer(nil) // nil: no testing.TB, so close it ourselves
	defer srv.Close()
	brand := srv.BrandID()
	id := srv.SeedCoupons(brand, 1)[0]

	client := srv.Client() // signs requests, verifies every answer
	defer client.Close()
	ctx := context.Background()

	// The whole display_info: name and both images are required, and
	// PATCH may replace it (MergeDisplayInfo builds it from the coupon).
	pc, err := client.UpdateProductCoupon(ctx, &wechatpay.UpdateProductCouponRequest{
		ProductCouponID: id,
		BrandID:         brand,
		OutRequestNo:    "34657_20250101_123456",
		DisplayInfo:     &wechatpay.DisplayInfo{Name: "全场满100立打8折", OriginalPrice: 10000, ImageURL: "https://img.example/i.png", BackgroundURL: "https://img.example/b.png"},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(pc.ProductCouponID, pc.State, pc.DisplayInfo.Name)

	deactivate := &wechatpay.DeactivateProductCouponRequest{
		ProductCouponID:  id,
		BrandID:          brand,
		OutRequestNo:     "34657_20250101_123457",
		DeactivateReason: "批次信息有误,重新创建",
	}
	srv.FailNext(500, wechatpay.CodeSystemError)
	_, err = client.DeactivateProductCoupon(ctx, deactivate)
	var apiErr *wechatpay.APIError
	if errors.As(err, &apiErr) {
		fmt.Println(apiErr.HTTPStatus, apiErr.Code, "retryable:", wechatpay.IsRetryable(err))
	}
	pc, err = client.DeactivateProductCoupon(ctx, deactivate) // same out_request_no
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(pc.State, pc.DeactivateRequestNo, "applied:", srv.AppliedCount(deactivate.OutRequestNo))

	_, err = client.GetProductCoupon(ctx, &wechatpay.GetProductCouponRequest{ProductCouponID: "42", BrandID: brand})
	if errors.As(err, &apiErr) {
		fmt.Println(apiErr.HTTPStatus, apiErr.Code, "retryable:", wechatpay.IsRetryable(err))
	}
	// Output:
	// 1000000001 EFFECTIVE 全场满100立打8折
	// 500 SYSTEM_ERROR retryable: true
	// DEACTIVATED 34657_20250101_123457 applied: 1
	// 404 RESOURCE_NOT_EXISTS retryable: false
}
