package worker

import (
	"context"
	"encoding/json"

	"github.com/couponq/couponq/wechatpay"
)

// API is what the worker needs of the WeChat Pay client: one method per
// call. *wechatpay.Client satisfies it; tests use a scripted stub.
type API interface {
	// UpdateProductCoupon is PATCH /v3/marketing/partner/product-coupon/product-coupons/{product_coupon_id}.
	UpdateProductCoupon(ctx context.Context, req *wechatpay.UpdateProductCouponRequest) (*wechatpay.ProductCoupon, error)
	// DeactivateProductCoupon is POST …/product-coupons/{product_coupon_id}/deactivate.
	DeactivateProductCoupon(ctx context.Context, req *wechatpay.DeactivateProductCouponRequest) (*wechatpay.ProductCoupon, error)
	// GetProductCoupon is GET …/product-coupons/{product_coupon_id}?brand_id=….
	GetProductCoupon(ctx context.Context, req *wechatpay.GetProductCouponRequest) (*wechatpay.ProductCoupon, error)
	// EncodeUpdate returns the body of an update with displayInfo merged
	// from the coupon; the worker stores it and sends it on every attempt.
	EncodeUpdate(req *wechatpay.UpdateProductCouponRequest, displayInfo json.RawMessage) ([]byte, error)
	// EncodeDeactivate returns the body of a deactivation, stored and sent
	// on every attempt like an update's.
	EncodeDeactivate(req *wechatpay.DeactivateProductCouponRequest) ([]byte, error)
}
