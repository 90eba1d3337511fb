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
// are omitted from requests, except a zero price that was given:
// OriginalPriceZero marks an original_price of 0 as given, so an explicit 0
// stays on the wire while an absent price stays absent. Decoding sets it
// for a 0 in the JSON; code that builds a DisplayInfo with a zero price it
// means to send sets it too.
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

	// OriginalPriceZero marks OriginalPrice 0 as given: it is sent.
	OriginalPriceZero bool `json:"-"`
}

// displayInfoWire is DisplayInfo's wire form: a price is a pointer, so a
// given 0 is told from an absent price. The wire types have no methods, so
// a decoder's DisallowUnknownFields reaches every level.
type displayInfoWire struct {
	Name               string             `json:"name,omitempty"`
	ImageURL           string             `json:"image_url,omitempty"`
	BackgroundURL      string             `json:"background_url,omitempty"`
	DetailImageURLList []string           `json:"detail_image_url_list,omitempty"`
	OriginalPrice      *int64             `json:"original_price,omitempty"`
	ComboPackageList   []comboPackageWire `json:"combo_package_list,omitempty"`
}

type comboPackageWire struct {
	Name       string            `json:"name,omitempty"`
	PickCount  int64             `json:"pick_count,omitempty"`
	ChoiceList []comboChoiceWire `json:"choice_list,omitempty"`
}

type comboChoiceWire struct {
	Name             string `json:"name,omitempty"`
	Price            *int64 `json:"price,omitempty"`
	Count            int64  `json:"count,omitempty"`
	ImageURL         string `json:"image_url,omitempty"`
	MiniProgramAppID string `json:"mini_program_appid,omitempty"`
	MiniProgramPath  string `json:"mini_program_path,omitempty"`
}

// price is the wire form of a price: present when nonzero or given as 0.
func price(n int64, zeroGiven bool) *int64 {
	if n == 0 && !zeroGiven {
		return nil
	}
	return &n
}

func (d *DisplayInfo) wire() displayInfoWire {
	w := displayInfoWire{Name: d.Name, ImageURL: d.ImageURL, BackgroundURL: d.BackgroundURL,
		DetailImageURLList: d.DetailImageURLList, OriginalPrice: price(d.OriginalPrice, d.OriginalPriceZero)}
	if d.ComboPackageList != nil {
		w.ComboPackageList = make([]comboPackageWire, len(d.ComboPackageList))
	}
	for i, p := range d.ComboPackageList {
		wp := comboPackageWire{Name: p.Name, PickCount: p.PickCount}
		if p.ChoiceList != nil {
			wp.ChoiceList = make([]comboChoiceWire, len(p.ChoiceList))
		}
		for j, c := range p.ChoiceList {
			wp.ChoiceList[j] = comboChoiceWire{Name: c.Name, Price: price(c.Price, c.PriceZero), Count: c.Count,
				ImageURL: c.ImageURL, MiniProgramAppID: c.MiniProgramAppID, MiniProgramPath: c.MiniProgramPath}
		}
		w.ComboPackageList[i] = wp
	}
	return w
}

func (w *displayInfoWire) model() DisplayInfo {
	d := DisplayInfo{Name: w.Name, ImageURL: w.ImageURL, BackgroundURL: w.BackgroundURL, DetailImageURLList: w.DetailImageURLList}
	if w.OriginalPrice != nil {
		d.OriginalPrice, d.OriginalPriceZero = *w.OriginalPrice, *w.OriginalPrice == 0
	}
	if w.ComboPackageList != nil {
		d.ComboPackageList = make([]ComboPackage, len(w.ComboPackageList))
	}
	for i, wp := range w.ComboPackageList {
		p := ComboPackage{Name: wp.Name, PickCount: wp.PickCount}
		if wp.ChoiceList != nil {
			p.ChoiceList = make([]ComboChoice, len(wp.ChoiceList))
		}
		for j, wc := range wp.ChoiceList {
			c := ComboChoice{Name: wc.Name, Count: wc.Count, ImageURL: wc.ImageURL,
				MiniProgramAppID: wc.MiniProgramAppID, MiniProgramPath: wc.MiniProgramPath}
			if wc.Price != nil {
				c.Price, c.PriceZero = *wc.Price, *wc.Price == 0
			}
			p.ChoiceList[j] = c
		}
		d.ComboPackageList[i] = p
	}
	return d
}

// MarshalJSON encodes d; a price is present when nonzero or given as 0.
func (d DisplayInfo) MarshalJSON() ([]byte, error) { return marshalNoEscape(d.wire()) }

// UnmarshalJSON decodes d strictly, as input should be: an unknown field is
// an error (a misspelt field in a change line must not be dropped). A
// ProductCoupon's display_info, WeChat Pay's answer, is decoded leniently.
func (d *DisplayInfo) UnmarshalJSON(b []byte) error { return d.decode(b, true) }

func (d *DisplayInfo) decode(b []byte, strict bool) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	if strict {
		dec.DisallowUnknownFields()
	}
	var w displayInfoWire
	if err := dec.Decode(&w); err != nil {
		return err
	}
	*d = w.model()
	return nil
}

// ComboPackage is one package of a combo coupon: pick PickCount of ChoiceList.
type ComboPackage struct {
	Name       string        `json:"name,omitempty"`
	PickCount  int64         `json:"pick_count,omitempty"`
	ChoiceList []ComboChoice `json:"choice_list,omitempty"`
}

// ComboChoice is one item of a combo package. Price is in fen; PriceZero
// marks a Price of 0 as given, so it is sent (see DisplayInfo).
type ComboChoice struct {
	Name             string `json:"name,omitempty"`
	Price            int64  `json:"price,omitempty"`
	Count            int64  `json:"count,omitempty"`
	ImageURL         string `json:"image_url,omitempty"`
	MiniProgramAppID string `json:"mini_program_appid,omitempty"`
	MiniProgramPath  string `json:"mini_program_path,omitempty"`

	// PriceZero marks Price 0 as given: it is sent.
	PriceZero bool `json:"-"`
}

// productCouponFields is ProductCoupon without its methods.
type productCouponFields ProductCoupon

// UnmarshalJSON decodes an answer leniently: fields this model does not
// know, display_info's included, are ignored here and kept in Raw by the
// client.
func (pc *ProductCoupon) UnmarshalJSON(b []byte) error {
	var w struct {
		*productCouponFields
		DisplayInfo json.RawMessage `json:"display_info,omitempty"`
	}
	raw := pc.Raw
	*pc = ProductCoupon{}
	w.productCouponFields = (*productCouponFields)(pc)
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	pc.Raw = raw
	if len(w.DisplayInfo) > 0 && !bytes.Equal(bytes.TrimSpace(w.DisplayInfo), []byte("null")) {
		pc.DisplayInfo = new(DisplayInfo)
		if err := pc.DisplayInfo.decode(w.DisplayInfo, false); err != nil {
			return err
		}
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

	// Body, when set, is the exact JSON body to send, as EncodeDeactivate
	// made it for the first attempt.
	Body json.RawMessage `json:"-"`
}

// GetProductCouponRequest is the input of Client.GetProductCoupon.
type GetProductCouponRequest struct {
	ProductCouponID string `json:"product_coupon_id"`
	BrandID         string `json:"brand_id"`
}
