package wechatpaytest_test

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/couponq/couponq/wechatpay"
	"github.com/couponq/couponq/wechatpay/wechatpaytest"
)

// rawAnswer is what a hand-made request got back.
type rawAnswer struct {
	status int
	code   string
	header http.Header
	body   []byte
}

// sendRaw signs and sends one request as a correct client would, after
// edit changed its headers (the signature covers method, URI and body
// only, so a header can be dropped without breaking it).
func sendRaw(t *testing.T, s *wechatpaytest.Server, method, uri string, body []byte, edit func(http.Header)) rawAnswer {
	t.Helper()
	serial, key := s.MerchantKey()
	ts := strconv.FormatInt(time.Now().Unix(), 10)
	nonce := "0123456789abcdefABCDEF0123456789"
	sum := sha256.Sum256([]byte(method + "\n" + uri + "\n" + ts + "\n" + nonce + "\n" + string(body) + "\n"))
	sig, err := rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, sum[:])
	if err != nil {
		t.Fatal(err)
	}
	scheme, idName, id := wechatpaytest.SchemePartner, "mchid", s.MchID()
	if s.Mode() == wechatpay.ModeBrand {
		scheme, idName, id = wechatpaytest.SchemeBrand, "brand_id", s.BrandID()
	}
	req, err := http.NewRequestWithContext(t.Context(), method, s.URL+uri, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if body == nil {
		req.Body = http.NoBody
	}
	req.Header.Set("Authorization", fmt.Sprintf(`%s %s="%s",nonce_str="%s",timestamp="%s",serial_no="%s",signature="%s"`,
		scheme, idName, id, nonce, ts, serial, base64.StdEncoding.EncodeToString(sig)))
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "strict-test/1")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if pubID, _ := s.PublicKey(); s.KeyMode() != wechatpaytest.CertificateMode {
		req.Header.Set("Wechatpay-Serial", pubID)
	} else {
		req.Header.Set("Wechatpay-Serial", s.CertificateSerials()[0])
	}
	if edit != nil {
		edit(req.Header)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var eb struct{ Code string }
	_ = json.Unmarshal(b, &eb)
	return rawAnswer{status: resp.StatusCode, code: eb.Code, header: resp.Header, body: b}
}

const (
	partnerCoupons = wechatpay.PartnerProductCouponsPath + "/"
	brandCoupons   = wechatpay.BrandProductCouponsPath + "/"
)

// whole is a display_info with everything the documents require.
const whole = `{"name":"新的名称券","image_url":"https://img.example/i.png","background_url":"https://img.example/b.png"}`

// Each case is something a lenient fake lets through: a client mistake
// that only WeChat Pay would then catch.
func TestStrictRequests(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		mode   wechatpay.Mode
		method string
		uri    func(id, brand string) string
		body   string
		edit   func(http.Header)
		status int
		code   string
	}{
		{name: "a whole display_info is accepted", method: "PATCH", uri: couponURI, body: `{"brand_id":"%[2]s","out_request_no":"strict_01","display_info":` + whole + `}`, status: 200},
		{name: "display_info without images", method: "PATCH", uri: couponURI,
			body: `{"brand_id":"%[2]s","out_request_no":"strict_02","display_info":{"name":"新的名称券"}}`, status: 400, code: wechatpay.CodeParamError},
		{name: "display_info without background_url", method: "PATCH", uri: couponURI,
			body: `{"brand_id":"%[2]s","out_request_no":"strict_03","display_info":{"name":"新的名称券","image_url":"https://img.example/i.png"}}`, status: 400, code: wechatpay.CodeParamError},
		{name: "no Accept", method: "GET", uri: func(id, b string) string { return couponURI(id, b) + "?brand_id=" + b },
			edit: func(h http.Header) { h.Del("Accept") }, status: 400, code: wechatpay.CodeInvalidRequest},
		{name: "PATCH without Content-Type", method: "PATCH", uri: couponURI, body: `{"brand_id":"%[2]s","out_request_no":"strict_04","display_info":` + whole + `}`,
			edit: func(h http.Header) { h.Del("Content-Type") }, status: 400, code: wechatpay.CodeInvalidRequest},
		{name: "POST without Content-Type", method: "POST", uri: func(id, b string) string { return couponURI(id, b) + "/deactivate" },
			body: `{"brand_id":"%[2]s","out_request_no":"strict_05","deactivate_reason":"批次信息有误"}`,
			edit: func(h http.Header) { h.Del("Content-Type") }, status: 400, code: wechatpay.CodeInvalidRequest},
		{name: "JSON followed by junk", method: "PATCH", uri: couponURI, body: `{"brand_id":"%[2]s","out_request_no":"strict_06","display_info":` + whole + `}{"x":1}`,
			status: 400, code: wechatpay.CodeParamError},
		{name: "bogus Wechatpay-Serial in partner mode", method: "GET", uri: func(id, b string) string { return couponURI(id, b) + "?brand_id=" + b },
			edit: func(h http.Header) { h.Set("Wechatpay-Serial", "PUB_KEY_ID_0000000000000000000000000000") }, status: 400, code: wechatpay.CodeParamError},
		{name: "brand mode: a whole display_info is accepted", mode: wechatpay.ModeBrand, method: "PATCH", uri: brandURI,
			body: `{"out_request_no":"strict_07","display_info":` + whole + `}`, status: 200},
		{name: "brand mode: brand_id in the body", mode: wechatpay.ModeBrand, method: "PATCH", uri: brandURI,
			body: `{"brand_id":"%[2]s","out_request_no":"strict_08","display_info":` + whole + `}`, status: 400, code: wechatpay.CodeParamError},
		{name: "brand mode: brand_id in a deactivate body", mode: wechatpay.ModeBrand, method: "POST", uri: func(id, b string) string { return brandURI(id, b) + "/deactivate" },
			body: `{"brand_id":"%[2]s","out_request_no":"strict_09","deactivate_reason":"批次信息有误"}`, status: 400, code: wechatpay.CodeParamError},
		{name: "brand mode: ?brand_id= of another brand", mode: wechatpay.ModeBrand, method: "GET", uri: func(id, b string) string { return brandURI(id, b) + "?brand_id=999999" },
			status: 400, code: wechatpay.CodeParamError},
		{name: "brand mode: ?brand_id= of the header's brand", mode: wechatpay.ModeBrand, method: "GET", uri: func(id, b string) string { return brandURI(id, b) + "?brand_id=" + b },
			status: 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			mode := tt.mode
			if mode == "" {
				mode = wechatpay.ModePartner
			}
			s := wechatpaytest.NewServer(t, wechatpaytest.WithMode(mode))
			id := s.SeedCoupons(s.BrandID(), 1)[0]
			var body []byte
			if tt.body != "" {
				body = []byte(strings.ReplaceAll(tt.body, "%[2]s", s.BrandID()))
			}
			got := sendRaw(t, s, tt.method, tt.uri(id, s.BrandID()), body, tt.edit)
			if got.status != tt.status || got.code != tt.code {
				t.Errorf("got %d %s (%s), want %d %s", got.status, got.code, got.body, tt.status, tt.code)
			}
			if tt.status != 200 && len(s.Effects()) != 0 {
				t.Errorf("a refused request was applied: %v", s.Effects())
			}
		})
	}
}

func couponURI(id, _ string) string { return partnerCoupons + id }
func brandURI(id, _ string) string  { return brandCoupons + id }

// The fake keeps to the documents with rules of its own: what the
// client's Validate accepts may still be refused (a name-only
// display_info), and what no document forbids is accepted (pick_count
// above the number of choices).
func TestOwnRules(t *testing.T) {
	t.Parallel()
	s := wechatpaytest.NewServer(t)
	id := s.SeedCoupons(s.BrandID(), 1)[0]
	nameOnly := &wechatpay.UpdateProductCouponRequest{ProductCouponID: id, BrandID: s.BrandID(), OutRequestNo: "own_rule_01",
		DisplayInfo: &wechatpay.DisplayInfo{Name: "新的名称券"}}
	if err := nameOnly.Validate(); err != nil {
		t.Fatalf("the client's rules refuse a name-only change: %v", err)
	}
	c := s.Client()
	defer c.Close()
	if _, err := c.UpdateProductCoupon(t.Context(), nameOnly); !isAPIError(err, 400, wechatpay.CodeParamError) {
		t.Errorf("name-only display_info: %v, want 400 PARAM_ERROR", err)
	}
	body := `{"brand_id":"` + s.BrandID() + `","out_request_no":"own_rule_02","display_info":{"name":"新的名称券","image_url":"https://img.example/i.png",` +
		`"background_url":"https://img.example/b.png","combo_package_list":[{"name":"主食","pick_count":3,"choice_list":[{"name":"米饭","price":200,"count":1}]}]}}`
	if got := sendRaw(t, s, "PATCH", partnerCoupons+id, []byte(body), nil); got.status != 200 {
		t.Errorf("pick 3 of one choice: %d %s", got.status, got.body)
	}
	for _, tt := range []struct{ name, di string }{
		{"name of 2 characters", `{"name":"两字","image_url":"https://i/x.png","background_url":"https://i/b.png"}`},
		{"9 detail images", `{"name":"新的名称券","image_url":"https://i/x.png","background_url":"https://i/b.png","detail_image_url_list":["1","2","3","4","5","6","7","8","9"]}`},
		{"mini_program_path without appid", `{"name":"新的名称券","image_url":"https://i/x.png","background_url":"https://i/b.png",` +
			`"combo_package_list":[{"name":"p","pick_count":1,"choice_list":[{"name":"c","count":1,"mini_program_path":"pages/x"}]}]}`},
	} {
		body := `{"brand_id":"` + s.BrandID() + `","out_request_no":"own_rule_03","display_info":` + tt.di + `}`
		if got := sendRaw(t, s, "PATCH", partnerCoupons+id, []byte(body), nil); got.status != 400 || got.code != wechatpay.CodeParamError {
			t.Errorf("%s: %d %s, want 400 PARAM_ERROR", tt.name, got.status, got.body)
		}
	}
}

func isAPIError(err error, status int, code string) bool {
	ae, ok := err.(*wechatpay.APIError)
	return ok && ae.HTTPStatus == status && ae.Code == code
}

// PATCH replaces display_info whole — the reading of the documents that
// loses data — so a test sees a client that sends less than all of it.
func TestPatchReplacesDisplayInfo(t *testing.T) {
	t.Parallel()
	s := wechatpaytest.NewServer(t)
	id := s.SeedCoupons(s.BrandID(), 1)[0]
	before, _ := s.Coupon(id)
	if len(before.DisplayInfo.DetailImageURLList) == 0 || before.DisplayInfo.OriginalPrice == 0 || len(before.DisplayInfo.ComboPackageList) == 0 {
		t.Fatalf("seed coupon lacks what an update could lose: %+v", before.DisplayInfo)
	}
	body := `{"brand_id":"` + s.BrandID() + `","out_request_no":"replace_01","display_info":` + whole + `}`
	if got := sendRaw(t, s, "PATCH", partnerCoupons+id, []byte(body), nil); got.status != 200 {
		t.Fatalf("%d %s", got.status, got.body)
	}
	after, _ := s.Coupon(id)
	want := &wechatpay.DisplayInfo{Name: "新的名称券", ImageURL: "https://img.example/i.png", BackgroundURL: "https://img.example/b.png"}
	if diff := cmp.Diff(want, after.DisplayInfo); diff != "" {
		t.Errorf("display_info after PATCH (-want +got):\n%s", diff)
	}
	if rs := s.Requests(); string(rs[len(rs)-1].Body) != body {
		t.Errorf("logged body %q, want %q", rs[len(rs)-1].Body, body)
	}
}

func TestZeroPricesArrive(t *testing.T) {
	t.Parallel()
	s := wechatpaytest.NewServer(t)
	id := s.SeedCoupons(s.BrandID(), 1)[0]
	body := `{"brand_id":"` + s.BrandID() + `","out_request_no":"zero_01","display_info":{"name":"新的名称券","image_url":"https://i/x.png",` +
		`"background_url":"https://i/b.png","original_price":0,"combo_package_list":[{"name":"p","pick_count":1,"choice_list":[{"name":"c","price":0,"count":1}]}]}}`
	got := sendRaw(t, s, "PATCH", partnerCoupons+id, []byte(body), nil)
	if got.status != 200 {
		t.Fatalf("%d %s", got.status, got.body)
	}
	if !strings.Contains(string(got.body), `"original_price":0`) || !strings.Contains(string(got.body), `"price":0`) {
		t.Errorf("answer lost a zero price: %s", got.body)
	}
	c, _ := s.Coupon(id)
	if c.DisplayInfo.OriginalPrice != 0 || !c.DisplayInfo.OriginalPriceZero || !c.DisplayInfo.ComboPackageList[0].ChoiceList[0].PriceZero {
		t.Errorf("coupon = %+v", c.DisplayInfo)
	}
}

// In a migration both kinds of key sign; the answer is signed by the one
// the request names, as the official SDK's public-key client needs.
func TestMigrationSignsWithTheNamedKey(t *testing.T) {
	t.Parallel()
	s := wechatpaytest.NewServer(t, wechatpaytest.WithKeyMode(wechatpaytest.BothKeyModes))
	id := s.SeedCoupons(s.BrandID(), 1)[0]
	pubID, _ := s.PublicKey()
	for _, named := range []string{pubID, s.CertificateSerials()[0]} {
		for i := range 4 {
			got := sendRaw(t, s, "GET", partnerCoupons+id+"?brand_id="+s.BrandID(), nil, func(h http.Header) { h.Set("Wechatpay-Serial", named) })
			if got.status != 200 || got.header.Get("Wechatpay-Serial") != named {
				t.Errorf("call %d naming %s: %d, signed by %q", i, named, got.status, got.header.Get("Wechatpay-Serial"))
			}
		}
	}
}

// A retired certificate's serial still names a key WeChat Pay issued: a
// client that has not refreshed yet is not refused for it.
func TestRetiredSerialIsNotBogus(t *testing.T) {
	t.Parallel()
	s := wechatpaytest.NewServer(t, wechatpaytest.WithKeyMode(wechatpaytest.CertificateMode))
	id := s.SeedCoupons(s.BrandID(), 1)[0]
	old := s.CertificateSerials()[0]
	s.RotateCertificates()
	s.RetireOldCertificates()
	got := sendRaw(t, s, "GET", partnerCoupons+id+"?brand_id="+s.BrandID(), nil, func(h http.Header) { h.Set("Wechatpay-Serial", old) })
	if got.status != 200 {
		t.Errorf("retired serial: %d %s", got.status, got.body)
	}
}
