package main

import (
	"strings"
	"testing"
)

// TestNoSecretInErrors: a setting holding a secret that is refused is
// named, never repeated — whatever command reads it.
func TestNoSecretInErrors(t *testing.T) {
	t.Parallel()
	b := setup(t, 1)
	const secret = "S3cr3tValue9"
	keyFile := b.writeFile(t, "garbage.pem", "-----BEGIN PRIVATE KEY-----\n"+secret+"\n-----END PRIVATE KEY-----\n")
	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
	}{
		{"base url with user info", map[string]string{"WECHATPAY_BASE_URL": "https://ops:" + secret + "@api.mch.weixin.qq.com"}, []string{"worker"}},
		{"base url with user info, get", map[string]string{"WECHATPAY_BASE_URL": "https://ops:" + secret + "@api.mch.weixin.qq.com"}, []string{"get", "--brand", "120344", "--coupon", "1"}},
		{"base url that does not parse", map[string]string{"WECHATPAY_BASE_URL": "https://ops:" + secret + "@[::1"}, []string{"worker"}},
		{"short APIv3 key", map[string]string{"WECHATPAY_APIV3_KEY": secret}, []string{"worker"}},
		{"private key that does not parse", map[string]string{"WECHATPAY_MCH_PRIVATE_KEY_FILE": keyFile}, []string{"worker"}},
		{"monitoring auth without a colon", map[string]string{"COUPONQ_MONITORING_AUTH": secret}, []string{"worker", "--http", "127.0.0.1:0"}},
		{"redis url with a bad port", map[string]string{"COUPONQ_REDIS_URL": "redis://:" + secret + "@127.0.0.1:notaport/0"}, []string{"status", "--batch", "x"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			env := map[string]string{}
			for k, v := range b.env {
				env[k] = v
			}
			for k, v := range tc.env {
				env[k] = v
			}
			r := runWith(t.Context(), func(k string) string { return env[k] }, "", tc.args...)
			if r.code == 0 {
				t.Fatalf("accepted: %s", r.stderr)
			}
			if strings.Contains(r.stderr+r.stdout, secret) {
				t.Errorf("the secret is repeated: %q", r.stderr)
			}
		})
	}
}
