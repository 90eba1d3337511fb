package wechatpay_test

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/couponq/couponq/wechatpay"
	"github.com/couponq/couponq/wechatpay/wechatpaytest"
)

func TestZeroPricesStayOnTheWire(t *testing.T) {
	t.Parallel()
	tests := []struct{ name, in, want string }{
		{"explicit zeros kept", `{"original_price":0,"combo_package_list":[{"name":"p","pick_count":1,"choice_list":[{"name":"c","price":0,"count":1}]}]}`,
			`{"original_price":0,"combo_package_list":[{"name":"p","pick_count":1,"choice_list":[{"name":"c","price":0,"count":1}]}]}`},
		{"absent stays absent", `{"name":"名称券","combo_package_list":[{"name":"p","pick_count":1,"choice_list":[{"name":"c","count":1}]}]}`,
			`{"name":"名称券","combo_package_list":[{"name":"p","pick_count":1,"choice_list":[{"name":"c","count":1}]}]}`},
		{"nonzero", `{"original_price":10000}`, `{"original_price":10000}`},
		{"URLs keep their ampersand", `{"image_url":"https://img.example/a.png?x=1&y=2"}`, `{"image_url":"https://img.example/a.png?x=1&y=2"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var d wechatpay.DisplayInfo
			if err := json.Unmarshal([]byte(tt.in), &d); err != nil {
				t.Fatal(err)
			}
			if got := encodePlain(t, &d); got != tt.want {
				t.Errorf("round trip = %s, want %s", got, tt.want)
			}
		})
	}
	// Built in Go: a zero price is sent only when marked given.
	b, _ := json.Marshal(wechatpay.DisplayInfo{Name: "名称券"})
	z, _ := json.Marshal(wechatpay.DisplayInfo{Name: "名称券", OriginalPriceZero: true})
	if string(b) != `{"name":"名称券"}` || string(z) != `{"name":"名称券","original_price":0}` {
		t.Errorf("encoded %s and %s", b, z)
	}
}

// encodePlain encodes v as the client does: no HTML escaping, no newline.
func encodePlain(t *testing.T, v any) string {
	t.Helper()
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		t.Fatal(err)
	}
	return strings.TrimSuffix(b.String(), "\n")
}

func TestMergeDisplayInfo(t *testing.T) {
	t.Parallel()
	raw := `{"product_coupon_id":"1","state":"EFFECTIVE","display_info":{"name":"原始名称券","image_url":"https://img.example/i.png",` +
		`"background_url":"https://img.example/b.png","detail_image_url_list":["https://img.example/d.png"],"original_price":5000,` +
		`"combo_package_list":[{"name":"p","pick_count":1,"choice_list":[{"name":"c","price":100,"count":1}]}],"future_field":{"x":1}}}`
	coupon := &wechatpay.ProductCoupon{Raw: json.RawMessage(raw)}
	tests := []struct {
		name        string
		change      string
		want        string
		wantChanged bool
	}{
		{"name only keeps everything else, unknown fields too", `{"name":"新的名称券"}`,
			`{"background_url":"https://img.example/b.png","combo_package_list":[{"name":"p","pick_count":1,"choice_list":[{"name":"c","price":100,"count":1}]}],"detail_image_url_list":["https://img.example/d.png"],"future_field":{"x":1},"image_url":"https://img.example/i.png","name":"新的名称券","original_price":5000}`,
			true},
		{"the same values change nothing", `{"name":"原始名称券","original_price":5000}`, "", false},
		{"the same list changes nothing", `{"detail_image_url_list":["https://img.example/d.png"]}`, "", false},
		{"a zero price is a change", `{"original_price":0}`, "", true},
		{"a list is replaced whole", `{"detail_image_url_list":["https://img.example/e.png","https://img.example/f.png"]}`, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var change wechatpay.DisplayInfo
			if err := json.Unmarshal([]byte(tt.change), &change); err != nil {
				t.Fatal(err)
			}
			got, changed, err := wechatpay.MergeDisplayInfo(coupon, &change)
			if err != nil {
				t.Fatal(err)
			}
			if changed != tt.wantChanged {
				t.Errorf("changed = %v, want %v", changed, tt.wantChanged)
			}
			if tt.want != "" && string(got) != tt.want {
				t.Errorf("merged =\n%s\nwant\n%s", got, tt.want)
			}
			// Whatever the change, the merge holds it and the coupon's other fields.
			var m, c map[string]json.RawMessage
			_ = json.Unmarshal(got, &m)
			_ = json.Unmarshal([]byte(tt.change), &c)
			for k, v := range c {
				if string(m[k]) != string(v) {
					t.Errorf("%s = %s, want %s", k, m[k], v)
				}
			}
			if _, ok := m["future_field"]; !ok {
				t.Error("the unknown field was lost")
			}
		})
	}
	// Without Raw the model is used; without display_info the change is all.
	got, changed, err := wechatpay.MergeDisplayInfo(&wechatpay.ProductCoupon{}, &wechatpay.DisplayInfo{Name: "新的名称券"})
	if err != nil || !changed || string(got) != `{"name":"新的名称券"}` {
		t.Errorf("merge into nothing = %s, %v, %v", got, changed, err)
	}
	if _, _, err := wechatpay.MergeDisplayInfo(&wechatpay.ProductCoupon{Raw: json.RawMessage(`{"display_info":[1]}`)}, &wechatpay.DisplayInfo{Name: "abc"}); err == nil {
		t.Error("a display_info that is not an object was merged")
	}
}

func TestEncodeUpdateAndBody(t *testing.T) {
	t.Parallel()
	for _, mode := range []wechatpay.Mode{wechatpay.ModePartner, wechatpay.ModeBrand} {
		t.Run(string(mode), func(t *testing.T) {
			t.Parallel()
			s := wechatpaytest.NewServer(t, wechatpaytest.WithMode(mode))
			cp, opt := capturing(nil)
			c := s.Client(opt)
			defer c.Close()
			id := s.SeedCoupons(s.BrandID(), 1)[0]
			req := &wechatpay.UpdateProductCouponRequest{ProductCouponID: id, BrandID: s.BrandID(), OutRequestNo: "enc_upd_01",
				DisplayInfo: &wechatpay.DisplayInfo{Name: "新的名称券"}}
			got, err := c.GetProductCoupon(t.Context(), newGet(s.BrandID(), id))
			if err != nil {
				t.Fatal(err)
			}
			merged, _, err := wechatpay.MergeDisplayInfo(got, req.DisplayInfo)
			if err != nil {
				t.Fatal(err)
			}
			body, err := c.EncodeUpdate(req, merged)
			if err != nil {
				t.Fatal(err)
			}
			var m map[string]json.RawMessage
			if err := json.Unmarshal(body, &m); err != nil {
				t.Fatal(err)
			}
			if _, ok := m["brand_id"]; ok != (mode == wechatpay.ModePartner) {
				t.Errorf("brand_id in %s body: %v", mode, ok)
			}
			if string(m["display_info"]) != string(merged) {
				t.Errorf("display_info = %s, want %s", m["display_info"], merged)
			}
			req.Body = body
			req.DisplayInfo = &wechatpay.DisplayInfo{Name: "别的名称券"} // not sent when Body is
			if _, err := c.UpdateProductCoupon(t.Context(), req); err != nil {
				t.Fatal(err)
			}
			ex := cp.exchanges()
			if sent := ex[len(ex)-1].reqBody; string(sent) != string(body) {
				t.Errorf("sent %s, want the given body %s", sent, body)
			}
			after, _ := s.Coupon(id)
			want := *got.DisplayInfo
			want.Name = "新的名称券"
			if diff := cmp.Diff(&want, after.DisplayInfo); diff != "" {
				t.Errorf("display_info (-want +got):\n%s", diff)
			}
			if _, err := c.EncodeUpdate(req, json.RawMessage(`[1]`)); err == nil {
				t.Error("a display_info that is not an object was encoded")
			}
		})
	}
}

func TestDisplayInfoDecoding(t *testing.T) {
	t.Parallel()
	// WeChat Pay's answer may carry fields this model does not know.
	var pc wechatpay.ProductCoupon
	answer := `{"product_coupon_id":"1","new_top":1,"display_info":{"name":"名称券","new_field":2,` +
		`"combo_package_list":[{"name":"p","pick_count":1,"new_pkg":3,"choice_list":[{"name":"c","price":0,"count":1,"new_choice":4}]}]}}`
	if err := json.Unmarshal([]byte(answer), &pc); err != nil {
		t.Fatalf("answer with unknown fields: %v", err)
	}
	if pc.ProductCouponID != "1" || pc.DisplayInfo.Name != "名称券" || !pc.DisplayInfo.ComboPackageList[0].ChoiceList[0].PriceZero {
		t.Errorf("decoded %+v", pc.DisplayInfo)
	}
	// Input is strict: a misspelt field is an error, not a dropped change.
	var d wechatpay.DisplayInfo
	for _, in := range []string{`{"nmae":"名称券"}`, `{"combo_package_list":[{"name":"p","choice_list":[{"prce":1}]}]}`} {
		if err := json.Unmarshal([]byte(in), &d); err == nil || !strings.Contains(err.Error(), "unknown field") {
			t.Errorf("%s: err = %v, want unknown field", in, err)
		}
	}
}
