package worker

import (
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/hibiken/asynq"

	"github.com/couponq/couponq/internal/results"
	"github.com/couponq/couponq/tasks"
	"github.com/couponq/couponq/wechatpay"
)

func TestReconcile(t *testing.T) {
	t.Parallel()
	const coupon = "1000000013"
	reused := "REQ-268578927"
	tests := []struct {
		name string
		req  any
		// prepare runs before the task: it may apply an earlier attempt.
		prepare  func(b *testBundle)
		script   []error
		retried  int
		want     map[string]string
		wantGets int
	}{
		{
			name: "deactivate refused after our own deactivation took effect",
			req:  deactivateReq(coupon, "deact_rec_01"),
			prepare: func(b *testBundle) {
				// The first attempt applied and its answer was lost.
				_, _ = b.api.DeactivateProductCoupon(b.ctx, deactivateReq(coupon, "deact_rec_01"))
			},
			retried: 1, wantGets: 1,
			want: map[string]string{"status": "succeeded", "attempts": "2", "http_status": "200", "error_code": "", "coupon_state": "DEACTIVATED"},
		},
		{
			name: "deactivate refused because someone else deactivated",
			req:  deactivateReq(coupon, "deact_rec_02"),
			prepare: func(b *testBundle) {
				_, _ = b.api.DeactivateProductCoupon(b.ctx, deactivateReq(coupon, "somebody_else"))
			},
			retried: 1, wantGets: 1,
			want: map[string]string{"status": "failed", "attempts": "2", "http_status": "400", "error_code": "INVALID_REQUEST", "coupon_state": ""},
		},
		{
			name: "deactivate refused on a first attempt is not reconciled",
			req:  deactivateReq(coupon, "deact_rec_03"),
			prepare: func(b *testBundle) {
				_, _ = b.api.DeactivateProductCoupon(b.ctx, deactivateReq(coupon, "deact_rec_03"))
			},
			retried: 0, wantGets: 0,
			want: map[string]string{"status": "failed", "attempts": "1", "http_status": "400", "error_code": "INVALID_REQUEST", "coupon_state": ""},
		},
		{
			name: "a run interrupted by shutdown counts as an earlier attempt",
			req:  deactivateReq(coupon, "deact_rec_04"),
			prepare: func(b *testBundle) {
				_, _ = b.api.DeactivateProductCoupon(b.ctx, deactivateReq(coupon, "deact_rec_04"))
				_ = b.store.Retrying(b.ctx, taskIDOf(tasks.OpDeactivate, "deact_rec_04"), results.Attempt{Calls: 1, ErrorCode: CodeInterrupted})
			},
			retried: 0, wantGets: 1,
			want: map[string]string{"status": "succeeded", "attempts": "3", "http_status": "200", "error_code": "", "coupon_state": "DEACTIVATED"},
		},
		{
			name: "update refused as key reuse, display_info shows ours",
			req:  updateReq(coupon, "update_rec_01"),
			prepare: func(b *testBundle) {
				// An earlier run fixed the body, sent it, and its answer was lost.
				req := updateReq(coupon, "update_rec_01")
				body, _ := b.api.EncodeUpdate(req, nil)
				_, _ = b.store.FixRequest(b.ctx, taskIDOf(tasks.OpUpdate, "update_rec_01"), body)
				req.Body = body
				_, _ = b.api.UpdateProductCoupon(b.ctx, req)
			},
			script:  []error{apiErr(400, wechatpay.CodeInvalidRequest, reused)},
			retried: 2, wantGets: 1,
			want: map[string]string{"status": "succeeded", "attempts": "2", "http_status": "200", "error_code": "", "coupon_state": "EFFECTIVE"},
		},
		{
			name:   "update refused as ALREADY_EXISTS, display_info differs",
			req:    updateReq(coupon, "update_rec_02"),
			script: []error{apiErr(400, wechatpay.CodeAlreadyExists, "")},
			// No stored body (a task begun before bodies were stored): the
			// coupon is read first, then once more to reconcile.
			retried: 1, wantGets: 2,
			want: map[string]string{"status": "failed", "attempts": "3", "http_status": "400", "error_code": "ALREADY_EXISTS", "coupon_state": ""},
		},
		{
			name:    "update PARAM_ERROR on a retry is not ambiguous",
			req:     updateReq(coupon, "update_rec_03"),
			script:  []error{apiErr(400, wechatpay.CodeParamError, "")},
			retried: 1, wantGets: 1, // the read before the PATCH
			want: map[string]string{"status": "failed", "attempts": "2", "http_status": "400", "error_code": "PARAM_ERROR", "coupon_state": ""},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			b.ctx = t.Context()
			task := b.enqueue(t, tt.req)[0]
			if tt.prepare != nil {
				tt.prepare(b)
			}
			var tid string
			var op tasks.Op
			switch r := tt.req.(type) {
			case *wechatpay.UpdateProductCouponRequest:
				op, tid = tasks.OpUpdate, taskIDOf(tasks.OpUpdate, r.OutRequestNo)
			case *wechatpay.DeactivateProductCouponRequest:
				op, tid = tasks.OpDeactivate, taskIDOf(tasks.OpDeactivate, r.OutRequestNo)
			}
			b.api.failNext(op, coupon, tt.script...)
			before := b.api.callsOf(tasks.OpGet)
			err := b.w.Handler().ProcessTask(withRetry(t.Context(), tt.retried, 25), task)
			res := b.result(t, tid)
			if diff := cmp.Diff(tt.want, pick(res, resultFields...)); diff != "" {
				t.Errorf("result (-want +got):\n%s", diff)
			}
			if got := b.api.callsOf(tasks.OpGet) - before; got != tt.wantGets {
				t.Errorf("GET calls = %d, want %d", got, tt.wantGets)
			}
			if (res["status"] == "failed") != errors.Is(err, asynq.SkipRetry) {
				t.Errorf("status %s with error %v", res["status"], err)
			}
		})
	}
}

func TestReconcileGetFailsRetryable(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.ctx = t.Context()
	const coupon = "1000000013"
	task := b.enqueue(t, deactivateReq(coupon, "deact_rec_09"))[0]
	b.api.failNext(tasks.OpDeactivate, coupon, apiErr(400, wechatpay.CodeInvalidRequest, ""))
	b.api.failNext(tasks.OpGet, coupon, apiErr(500, wechatpay.CodeSystemError, ""))
	err := b.w.Handler().ProcessTask(withRetry(t.Context(), 1, 25), task)
	if err == nil || errors.Is(err, asynq.SkipRetry) {
		t.Fatalf("err = %v, want a retryable error (cannot decide yet)", err)
	}
	res := b.result(t, taskIDOf(tasks.OpDeactivate, "deact_rec_09"))
	if res["status"] != "retrying" || res["attempts"] != "2" || res["error_code"] != "INVALID_REQUEST" {
		t.Errorf("result = %v", pick(res, resultFields...))
	}
}

func TestDisplayInfoApplied(t *testing.T) {
	t.Parallel()
	sent := &wechatpay.DisplayInfo{Name: "全场满100立打8折", OriginalPrice: 10000,
		ComboPackageList: []wechatpay.ComboPackage{{Name: "A", PickCount: 1, ChoiceList: []wechatpay.ComboChoice{{Name: "x", Price: 100, Count: 1}}}}}
	tests := []struct {
		name string
		got  *wechatpay.DisplayInfo
		want bool
	}{
		{"same", &wechatpay.DisplayInfo{Name: sent.Name, OriginalPrice: 10000, ComboPackageList: sent.ComboPackageList}, true},
		{"extra fields kept", &wechatpay.DisplayInfo{Name: sent.Name, ImageURL: "https://img/x.png", OriginalPrice: 10000, ComboPackageList: sent.ComboPackageList}, true},
		{"other name", &wechatpay.DisplayInfo{Name: "另一个名称", OriginalPrice: 10000, ComboPackageList: sent.ComboPackageList}, false},
		{"other price", &wechatpay.DisplayInfo{Name: sent.Name, OriginalPrice: 9000, ComboPackageList: sent.ComboPackageList}, false},
		{"other combo", &wechatpay.DisplayInfo{Name: sent.Name, OriginalPrice: 10000}, false},
		{"none", nil, false},
	}
	// A zero price sent is compared too.
	zero := &wechatpay.DisplayInfo{Name: sent.Name, OriginalPriceZero: true}
	if displayInfoApplied(zero, &wechatpay.DisplayInfo{Name: sent.Name, OriginalPrice: 10000}) {
		t.Error("original_price 0 sent, 10000 found: reported applied")
	}
	if !displayInfoApplied(zero, &wechatpay.DisplayInfo{Name: sent.Name, OriginalPriceZero: true}) {
		t.Error("original_price 0 sent and found: reported not applied")
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := displayInfoApplied(sent, tt.got); got != tt.want {
				t.Errorf("displayInfoApplied = %v, want %v", got, tt.want)
			}
		})
	}
}
