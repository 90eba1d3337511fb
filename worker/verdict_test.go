package worker

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/couponq/couponq/tasks"
	"github.com/couponq/couponq/wechatpay"
)

// TestJudge covers every row of the protocol's retry table (400, 401, 403,
// 404, 429, 500, 502/503, network error or timeout, the key-reused internal
// code) and couponq's own cases (local limiter, shutdown, retries used up,
// refused repeats that may have been applied, the worker's own credentials,
// calls not sent).
func TestJudge(t *testing.T) {
	t.Parallel()
	reused := apiErr(400, wechatpay.CodeInvalidRequest, fmt.Sprintf("REQ-%d", wechatpay.InternalOutRequestNoReused))
	fresh := attemptState{op: tasks.OpUpdate, maxRetry: 3, defaultAfter: time.Second, probeAfter: 5 * time.Second, calls: 1}
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
	manyCalls := retried
	manyCalls.calls = maxCredentialCalls
	stopped := fresh
	stopped.gateClosed = true
	signErr := apiErr(401, wechatpay.CodeSignError, "")
	clockErr := &wechatpay.CredentialsError{Credential: wechatpay.CredentialClock, Err: fmt.Errorf("x: %w", wechatpay.ErrNotSent)}
	untrusted := &wechatpay.CredentialsError{Credential: wechatpay.CredentialWeChatPayKey, Err: verifyErr()}
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
		{"401 SIGN_ERROR is the worker's settings: the task comes back", signErr, retried, comeBack, reasonCredentials, 5 * time.Second},
		{"401 SIGN_ERROR from the client", &wechatpay.CredentialsError{Credential: wechatpay.CredentialClock, Err: signErr}, fresh, comeBack, reasonCredentials, 5 * time.Second},
		{"401 SIGN_ERROR of a task that made many calls", signErr, manyCalls, failNow, "permanent error", 0},
		{"not sent: the clock is off", clockErr, exhausted, comeBack, reasonNotSent, 5 * time.Second},
		{"not sent: no certificates", fmt.Errorf("x: %w: %w", wechatpay.ErrNotSent, netErr()), exhausted, comeBack, reasonNotSent, 5 * time.Second},
		{"unverifiable answer while the worker runs", untrusted, fresh, comeBack, reasonCredentials, time.Second},
		{"unverifiable answer of a task that made many calls", untrusted, manyCalls, retryLater, outcomeVerifyError, 0},
		{"unverifiable answer once the worker stopped for it", untrusted, stopped, comeBack, reasonCredentials, 5 * time.Second},
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

// TestGateTrips: credentials errors from three different tasks in a row
// stop the worker; one task failing thrice, or a streak broken by an
// answer that shows the signature accepted, does not; a call refused for
// the clock stops it at once.
func TestGateTrips(t *testing.T) {
	t.Parallel()
	signErr := apiErr(401, wechatpay.CodeSignError, "")
	clockErr := &wechatpay.CredentialsError{Credential: wechatpay.CredentialClock, Err: fmt.Errorf("x: %w", wechatpay.ErrNotSent)}
	type call struct {
		task string
		err  error
	}
	tests := []struct {
		name  string
		calls []call
		open  bool
	}{
		{"three tasks in a row", []call{{"a", signErr}, {"b", signErr}, {"c", signErr}}, false},
		{"one task thrice", []call{{"a", signErr}, {"a", signErr}, {"a", signErr}}, true},
		{"broken by a success", []call{{"a", signErr}, {"b", signErr}, {"x", nil}, {"c", signErr}}, true},
		{"broken by a 404", []call{{"a", signErr}, {"b", signErr}, {"x", apiErr(404, wechatpay.CodeNotFound, "")}, {"c", signErr}}, true},
		{"not broken by a 500", []call{{"a", signErr}, {"b", signErr}, {"x", apiErr(500, wechatpay.CodeSystemError, "")}, {"c", signErr}}, false},
		{"not broken by a network error", []call{{"a", signErr}, {"x", netErr()}, {"b", signErr}, {"c", signErr}}, false},
		{"the clock at once", []call{{"a", clockErr}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			g := newGate(slog.New(slog.DiscardHandler))
			g.arm()
			g.set(true, nil)
			for _, c := range tt.calls {
				g.observe(c.task, c.err)
			}
			if open, _, reason := g.state(); open != tt.open {
				t.Errorf("open = %v (%v), want %v", open, reason, tt.open)
			}
		})
	}
}

// TestClassifyNotSent: a call the client would not send is recorded as
// NOT_SENT, not as a client error.
func TestClassifyNotSent(t *testing.T) {
	t.Parallel()
	err := &wechatpay.CredentialsError{Credential: wechatpay.CredentialClock, Err: fmt.Errorf("x: %w", wechatpay.ErrNotSent)}
	if _, a := classify(err); a.ErrorCode != CodeNotSent {
		t.Errorf("error_code = %q, want %s", a.ErrorCode, CodeNotSent)
	}
}
