package wechatpaytest

import (
	"sort"
	"strings"
	"testing"
)

func TestParseAuthorization(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, in string
		want     map[string]string
		wantErr  bool
	}{
		{"go order", `WECHATPAY2-SHA256-RSA2048 mchid="1900000109",nonce_str="abc",timestamp="1",serial_no="AB",signature="c2ln"`,
			map[string]string{"mchid": "1900000109", "nonce_str": "abc", "timestamp": "1", "serial_no": "AB", "signature": "c2ln"}, false},
		{"php order with spaces", `WECHATPAY2-SHA256-RSA2048 signature="c2ln", mchid="1", serial_no="AB"`,
			map[string]string{"signature": "c2ln", "mchid": "1", "serial_no": "AB"}, false},
		{"brand", `WECHATPAY-BRAND-SHA256-RSA2048 brand_id="120344"`, map[string]string{"brand_id": "120344"}, false},
		{"no params", `WECHATPAY2-SHA256-RSA2048`, nil, true},
		{"unquoted", `WECHATPAY2-SHA256-RSA2048 mchid=1`, nil, true},
		{"unterminated", `WECHATPAY2-SHA256-RSA2048 mchid="1`, nil, true},
		{"duplicate", `WECHATPAY2-SHA256-RSA2048 mchid="1",mchid="2"`, nil, true},
		{"trailing comma", `WECHATPAY2-SHA256-RSA2048 mchid="1",`, nil, true},
		{"junk between", `WECHATPAY2-SHA256-RSA2048 mchid="1"x,a="b"`, nil, true},
		{"empty key", `WECHATPAY2-SHA256-RSA2048 ="1"`, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			a, err := ParseAuthorization(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v", err)
			}
			if err == nil && !equalMaps(a.Params, tt.want) {
				t.Errorf("params %v, want %v", a.Params, tt.want)
			}
		})
	}
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func format(a *Authorization) string {
	keys := make([]string, 0, len(a.Params))
	for k := range a.Params {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString(a.Scheme + " ")
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(k + `="` + a.Params[k] + `"`)
	}
	return b.String()
}

func FuzzParseAuthorization(f *testing.F) {
	for _, s := range []string{
		`WECHATPAY2-SHA256-RSA2048 mchid="1900000109",nonce_str="abc",timestamp="1",serial_no="AB",signature="c2ln"`,
		`WECHATPAY-BRAND-SHA256-RSA2048 brand_id="1", signature="x"`,
		`X a=""`, `X a="b",`, `  `, `X a="\"",b="c"`, "X a=\"\xff\"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, h string) {
		a, err := ParseAuthorization(h)
		if err != nil {
			return
		}
		// What parses re-serialises to something that parses the same.
		b, err := ParseAuthorization(format(a))
		if err != nil {
			t.Fatalf("re-parse of %q: %v", format(a), err)
		}
		if b.Scheme != a.Scheme || !equalMaps(a.Params, b.Params) {
			t.Fatalf("round trip changed %q: %+v vs %+v", h, a, b)
		}
	})
}
