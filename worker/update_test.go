package worker

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/couponq/couponq/internal/results"
	"github.com/couponq/couponq/tasks"
	"github.com/couponq/couponq/wechatpay"
)

// fullCoupon is a coupon with everything a name-only update must keep.
func fullCoupon(id string) *wechatpay.ProductCoupon {
	return &wechatpay.ProductCoupon{ProductCouponID: id, BrandID: testBrand, State: wechatpay.StateEffective,
		DisplayInfo: &wechatpay.DisplayInfo{Name: "原始名称券", ImageURL: "https://img.example/i.png",
			BackgroundURL: "https://img.example/b.png", DetailImageURLList: []string{"https://img.example/d1.png"},
			OriginalPrice: 5000}}
}

func TestUpdateSendsMergedBodyAndStoresIt(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.api.coupons["1000000013"] = fullCoupon("1000000013")
	req := updateReq("1000000013", "update_merge1")
	req.DisplayInfo = &wechatpay.DisplayInfo{Name: "新的名称券"}
	task := b.enqueue(t, req)[0]
	if err := b.w.Handler().ProcessTask(t.Context(), task); err != nil {
		t.Fatal(err)
	}
	got := b.api.coupons["1000000013"].DisplayInfo
	want := fullCoupon("1000000013").DisplayInfo
	want.Name = "新的名称券"
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("display_info after a name-only update (-want +got):\n%s", diff)
	}
	res := b.result(t, taskIDOf(tasks.OpUpdate, "update_merge1"))
	if len(b.api.bodies) != 1 || res[results.FieldRequest] != b.api.bodies[0] {
		t.Errorf("request = %q, bodies sent = %q", res[results.FieldRequest], b.api.bodies)
	}
	if res[results.FieldUnchanged] != "" || res[results.FieldStatus] != "succeeded" {
		t.Errorf("result = %v", res)
	}
	if b.api.callsOf(tasks.OpGet) != 1 || b.limiter.waits["get"] != 1 || b.limiter.waits["update"] != 1 {
		t.Errorf("GETs = %d, limiter waits = %v: want one GET on the get quota, one PATCH on the update quota",
			b.api.callsOf(tasks.OpGet), b.limiter.waits)
	}
}

func TestUpdateRetrySendsStoredBytes(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.api.coupons["1000000013"] = fullCoupon("1000000013")
	task := b.enqueue(t, updateReq("1000000013", "update_same01"))[0]
	b.api.failNext(tasks.OpUpdate, "1000000013", netErr())
	if err := b.w.Handler().ProcessTask(t.Context(), task); err == nil {
		t.Fatal("first run: want a retryable error")
	}
	// The coupon changes meanwhile: a rebuilt body would differ.
	b.api.coupons["1000000013"].DisplayInfo.ImageURL = "https://img.example/other.png"
	if err := b.w.Handler().ProcessTask(withRetry(t.Context(), 1, 25), task); err != nil {
		t.Fatal(err)
	}
	if len(b.api.bodies) != 2 || b.api.bodies[0] != b.api.bodies[1] {
		t.Fatalf("bodies sent = %q, want the same bytes twice", b.api.bodies)
	}
	if n := b.api.callsOf(tasks.OpGet); n != 1 {
		t.Errorf("GETs = %d, want 1 (the retry reads the stored body)", n)
	}
	res := b.result(t, taskIDOf(tasks.OpUpdate, "update_same01"))
	if res[results.FieldRequest] != b.api.bodies[0] || res[results.FieldAttempts] != "3" {
		t.Errorf("result = %v", pick(res, results.FieldRequest, results.FieldAttempts))
	}
}

func TestUpdateThatChangesNothingIsNotSent(t *testing.T) {
	t.Parallel()
	b := setup(t)
	c := fullCoupon("1000000013")
	b.api.coupons["1000000013"] = c
	req := updateReq("1000000013", "update_nochg1")
	req.DisplayInfo = &wechatpay.DisplayInfo{Name: c.DisplayInfo.Name, OriginalPrice: c.DisplayInfo.OriginalPrice}
	task := b.enqueue(t, req)[0]
	if err := b.w.Handler().ProcessTask(t.Context(), task); err != nil {
		t.Fatal(err)
	}
	res := b.result(t, taskIDOf(tasks.OpUpdate, "update_nochg1"))
	want := map[string]string{"status": "succeeded", "unchanged": "1", "request": "", "attempts": "1", "coupon_state": "EFFECTIVE"}
	if diff := cmp.Diff(want, pick(res, "status", "unchanged", "request", "attempts", "coupon_state")); diff != "" {
		t.Errorf("result (-want +got):\n%s", diff)
	}
	if n := b.api.callsOf(tasks.OpUpdate); n != 0 {
		t.Errorf("PATCH calls = %d, want 0", n)
	}
	if bt := b.batch(t); bt["succeeded"] != "1" {
		t.Errorf("batch = %v", bt)
	}
}

func TestUpdateZeroPriceIsAChange(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.api.coupons["1000000013"] = fullCoupon("1000000013")
	var di wechatpay.DisplayInfo
	if err := json.Unmarshal([]byte(`{"original_price":0}`), &di); err != nil {
		t.Fatal(err)
	}
	req := updateReq("1000000013", "update_zero01")
	req.DisplayInfo = &di
	task := b.enqueue(t, req)[0]
	if err := b.w.Handler().ProcessTask(t.Context(), task); err != nil {
		t.Fatal(err)
	}
	if got := b.api.coupons["1000000013"].DisplayInfo; got.OriginalPrice != 0 || !got.OriginalPriceZero || got.ImageURL == "" {
		t.Errorf("display_info = %+v, want original_price 0 sent, the rest kept", got)
	}
}

func TestUpdateReadFailures(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		err      error
		want     map[string]string
		backoffs []string
	}{
		{"404 fails without a PATCH", apiErr(404, wechatpay.CodeNotFound, "REQ-268578608"),
			map[string]string{"status": "failed", "attempts": "1", "http_status": "404", "error_code": wechatpay.CodeNotFound, "coupon_state": ""}, nil},
		{"500 is retried", apiErr(500, wechatpay.CodeSystemError, ""),
			map[string]string{"status": "retrying", "attempts": "1", "http_status": "500", "error_code": wechatpay.CodeSystemError, "coupon_state": ""}, nil},
		{"429 slows the get endpoint", rateLimitedErr(5 * time.Second),
			map[string]string{"status": "retrying", "attempts": "1", "http_status": "429", "error_code": wechatpay.CodeRateLimitExceeded, "coupon_state": ""}, []string{"get 5s"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			task := b.enqueue(t, updateReq("1000000013", "update_read01"))[0]
			b.api.failNext(tasks.OpGet, "1000000013", tt.err)
			_ = b.w.Handler().ProcessTask(t.Context(), task)
			res := b.result(t, taskIDOf(tasks.OpUpdate, "update_read01"))
			if diff := cmp.Diff(tt.want, pick(res, resultFields...)); diff != "" {
				t.Errorf("result (-want +got):\n%s", diff)
			}
			if n := b.api.callsOf(tasks.OpUpdate); n != 0 || res[results.FieldRequest] != "" {
				t.Errorf("PATCH calls = %d, request = %q: want none before the coupon is read", n, res[results.FieldRequest])
			}
			if diff := cmp.Diff(tt.backoffs, b.limiter.backoffs); diff != "" {
				t.Errorf("limiter backoffs (-want +got):\n%s", diff)
			}
		})
	}
}

func TestDeactivateStoresItsBody(t *testing.T) {
	t.Parallel()
	b := setup(t)
	task := b.enqueue(t, deactivateReq("1000000013", "deact_body01"))[0]
	b.api.failNext(tasks.OpDeactivate, "1000000013", apiErr(500, wechatpay.CodeSystemError, ""))
	if err := b.w.Handler().ProcessTask(t.Context(), task); err == nil {
		t.Fatal("first run: want a retryable error")
	}
	if err := b.w.Handler().ProcessTask(withRetry(t.Context(), 1, 25), task); err != nil {
		t.Fatal(err)
	}
	res := b.result(t, taskIDOf(tasks.OpDeactivate, "deact_body01"))
	want, _ := b.api.EncodeDeactivate(deactivateReq("1000000013", "deact_body01"))
	if res[results.FieldRequest] != string(want) {
		t.Errorf("request = %q, want %q", res[results.FieldRequest], want)
	}
	if diff := cmp.Diff([]string{string(want), string(want)}, b.api.deactBodies); diff != "" {
		t.Errorf("bodies sent (-want +got):\n%s", diff)
	}
}
