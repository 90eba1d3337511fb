// Package wechatpaytest is a fake WeChat Pay API v3 for product coupons, in
// the manner of net/http/httptest: NewServer starts it on loopback, URL and
// Client() wire a wechatpay.Client to it, and with a testing.TB it closes
// itself.
//
// # Strict where the documents are
//
// Requests are checked with rules of the fake's own, written from WeChat
// Pay's documents, never with the client's Validate (a fake sharing the
// client's rules could not catch a mistake in them): a real signature over
// the exact bytes, User-Agent and Accept present, Content-Type
// application/json on a write, one JSON object and nothing after it, the
// documented limits, no brand_id in a brand-mode body or a different one
// in its query, and a Wechatpay-Serial that names a WeChat Pay key. PATCH
// requires name, image_url and background_url in display_info and
// replaces display_info whole — the reading of the documents that loses
// data — so a test sees a client that sends less than all of it.
//
// # State, idempotency and faults
//
// Coupons (SeedCoupons, AddCoupon, Coupon) change as WeChat Pay's would; one
// out_request_no applies once, and with other data is refused (268578927).
// Requests (with the bodies of writes) and Effects are logged for tests to
// assert on. FailNext scripts failures, SetFaults draws random ones
// (500, 503, 429, a connection dropped after the change was applied, bad or
// SIGNTEST signatures, stale timestamps), WithQPS enforces a ceiling.
// Answers are signed: with the public key, the platform certificates, or
// during a migration (BothKeyModes) the key the request's Wechatpay-Serial
// names.
package wechatpaytest
