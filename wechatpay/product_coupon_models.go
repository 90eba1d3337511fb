package wechatpay

import (
	"bytes"
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

// DisplayInfo is what users see of a coupon. Money is in fen. Empty fields
// are omitted from requests, except a price the JSON named: OriginalPriceSet
// records that original_price was present (so an explicit 0 stays on the
// wire while an absent price stays absent); decoding sets it, and code that
// builds a DisplayInfo with a zero price it means to send sets it too.
// WeChat Pay documents name, image_url and background_url as required and
// does not say whether PATCH merges or replaces display_info: send the whole
// display_info (MergeDisplayInfo builds it from the coupon).
type DisplayInfo struct {
	Name               string         `json:"name,omitempty"`
	ImageURL           string         `json:"image_url,omitempty"`
	BackgroundURL      string         `json:"background_url,omitempty"`
	DetailImageURLList []string       `json:"detail_image_url_list,omitempty"`
	OriginalPrice      int64          `json:"original_price,omitempty"`
	ComboPackageList   []ComboPackage `json:"combo_package_list,omitempty"`

	// OriginalPriceSet reports that original_price is given even when 0.
	OriginalPriceSet bool `json:"-"`
}

// displayInfoJSON is DisplayInfo's wire form with original_price always
// encoded when given; the alias drops the methods so encoding does not recurse.
type displayInfoJSON struct {
	Name               string         `json:"name,omitempty"`
	ImageURL           string         `json:"image_url,omitempty"`
	BackgroundURL      string         `json:"background_url,omitempty"`
	DetailImageURLList []string       `json:"detail_image_url_list,omitempty"`
	OriginalPrice      *int64         `json:"original_price,omitempty"`
	ComboPackageList   []ComboPackage `json:"combo_package_list,omitempty"`
}

// MarshalJSON encodes d with original_price present when nonzero or
// OriginalPriceSet.
func (d DisplayInfo) MarshalJSON() ([]byte, error) {
	w := displayInfoJSON{Name: d.Name, ImageURL: d.ImageURL, BackgroundURL: d.BackgroundURL,
		DetailImageURLList: d.DetailImageURLList, ComboPackageList: d.ComboPackageList}
	if d.OriginalPrice != 0 || d.OriginalPriceSet {
		p := d.OriginalPrice
		w.OriginalPrice = &p
	}
	return marshalNoEscape(w)
}

// UnmarshalJSON decodes d, setting OriginalPriceSet when original_price is present.
func (d *DisplayInfo) UnmarshalJSON(b []byte) error {
	var w displayInfoJSON
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	*d = DisplayInfo{Name: w.Name, ImageURL: w.ImageURL, BackgroundURL: w.BackgroundURL,
		DetailImageURLList: w.DetailImageURLList, ComboPackageList: w.ComboPackageList}
	if w.OriginalPrice != nil {
		d.OriginalPrice, d.OriginalPriceSet = *w.OriginalPrice, true
	}
	return nil
}

// ComboPackage is one package of a combo coupon: pick PickCount of ChoiceList.
type ComboPackage struct {
	Name       string        `json:"name,omitempty"`
	PickCount  int64         `json:"pick_count,omitempty"`
	ChoiceList []ComboChoice `json:"choice_list,omitempty"`
}

// ComboChoice is one item of a combo package. Price is in fen; PriceSet
// records that price was given even when 0 (see DisplayInfo).
type ComboChoice struct {
	Name             string `json:"name,omitempty"`
	Price            int64  `json:"price,omitempty"`
	Count            int64  `json:"count,omitempty"`
	ImageURL         string `json:"image_url,omitempty"`
	MiniProgramAppID string `json:"mini_program_appid,omitempty"`
	MiniProgramPath  string `json:"mini_program_path,omitempty"`

	// PriceSet reports that price is given even when 0.
	PriceSet bool `json:"-"`
}

type comboChoiceJSON struct {
	Name             string `json:"name,omitempty"`
	Price            *int64 `json:"price,omitempty"`
	Count            int64  `json:"count,omitempty"`
	ImageURL         string `json:"image_url,omitempty"`
	MiniProgramAppID string `json:"mini_program_appid,omitempty"`
	MiniProgramPath  string `json:"mini_program_path,omitempty"`
}

// MarshalJSON encodes c with price present when nonzero or PriceSet.
func (c ComboChoice) MarshalJSON() ([]byte, error) {
	w := comboChoiceJSON{Name: c.Name, Count: c.Count, ImageURL: c.ImageURL,
		MiniProgramAppID: c.MiniProgramAppID, MiniProgramPath: c.MiniProgramPath}
	if c.Price != 0 || c.PriceSet {
		p := c.Price
		w.Price = &p
	}
	return marshalNoEscape(w)
}

// UnmarshalJSON decodes c, setting PriceSet when price is present.
func (c *ComboChoice) UnmarshalJSON(b []byte) error {
	var w comboChoiceJSON
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	*c = ComboChoice{Name: w.Name, Count: w.Count, ImageURL: w.ImageURL,
		MiniProgramAppID: w.MiniProgramAppID, MiniProgramPath: w.MiniProgramPath}
	if w.Price != nil {
		c.Price, c.PriceSet = *w.Price, true
	}
	return nil
}

// marshalNoEscape encodes v without HTML escaping (URLs keep their '&'),
// without the Encoder's trailing newline. An enclosing json.Marshal escapes
// again if it wants to.
func marshalNoEscape(v any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}

// UpdateProductCouponRequest is the input of Client.UpdateProductCoupon.
// ProductCouponID goes into the path; in brand mode BrandID is not sent (the
// Authorization header carries it) but must match the client's brand.
type UpdateProductCouponRequest struct {
	ProductCouponID string       `json:"product_coupon_id"`
	BrandID         string       `json:"brand_id"`
	OutRequestNo    string       `json:"out_request_no"`
	DisplayInfo     *DisplayInfo `json:"display_info"`

	// Body, when set, is the exact JSON body to send, as EncodeUpdate made
	// it for the first attempt: every retry of one out_request_no must carry
	// the same bytes, or WeChat Pay refuses it as the key reused with other
	// data. DisplayInfo is then not sent (it still names the change).
	Body json.RawMessage `json:"-"`
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
