// Package wpenv builds the WeChat Pay client from the WECHATPAY_*
// environment variables: the one place couponq's commands, the e2e tests and
// the benchmarks read them, so a setting means the same everywhere.
package wpenv

import (
	"fmt"
	"net/url"
	"strings"

	"github.com/couponq/couponq/wechatpay"
)

// The WeChat Pay settings. They come from the environment only, never from
// flags, so that keys stay out of process listings and shell history.
const (
	envMode          = "WECHATPAY_MODE"
	envMchID         = "WECHATPAY_MCHID"
	envBrandID       = "WECHATPAY_BRAND_ID"
	envCertSerial    = "WECHATPAY_MCH_CERT_SERIAL"
	envPrivateKey    = "WECHATPAY_MCH_PRIVATE_KEY_FILE"
	envPublicKeyID   = "WECHATPAY_PUBLIC_KEY_ID"
	envPublicKeyFile = "WECHATPAY_PUBLIC_KEY_FILE"
	envAPIv3Key      = "WECHATPAY_APIV3_KEY"
	envBaseURL       = "WECHATPAY_BASE_URL"
)

// DefaultBaseURL is WeChat Pay's production API, used when
// WECHATPAY_BASE_URL is not set.
const DefaultBaseURL = "https://api.mch.weixin.qq.com"

// Help lists the variables, for the help of commands that call the API.
const Help = `
WeChat Pay settings (environment only):
  WECHATPAY_MODE                  partner (default) or brand (brand-direct)
  WECHATPAY_MCHID                 service provider merchant ID (partner mode)
  WECHATPAY_BRAND_ID              brand ID (brand mode, instead of the mchid)
  WECHATPAY_MCH_CERT_SERIAL       serial number of the merchant API certificate
  WECHATPAY_MCH_PRIVATE_KEY_FILE  its private key, PEM (PKCS#8 or PKCS#1)
  WECHATPAY_PUBLIC_KEY_ID         WeChat Pay public-key ID (PUB_KEY_ID_…), with
  WECHATPAY_PUBLIC_KEY_FILE       the WeChat Pay public key, PEM; or instead
  WECHATPAY_APIV3_KEY             the APIv3 key (platform-certificate mode;
                                  brand mode needs the public key)
  WECHATPAY_BASE_URL              default https://api.mch.weixin.qq.com`

// usageErrorf makes the errors of this package: each names its variable and
// never carries a secret.
func usageErrorf(format string, args ...any) error { return fmt.Errorf(format, args...) }

// Client builds the API client from the environment read through getenv
// (os.Getenv, or a map in tests), with extra options after those of the
// environment. Every error is a setting's problem, naming the variable.
func Client(getenv func(string) string, extra ...wechatpay.Option) (*wechatpay.Client, error) {
	opts, err := Options(getenv)
	if err != nil {
		return nil, err
	}
	c, err := wechatpay.NewClient(append(opts, extra...)...)
	if err != nil {
		return nil, usageErrorf("WeChat Pay settings: %v", err)
	}
	return c, nil
}

// Options returns the client options the environment describes.
func Options(getenv func(string) string) ([]wechatpay.Option, error) {
	need := func(name string) (string, error) {
		v := strings.TrimSpace(getenv(name))
		if v == "" {
			return "", usageErrorf("%s is not set", name)
		}
		return v, nil
	}
	mode := wechatpay.Mode(strings.TrimSpace(getenv(envMode)))
	if mode == "" {
		mode = wechatpay.ModePartner
	}
	if mode != wechatpay.ModePartner && mode != wechatpay.ModeBrand {
		return nil, usageErrorf("%s=%q is not a mode: use partner or brand", envMode, mode)
	}
	serial, err := need(envCertSerial)
	if err != nil {
		return nil, err
	}
	keyFile, err := need(envPrivateKey)
	if err != nil {
		return nil, err
	}
	key, err := wechatpay.LoadPrivateKeyFile(keyFile)
	if err != nil {
		return nil, usageErrorf("%s: %v", envPrivateKey, err)
	}
	var opts []wechatpay.Option
	switch mode {
	case wechatpay.ModePartner:
		mchID, err := need(envMchID)
		if err != nil {
			return nil, err
		}
		opts = append(opts, wechatpay.WithPartner(mchID, serial, key))
	case wechatpay.ModeBrand:
		brandID, err := need(envBrandID)
		if err != nil {
			return nil, err
		}
		opts = append(opts, wechatpay.WithBrand(brandID, serial, key))
	}
	pubID, pubFile, apiV3 := strings.TrimSpace(getenv(envPublicKeyID)), strings.TrimSpace(getenv(envPublicKeyFile)), getenv(envAPIv3Key)
	switch {
	case mode == wechatpay.ModeBrand && pubID == "" && pubFile == "":
		// Brand-direct calls name the public-key id in Wechatpay-Serial.
		return nil, usageErrorf("%s=brand requires %s and %s: brand mode has no platform-certificate mode", envMode, envPublicKeyID, envPublicKeyFile)
	case pubID == "" && pubFile == "" && apiV3 == "":
		return nil, usageErrorf("WeChat Pay's key is not set: set %s and %s (public-key mode) or %s (platform-certificate mode)", envPublicKeyID, envPublicKeyFile, envAPIv3Key)
	case pubID != "" || pubFile != "":
		if pubID == "" {
			return nil, usageErrorf("%s is not set (it goes with %s)", envPublicKeyID, envPublicKeyFile)
		}
		if pubFile == "" {
			return nil, usageErrorf("%s is not set (it goes with %s)", envPublicKeyFile, envPublicKeyID)
		}
		pub, err := wechatpay.LoadPublicKeyFile(pubFile)
		if err != nil {
			return nil, usageErrorf("%s: %v", envPublicKeyFile, err)
		}
		opts = append(opts, wechatpay.WithPublicKey(pubID, pub))
	}
	if apiV3 != "" {
		if len(apiV3) != 32 {
			return nil, usageErrorf("%s must be 32 characters, got %d", envAPIv3Key, len(apiV3))
		}
		opts = append(opts, wechatpay.WithPlatformCertificates(apiV3))
	}
	base := strings.TrimSpace(getenv(envBaseURL))
	if base == "" {
		base = DefaultBaseURL
	}
	u, err := url.Parse(base)
	switch {
	case err != nil:
		// Not echoed: the value may carry a password (url.Error repeats it).
		return nil, usageErrorf("%s is not a URL", envBaseURL)
	case u.User != nil:
		return nil, usageErrorf("%s must not carry user info (user:password@)", envBaseURL)
	case u.Host == "" || (u.Scheme != "https" && u.Scheme != "http"):
		return nil, usageErrorf("%s=%q is not an http(s) URL", envBaseURL, base)
	}
	opts = append(opts, wechatpay.WithBaseURL(base))
	return opts, nil
}

// Identity is the identity the environment names, as the client's
// Identity() would be: WECHATPAY_BRAND_ID in brand mode, WECHATPAY_MCHID
// otherwise; "" when unset. It reads no key, so it needs no secret.
func Identity(getenv func(string) string) string {
	if wechatpay.Mode(strings.TrimSpace(getenv(envMode))) == wechatpay.ModeBrand {
		return strings.TrimSpace(getenv(envBrandID))
	}
	return strings.TrimSpace(getenv(envMchID))
}
