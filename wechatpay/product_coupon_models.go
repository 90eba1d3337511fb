package wechatpay

import (
	"encoding/json"
)

// CouponState is a product coupon's lifecycle state. It is an open string:
// values WeChat Pay adds later decode unchanged.
type CouponState string

// Known coupon states.
const (
	StateAuditing    CouponState = "AUDITING"
	StateEffective   CouponState = "EFFECTIVE"
	StateDeactivated CouponState = "DEACTIVATED"
)

// ProductCoupon is the object all three product-coupon calls answer with.
//
// Enumerations are open strings, both multi-use shapes are modelled (the
// August 2025 sequential_usage_info and the November 2025
// progressive_bundle_usage_info), and Raw keeps the response body exactly as
// received so that fields this model does not know are never lost.
type ProductCoupon struct {
	ProductCouponID            string                      `json:"product_coupon_id"`
	State                      CouponState                 `json:"state,omitempty"`
	BrandID                    string                      `json:"brand_id,omitempty"`
	Scope                      string                      `json:"scope,omitempty"`      // ALL, SINGLE, CATEGORY, …
	Type                       string                      `json:"type,omitempty"`       // NORMAL, DISCOUNT, EXCHANGE, …
	UsageMode                  string                      `json:"usage_mode,omitempty"` // SINGLE, SEQUENTIAL, PROGRESSIVE_BUNDLE, …
	SingleUsageInfo            *SingleUsageInfo            `json:"single_usage_info,omitempty"`
	SequentialUsageInfo        *SequentialUsageInfo        `json:"sequential_usage_info,omitempty"`
	ProgressiveBundleUsageInfo *ProgressiveBundleUsageInfo `json:"progressive_bundle_usage_info,omitempty"`
	DisplayInfo                *DisplayInfo                `json:"display_info,omitempty"`
	OutProductNo               string                      `json:"out_product_no,omitempty"`
	DeactivateRequestNo        string                      `json:"deactivate_request_no,omitempty"`
	DeactivateTime             string                      `json:"deactivate_time,omitempty"`
	DeactivateReason           string                      `json:"deactivate_reason,omitempty"`

	// Raw is the verified response body as received. It is not encoded.
	Raw json.RawMessage `json:"-"`
}

// SingleUsageInfo describes a single-use coupon's discount.
type SingleUsageInfo struct {
	NormalCoupon   *NormalCoupon   `json:"normal_coupon,omitempty"`
	DiscountCoupon *DiscountCoupon `json:"discount_coupon,omitempty"`
}

// NormalCoupon is a fixed-amount discount, money in fen.
type NormalCoupon struct {
	Threshold      int64 `json:"threshold"`
	DiscountAmount int64 `json:"discount_amount"`
}

// DiscountCoupon is a percentage discount (percent_off 1–99), threshold in fen.
type DiscountCoupon struct {
	Threshold  int64 `json:"threshold"`
	PercentOff int64 `json:"percent_off"`
}

// SequentialUsageInfo is the August 2025 multi-use shape (usage_mode SEQUENTIAL).
type SequentialUsageInfo struct {
	Type          string `json:"type,omitempty"` // INCREMENTAL, EQUAL, …
	Count         int64  `json:"count,omitempty"`
	AvailableDays int64  `json:"available_days,omitempty"`
	IntervalDays  int64  `json:"interval_days,omitempty"`
}

// ProgressiveBundleUsageInfo is the November 2025 multi-use shape
// (usage_mode PROGRESSIVE_BUNDLE): count 3–15, interval_days ≤ 7.
type ProgressiveBundleUsageInfo struct {
	Count        int64 `json:"count,omitempty"`
	IntervalDays int64 `json:"interval_days,omitempty"`
}

// DisplayInfo is what users see of a coupon. Money is in fen. Zero values are
// omitted from requests: WeChat Pay does not document whether PATCH merges or
// replaces display_info, so send every field you want the coupon to keep.
type DisplayInfo struct {
	Name               string         `json:"name,omitempty"`
	ImageURL           string         `json:"image_url,omitempty"`
	BackgroundURL      string         `json:"background_url,omitempty"`
	DetailImageURLList []string       `json:"detail_image_url_list,omitempty"`
	OriginalPrice      int64          `json:"original_price,omitempty"`
	ComboPackageList   []ComboPackage `json:"combo_package_list,omitempty"`
}

// ComboPackage is one package of a combo coupon: pick PickCount of ChoiceList.
type ComboPackage struct {
	Name       string        `json:"name,omitempty"`
	PickCount  int64         `json:"pick_count,omitempty"`
	ChoiceList []ComboChoice `json:"choice_list,omitempty"`
}

// ComboChoice is one item of a combo package. Price is in fen.
type ComboChoice struct {
	Name             string `json:"name,omitempty"`
	Price            int64  `json:"price,omitempty"`
	Count            int64  `json:"count,omitempty"`
	ImageURL         string `json:"image_url,omitempty"`
	MiniProgramAppID string `json:"mini_program_appid,omitempty"`
	MiniProgramPath  string `json:"mini_program_path,omitempty"`
}

// UpdateProductCouponRequest is the input of Client.UpdateProductCoupon.
// ProductCouponID goes into the path; in brand mode BrandID is not sent (the
// Authorization header carries it) but must match the client's brand.
type UpdateProductCouponRequest struct {
	ProductCouponID string       `json:"product_coupon_id"`
	BrandID         string       `json:"brand_id"`
	OutRequestNo    string       `json:"out_request_no"`
	DisplayInfo     *DisplayInfo `json:"display_info"`
}

// DeactivateProductCouponRequest is the input of Client.DeactivateProductCoupon.
type DeactivateProductCouponRequest struct {
	ProductCouponID  string `json:"product_coupon_id"`
	BrandID          string `json:"brand_id"`
	OutRequestNo     string `json:"out_request_no"`
	DeactivateReason string `json:"deactivate_reason"`
}

// GetProductCouponRequest is the input of Client.GetProductCoupon.
type GetProductCouponRequest struct {
	ProductCouponID string `json:"product_coupon_id"`
	BrandID         string `json:"brand_id"`
}
