package wechatpay

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
)

// Path prefixes of the product-coupon endpoints in each access mode.
const (
	PartnerProductCouponsPath = "/v3/marketing/partner/product-coupon/product-coupons"
	BrandProductCouponsPath   = "/brand/marketing/product-coupon/product-coupons"
)

// couponPath returns the path of one coupon (plus suffix) in c's mode.
func (c *Client) couponPath(id, suffix string) string {
	base := PartnerProductCouponsPath
	if c.mode == ModeBrand {
		base = BrandProductCouponsPath
	}
	return base + "/" + url.PathEscape(id) + suffix
}

// checkBrand refuses, in brand mode, a request for another brand than the
// client's: the header names the brand, so such a call could only fail.
func (c *Client) checkBrand(brandID string) error {
	if c.mode == ModeBrand && brandID != c.identity {
		return &ValidationError{Field: "brand_id", Reason: fmt.Sprintf("must be the client's brand %q in brand mode, got %q", c.identity, brandID)}
	}
	return nil
}

// brandField is brand_id in partner mode and omitted in brand mode.
func (c *Client) brandField(brandID string) string {
	if c.mode == ModeBrand {
		return ""
	}
	return brandID
}

type updateBody struct {
	BrandID      string          `json:"brand_id,omitempty"`
	OutRequestNo string          `json:"out_request_no"`
	DisplayInfo  json.RawMessage `json:"display_info"`
}

type deactivateBody struct {
	BrandID          string `json:"brand_id,omitempty"`
	OutRequestNo     string `json:"out_request_no"`
	DeactivateReason string `json:"deactivate_reason"`
}

// UpdateProductCoupon changes a coupon's display information.
//
// Partner mode: PATCH /v3/marketing/partner/product-coupon/product-coupons/{product_coupon_id}.
// Brand mode: PATCH /brand/marketing/product-coupon/product-coupons/{product_coupon_id}.
//
// The request is validated before any I/O. The change applies to coupons
// issued after it. Retrying with the same OutRequestNo and the same data is
// safe; it is never retried by the client itself.
func (c *Client) UpdateProductCoupon(ctx context.Context, req *UpdateProductCouponRequest) (*ProductCoupon, error) {
	if req == nil {
		return nil, &ValidationError{Field: "request", Reason: "required"}
	}
	body := []byte(req.Body)
	if body == nil {
		var err error
		if body, err = c.EncodeUpdate(req, nil); err != nil {
			return nil, err
		}
	} else if err := c.checkBody(req.ProductCouponID, req.BrandID, req.OutRequestNo, body); err != nil {
		return nil, err
	}
	return c.coupon(ctx, http.MethodPatch, c.couponPath(req.ProductCouponID, ""), "", body)
}

// EncodeUpdate validates req and returns the JSON body UpdateProductCoupon
// sends for it: brand_id (partner mode only), out_request_no and
// display_info — displayInfo when given (a JSON object, such as
// MergeDisplayInfo returns), else req.DisplayInfo. A caller that retries
// keeps the bytes and sends them again through req.Body.
func (c *Client) EncodeUpdate(req *UpdateProductCouponRequest, displayInfo json.RawMessage) ([]byte, error) {
	if req == nil {
		return nil, &ValidationError{Field: "request", Reason: "required"}
	}
	if err := req.Validate(); err != nil {
		return nil, err
	}
	if err := c.checkBrand(req.BrandID); err != nil {
		return nil, err
	}
	di := displayInfo
	if di == nil {
		var err error
		if di, err = marshalNoEscape(req.DisplayInfo); err != nil {
			return nil, fmt.Errorf("wechatpay: encoding update: %w", err)
		}
	} else if !isJSONObject(di) {
		return nil, &ValidationError{Field: "display_info", Reason: "must be a JSON object"}
	}
	body, err := marshalNoEscape(updateBody{BrandID: c.brandField(req.BrandID), OutRequestNo: req.OutRequestNo, DisplayInfo: di})
	if err != nil {
		return nil, fmt.Errorf("wechatpay: encoding update: %w", err)
	}
	return body, nil
}

// DeactivateProductCoupon ends every batch and channel of a coupon; coupons
// already in users' hands stay valid. The coupon must be EFFECTIVE.
//
// Partner mode: POST /v3/marketing/partner/product-coupon/product-coupons/{product_coupon_id}/deactivate.
// Brand mode: POST /brand/marketing/product-coupon/product-coupons/{product_coupon_id}/deactivate.
//
// After an ambiguous outcome, a GET shows deactivate_request_no: equal to
// OutRequestNo means this deactivation took effect.
func (c *Client) DeactivateProductCoupon(ctx context.Context, req *DeactivateProductCouponRequest) (*ProductCoupon, error) {
	if req == nil {
		return nil, &ValidationError{Field: "request", Reason: "required"}
	}
	body := []byte(req.Body)
	if body == nil {
		var err error
		if body, err = c.EncodeDeactivate(req); err != nil {
			return nil, err
		}
	} else if err := c.checkBody(req.ProductCouponID, req.BrandID, req.OutRequestNo, body); err != nil {
		return nil, err
	}
	return c.coupon(ctx, http.MethodPost, c.couponPath(req.ProductCouponID, "/deactivate"), "", body)
}

// EncodeDeactivate validates req and returns the JSON body
// DeactivateProductCoupon sends for it; a caller that retries may keep the
// bytes and send them again through req.Body.
func (c *Client) EncodeDeactivate(req *DeactivateProductCouponRequest) ([]byte, error) {
	if req == nil {
		return nil, &ValidationError{Field: "request", Reason: "required"}
	}
	if err := req.Validate(); err != nil {
		return nil, err
	}
	if err := c.checkBrand(req.BrandID); err != nil {
		return nil, err
	}
	body, err := marshalNoEscape(deactivateBody{BrandID: c.brandField(req.BrandID), OutRequestNo: req.OutRequestNo, DeactivateReason: req.DeactivateReason})
	if err != nil {
		return nil, fmt.Errorf("wechatpay: encoding deactivate: %w", err)
	}
	return body, nil
}

// checkBody validates what routes a request sent with a body given as is.
func (c *Client) checkBody(couponID, brandID, outRequestNo string, body []byte) error {
	var v validator
	v.ids(couponID, brandID)
	v.key("out_request_no", outRequestNo, MinOutRequestNoLen, MaxOutRequestNoLen)
	if !isJSONObject(body) {
		v.add("body", "must be a JSON object")
	}
	if err := v.err(); err != nil {
		return err
	}
	return c.checkBrand(brandID)
}

// GetProductCoupon reads a coupon.
//
// Partner mode: GET /v3/marketing/partner/product-coupon/product-coupons/{product_coupon_id}?brand_id={brand_id}.
// Brand mode: GET /brand/marketing/product-coupon/product-coupons/{product_coupon_id}.
//
// A failed GET is retried once, quickly, when the error is retryable.
func (c *Client) GetProductCoupon(ctx context.Context, req *GetProductCouponRequest) (*ProductCoupon, error) {
	if req == nil {
		return nil, &ValidationError{Field: "request", Reason: "required"}
	}
	if err := req.Validate(); err != nil {
		return nil, err
	}
	if err := c.checkBrand(req.BrandID); err != nil {
		return nil, err
	}
	query := ""
	if c.mode == ModePartner {
		query = "brand_id=" + url.QueryEscape(req.BrandID)
	}
	return c.coupon(ctx, http.MethodGet, c.couponPath(req.ProductCouponID, ""), query, nil)
}

// coupon makes the call and decodes the verified ProductCoupon.
func (c *Client) coupon(ctx context.Context, method, path, query string, body []byte) (*ProductCoupon, error) {
	resp, err := c.do(ctx, method, path, query, body)
	if err != nil {
		return nil, err
	}
	var pc ProductCoupon
	if err := json.Unmarshal(resp.body, &pc); err != nil {
		return nil, fmt.Errorf("wechatpay: %s %s: decoding the verified answer (request_id=%s): %w", method, path, resp.requestID, err)
	}
	pc.Raw = json.RawMessage(resp.body)
	return &pc, nil
}
