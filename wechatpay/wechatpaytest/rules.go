package wechatpaytest

import (
	"encoding/json"
	"fmt"
	"unicode/utf8"

	"github.com/couponq/couponq/wechatpay"
)

// The fake's own checks of a write's body, written from WeChat Pay's
// documents (wechatpay-v3.md "Limits", the PATCH page's required fields),
// never by calling the client's Validate: a fake that shares the client's
// rules cannot catch a mistake in them.

// Documented limits.
const (
	ruleKeyMin         = 6
	ruleKeyMax         = 40
	ruleNameMin        = 3
	ruleNameMax        = 15
	ruleDetailMax      = 8
	rulePackagesMax    = 50
	ruleChoicesMax     = 99
	ruleChoiceNameMax  = 15
	ruleChoiceCountMax = 99
	ruleReasonMax      = 150
)

// paramError is one refused field: 400 PARAM_ERROR with a detail.
type paramError struct{ field, issue string }

func (e *paramError) answer() *answer {
	a := errAnswer(400, wechatpay.CodeParamError, internalGeneric, "%s: %s", e.field, e.issue)
	a.detail = map[string]any{"field": e.field, "issue": e.issue, "location": "body"}
	return a
}

func refuse(field, format string, args ...any) *paramError {
	return &paramError{field: field, issue: fmt.Sprintf(format, args...)}
}

// displayInfoBody is display_info as the fake reads it: prices are
// pointers so a 0 sent is told from a price not sent.
type displayInfoBody struct {
	Name               *string       `json:"name"`
	ImageURL           *string       `json:"image_url"`
	BackgroundURL      *string       `json:"background_url"`
	DetailImageURLList []string      `json:"detail_image_url_list"`
	OriginalPrice      *int64        `json:"original_price"`
	ComboPackageList   []packageBody `json:"combo_package_list"`
}

type packageBody struct {
	Name       string       `json:"name"`
	PickCount  int64        `json:"pick_count"`
	ChoiceList []choiceBody `json:"choice_list"`
}

type choiceBody struct {
	Name             string `json:"name"`
	Price            *int64 `json:"price"`
	Count            int64  `json:"count"`
	ImageURL         string `json:"image_url"`
	MiniProgramAppID string `json:"mini_program_appid"`
	MiniProgramPath  string `json:"mini_program_path"`
}

func keyOK(s string) bool {
	if len(s) < ruleKeyMin || len(s) > ruleKeyMax {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

func runes(s string) int { return utf8.RuneCountInString(s) }

// checkOutRequestNo applies the idempotency key's documented alphabet and length.
func checkOutRequestNo(s string) *paramError {
	if !keyOK(s) {
		return refuse("out_request_no", "must be %d–%d characters of [0-9A-Za-z_-]", ruleKeyMin, ruleKeyMax)
	}
	return nil
}

// checkDisplayInfo applies the PATCH page's rules: name, image_url and
// background_url are required, and the documented limits hold.
func checkDisplayInfo(raw json.RawMessage) (*displayInfoBody, *paramError) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, refuse("display_info", "required")
	}
	var d displayInfoBody
	if err := json.Unmarshal(raw, &d); err != nil {
		return nil, refuse("display_info", "not the expected object: %v", err)
	}
	switch {
	case d.Name == nil || *d.Name == "":
		return nil, refuse("display_info.name", "required")
	case d.ImageURL == nil || *d.ImageURL == "":
		return nil, refuse("display_info.image_url", "required")
	case d.BackgroundURL == nil || *d.BackgroundURL == "":
		return nil, refuse("display_info.background_url", "required")
	case runes(*d.Name) < ruleNameMin || runes(*d.Name) > ruleNameMax:
		return nil, refuse("display_info.name", "must be %d–%d characters", ruleNameMin, ruleNameMax)
	case len(d.DetailImageURLList) > ruleDetailMax:
		return nil, refuse("display_info.detail_image_url_list", "at most %d images", ruleDetailMax)
	case d.OriginalPrice != nil && *d.OriginalPrice < 0:
		return nil, refuse("display_info.original_price", "fen, not negative")
	case len(d.ComboPackageList) > rulePackagesMax:
		return nil, refuse("display_info.combo_package_list", "at most %d packages", rulePackagesMax)
	}
	for i, p := range d.ComboPackageList {
		pf := fmt.Sprintf("display_info.combo_package_list[%d]", i)
		if len(p.ChoiceList) > ruleChoicesMax {
			return nil, refuse(pf+".choice_list", "at most %d items", ruleChoicesMax)
		}
		for j, c := range p.ChoiceList {
			cf := fmt.Sprintf("%s.choice_list[%d]", pf, j)
			switch {
			case runes(c.Name) > ruleChoiceNameMax:
				return nil, refuse(cf+".name", "at most %d characters", ruleChoiceNameMax)
			case c.Count > ruleChoiceCountMax:
				return nil, refuse(cf+".count", "at most %d", ruleChoiceCountMax)
			case c.Price != nil && *c.Price < 0:
				return nil, refuse(cf+".price", "fen, not negative")
			case c.MiniProgramPath != "" && c.MiniProgramAppID == "":
				return nil, refuse(cf+".mini_program_path", "only with mini_program_appid")
			}
		}
	}
	return &d, nil
}

// checkDeactivateReason applies deactivate_reason's documented length.
func checkDeactivateReason(s string) *paramError {
	if s == "" {
		return refuse("deactivate_reason", "required")
	}
	if runes(s) > ruleReasonMax {
		return refuse("deactivate_reason", "at most %d characters", ruleReasonMax)
	}
	return nil
}

// model is the display_info the coupon keeps: exactly what was sent.
func (d *displayInfoBody) model() *wechatpay.DisplayInfo {
	m := &wechatpay.DisplayInfo{Name: *d.Name, ImageURL: *d.ImageURL, BackgroundURL: *d.BackgroundURL,
		DetailImageURLList: append([]string(nil), d.DetailImageURLList...)}
	if d.OriginalPrice != nil {
		m.OriginalPrice, m.OriginalPriceZero = *d.OriginalPrice, *d.OriginalPrice == 0
	}
	for _, p := range d.ComboPackageList {
		mp := wechatpay.ComboPackage{Name: p.Name, PickCount: p.PickCount}
		for _, c := range p.ChoiceList {
			mc := wechatpay.ComboChoice{Name: c.Name, Count: c.Count, ImageURL: c.ImageURL,
				MiniProgramAppID: c.MiniProgramAppID, MiniProgramPath: c.MiniProgramPath}
			if c.Price != nil {
				mc.Price, mc.PriceZero = *c.Price, *c.Price == 0
			}
			mp.ChoiceList = append(mp.ChoiceList, mc)
		}
		m.ComboPackageList = append(m.ComboPackageList, mp)
	}
	return m
}
