package tasks

import (
	"testing"

	"github.com/couponq/couponq/wechatpay"
)

// TestPayloadGolden pins the exact payload bytes, and so the SHA-256 kept in
// each result hash, of representative changes. A change to the encoding
// (a new field without omitempty, a renamed tag, another field order, HTML
// escaping) would turn every re-enqueue of an earlier change into a
// conflict: this test fails first.
func TestPayloadGolden(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		change Change
		want   string
		sha    string
	}{
		{
			name: "update, name and price",
			change: Change{Op: OpUpdate, ProductCouponID: "1000000013", BrandID: "120344", OutRequestNo: "34657_20250101_123456",
				DisplayInfo: &wechatpay.DisplayInfo{Name: "全场满100立打8折", OriginalPrice: 10000}},
			want: `{"product_coupon_id":"1000000013","brand_id":"120344","out_request_no":"34657_20250101_123456","display_info":{"name":"全场满100立打8折","original_price":10000}}`,
			sha:  "d1b434c844700fac55e632a7cb20465c9c9d02c460dbf5400ece02e53580e553",
		},
		{
			name: "update, every display_info field",
			change: Change{Op: OpUpdate, ProductCouponID: "1000000013", BrandID: "120344", OutRequestNo: "34657_20250101_123458",
				DisplayInfo: &wechatpay.DisplayInfo{Name: "<套餐>&", ImageURL: "https://img.example/a.png?x=1&y=2", BackgroundURL: "https://img.example/b.png",
					DetailImageURLList: []string{"https://img.example/c.png"}, OriginalPrice: 1,
					ComboPackageList: []wechatpay.ComboPackage{{Name: "主食", PickCount: 1, ChoiceList: []wechatpay.ComboChoice{
						{Name: "米饭", Price: 200, Count: 1, ImageURL: "https://img.example/r.png", MiniProgramAppID: "wx1234567890abcdef", MiniProgramPath: "pages/index"},
					}}}}},
			want: `{"product_coupon_id":"1000000013","brand_id":"120344","out_request_no":"34657_20250101_123458","display_info":{"name":"<套餐>&","image_url":"https://img.example/a.png?x=1&y=2","background_url":"https://img.example/b.png","detail_image_url_list":["https://img.example/c.png"],"original_price":1,"combo_package_list":[{"name":"主食","pick_count":1,"choice_list":[{"name":"米饭","price":200,"count":1,"image_url":"https://img.example/r.png","mini_program_appid":"wx1234567890abcdef","mini_program_path":"pages/index"}]}]}}`,
			sha:  "cbb51f7539c28f8ecb2d9dd17a39c8a45ef0fae4de620f5113d4ee4aed4f83c9",
		},
		{
			name:   "deactivate",
			change: Change{Op: OpDeactivate, ProductCouponID: "1000000013", BrandID: "120344", OutRequestNo: "34657_20250101_123457", DeactivateReason: "批次信息有误,重新创建"},
			want:   `{"product_coupon_id":"1000000013","brand_id":"120344","out_request_no":"34657_20250101_123457","deactivate_reason":"批次信息有误,重新创建"}`,
			sha:    "ab25ff7ccbfe25fddff65c7b926a70220b60e8418fc65df7f94c9cee8483f659",
		},
		{
			name:   "get",
			change: Change{Op: OpGet, ProductCouponID: "1000000013", BrandID: "120344", OutRequestNo: "get01JDZ0000000000000000000"},
			want:   `{"product_coupon_id":"1000000013","brand_id":"120344","out_request_no":"get01JDZ0000000000000000000"}`,
			sha:    "a4b53c50cd1a1d4a6ec6db140310c12588694f7f1e9f8364a439d30eb5913395",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b, err := tt.change.Payload()
			if err != nil {
				t.Fatal(err)
			}
			if string(b) != tt.want {
				t.Errorf("payload =\n%s\nwant\n%s", b, tt.want)
			}
			if got := PayloadSHA256(b); got != tt.sha {
				t.Errorf("SHA-256 = %s, want %s", got, tt.sha)
			}
			task, err := tt.change.Task()
			if err != nil {
				t.Fatal(err)
			}
			if string(task.Payload()) != tt.want {
				t.Errorf("task payload = %s, want %s", task.Payload(), tt.want)
			}
		})
	}
}
