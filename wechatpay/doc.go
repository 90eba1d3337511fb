// Package wechatpay is a WeChat Pay API v3 client for product coupons (商品券):
// update, deactivate and get, in partner (服务商) and brand-direct (品牌直连)
// access modes, with request signing, response verification and typed errors.
//
// It imports neither asynq nor Redis; package worker drives it.
//
// # Creating a client
//
//	key, err := wechatpay.LoadPrivateKeyFile("apiclient_key.pem") // PKCS#8 or PKCS#1
//	pub, err := wechatpay.LoadPublicKeyFile("pub_key.pem")
//	c, err := wechatpay.NewClient(
//		wechatpay.WithPartner("1900000109", "5157F09EFDC096DE15EBE81A47057A72", key),
//		wechatpay.WithPublicKey("PUB_KEY_ID_0114232134912410000000000000", pub),
//	)
//	defer c.Close()
//
// WithBrand replaces WithPartner for brand-direct access; the methods stay the
// same. WithPlatformCertificates(apiV3Key) replaces or accompanies
// WithPublicKey for merchants still on platform certificates.
//
// # Access modes
//
// Partner mode signs with WECHATPAY2-SHA256-RSA2048 and mchid, calls
// /v3/marketing/partner/product-coupon/… and sends brand_id in the body (or
// the query of a GET). Brand mode signs with WECHATPAY-BRAND-SHA256-RSA2048
// and brand_id, calls /brand/marketing/product-coupon/… and does not send
// brand_id otherwise; a request naming another brand than the client's is
// refused before any I/O. Wechatpay-Serial carries the WeChat Pay public-key
// id (or the newest platform certificate's serial) whenever one is known.
// Brand mode requires the public key (WithPublicKey): NewClient refuses it
// with platform certificates alone, whose serial brand calls cannot carry.
//
// # Updates
//
// WeChat Pay documents name, image_url and background_url as required in
// display_info and does not say whether PATCH merges or replaces it, so send
// the whole display_info. MergeDisplayInfo builds it from the coupon (as
// GetProductCoupon answered it, unknown fields kept) and the fields a change
// names, and reports whether anything would change; EncodeUpdate turns it
// into the exact body, which a caller keeps and sends on every retry through
// UpdateProductCouponRequest.Body. A price of 0 is sent only when given
// (DisplayInfo.OriginalPriceZero, ComboChoice.PriceZero; decoding sets them).
//
// # Signing and verification
//
// Every attempt is signed with a fresh timestamp and a 32-character nonce
// from crypto/rand, over the exact bytes sent. Every 2xx answer is verified
// before it is decoded: the Wechatpay-Timestamp, -Nonce, -Signature and
// -Serial headers must be present, the timestamp within ClockWindow (300 s)
// of the client's clock, the serial known, and the RSA-SHA256 signature
// valid over the raw body. ProductCoupon.Raw is that verified body.
//
// # Platform certificates
//
// In platform-certificate mode the client downloads /v3/certificates before
// its first call, decrypts them with the APIv3 key (AEAD_AES_256_GCM),
// verifies the first download with the certificates it carries, refreshes
// the set every hour in the background (until Close) and downloads it again
// at once, at most once a minute, when an answer names an unknown serial.
// With both WithPublicKey and WithPlatformCertificates, answers signed by
// either are accepted, chosen by Wechatpay-Serial. Serials are numbers:
// serial_no is matched to the certificate's serial numerically (a leading
// zero counts for nothing), the certificate is named as listed, and an
// entry that cannot be used is skipped with a warning rather than failing
// the set.
//
// # Errors and retries
//
// Every error can be classified with errors.As and errors.Is:
//
//   - *ValidationError: the request breaks a documented limit; nothing was sent.
//   - *APIError: WeChat Pay answered non-2xx. It carries HTTPStatus, Code,
//     Message, Detail, RequestID (InternalCode is the number after its last
//     '-') and RetryAfter.
//   - *VerifyError wrapping ErrSignature, ErrClockSkew, ErrMissingHeaders or
//     ErrUnknownSerial: a 2xx answer that cannot be trusted. The call may have
//     taken effect.
//   - network errors and timeouts, wrapped (a *url.Error inside).
//
// IsRetryable reports whether the same request may succeed if made again:
// network errors, timeouts, 429, 500, 502, 503, 504 and unverifiable 2xx
// answers are; validation errors, other 4xx (PARAM_ERROR, INVALID_REQUEST,
// ALREADY_EXISTS, SIGN_ERROR, NO_AUTH, not found), the reused-key internal
// code 268578927 and a cancelled context are not. IsRateLimited reports a
// 429 and the wait WeChat Pay asked for.
//
// The client retries little on purpose: a GET once, after 200 ms, on a
// retryable error other than 429; writes never. The durable retry loop is
// the caller's (asynq in couponq). A retry of a write must reuse the same
// OutRequestNo and the same data, which makes it idempotent; after an
// ambiguous outcome (network error, unverifiable answer) reconcile with
// GetProductCoupon.
//
// Error strings carry the method, path, status, code and Request-ID; never
// keys, the Authorization header or whole bodies. The client logs at Debug
// level through WithLogger, with the same restraint.
package wechatpay
