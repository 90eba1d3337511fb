package worker

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/couponq/couponq/tasks"
	"github.com/couponq/couponq/wechatpay"
)

// TestJudge covers every row of the protocol's retry table (400, 401, 403,
// 404, 429, 500, 502/503, network error or timeout, the key-reused internal
// code) and couponq's own cases (local limiter, shutdown, retries used up,
// refused repeats that may have been applied).
func TestJudge(t *testing.T) {
	t.Parallel()
	reused := apiErr(400, wechatpay.CodeInvalidRequest, fmt.Sprintf("REQ-%d", wechatpay.InternalOutRequestNoReused))
	fresh := attemptState{op: tasks.OpUpdate, maxRetry: 3, defaultAfter: time.Second}
	retried := fresh
	retried.retried, retried.applied = 1, true
	exhausted := fresh
	exhausted.retried = 3
	noRetry := fresh
	noRetry.maxRetry = NoRetry
	get := retried
	get.op = tasks.OpGet
	shutdown := fresh
	shutdown.shutdown = true
	tests := []struct {
		name   string
		err    error
		s      attemptState
		action action
		reason string
		after  time.Duration
	}{
		{"400 PARAM_ERROR", apiErr(400, wechatpay.CodeParamError, ""), fresh, failNow, "permanent error", 0},
		{"400 INVALID_REQUEST, first attempt", apiErr(400, wechatpay.CodeInvalidRequest, ""), fresh, failNow, "permanent error", 0},
		{"400 INVALID_REQUEST after an attempt that may have applied", apiErr(400, wechatpay.CodeInvalidRequest, ""), retried, reconcile, "refused repeat of a write that may have been applied", 0},
		{"400 ALREADY_EXISTS after an attempt that may have applied", apiErr(400, wechatpay.CodeAlreadyExists, ""), retried, reconcile, "refused repeat of a write that may have been applied", 0},
		{"409 ALREADY_EXISTS after an attempt", apiErr(409, wechatpay.CodeAlreadyExists, ""), retried, reconcile, "refused repeat of a write that may have been applied", 0},
		{"key reused with other data after an attempt", reused, retried, reconcile, "refused repeat of a write that may have been applied", 0},
		{"a get is never reconciled", apiErr(400, wechatpay.CodeAlreadyExists, ""), get, failNow, "permanent error", 0},
		{"401 SIGN_ERROR", apiErr(401, wechatpay.CodeSignError, ""), retried, failNow, "permanent error", 0},
		{"403 NO_AUTH", apiErr(403, wechatpay.CodeNoAuth, "REQ-268579803"), fresh, failNow, "permanent error", 0},
		{"404", apiErr(404, "RESOURCE_NOT_EXISTS", "REQ-268578608"), fresh, failNow, "permanent error", 0},
		{"429 with Retry-After", rateLimitedErr(3 * time.Second), exhausted, comeBack, reasonRateLimited, 3 * time.Second},
		{"429 without one waits RetryBase", rateLimitedErr(0), fresh, comeBack, reasonRateLimited, time.Second},
		{"500", apiErr(500, wechatpay.CodeSystemError, ""), fresh, retryLater, outcomeAPIError, 0},
		{"502", apiErr(502, wechatpay.CodeServiceUnavailable, ""), fresh, retryLater, outcomeAPIError, 0},
		{"503", apiErr(503, wechatpay.CodeServiceUnavailable, ""), fresh, retryLater, outcomeAPIError, 0},
		{"network error", netErr(), fresh, retryLater, outcomeNetworkError, 0},
		{"timeout", fmt.Errorf("call: %w", context.DeadlineExceeded), fresh, retryLater, outcomeNetworkError, 0},
		{"bad signature on a 2xx", verifyErr(), fresh, retryLater, outcomeVerifyError, 0},
		{"retries used up", apiErr(500, wechatpay.CodeSystemError, ""), exhausted, failNow, "giving up after 4 attempts", 0},
		{"NoRetry fails the first retryable failure", netErr(), noRetry, failNow, "giving up after 1 attempts", 0},
		{"no local slot soon enough", &RateLimitedError{Endpoint: "update", RetryIn: 700 * time.Millisecond}, exhausted, comeBack, reasonRateLimitedLocal, 700 * time.Millisecond},
		{"come back keeps its reason", &comeBackError{reason: "x", after: time.Minute}, fresh, comeBack, "x", time.Minute},
		{"shutdown during the call", netErr(), shutdown, handBack, "interrupted", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			v := judge(tt.err, tt.s)
			if v.action != tt.action || v.reason != tt.reason || v.after != tt.after {
				t.Errorf("judge = %v %q after %v, want %v %q after %v", v.action, v.reason, v.after, tt.action, tt.reason, tt.after)
			}
		})
	}
}
