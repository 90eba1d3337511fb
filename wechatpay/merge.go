package wechatpay

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
)

// MergeDisplayInfo returns the display_info an update of coupon with change
// sends: the coupon's display_info as WeChat Pay returned it (from Raw, so
// fields this model does not know are kept) with every field change names
// put in its place, and whether that differs from what the coupon has.
//
// WeChat Pay documents name, image_url and background_url as required in
// display_info and does not say whether PATCH merges or replaces it; sending
// the whole display_info is right under both readings. A list is replaced
// whole (detail_image_url_list, combo_package_list). A field is named by
// change when it is non-empty, or for original_price when
// OriginalPriceZero. The keys come out sorted, so the same inputs always
// give the same bytes.
func MergeDisplayInfo(coupon *ProductCoupon, change *DisplayInfo) (merged json.RawMessage, changed bool, err error) {
	if change == nil {
		return nil, false, errors.New("wechatpay: MergeDisplayInfo: no change")
	}
	cur := map[string]json.RawMessage{}
	if raw, err := currentDisplayInfo(coupon); err != nil {
		return nil, false, err
	} else if len(raw) > 0 && !bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
		if err := json.Unmarshal(raw, &cur); err != nil {
			return nil, false, fmt.Errorf("wechatpay: MergeDisplayInfo: the coupon's display_info is not an object: %w", err)
		}
	}
	b, err := marshalNoEscape(change)
	if err != nil {
		return nil, false, fmt.Errorf("wechatpay: MergeDisplayInfo: %w", err)
	}
	var upd map[string]json.RawMessage
	if err := json.Unmarshal(b, &upd); err != nil {
		return nil, false, fmt.Errorf("wechatpay: MergeDisplayInfo: %w", err)
	}
	for k, v := range upd {
		if old, ok := cur[k]; !ok || !jsonEqual(old, v) {
			changed = true
		}
		cur[k] = v
	}
	out, err := marshalNoEscape(cur) // a map encodes with sorted keys
	if err != nil {
		return nil, false, fmt.Errorf("wechatpay: MergeDisplayInfo: %w", err)
	}
	return out, changed, nil
}

// currentDisplayInfo is the coupon's display_info as received, or as the
// model encodes it when the coupon has no Raw.
func currentDisplayInfo(coupon *ProductCoupon) (json.RawMessage, error) {
	if coupon == nil {
		return nil, nil
	}
	if len(coupon.Raw) > 0 {
		var w struct {
			DisplayInfo json.RawMessage `json:"display_info"`
		}
		if err := json.Unmarshal(coupon.Raw, &w); err != nil {
			return nil, fmt.Errorf("wechatpay: MergeDisplayInfo: the coupon's JSON: %w", err)
		}
		return w.DisplayInfo, nil
	}
	if coupon.DisplayInfo == nil {
		return nil, nil
	}
	return marshalNoEscape(coupon.DisplayInfo)
}

// jsonEqual reports whether a and b are the same JSON value; numbers are
// compared by their text (as json.Number), so large integers stay exact.
func jsonEqual(a, b json.RawMessage) bool {
	va, erra := decodeNumbers(a)
	vb, errb := decodeNumbers(b)
	return erra == nil && errb == nil && reflect.DeepEqual(va, vb)
}

func decodeNumbers(b []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	err := dec.Decode(&v)
	return v, err
}

// isJSONObject reports whether b is one JSON object.
func isJSONObject(b []byte) bool {
	b = bytes.TrimSpace(b)
	return len(b) > 0 && b[0] == '{' && json.Valid(b)
}
