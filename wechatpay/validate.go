package wechatpay

import (
	"errors"
	"fmt"
	"net/url"
	"unicode"
	"unicode/utf8"
)

// Limits from the WeChat Pay product-coupon documentation. Lengths count
// characters (runes), not bytes.
const (
	MinOutRequestNoLen     = 6
	MaxOutRequestNoLen     = 40
	MaxProductCouponIDLen  = 64
	MaxBrandIDLen          = 64
	MaxDeactivateReasonLen = 150
	MinDisplayNameLen      = 3
	MaxDisplayNameLen      = 15
	MaxDetailImages        = 8
	MaxComboPackages       = 50
	MaxComboChoices        = 99
	MaxChoiceNameLen       = 15
	MaxChoiceCount         = 99
	MaxURLLen              = 2048
)

// ValidationError reports one field that breaks a documented limit. It is
// returned before any request goes out, and is never retryable.
type ValidationError struct {
	Field  string // JSON path, e.g. "display_info.combo_package_list[2].name"
	Reason string
}

func (e *ValidationError) Error() string {
	return fmt.Sprintf("wechatpay: invalid %s: %s", e.Field, e.Reason)
}

// validator collects every problem so callers see them all at once.
type validator struct{ errs []error }

func (v *validator) add(field, format string, args ...any) {
	v.errs = append(v.errs, &ValidationError{Field: field, Reason: fmt.Sprintf(format, args...)})
}

func (v *validator) err() error { return errors.Join(v.errs...) }

// isKeyChar reports whether c is in [0-9A-Za-z_-], the alphabet of
// out_request_no and of the identifiers couponq places in URL paths.
func isKeyChar(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' || c == '-'
}

func (v *validator) key(field, s string, minLen, maxLen int) {
	switch {
	case s == "":
		v.add(field, "required")
		return
	case len(s) < minLen || len(s) > maxLen:
		if minLen == maxLen {
			v.add(field, "must be %d characters, got %d", minLen, len(s))
		} else {
			v.add(field, "must be %d–%d characters, got %d", minLen, maxLen, len(s))
		}
		return
	}
	for i := 0; i < len(s); i++ {
		if !isKeyChar(s[i]) {
			v.add(field, "must use only [0-9A-Za-z_-], got %q at position %d", s[i], i+1)
			return
		}
	}
}

// ValidateOutRequestNo validates an idempotency key: 6–40 characters of [0-9A-Za-z_-].
func ValidateOutRequestNo(s string) error {
	var v validator
	v.key("out_request_no", s, MinOutRequestNoLen, MaxOutRequestNoLen)
	return v.err()
}

func (v *validator) ids(couponID, brandID string) {
	v.key("product_coupon_id", couponID, 1, MaxProductCouponIDLen)
	v.key("brand_id", brandID, 1, MaxBrandIDLen)
}

// text checks what WeChat Pay shows or stores as text: valid UTF-8, no
// U+FFFD (what a decoder puts in place of invalid bytes or a lone surrogate
// escape: the input's own text is lost) and no control character (C0, DEL,
// C1: NUL, ESC, newline, …), which WeChat Pay does not document and no
// coupon name or reason needs. It reports whether s passed.
func (v *validator) text(field, s string) bool {
	if !utf8.ValidString(s) {
		v.add(field, "must be valid UTF-8")
		return false
	}
	for i, r := range s {
		switch {
		case r == utf8.RuneError:
			v.add(field, "holds U+FFFD at byte %d: the text was not valid UTF-8 (or held a lone surrogate escape)", i+1)
			return false
		case unicode.IsControl(r):
			v.add(field, "must not hold control characters, got %U at byte %d", r, i+1)
			return false
		}
	}
	return true
}

func (v *validator) textLen(field, s string, minLen, maxLen int) {
	if !v.text(field, s) {
		return
	}
	n := utf8.RuneCountInString(s)
	if n < minLen || n > maxLen {
		if minLen == 0 {
			v.add(field, "must be at most %d characters, got %d", maxLen, n)
		} else {
			v.add(field, "must be %d–%d characters, got %d", minLen, maxLen, n)
		}
	}
}

func (v *validator) url(field, s string) {
	if s == "" {
		return
	}
	if len(s) > MaxURLLen {
		v.add(field, "must be at most %d bytes", MaxURLLen)
		return
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		v.add(field, "must be an absolute http(s) URL (from WeChat Pay's image upload), got %q", s)
	}
}

// MaxMoney is the largest amount (fen) couponq accepts: 2^53−1, the largest
// integer JSON carries exactly between implementations (RFC 8259 §6).
// WeChat Pay documents money as integer fen without a ceiling; a larger
// number would reach it, or a JavaScript reader such as asynqmon, altered.
const MaxMoney = 1<<53 - 1

func (v *validator) money(field string, n int64) {
	switch {
	case n < 0:
		v.add(field, "must not be negative (fen), got %d", n)
	case n > MaxMoney:
		v.add(field, "must be at most %d (fen), got %d", int64(MaxMoney), n)
	}
}

// validate checks the display info against the documented limits.
func (d *DisplayInfo) validate(v *validator, field string) {
	if d.Name == "" && d.ImageURL == "" && d.BackgroundURL == "" && len(d.DetailImageURLList) == 0 &&
		d.OriginalPrice == 0 && !d.OriginalPriceZero && len(d.ComboPackageList) == 0 {
		v.add(field, "must change at least one field")
		return
	}
	if d.Name != "" {
		v.textLen(field+".name", d.Name, MinDisplayNameLen, MaxDisplayNameLen)
	}
	v.url(field+".image_url", d.ImageURL)
	v.url(field+".background_url", d.BackgroundURL)
	if n := len(d.DetailImageURLList); n > MaxDetailImages {
		v.add(field+".detail_image_url_list", "must have at most %d images, got %d", MaxDetailImages, n)
	}
	for i, u := range d.DetailImageURLList {
		f := fmt.Sprintf("%s.detail_image_url_list[%d]", field, i)
		if u == "" {
			v.add(f, "required")
		}
		v.url(f, u)
	}
	v.money(field+".original_price", d.OriginalPrice)
	if n := len(d.ComboPackageList); n > MaxComboPackages {
		v.add(field+".combo_package_list", "must have at most %d packages, got %d", MaxComboPackages, n)
	}
	for i := range d.ComboPackageList {
		p := &d.ComboPackageList[i]
		pf := fmt.Sprintf("%s.combo_package_list[%d]", field, i)
		if p.Name == "" {
			v.add(pf+".name", "required")
		} else {
			v.textLen(pf+".name", p.Name, 1, MaxChoiceNameLen)
		}
		switch n := len(p.ChoiceList); {
		case n == 0:
			v.add(pf+".choice_list", "required")
		case n > MaxComboChoices:
			v.add(pf+".choice_list", "must have at most %d items, got %d", MaxComboChoices, n)
		}
		// Only required: no document bounds pick_count by the number of choices.
		if p.PickCount < 1 {
			v.add(pf+".pick_count", "must be at least 1, got %d", p.PickCount)
		}
		for j := range p.ChoiceList {
			c := &p.ChoiceList[j]
			cf := fmt.Sprintf("%s.choice_list[%d]", pf, j)
			if c.Name == "" {
				v.add(cf+".name", "required")
			} else {
				v.textLen(cf+".name", c.Name, 1, MaxChoiceNameLen)
			}
			v.money(cf+".price", c.Price)
			if c.Count < 1 || c.Count > MaxChoiceCount {
				v.add(cf+".count", "must be 1–%d, got %d", MaxChoiceCount, c.Count)
			}
			v.url(cf+".image_url", c.ImageURL)
			v.text(cf+".mini_program_appid", c.MiniProgramAppID)
			v.text(cf+".mini_program_path", c.MiniProgramPath)
			if c.MiniProgramPath != "" && c.MiniProgramAppID == "" {
				v.add(cf+".mini_program_path", "needs mini_program_appid")
			}
		}
	}
}

// Validate checks the request against WeChat Pay's documented limits and
// returns every problem found, each a *ValidationError naming the field.
func (r *UpdateProductCouponRequest) Validate() error {
	var v validator
	v.ids(r.ProductCouponID, r.BrandID)
	v.key("out_request_no", r.OutRequestNo, MinOutRequestNoLen, MaxOutRequestNoLen)
	if r.DisplayInfo == nil {
		v.add("display_info", "required")
	} else {
		r.DisplayInfo.validate(&v, "display_info")
	}
	return v.err()
}

// Validate checks the request against WeChat Pay's documented limits and
// returns every problem found, each a *ValidationError naming the field.
func (r *DeactivateProductCouponRequest) Validate() error {
	var v validator
	v.ids(r.ProductCouponID, r.BrandID)
	v.key("out_request_no", r.OutRequestNo, MinOutRequestNoLen, MaxOutRequestNoLen)
	if r.DeactivateReason == "" {
		v.add("deactivate_reason", "required")
	} else {
		v.textLen("deactivate_reason", r.DeactivateReason, 1, MaxDeactivateReasonLen)
	}
	return v.err()
}

// Validate checks the request's identifiers.
func (r *GetProductCouponRequest) Validate() error {
	var v validator
	v.ids(r.ProductCouponID, r.BrandID)
	return v.err()
}
