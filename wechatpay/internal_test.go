package wechatpay

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

var (
	internalKeysOnce sync.Once
	internalKeys     [2]*rsa.PrivateKey
)

// testKeys returns two 2048-bit keys shared by the tests of this file.
func testKeys(t testing.TB) (merchant, wechat *rsa.PrivateKey) {
	t.Helper()
	internalKeysOnce.Do(func() {
		for i := range internalKeys {
			k, err := rsa.GenerateKey(rand.Reader, 2048)
			if err != nil {
				panic(err)
			}
			internalKeys[i] = k
		}
	})
	return internalKeys[0], internalKeys[1]
}

func newInternalClient(t testing.TB, opts ...Option) *Client {
	t.Helper()
	mk, wk := testKeys(t)
	base := []Option{
		WithBaseURL("http://127.0.0.1:9"),
		WithPartner("1900000109", "5157F09EFDC096DE15EBE81A47057A72", mk),
		WithPublicKey("PUB_KEY_ID_0114232134912410000000000000", &wk.PublicKey),
	}
	c, err := NewClient(append(base, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

var authPair = regexp.MustCompile(`(\w+)="([^"]*)"`)

func authParams(t *testing.T, h string) (string, map[string]string) {
	t.Helper()
	scheme, rest, _ := strings.Cut(h, " ")
	m := map[string]string{}
	for _, p := range authPair.FindAllStringSubmatch(rest, -1) {
		m[p[1]] = p[2]
	}
	return scheme, m
}

func TestNonce(t *testing.T) {
	t.Parallel()
	re := regexp.MustCompile(`^[0-9A-Za-z]{32}$`)
	seen := map[string]bool{}
	for range 1000 {
		n, err := newNonce()
		if err != nil {
			t.Fatal(err)
		}
		if !re.MatchString(n) {
			t.Fatalf("nonce %q", n)
		}
		if seen[n] {
			t.Fatalf("nonce %q repeated", n)
		}
		seen[n] = true
	}
}

func TestAuthorizationHeader(t *testing.T) {
	t.Parallel()
	mk, _ := testKeys(t)
	now := time.Unix(1735689600, 0)
	tests := []struct {
		name, scheme, idKey string
		opt                 Option
	}{
		{"partner", "WECHATPAY2-SHA256-RSA2048", "mchid", WithPartner("1900000109", "5157f09efdc096de", mk)},
		{"brand", "WECHATPAY-BRAND-SHA256-RSA2048", "brand_id", WithBrand("120344", "5157F09EFDC096DE", mk)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, wk := testKeys(t)
			c, err := NewClient(WithBaseURL("http://localhost:9"), tt.opt, WithPublicKey("PUB_KEY_ID_1", &wk.PublicKey), WithClock(func() time.Time { return now }))
			if err != nil {
				t.Fatal(err)
			}
			h1, err := c.authorization("GET", "/v3/x?brand_id=1", nil)
			if err != nil {
				t.Fatal(err)
			}
			h2, _ := c.authorization("GET", "/v3/x?brand_id=1", nil)
			scheme, p := authParams(t, h1)
			_, p2 := authParams(t, h2)
			if scheme != tt.scheme {
				t.Errorf("scheme %q, want %q", scheme, tt.scheme)
			}
			if p[tt.idKey] == "" || p["serial_no"] != "5157F09EFDC096DE" || p["timestamp"] != "1735689600" || len(p["nonce_str"]) != 32 {
				t.Errorf("params %v", p)
			}
			if p["nonce_str"] == p2["nonce_str"] {
				t.Error("two attempts share a nonce")
			}
			if len(p) != 5 {
				t.Errorf("want 5 params, got %v", p)
			}
		})
	}
}

// TestSignatureOpenSSL cross-checks signing and verification with the
// openssl command line, an independent implementation.
func TestSignatureOpenSSL(t *testing.T) {
	t.Parallel()
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("openssl not installed")
	}
	mk, wk := testKeys(t)
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	pubDER, _ := x509.MarshalPKIXPublicKey(&mk.PublicKey)
	pubFile := write("pub.pem", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}))
	wkDER, _ := x509.MarshalPKCS8PrivateKey(wk)
	wkFile := write("wechat.pem", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: wkDER}))

	c := newInternalClient(t)
	tests := []struct {
		name, method, uri string
		body              []byte
	}{
		{"get with query", "GET", "/v3/marketing/partner/product-coupon/product-coupons/1000000013?brand_id=120344", nil},
		{"patch utf-8 body", "PATCH", "/v3/marketing/partner/product-coupon/product-coupons/1000000013",
			[]byte(`{"brand_id":"120344","out_request_no":"34657_20250101_123456","display_info":{"name":"全场满100立打8折"}}`)},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := c.authorization(tt.method, tt.uri, tt.body)
			if err != nil {
				t.Fatal(err)
			}
			_, p := authParams(t, h)
			sig, err := base64.StdEncoding.DecodeString(p["signature"])
			if err != nil {
				t.Fatal(err)
			}
			// The string to sign, built here independently of requestMessage.
			msg := fmt.Sprintf("%s\n%s\n%s\n%s\n%s\n", tt.method, tt.uri, p["timestamp"], p["nonce_str"], tt.body)
			sigFile := write(fmt.Sprintf("sig%d.bin", i), sig)
			msgFile := write(fmt.Sprintf("msg%d.txt", i), []byte(msg))
			out, err := exec.Command(openssl, "dgst", "-sha256", "-verify", pubFile, "-signature", sigFile, msgFile).CombinedOutput()
			if err != nil || !strings.Contains(string(out), "Verified OK") {
				t.Fatalf("openssl does not verify our signature: %v: %s", err, out)
			}
			badFile := write(fmt.Sprintf("bad%d.txt", i), []byte(msg+"x"))
			if out, err := exec.Command(openssl, "dgst", "-sha256", "-verify", pubFile, "-signature", sigFile, badFile).CombinedOutput(); err == nil {
				t.Fatalf("openssl verified a tampered message: %s", out)
			}

			// The other way: openssl signs a response, we verify it.
			ts := strconv.FormatInt(c.now().Unix(), 10)
			respBody := tt.body
			respMsgFile := write(fmt.Sprintf("resp%d.txt", i), []byte(ts+"\nNONCE123\n"+string(respBody)+"\n"))
			sslSig, err := exec.Command(openssl, "dgst", "-sha256", "-sign", wkFile, respMsgFile).Output()
			if err != nil {
				t.Fatalf("openssl sign: %v", err)
			}
			hdr := http.Header{}
			hdr.Set("Wechatpay-Timestamp", ts)
			hdr.Set("Wechatpay-Nonce", "NONCE123")
			hdr.Set("Wechatpay-Serial", c.pubKeyID)
			hdr.Set("Wechatpay-Signature", base64.StdEncoding.EncodeToString(sslSig))
			if err := verifyResponse(hdr, respBody, c.now(), func(string) *rsa.PublicKey { return &wk.PublicKey }); err != nil {
				t.Fatalf("openssl's signature does not verify: %v", err)
			}
		})
	}
}

// signedHeader signs a response as WeChat Pay would.
func signedHeader(t testing.TB, key *rsa.PrivateKey, serial string, ts int64, nonce string, body []byte) http.Header {
	t.Helper()
	sig, err := signSHA256(key, responseMessage(strconv.FormatInt(ts, 10), nonce, body))
	if err != nil {
		t.Fatal(err)
	}
	h := http.Header{}
	h.Set("Wechatpay-Timestamp", strconv.FormatInt(ts, 10))
	h.Set("Wechatpay-Nonce", nonce)
	h.Set("Wechatpay-Serial", serial)
	h.Set("Wechatpay-Signature", sig)
	return h
}

func TestVerifyResponse(t *testing.T) {
	t.Parallel()
	_, wk := testKeys(t)
	mk, _ := testKeys(t)
	now := time.Unix(1735689600, 0)
	body := []byte(`{"product_coupon_id":"1000000013","state":"EFFECTIVE"}`)
	const serial = "PUB_KEY_ID_1"
	lookup := func(s string) *rsa.PublicKey {
		if s == serial {
			return &wk.PublicKey
		}
		return nil
	}
	good := func() http.Header { return signedHeader(t, wk, serial, now.Unix(), "n0nce", body) }
	tests := []struct {
		name   string
		header func() http.Header
		body   []byte
		want   error
	}{
		{"valid", good, body, nil},
		{"tampered body", good, []byte(`{"product_coupon_id":"1000000013","state":"DEACTIVATED"}`), ErrSignature},
		{"body with trailing newline", good, append(append([]byte(nil), body...), '\n'), ErrSignature},
		{"wrong serial", func() http.Header { h := good(); h.Set("Wechatpay-Serial", "PUB_KEY_ID_2"); return h }, body, ErrUnknownSerial},
		{"signed by another key", func() http.Header { return signedHeader(t, mk, serial, now.Unix(), "n0nce", body) }, body, ErrSignature},
		{"nonce changed", func() http.Header { h := good(); h.Set("Wechatpay-Nonce", "other"); return h }, body, ErrSignature},
		{"signtest probe", func() http.Header {
			h := good()
			h.Set("Wechatpay-Signature", "WECHATPAY/SIGNTEST/"+h.Get("Wechatpay-Signature"))
			return h
		}, body, ErrSignature},
		{"signature not base64", func() http.Header { h := good(); h.Set("Wechatpay-Signature", "%%%"); return h }, body, ErrSignature},
		{"timestamp 300 s old", func() http.Header { return signedHeader(t, wk, serial, now.Unix()-300, "n", body) }, body, nil},
		{"timestamp 301 s old", func() http.Header { return signedHeader(t, wk, serial, now.Unix()-301, "n", body) }, body, ErrClockSkew},
		{"timestamp 301 s ahead", func() http.Header { return signedHeader(t, wk, serial, now.Unix()+301, "n", body) }, body, ErrClockSkew},
		{"timestamp not a number", func() http.Header { h := good(); h.Set("Wechatpay-Timestamp", "soon"); return h }, body, ErrMissingHeaders},
		{"no headers", func() http.Header { return http.Header{} }, body, ErrMissingHeaders},
	}
	for _, name := range []string{"Wechatpay-Timestamp", "Wechatpay-Nonce", "Wechatpay-Signature", "Wechatpay-Serial"} {
		tests = append(tests, struct {
			name   string
			header func() http.Header
			body   []byte
			want   error
		}{"missing " + name, func() http.Header { h := good(); h.Del(name); return h }, body, ErrMissingHeaders})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := verifyResponse(tt.header(), tt.body, now, lookup)
			if !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
}

func TestParseErrorBody(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, body, code, message, detail string
	}{
		{"documented", `{"code":"PARAM_ERROR","message":"参数错误","detail":{"field":"out_request_no","value":1,"issue":"too short","location":"body"}}`,
			"PARAM_ERROR", "参数错误", `{"field":"out_request_no","value":1,"issue":"too short","location":"body"}`},
		{"no detail", `{"code":"SYSTEM_ERROR","message":"系统错误"}`, "SYSTEM_ERROR", "系统错误", ""},
		{"null detail", `{"code":"X","message":"m","detail":null}`, "X", "m", ""},
		{"empty", ``, "", "", ""},
		{"html from a proxy", `<html>502 Bad Gateway</html>`, "", "undecodable error body of 28 bytes", ""},
		{"control characters", "{\"code\":\"A\\nB\",\"message\":\"x\\u0000y\"}", "AB", "xy", ""},
		{"long message", `{"code":"X","message":"` + strings.Repeat("长", 400) + `"}`, "X", strings.Repeat("长", 170) + "…", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			code, msg, detail := parseErrorBody([]byte(tt.body))
			if code != tt.code || msg != tt.message || string(detail) != tt.detail {
				t.Errorf("got (%q, %q, %s), want (%q, %q, %s)", code, msg, detail, tt.code, tt.message, tt.detail)
			}
		})
	}
}

func TestParseRetryAfter(t *testing.T) {
	t.Parallel()
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Duration
	}{
		{"", 0}, {"1", time.Second}, {" 30 ", 30 * time.Second}, {"-1", 0}, {"0", 0}, {"999999", 0}, {"soon", 0},
		{now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second},
		{now.Add(-time.Minute).Format(http.TimeFormat), 0},
	}
	for _, tt := range tests {
		if got := parseRetryAfter(tt.in, now); got != tt.want {
			t.Errorf("parseRetryAfter(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func FuzzParseErrorBody(f *testing.F) {
	for _, s := range []string{
		`{"code":"PARAM_ERROR","message":"参数错误","detail":{"field":"a","value":1,"issue":"b","location":"body"}}`,
		`{"code":1}`, `[]`, `null`, ``, `{"detail":"x"}`, "{\"message\":\"\xff\xfe\"}",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		code, msg, detail := parseErrorBody(body)
		if len(code) > 64+3 || len(msg) > 512+3 || len(detail) > maxDetailBytes {
			t.Fatalf("unbounded output: %d %d %d", len(code), len(msg), len(detail))
		}
		if strings.ContainsAny(code+msg, "\r\n\x00") {
			t.Fatalf("control characters kept: %q %q", code, msg)
		}
		if len(body) > 64 && strings.Contains(msg, string(body)) {
			t.Fatal("whole body copied into the message")
		}
	})
}

func FuzzVerifyResponse(f *testing.F) {
	_, wk := testKeys(f)
	now := time.Unix(1735689600, 0)
	body := []byte(`{"product_coupon_id":"1"}`)
	h := signedHeader(f, wk, "S1", now.Unix(), "abc", body)
	f.Add(h.Get("Wechatpay-Timestamp"), "abc", h.Get("Wechatpay-Signature"), "S1", body)
	f.Add("1735689600", "abc", "WECHATPAY/SIGNTEST/AAAA", "S1", body)
	f.Add("", "", "", "", []byte(nil))
	f.Add("-9223372036854775808", "n", "====", "S1", []byte("{}"))
	f.Fuzz(func(t *testing.T, ts, nonce, sig, serial string, b []byte) {
		hdr := http.Header{}
		hdr.Set("Wechatpay-Timestamp", ts)
		hdr.Set("Wechatpay-Nonce", nonce)
		hdr.Set("Wechatpay-Signature", sig)
		hdr.Set("Wechatpay-Serial", serial)
		err := verifyResponse(hdr, b, now, func(s string) *rsa.PublicKey {
			if s == "S1" {
				return &wk.PublicKey
			}
			return nil
		})
		if err == nil {
			// Only the seeded, genuinely signed answer may pass.
			if string(b) != string(body) || nonce != "abc" || serial != "S1" {
				t.Fatalf("accepted a forged answer: ts=%q nonce=%q serial=%q body=%q", ts, nonce, serial, b)
			}
			return
		}
		if !errors.Is(err, ErrSignature) && !errors.Is(err, ErrClockSkew) && !errors.Is(err, ErrMissingHeaders) && !errors.Is(err, ErrUnknownSerial) {
			t.Fatalf("error wraps no sentinel: %v", err)
		}
	})
}

func BenchmarkSign(b *testing.B) {
	c := newInternalClient(b)
	body := []byte(`{"brand_id":"120344","out_request_no":"34657_20250101_123456","display_info":{"name":"全场满100立打8折"}}`)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.authorization("PATCH", "/v3/marketing/partner/product-coupon/product-coupons/1000000013", body); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkVerify(b *testing.B) {
	_, wk := testKeys(b)
	now := time.Unix(1735689600, 0)
	body := []byte(`{"product_coupon_id":"1000000013","state":"EFFECTIVE","brand_id":"120344","display_info":{"name":"全场满100立打8折"}}`)
	h := signedHeader(b, wk, "PUB_KEY_ID_1", now.Unix(), "n0nce", body)
	lookup := func(string) *rsa.PublicKey { return &wk.PublicKey }
	b.ReportAllocs()
	for b.Loop() {
		if err := verifyResponse(h, body, now, lookup); err != nil {
			b.Fatal(err)
		}
	}
}
