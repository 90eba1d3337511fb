package worker

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"sync"
	"time"

	"github.com/couponq/couponq/tasks"
	"github.com/couponq/couponq/wechatpay"
)

// stubCall is one call the stub API received.
type stubCall struct {
	Op           tasks.Op
	CouponID     string
	OutRequestNo string
}

// answer is a scripted reply: an error, or (nil) "behave normally".
type answer struct{ err error }

// stubAPI is a scripted in-memory WeChat Pay: coupons with state, writes
// that apply, and per-(op, coupon) queues of scripted errors taken first.
type stubAPI struct {
	mu      sync.Mutex
	coupons map[string]*wechatpay.ProductCoupon
	script  map[string][]answer
	calls   []stubCall
	// applyBeforeError: a scripted error is returned after the change was
	// applied (a dropped connection after WeChat Pay applied it).
	applyBeforeError map[string]bool
	// onCall runs at the start of every call, under the lock.
	onCall func(op tasks.Op)
	// bodies are the Body of every update call, in order; deactBodies of
	// every deactivate call.
	bodies, deactBodies []string
}

func newStubAPI() *stubAPI {
	return &stubAPI{coupons: map[string]*wechatpay.ProductCoupon{}, script: map[string][]answer{},
		applyBeforeError: map[string]bool{}}
}

func scriptKey(op tasks.Op, couponID string) string { return string(op) + "/" + couponID }

// failNext scripts the next calls of op on couponID to return errs in turn.
func (s *stubAPI) failNext(op tasks.Op, couponID string, errs ...error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range errs {
		s.script[scriptKey(op, couponID)] = append(s.script[scriptKey(op, couponID)], answer{err: e})
	}
}

func (s *stubAPI) callsOf(op tasks.Op) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, c := range s.calls {
		if c.Op == op {
			n++
		}
	}
	return n
}

func (s *stubAPI) totalCalls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.calls)
}

func (s *stubAPI) coupon(id, brand string) *wechatpay.ProductCoupon {
	c, ok := s.coupons[id]
	if !ok {
		c = &wechatpay.ProductCoupon{ProductCouponID: id, BrandID: brand, State: wechatpay.StateEffective,
			DisplayInfo: &wechatpay.DisplayInfo{Name: "原始名称券", OriginalPrice: 5000}}
		s.coupons[id] = c
	}
	return c
}

func withRaw(c *wechatpay.ProductCoupon) *wechatpay.ProductCoupon {
	cp := *c
	if cp.DisplayInfo != nil {
		di := *cp.DisplayInfo
		cp.DisplayInfo = &di
	}
	cp.Raw, _ = json.Marshal(&cp)
	return &cp
}

func (s *stubAPI) do(ctx context.Context, op tasks.Op, id, brand, outNo string, apply func(c *wechatpay.ProductCoupon) error) (*wechatpay.ProductCoupon, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls = append(s.calls, stubCall{Op: op, CouponID: id, OutRequestNo: outNo})
	if s.onCall != nil {
		s.onCall(op)
	}
	if err := ctx.Err(); err != nil {
		return nil, &url.Error{Op: "Post", URL: "https://api.example/" + id, Err: err}
	}
	c := s.coupon(id, brand)
	k := scriptKey(op, id)
	if q := s.script[k]; len(q) > 0 {
		s.script[k] = q[1:]
		if q[0].err != nil {
			if s.applyBeforeError[k] && apply != nil {
				_ = apply(c)
			}
			return nil, q[0].err
		}
	}
	if apply != nil {
		if err := apply(c); err != nil {
			return nil, err
		}
	}
	return withRaw(c), nil
}

func (s *stubAPI) UpdateProductCoupon(ctx context.Context, req *wechatpay.UpdateProductCouponRequest) (*wechatpay.ProductCoupon, error) {
	di := *req.DisplayInfo
	if req.Body != nil {
		// What the worker sends: the whole display_info, which replaces the coupon's.
		var b struct {
			DisplayInfo wechatpay.DisplayInfo `json:"display_info"`
		}
		if err := json.Unmarshal(req.Body, &b); err != nil {
			return nil, apiErr(400, wechatpay.CodeParamError, "")
		}
		di = b.DisplayInfo
	}
	s.mu.Lock()
	s.bodies = append(s.bodies, string(req.Body))
	s.mu.Unlock()
	return s.do(ctx, tasks.OpUpdate, req.ProductCouponID, req.BrandID, req.OutRequestNo, func(c *wechatpay.ProductCoupon) error {
		c.DisplayInfo = &di
		return nil
	})
}

// EncodeDeactivate encodes a partner-mode body, as the client does.
func (s *stubAPI) EncodeDeactivate(req *wechatpay.DeactivateProductCouponRequest) ([]byte, error) {
	if err := req.Validate(); err != nil {
		return nil, err
	}
	return json.Marshal(struct {
		BrandID          string `json:"brand_id"`
		OutRequestNo     string `json:"out_request_no"`
		DeactivateReason string `json:"deactivate_reason"`
	}{req.BrandID, req.OutRequestNo, req.DeactivateReason})
}

// EncodeUpdate encodes a partner-mode body, as the client does.
func (s *stubAPI) EncodeUpdate(req *wechatpay.UpdateProductCouponRequest, displayInfo json.RawMessage) ([]byte, error) {
	if err := req.Validate(); err != nil {
		return nil, err
	}
	if displayInfo == nil {
		displayInfo, _ = json.Marshal(req.DisplayInfo)
	}
	return json.Marshal(struct {
		BrandID      string          `json:"brand_id"`
		OutRequestNo string          `json:"out_request_no"`
		DisplayInfo  json.RawMessage `json:"display_info"`
	}{req.BrandID, req.OutRequestNo, displayInfo})
}

func (s *stubAPI) DeactivateProductCoupon(ctx context.Context, req *wechatpay.DeactivateProductCouponRequest) (*wechatpay.ProductCoupon, error) {
	s.mu.Lock()
	s.deactBodies = append(s.deactBodies, string(req.Body))
	s.mu.Unlock()
	return s.do(ctx, tasks.OpDeactivate, req.ProductCouponID, req.BrandID, req.OutRequestNo, func(c *wechatpay.ProductCoupon) error {
		if c.State != wechatpay.StateEffective {
			return apiErr(400, wechatpay.CodeInvalidRequest, "")
		}
		c.State = wechatpay.StateDeactivated
		c.DeactivateRequestNo = req.OutRequestNo
		c.DeactivateReason = req.DeactivateReason
		return nil
	})
}

func (s *stubAPI) GetProductCoupon(ctx context.Context, req *wechatpay.GetProductCouponRequest) (*wechatpay.ProductCoupon, error) {
	return s.do(ctx, tasks.OpGet, req.ProductCouponID, req.BrandID, "", nil)
}

var _ API = (*stubAPI)(nil)

func apiErr(status int, code, requestID string) error {
	if requestID == "" {
		requestID = "08F1A2B3C4D5-0"
	}
	return &wechatpay.APIError{Method: "POST", Path: "/v3/marketing/partner/product-coupon/product-coupons/x",
		HTTPStatus: status, Code: code, Message: "scripted " + code, RequestID: requestID}
}

func rateLimitedErr(after time.Duration) error {
	e := apiErr(429, wechatpay.CodeRateLimitExceeded, "").(*wechatpay.APIError)
	e.RetryAfter = after
	return e
}

func verifyErr() error {
	return &wechatpay.VerifyError{Method: "PATCH", Path: "/v3/…", HTTPStatus: 200, RequestID: "REQ-0",
		Err: fmt.Errorf("serial X: %w", wechatpay.ErrSignature)}
}

func netErr() error {
	return &url.Error{Op: "Patch", URL: "https://api.mch.weixin.qq.com/v3/…", Err: io.ErrUnexpectedEOF}
}

// fakeLimiter scripts Wait answers and records Backoff calls.
type fakeLimiter struct {
	mu       sync.Mutex
	waitErrs []error
	backoffs []string
	waits    map[string]int // Wait calls by endpoint
}

func (f *fakeLimiter) Wait(_ context.Context, endpoint string, _ time.Duration) (time.Duration, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.waits == nil {
		f.waits = map[string]int{}
	}
	f.waits[endpoint]++
	if len(f.waitErrs) > 0 {
		err := f.waitErrs[0]
		f.waitErrs = f.waitErrs[1:]
		return 0, err
	}
	return time.Millisecond, nil
}

func (f *fakeLimiter) Backoff(_ context.Context, endpoint string, d time.Duration) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.backoffs = append(f.backoffs, fmt.Sprintf("%s %v", endpoint, d))
	return nil
}

// fakeMetrics counts terminal outcomes and retries.
type fakeMetrics struct {
	mu        sync.Mutex
	terminals map[string]int
	retries   map[string]int
	calls     map[string]int
}

func newFakeMetrics() *fakeMetrics {
	return &fakeMetrics{terminals: map[string]int{}, retries: map[string]int{}, calls: map[string]int{}}
}

func (m *fakeMetrics) ObserveCall(op, outcome, code string, _ time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.calls[op+" "+outcome]++
}

func (m *fakeMetrics) ObserveRetry(op, reason string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.retries[op+" "+reason]++
}

func (m *fakeMetrics) ObserveLimiterWait(string, time.Duration) {}

func (m *fakeMetrics) ObserveTerminal(op string, st tasks.Status) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.terminals[op+" "+string(st)]++
}
