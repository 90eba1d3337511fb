package worker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/couponq/couponq/internal/results"
	"github.com/couponq/couponq/tasks"
	"github.com/couponq/couponq/wechatpay"
)

// action is what a failed attempt means for its task.
type action int

const (
	// retryLater counts a failure and runs the task again after the retry
	// policy's delay, with the same out_request_no and body.
	retryLater action = iota + 1
	// comeBack hands the task back without counting a failure (a 429, or
	// no local rate-limit slot soon enough), after verdict.after.
	comeBack
	// handBack returns the task to asynq as the worker shuts down; the call
	// may have been applied, so the next run may reconcile.
	handBack
	// reconcile asks the coupon (GET) whether an earlier attempt of a
	// refused write took effect.
	reconcile
	// failNow records the task as failed; asynq archives it.
	failNow
)

func (a action) String() string {
	switch a {
	case retryLater:
		return "retry"
	case comeBack:
		return "come back"
	case handBack:
		return "hand back"
	case reconcile:
		return "reconcile"
	case failNow:
		return "fail"
	}
	return fmt.Sprintf("action(%d)", int(a))
}

// verdict is the decision on one failed attempt, with its reason.
type verdict struct {
	action  action
	reason  string          // the metrics and log label of a retry, or why it fails
	after   time.Duration   // comeBack: how long to wait
	outcome string          // the call outcome label (classify)
	attempt results.Attempt // the result-hash fields of the attempt
}

// attemptState is what judge needs to know besides the error.
type attemptState struct {
	op       tasks.Op
	retried  int  // retries counted so far (asynq's Retried)
	maxRetry int  // Config.MaxRetry: retries allowed; NoRetry (-1) or more
	applied  bool // an earlier attempt of this task may have reached WeChat Pay
	shutdown bool // the handler's context was cancelled (not its deadline)
	// defaultAfter is the wait of a 429 that named none (Config.RetryBase).
	defaultAfter time.Duration
	calls        int           // API calls of the task so far, this one included
	gateClosed   bool          // the worker stopped taking tasks for its credentials
	probeAfter   time.Duration // Config.ProbeInterval: the wait of a come-back for the worker's own fault
}

// judge decides what a failed attempt means. It is the one place that reads
// the protocol's retry table (wechatpay.IsRetryable, IsRateLimited and the
// codes that may mean "already applied"); every row has a case in
// TestJudge.
func judge(err error, s attemptState) verdict {
	outcome, a := classify(err)
	v := verdict{outcome: outcome, attempt: a}
	var cb *comeBackError
	var rl *RateLimitedError
	_, credentials := credentialsFault(err)
	switch {
	case s.shutdown:
		v.action, v.reason = handBack, "interrupted"
	case errors.As(err, &cb):
		v.action, v.reason, v.after = comeBack, cb.reason, cb.after
	case errors.Is(err, wechatpay.ErrNotSent):
		// WeChat Pay never saw it (the clock is off, the certificates
		// could not be had): not the task's attempt.
		v.action, v.reason, v.after = comeBack, reasonNotSent, s.probeAfter
	case credentials && (s.gateClosed || s.calls < maxCredentialCalls):
		// 401 SIGN_ERROR, or an answer that does not verify, is the
		// worker's settings or clock, never the task's: the task waits for
		// a worker that can do it (the gate counts these and stops this
		// one). Its calls stay recorded, so a write that may have been
		// applied is reconciled when it runs again.
		v.action, v.reason, v.after = comeBack, reasonCredentials, s.probeAfter
		if !s.gateClosed && wechatpay.IsRetryable(err) {
			v.after = s.defaultAfter // one unverifiable answer: try again soon
		}
	case errors.As(err, &rl):
		// No local slot within LimiterMaxWait: nothing was sent.
		v.action, v.reason, v.after = comeBack, reasonRateLimitedLocal, rl.RetryIn
		v.attempt = results.Attempt{ErrorCode: CodeRateLimited,
			ErrorMessage: clip(fmt.Sprintf("rate limit: next %s slot in %v", s.op, rl.RetryIn))}
	case isRateLimited(err):
		d, _ := wechatpay.IsRateLimited(err)
		if d <= 0 {
			d = s.defaultAfter
		}
		v.action, v.reason, v.after = comeBack, reasonRateLimited, d
	case wechatpay.IsRetryable(err) || errors.Is(err, context.DeadlineExceeded):
		if s.retried >= s.maxRetry {
			v.action, v.reason = failNow, fmt.Sprintf("giving up after %d attempts", s.retried+1)
		} else {
			v.action, v.reason = retryLater, outcome
		}
	case s.op != tasks.OpGet && s.applied && mayBeAlreadyApplied(err):
		v.action, v.reason = reconcile, "refused repeat of a write that may have been applied"
	default:
		v.action, v.reason = failNow, "permanent error"
	}
	return v
}

// isRateLimited reports a 429 that WeChat Pay did not process. A 429 that
// carries the key-reused internal code is a refusal, not a rate limit.
func isRateLimited(err error) bool {
	var ae *wechatpay.APIError
	if errors.As(err, &ae) && ae.InternalCode() == wechatpay.InternalOutRequestNoReused {
		return false
	}
	_, limited := wechatpay.IsRateLimited(err)
	return limited
}

// Retry reasons of comeBack verdicts, as Metrics.ObserveRetry labels.
const (
	reasonRateLimited      = "rate_limited"       // WeChat Pay answered 429
	reasonRateLimitedLocal = "rate_limited_local" // couponq's limiter had no slot soon enough
	reasonCredentials      = "credentials"        // 401 SIGN_ERROR or an unverifiable answer: the worker's settings
	reasonNotSent          = "not_sent"           // the client did not send the call (clock off, no certificates)
	reasonGated            = "gated"              // the worker had stopped taking tasks for its credentials
	reasonNotBefore        = "not_before"         // the change is scheduled for later (not_before)
)

// comeBackError is the one "come back later" the worker hands asynq: the
// task runs again after RetryAfter without counting a failure (IsFailure
// reports false, RetryPolicy waits RetryAfter).
type comeBackError struct {
	reason string
	after  time.Duration
	err    error
}

func (e *comeBackError) Error() string {
	return fmt.Sprintf("worker: come back in %v (%s): %v", e.after, e.reason, e.err)
}

// Unwrap returns the cause.
func (e *comeBackError) Unwrap() error { return e.err }

// RetryAfter is how long to wait before the next attempt.
func (e *comeBackError) RetryAfter() time.Duration { return e.after }
