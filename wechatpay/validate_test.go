package wechatpay_test

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/couponq/couponq/wechatpay"
)

// fields lists the Field of every *ValidationError joined in err.
func fields(err error) []string {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []string
		for _, e := range j.Unwrap() {
			out = append(out, fields(e)...)
		}
		return out
	}
	var ve *wechatpay.ValidationError
	if errors.As(err, &ve) {
		return []string{ve.Field}
	}
	return []string{"<not a ValidationError: " + err.Error() + ">"}
}

func validUpdate() *wechatpay.UpdateProductCouponRequest {
	return &wechatpay.UpdateProductCouponRequest{
		ProductCouponID: "1000000013", BrandID: "120344", OutRequestNo: "34657_20250101_123456",
		DisplayInfo: &wechatpay.DisplayInfo{
			Name: "全场满100立打8折", ImageURL: "https://wxpaylogo.qpic.cn/a.png", BackgroundURL: "https://wxpaylogo.qpic.cn/b.png",
			DetailImageURLList: []string{"https://wxpaylogo.qpic.cn/c.png"}, OriginalPrice: 10000,
			ComboPackageList: []wechatpay.ComboPackage{{Name: "主食", PickCount: 1, ChoiceList: []wechatpay.ComboChoice{
				{Name: "汉堡", Price: 1500, Count: 1, ImageURL: "https://wxpaylogo.qpic.cn/d.png", MiniProgramAppID: "wx1234", MiniProgramPath: "/pages/a"},
			}}},
		},
	}
}

func urls(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = "https://wxpaylogo.qpic.cn/x.png"
	}
	return out
}

func choices(n int) []wechatpay.ComboChoice {
	out := make([]wechatpay.ComboChoice, n)
	for i := range out {
		out[i] = wechatpay.ComboChoice{Name: "item", Count: 1}
	}
	return out
}

func TestValidateUpdate(t *testing.T) {
	t.Parallel()
	const combo0 = "display_info.combo_package_list[0]"
	const choice0 = combo0 + ".choice_list[0]"
	tests := []struct {
		name   string
		mutate func(r *wechatpay.UpdateProductCouponRequest)
		want   []string
	}{
		{"valid", func(*wechatpay.UpdateProductCouponRequest) {}, nil},
		{"coupon id missing", func(r *wechatpay.UpdateProductCouponRequest) { r.ProductCouponID = "" }, []string{"product_coupon_id"}},
		{"coupon id 64", func(r *wechatpay.UpdateProductCouponRequest) { r.ProductCouponID = strings.Repeat("1", 64) }, nil},
		{"coupon id 65", func(r *wechatpay.UpdateProductCouponRequest) { r.ProductCouponID = strings.Repeat("1", 65) }, []string{"product_coupon_id"}},
		{"coupon id with slash", func(r *wechatpay.UpdateProductCouponRequest) { r.ProductCouponID = "10/../x" }, []string{"product_coupon_id"}},
		{"brand missing", func(r *wechatpay.UpdateProductCouponRequest) { r.BrandID = "" }, []string{"brand_id"}},
		{"brand 65", func(r *wechatpay.UpdateProductCouponRequest) { r.BrandID = strings.Repeat("1", 65) }, []string{"brand_id"}},
		{"brand with query", func(r *wechatpay.UpdateProductCouponRequest) { r.BrandID = "1&x=2" }, []string{"brand_id"}},
		{"out_request_no missing", func(r *wechatpay.UpdateProductCouponRequest) { r.OutRequestNo = "" }, []string{"out_request_no"}},
		{"out_request_no 5", func(r *wechatpay.UpdateProductCouponRequest) { r.OutRequestNo = "abcde" }, []string{"out_request_no"}},
		{"out_request_no 6", func(r *wechatpay.UpdateProductCouponRequest) { r.OutRequestNo = "ab-_12" }, nil},
		{"out_request_no 40", func(r *wechatpay.UpdateProductCouponRequest) { r.OutRequestNo = strings.Repeat("a", 40) }, nil},
		{"out_request_no 41", func(r *wechatpay.UpdateProductCouponRequest) { r.OutRequestNo = strings.Repeat("a", 41) }, []string{"out_request_no"}},
		{"out_request_no dot", func(r *wechatpay.UpdateProductCouponRequest) { r.OutRequestNo = "abc.def" }, []string{"out_request_no"}},
		{"out_request_no CJK", func(r *wechatpay.UpdateProductCouponRequest) { r.OutRequestNo = "请求号请求号" }, []string{"out_request_no"}},
		{"display_info missing", func(r *wechatpay.UpdateProductCouponRequest) { r.DisplayInfo = nil }, []string{"display_info"}},
		{"display_info empty", func(r *wechatpay.UpdateProductCouponRequest) { r.DisplayInfo = &wechatpay.DisplayInfo{} }, []string{"display_info"}},
		{"name 2", func(r *wechatpay.UpdateProductCouponRequest) { r.DisplayInfo.Name = "满减" }, []string{"display_info.name"}},
		{"name 3", func(r *wechatpay.UpdateProductCouponRequest) { r.DisplayInfo.Name = "满减券" }, nil},
		{"name 15", func(r *wechatpay.UpdateProductCouponRequest) { r.DisplayInfo.Name = strings.Repeat("券", 15) }, nil},
		{"name 16", func(r *wechatpay.UpdateProductCouponRequest) { r.DisplayInfo.Name = strings.Repeat("券", 16) }, []string{"display_info.name"}},
		{"name invalid UTF-8", func(r *wechatpay.UpdateProductCouponRequest) { r.DisplayInfo.Name = "ab\xffcd" }, []string{"display_info.name"}},
		{"image_url relative", func(r *wechatpay.UpdateProductCouponRequest) { r.DisplayInfo.ImageURL = "/a.png" }, []string{"display_info.image_url"}},
		{"image_url ftp", func(r *wechatpay.UpdateProductCouponRequest) { r.DisplayInfo.ImageURL = "ftp://x/a.png" }, []string{"display_info.image_url"}},
		{"image_url too long", func(r *wechatpay.UpdateProductCouponRequest) {
			r.DisplayInfo.ImageURL = "https://x/" + strings.Repeat("a", wechatpay.MaxURLLen)
		}, []string{"display_info.image_url"}},
		{"background_url bad", func(r *wechatpay.UpdateProductCouponRequest) { r.DisplayInfo.BackgroundURL = "x" }, []string{"display_info.background_url"}},
		{"8 detail images", func(r *wechatpay.UpdateProductCouponRequest) { r.DisplayInfo.DetailImageURLList = urls(8) }, nil},
		{"9 detail images", func(r *wechatpay.UpdateProductCouponRequest) { r.DisplayInfo.DetailImageURLList = urls(9) }, []string{"display_info.detail_image_url_list"}},
		{"empty detail image", func(r *wechatpay.UpdateProductCouponRequest) { r.DisplayInfo.DetailImageURLList = []string{""} }, []string{"display_info.detail_image_url_list[0]"}},
		{"negative price", func(r *wechatpay.UpdateProductCouponRequest) { r.DisplayInfo.OriginalPrice = -1 }, []string{"display_info.original_price"}},
		{"50 packages", func(r *wechatpay.UpdateProductCouponRequest) {
			p := r.DisplayInfo.ComboPackageList[0]
			r.DisplayInfo.ComboPackageList = slices.Repeat([]wechatpay.ComboPackage{p}, 50)
		}, nil},
		{"51 packages", func(r *wechatpay.UpdateProductCouponRequest) {
			p := r.DisplayInfo.ComboPackageList[0]
			r.DisplayInfo.ComboPackageList = slices.Repeat([]wechatpay.ComboPackage{p}, 51)
		}, []string{"display_info.combo_package_list"}},
		{"package name missing", func(r *wechatpay.UpdateProductCouponRequest) { r.DisplayInfo.ComboPackageList[0].Name = "" }, []string{combo0 + ".name"}},
		{"package name 16", func(r *wechatpay.UpdateProductCouponRequest) {
			r.DisplayInfo.ComboPackageList[0].Name = strings.Repeat("套", 16)
		}, []string{combo0 + ".name"}},
		{"choice list empty", func(r *wechatpay.UpdateProductCouponRequest) { r.DisplayInfo.ComboPackageList[0].ChoiceList = nil }, []string{combo0 + ".choice_list"}},
		{"99 choices", func(r *wechatpay.UpdateProductCouponRequest) {
			r.DisplayInfo.ComboPackageList[0].ChoiceList = choices(99)
		}, nil},
		{"100 choices", func(r *wechatpay.UpdateProductCouponRequest) {
			r.DisplayInfo.ComboPackageList[0].ChoiceList = choices(100)
		}, []string{combo0 + ".choice_list"}},
		{"pick_count 0", func(r *wechatpay.UpdateProductCouponRequest) { r.DisplayInfo.ComboPackageList[0].PickCount = 0 }, []string{combo0 + ".pick_count"}},
		// Undocumented, so not a rule: pick 3 of one choice (the seed's own sample).
		{"pick_count above choices", func(r *wechatpay.UpdateProductCouponRequest) { r.DisplayInfo.ComboPackageList[0].PickCount = 3 }, nil},
		{"only a zero original_price", func(r *wechatpay.UpdateProductCouponRequest) {
			r.DisplayInfo = &wechatpay.DisplayInfo{OriginalPriceZero: true}
		}, nil},
		{"choice name missing", func(r *wechatpay.UpdateProductCouponRequest) {
			r.DisplayInfo.ComboPackageList[0].ChoiceList[0].Name = ""
		}, []string{choice0 + ".name"}},
		{"choice name 15", func(r *wechatpay.UpdateProductCouponRequest) {
			r.DisplayInfo.ComboPackageList[0].ChoiceList[0].Name = strings.Repeat("汉", 15)
		}, nil},
		{"choice name 16", func(r *wechatpay.UpdateProductCouponRequest) {
			r.DisplayInfo.ComboPackageList[0].ChoiceList[0].Name = strings.Repeat("汉", 16)
		}, []string{choice0 + ".name"}},
		{"choice price negative", func(r *wechatpay.UpdateProductCouponRequest) {
			r.DisplayInfo.ComboPackageList[0].ChoiceList[0].Price = -5
		}, []string{choice0 + ".price"}},
		{"choice count 0", func(r *wechatpay.UpdateProductCouponRequest) {
			r.DisplayInfo.ComboPackageList[0].ChoiceList[0].Count = 0
		}, []string{choice0 + ".count"}},
		{"choice count 99", func(r *wechatpay.UpdateProductCouponRequest) {
			r.DisplayInfo.ComboPackageList[0].ChoiceList[0].Count = 99
		}, nil},
		{"choice count 100", func(r *wechatpay.UpdateProductCouponRequest) {
			r.DisplayInfo.ComboPackageList[0].ChoiceList[0].Count = 100
		}, []string{choice0 + ".count"}},
		{"choice image bad", func(r *wechatpay.UpdateProductCouponRequest) {
			r.DisplayInfo.ComboPackageList[0].ChoiceList[0].ImageURL = "img"
		}, []string{choice0 + ".image_url"}},
		{"mini program path without appid", func(r *wechatpay.UpdateProductCouponRequest) {
			r.DisplayInfo.ComboPackageList[0].ChoiceList[0].MiniProgramAppID = ""
		}, []string{choice0 + ".mini_program_path"}},
		{"every problem reported", func(r *wechatpay.UpdateProductCouponRequest) {
			r.BrandID, r.OutRequestNo, r.DisplayInfo.Name = "", "x", "x"
		},
			[]string{"brand_id", "out_request_no", "display_info.name"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := validUpdate()
			tt.mutate(r)
			err := r.Validate()
			if got := fields(err); !slices.Equal(got, tt.want) {
				t.Fatalf("fields %v, want %v (%v)", got, tt.want, err)
			}
			if err != nil && wechatpay.IsRetryable(err) {
				t.Error("a validation error is retryable")
			}
		})
	}
}

func TestValidateDeactivateAndGet(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		err  error
		want []string
	}{
		{"deactivate valid", (&wechatpay.DeactivateProductCouponRequest{ProductCouponID: "1", BrandID: "2", OutRequestNo: "abcdef", DeactivateReason: "批次信息有误,重新创建"}).Validate(), nil},
		{"reason missing", (&wechatpay.DeactivateProductCouponRequest{ProductCouponID: "1", BrandID: "2", OutRequestNo: "abcdef"}).Validate(), []string{"deactivate_reason"}},
		{"reason 150", (&wechatpay.DeactivateProductCouponRequest{ProductCouponID: "1", BrandID: "2", OutRequestNo: "abcdef", DeactivateReason: strings.Repeat("因", 150)}).Validate(), nil},
		{"reason 151", (&wechatpay.DeactivateProductCouponRequest{ProductCouponID: "1", BrandID: "2", OutRequestNo: "abcdef", DeactivateReason: strings.Repeat("因", 151)}).Validate(), []string{"deactivate_reason"}},
		{"deactivate ids and key", (&wechatpay.DeactivateProductCouponRequest{DeactivateReason: "r"}).Validate(), []string{"product_coupon_id", "brand_id", "out_request_no"}},
		{"get valid", (&wechatpay.GetProductCouponRequest{ProductCouponID: "1", BrandID: "2"}).Validate(), nil},
		{"get ids", (&wechatpay.GetProductCouponRequest{}).Validate(), []string{"product_coupon_id", "brand_id"}},
		{"ValidateOutRequestNo", wechatpay.ValidateOutRequestNo("a b c d"), []string{"out_request_no"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := fields(tt.err); !slices.Equal(got, tt.want) {
				t.Fatalf("fields %v, want %v (%v)", got, tt.want, tt.err)
			}
		})
	}
}

// TestValidateTextAndMoney: text WeChat Pay shows or stores is refused with
// invalid UTF-8, a replacement character or a control character, and money
// beyond what JSON carries exactly is refused.
func TestValidateTextAndMoney(t *testing.T) {
	t.Parallel()
	const choice0 = "display_info.combo_package_list[0].choice_list[0]"
	update := func(mutate func(d *wechatpay.DisplayInfo)) error {
		r := validUpdate()
		mutate(r.DisplayInfo)
		return r.Validate()
	}
	deactivate := func(reason string) error {
		return (&wechatpay.DeactivateProductCouponRequest{ProductCouponID: "1", BrandID: "2", OutRequestNo: "abcdef", DeactivateReason: reason}).Validate()
	}
	tests := []struct {
		name   string
		err    error
		want   []string
		reason string
	}{
		{"name with NUL", update(func(d *wechatpay.DisplayInfo) { d.Name = "满减\x00券" }), []string{"display_info.name"}, "U+0000"},
		{"name with ESC", update(func(d *wechatpay.DisplayInfo) { d.Name = "\x1b[31m满减券" }), []string{"display_info.name"}, "U+001B"},
		{"name with newline", update(func(d *wechatpay.DisplayInfo) { d.Name = "满减\n券" }), []string{"display_info.name"}, "control"},
		{"name with DEL", update(func(d *wechatpay.DisplayInfo) { d.Name = "满减\x7f券" }), []string{"display_info.name"}, "U+007F"},
		{"name with C1 control", update(func(d *wechatpay.DisplayInfo) { d.Name = "满减\u0085券" }), []string{"display_info.name"}, "U+0085"},
		{"name with U+FFFD", update(func(d *wechatpay.DisplayInfo) { d.Name = "满减\ufffd券" }), []string{"display_info.name"}, "U+FFFD"},
		{"name with emoji", update(func(d *wechatpay.DisplayInfo) { d.Name = "满减券🎉" }), nil, ""},
		{"package name with ESC", update(func(d *wechatpay.DisplayInfo) { d.ComboPackageList[0].Name = "主\x1b食" }), []string{"display_info.combo_package_list[0].name"}, "control"},
		{"choice name with NUL", update(func(d *wechatpay.DisplayInfo) { d.ComboPackageList[0].ChoiceList[0].Name = "汉\x00堡" }), []string{choice0 + ".name"}, "control"},
		{"choice name invalid UTF-8", update(func(d *wechatpay.DisplayInfo) { d.ComboPackageList[0].ChoiceList[0].Name = "汉\xc3堡" }), []string{choice0 + ".name"}, "UTF-8"},
		{"mini program path with NUL", update(func(d *wechatpay.DisplayInfo) { d.ComboPackageList[0].ChoiceList[0].MiniProgramPath = "/pages/a\x00" }), []string{choice0 + ".mini_program_path"}, "control"},
		{"mini program appid with ESC", update(func(d *wechatpay.DisplayInfo) { d.ComboPackageList[0].ChoiceList[0].MiniProgramAppID = "wx\x1b1" }), []string{choice0 + ".mini_program_appid"}, "control"},
		{"image url with NUL", update(func(d *wechatpay.DisplayInfo) { d.ImageURL = "https://wxpaylogo.qpic.cn/a\x00.png" }), []string{"display_info.image_url"}, ""},
		{"reason with NUL", deactivate("批次信息有误\x00"), []string{"deactivate_reason"}, "U+0000"},
		{"reason with ESC", deactivate("\x1b]0;pwned\x07批次信息有误"), []string{"deactivate_reason"}, "U+001B"},
		{"reason with tab", deactivate("批次\t信息有误"), []string{"deactivate_reason"}, "control"},
		{"reason invalid UTF-8", deactivate("批次\xff信息有误"), []string{"deactivate_reason"}, "UTF-8"},
		{"original_price at the ceiling", update(func(d *wechatpay.DisplayInfo) { d.OriginalPrice = wechatpay.MaxMoney }), nil, ""},
		{"original_price over the ceiling", update(func(d *wechatpay.DisplayInfo) { d.OriginalPrice = wechatpay.MaxMoney + 1 }), []string{"display_info.original_price"}, "at most"},
		{"original_price max int64", update(func(d *wechatpay.DisplayInfo) { d.OriginalPrice = 9223372036854775807 }), []string{"display_info.original_price"}, "at most"},
		{"choice price max int64", update(func(d *wechatpay.DisplayInfo) { d.ComboPackageList[0].ChoiceList[0].Price = 9223372036854775807 }), []string{choice0 + ".price"}, "at most"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := fields(tt.err); !slices.Equal(got, tt.want) {
				t.Fatalf("fields %v, want %v (%v)", got, tt.want, tt.err)
			}
			if tt.reason != "" && !strings.Contains(tt.err.Error(), tt.reason) {
				t.Errorf("error %q does not say %q", tt.err, tt.reason)
			}
		})
	}
}
