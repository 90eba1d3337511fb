package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"slices"
	"time"

	"github.com/hibiken/asynq"

	"github.com/couponq/couponq/internal/results"
	"github.com/couponq/couponq/tasks"
	"github.com/couponq/couponq/wechatpay"
)

// storeTimeout bounds result writes made after the handler's context may
// have ended (a shutdown during the call): the outcome is still recorded.
const storeTimeout = 10 * time.Second

// deferError hands a task back to the queue after a 429 without counting a
// failure: IsFailure reports false and RetryDelayFunc waits RetryAfter.
type deferError struct {
	op    tasks.Op
	after time.Duration
	err   error
}

func (e *deferError) Error() string {
	return fmt.Sprintf("worker: %s rate limited, retry in %v: %v", e.op, e.after, e.err)
}

// Unwrap returns the API error.
func (e *deferError) Unwrap() error { return e.err }

// RetryAfter is how long to wait before the next attempt.
func (e *deferError) RetryAfter() time.Duration { return e.after }

// run is one execution of a task's handler.
type run struct {
	w          *Worker
	c          *change
	taskID     string
	log        *slog.Logger
	retried    int  // asynq retries so far
	maxRetry   int  // min(Config.MaxRetry, the task's asynq max retry)
	asynqMax   int  // the task's asynq max retry; asynq archives a failure at retried >= asynqMax
	hasMax     bool // asynqMax is known (false when ProcessTask is called directly)
	calls      int  // API calls made in this run
	priorCalls int  // API calls recorded by earlier runs, as Store.Begin read them
}

// process is the asynq handler of all three task types.
func (w *Worker) process(ctx context.Context, t *asynq.Task) error {
	c, decErr := decodePayload(t.Type(), t.Payload())
	taskID, ok := asynq.GetTaskID(ctx)
	if !ok || taskID == "" {
		if c.op == "" || c.brandID == "" || c.outRequestNo == "" {
			if decErr == nil {
				decErr = errors.New("no out_request_no to name the task by")
			}
			return fmt.Errorf("worker: %s task without a task ID: %w: %w", t.Type(), decErr, asynq.SkipRetry)
		}
		taskID = tasks.TaskID(c.op, c.brandID, c.outRequestNo)
	}
	r := &run{w: w, c: c, taskID: taskID, maxRetry: w.cfg.MaxRetry}
	r.retried, _ = w.retryCount(ctx)
	if r.asynqMax, r.hasMax = w.maxRetry(ctx); r.hasMax {
		r.maxRetry = min(r.maxRetry, r.asynqMax)
	}
	r.log = w.log.With("task_id", taskID, "op", string(c.op), "out_request_no", c.outRequestNo, "attempt", r.retried+1)

	st, priorCalls, err := w.store.Begin(ctx, results.Identity{TaskID: taskID, Op: string(c.op), BrandID: c.brandID,
		ProductCouponID: c.productCouponID, OutRequestNo: c.outRequestNo})
	if err != nil {
		return fmt.Errorf("worker: %w", err)
	}
	r.priorCalls = priorCalls
	if st.Terminal() {
		r.log.Info("task already finished; re-delivery skipped", "status", string(st))
		return nil
	}
	if decErr != nil {
		a := results.Attempt{ErrorCode: CodeInvalidPayload, ErrorMessage: clip(decErr.Error())}
		return r.finish(ctx, tasks.StatusFailed, a, fmt.Errorf("worker: invalid payload: %w: %w", decErr, asynq.SkipRetry))
	}
	return r.execute(ctx)
}

func (r *run) execute(ctx context.Context) error {
	if err := r.wait(ctx, r.c.op); err != nil {
		return err
	}
	coupon, err := r.call(ctx, r.c.op)
	if err == nil {
		return r.succeed(ctx, coupon)
	}
	_, a := classify(err)
	if ctx.Err() != nil && !errors.Is(ctx.Err(), context.DeadlineExceeded) {
		// Shut down during the call: asynq hands the task back; the call
		// may have been applied, so the next run may reconcile.
		r.retrying(ctx, a, "interrupted")
		return fmt.Errorf("worker: interrupted: %w", err)
	}
	if d, limited := wechatpay.IsRateLimited(err); limited {
		if d <= 0 {
			d = r.w.cfg.RetryBase
		}
		berr := detached(ctx, func(ctx context.Context) error { return r.w.limiter.Backoff(ctx, string(r.c.op), d) })
		if berr != nil {
			r.log.Warn("rate limiter backoff failed", "err", berr)
		}
		return r.deferTask(ctx, a, "rate_limited", &deferError{op: r.c.op, after: d, err: err})
	}
	if wechatpay.IsRetryable(err) || errors.Is(err, context.DeadlineExceeded) {
		return r.retryOrGiveUp(ctx, a, err)
	}
	if r.c.op != tasks.OpGet && mayBeAlreadyApplied(err) && r.mayHaveAppliedBefore() {
		return r.reconcile(ctx, a, err)
	}
	return r.finish(ctx, tasks.StatusFailed, a, fmt.Errorf("worker: permanent error: %w: %w", err, asynq.SkipRetry))
}

// wait takes a rate-limit slot for op. A slot beyond LimiterMaxWait hands
// the task back without counting a failure.
func (r *run) wait(ctx context.Context, op tasks.Op) error {
	waited, err := r.w.limiter.Wait(ctx, string(op), r.w.cfg.LimiterMaxWait)
	r.w.metrics.ObserveLimiterWait(string(op), waited)
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return fmt.Errorf("worker: interrupted waiting for a %s slot: %w", op, err)
	}
	if d, ok := retryAfter(err); ok {
		a := results.Attempt{ErrorCode: CodeRateLimited, ErrorMessage: clip(fmt.Sprintf("rate limit: next %s slot in %v", op, d))}
		return r.deferTask(ctx, a, "rate_limited_local", fmt.Errorf("worker: %w", err))
	}
	return fmt.Errorf("worker: rate limiter: %w", err)
}

// call makes one API call for op and reports it.
func (r *run) call(ctx context.Context, op tasks.Op) (*wechatpay.ProductCoupon, error) {
	start := time.Now()
	var (
		coupon *wechatpay.ProductCoupon
		err    error
	)
	switch op {
	case tasks.OpUpdate:
		coupon, err = r.w.api.UpdateProductCoupon(ctx, r.c.update)
	case tasks.OpDeactivate:
		coupon, err = r.w.api.DeactivateProductCoupon(ctx, r.c.deactivate)
	default:
		coupon, err = r.w.api.GetProductCoupon(ctx, &wechatpay.GetProductCouponRequest{
			ProductCouponID: r.c.productCouponID, BrandID: r.c.brandID})
	}
	r.calls++
	d := time.Since(start)
	if err == nil && coupon == nil {
		err = errors.New("wechatpay: empty answer")
	}
	if err != nil {
		outcome, a := classify(err)
		r.w.metrics.ObserveCall(string(op), outcome, a.ErrorCode, d)
		r.log.Debug("call failed", "call", string(op), "err", err, "duration", d)
		return nil, err
	}
	r.w.metrics.ObserveCall(string(op), outcomeSuccess, "", d)
	return coupon, nil
}

func (r *run) succeed(ctx context.Context, coupon *wechatpay.ProductCoupon) error {
	raw := []byte(coupon.Raw)
	if len(raw) == 0 {
		var err error
		if raw, err = json.Marshal(coupon); err != nil {
			raw = nil
		}
	}
	a := results.Attempt{HTTPStatus: 200, Coupon: raw, CouponState: string(coupon.State)}
	return r.finish(ctx, tasks.StatusSucceeded, a, nil)
}

// retryOrGiveUp handles a retryable error: retrying while retries remain,
// failed (and archived through SkipRetry) once they are used up.
func (r *run) retryOrGiveUp(ctx context.Context, a results.Attempt, err error) error {
	if r.retried >= r.maxRetry {
		return r.finish(ctx, tasks.StatusFailed, a,
			fmt.Errorf("worker: giving up after %d attempts: %w: %w", r.retried+1, err, asynq.SkipRetry))
	}
	outcome, _ := classify(err)
	if rerr := r.retrying(ctx, a, outcome); rerr != nil {
		return fmt.Errorf("%w (and %w)", err, rerr)
	}
	return err
}

// deferTask hands the task back for a rate limit. asynq archives any error
// once retried reaches its max retry, rate limits included, so on that last
// run the task fails here rather than in the archive.
func (r *run) deferTask(ctx context.Context, a results.Attempt, reason string, err error) error {
	if r.hasMax && r.retried >= r.asynqMax {
		return r.finish(ctx, tasks.StatusFailed, a,
			fmt.Errorf("worker: giving up after %d attempts: %w: %w", r.retried+1, err, asynq.SkipRetry))
	}
	if rerr := r.retrying(ctx, a, reason); rerr != nil {
		return fmt.Errorf("%w (and %w)", err, rerr)
	}
	return err
}

func (r *run) retrying(ctx context.Context, a results.Attempt, reason string) error {
	a.Calls = r.calls
	r.w.metrics.ObserveRetry(string(r.c.op), reason)
	err := detached(ctx, func(ctx context.Context) error { return r.w.store.Retrying(ctx, r.taskID, a) })
	if err != nil {
		r.log.Error("cannot record retry", "err", err)
		return err
	}
	r.log.Info("will retry", "reason", reason, "error_code", a.ErrorCode, "request_id", a.RequestID)
	return nil
}

// finish records the terminal outcome (once; a second finish changes
// nothing) and returns ret. If the result cannot be written the task is
// retried instead, so the outcome is never lost.
func (r *run) finish(ctx context.Context, st tasks.Status, a results.Attempt, ret error) error {
	a.Calls = r.calls
	var done bool
	err := detached(ctx, func(ctx context.Context) (err error) {
		done, err = r.w.store.Finish(ctx, r.taskID, st, a)
		return err
	})
	if err != nil {
		r.log.Error("cannot record outcome; the task will run again", "status", string(st), "err", err)
		return fmt.Errorf("worker: %w", err)
	}
	if done {
		r.w.metrics.ObserveTerminal(string(r.c.op), st)
	}
	attrs := []any{"status", string(st), "calls", r.calls}
	if a.ErrorCode != "" {
		attrs = append(attrs, "error_code", a.ErrorCode, "http_status", a.HTTPStatus, "request_id", a.RequestID)
	}
	if st == tasks.StatusSucceeded {
		r.log.Info("task finished", attrs...)
	} else {
		r.log.Warn("task finished", attrs...)
	}
	return ret
}

// mayHaveAppliedBefore reports whether an earlier run of this task may have
// reached WeChat Pay: asynq retried it, or its result counts API calls (a
// run interrupted by a shutdown is handed back without counting a retry).
// The count is the one Store.Begin read as this run began.
func (r *run) mayHaveAppliedBefore() bool {
	return r.retried > 0 || r.priorCalls > 0
}

// reconcile decides a refused retry of a write from the coupon itself: a
// GET shows whether our earlier attempt took effect (deactivate_request_no
// is our out_request_no; display_info holds what we sent).
func (r *run) reconcile(ctx context.Context, orig results.Attempt, origErr error) error {
	fail := func() error {
		return r.finish(ctx, tasks.StatusFailed, orig, fmt.Errorf("worker: permanent error: %w: %w", origErr, asynq.SkipRetry))
	}
	if err := r.wait(ctx, tasks.OpGet); err != nil {
		return err
	}
	got, err := r.call(ctx, tasks.OpGet)
	if err != nil {
		if wechatpay.IsRetryable(err) {
			// Cannot tell yet: retry the write (same out_request_no) later.
			return r.retryOrGiveUp(ctx, orig, fmt.Errorf("worker: reconcile %w after: %w", err, origErr))
		}
		r.log.Warn("reconcile GET failed", "err", err)
		return fail()
	}
	applied := false
	switch r.c.op {
	case tasks.OpDeactivate:
		applied = got.DeactivateRequestNo == r.c.outRequestNo
	case tasks.OpUpdate:
		applied = displayInfoApplied(r.c.update.DisplayInfo, got.DisplayInfo)
	}
	r.log.Info("reconciled a refused retry", "applied", applied, "error_code", orig.ErrorCode, "coupon_state", string(got.State))
	if !applied {
		return fail()
	}
	return r.succeed(ctx, got)
}

// displayInfoApplied reports whether got shows every field of sent that
// was sent (zero values are omitted from the request).
func displayInfoApplied(sent, got *wechatpay.DisplayInfo) bool {
	if sent == nil {
		return true
	}
	if got == nil {
		return false
	}
	str := func(s, g string) bool { return s == "" || s == g }
	return str(sent.Name, got.Name) &&
		str(sent.ImageURL, got.ImageURL) &&
		str(sent.BackgroundURL, got.BackgroundURL) &&
		(len(sent.DetailImageURLList) == 0 || slices.Equal(sent.DetailImageURLList, got.DetailImageURLList)) &&
		(sent.OriginalPrice == 0 || sent.OriginalPrice == got.OriginalPrice) &&
		(len(sent.ComboPackageList) == 0 || reflect.DeepEqual(sent.ComboPackageList, got.ComboPackageList))
}

// detached runs f with a context that outlives a cancelled handler context
// (the outcome of a call made is always recorded), bounded by storeTimeout.
func detached(ctx context.Context, f func(context.Context) error) error {
	c, cancel := context.WithTimeout(context.WithoutCancel(ctx), storeTimeout)
	defer cancel()
	return f(c)
}
