package worker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/hibiken/asynq"

	"github.com/couponq/couponq/internal/results"
	"github.com/couponq/couponq/tasks"
	"github.com/couponq/couponq/wechatpay"
)

// storeTimeout bounds result writes made after the handler's context may
// have ended (a shutdown during the call): the outcome is still recorded.
const storeTimeout = 10 * time.Second

// run is one execution of a task's handler.
type run struct {
	w          *Worker
	c          *change
	taskID     string
	log        *slog.Logger // built by logger on first use
	retried    int          // asynq retries so far
	calls      int          // API calls made in this run
	recorded   int          // of which already added to the result's attempts
	priorCalls int          // API calls recorded by earlier runs, as Store.Begin read them
	lastOp     tasks.Op     // the endpoint of the last call, which a 429 slows down
	batch      string       // the task's batch, as admit read it ("" = none)
	// request is the body an earlier run fixed, as admit read it
	// (requestRead: it was read; nil: none was fixed).
	request     []byte
	requestRead bool
	nonce       string // names this run in its retry records (retryToken)
	records     int    // retry records made by this run
}

// retryToken names the next retry record of this run: the store adds a
// record's calls once, however often the record is sent.
func (r *run) retryToken() string {
	if r.nonce == "" {
		var b [8]byte
		_, _ = rand.Read(b[:])
		r.nonce = hex.EncodeToString(b[:])
	}
	r.records++
	return r.nonce + "/" + strconv.Itoa(r.records)
}

// logger is the worker's logger with the task's attributes. It is built on
// the first line the run logs: a task that logs nothing at the handler's
// level (most, at info) pays nothing for it (slog's JSON handler encodes
// With's attributes when With is called).
func (r *run) logger() *slog.Logger {
	if r.log == nil {
		r.log = r.w.log.With("task_id", r.taskID, "op", string(r.c.op), "out_request_no", r.c.outRequestNo, "attempt", r.retried+1)
	}
	return r.log
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
	if err := w.gate.admit(); err != nil {
		// Taken in the moment the gate closed: back to the queue, its result
		// untouched and no retry counted (Run stops the server meanwhile).
		w.metrics.ObserveRetry(string(c.op), reasonGated)
		return &comeBackError{reason: reasonGated, after: w.cfg.ProbeInterval, err: fmt.Errorf("worker: not taking tasks: %w", err)}
	}
	if err := notYet(c, time.Now()); err != nil {
		// Scheduled for later: back to the queue until then, its result
		// untouched (still queued) and no retry counted.
		w.metrics.ObserveRetry(string(c.op), reasonNotBefore)
		return err
	}
	r := &run{w: w, c: c, taskID: taskID}
	r.retried, _ = w.retryCount(ctx)

	// A canceled batch, or an earlier write to the coupon, keeps it from
	// starting (order.go).
	done, begun, err := r.admit(ctx, t, decErr == nil)
	if done {
		return err
	}
	if !begun {
		st, priorCalls, err := w.store.Begin(ctx, r.identity())
		if err != nil {
			return fmt.Errorf("worker: %w", err)
		}
		r.priorCalls = priorCalls
		if st.Terminal() {
			r.logger().Info("task already finished; re-delivery skipped", "status", string(st))
			r.released(ctx)
			return nil
		}
	}
	if decErr != nil {
		a := results.Attempt{ErrorCode: CodeInvalidPayload, ErrorMessage: clip(decErr.Error())}
		return r.finish(ctx, tasks.StatusFailed, a, fmt.Errorf("worker: invalid payload: %w: %w", decErr, asynq.SkipRetry))
	}
	return r.execute(ctx)
}

// maxStays is how many 429s in a row a run rides out in the handler (stay)
// before it hands the task back to asynq.
const maxStays = 3

func (r *run) execute(ctx context.Context) error {
	switch r.c.op {
	case tasks.OpUpdate:
		if done, err := r.prepareUpdate(ctx); done {
			return err
		}
	case tasks.OpDeactivate:
		if done, err := r.prepareDeactivate(ctx); done {
			return err
		}
	}
	for stays := 0; ; stays++ {
		if err := r.wait(ctx, r.c.op); err != nil {
			return err
		}
		coupon, err := r.call(ctx, r.c.op)
		if err == nil {
			return r.succeed(ctx, coupon)
		}
		v := r.judge(ctx, err)
		if v.action == reconcile {
			return r.reconcile(ctx, v, err)
		}
		if stays < maxStays && r.stay(ctx, v) {
			continue
		}
		return r.act(ctx, v, err)
	}
}

// stay rides out a 429 within the handler when WeChat Pay's Retry-After is
// no longer than the limiter's wait: it records the attempt, slows every
// worker down as act would (Backoff) and reports true, so the call is made
// again on the next free slot of the shared limiter. The limiter, not the
// Retry-After, paces the endpoint: it already keeps every window at the
// quota and books empty slots when 429s cluster. Going back through asynq's
// delayed set, or sleeping the Retry-After, costs a second or more, which
// at the end of a batch is time the quota stands idle (3% of a 30 s batch).
func (r *run) stay(ctx context.Context, v verdict) bool {
	if v.action != comeBack || v.reason != reasonRateLimited || v.after > r.w.cfg.LimiterMaxWait || ctx.Err() != nil {
		return false
	}
	if berr := detached(ctx, func(ctx context.Context) error { return r.w.limiter.Backoff(ctx, string(r.lastOp), v.after) }); berr != nil {
		r.logger().Warn("rate limiter backoff failed", "err", berr)
	}
	a := v.attempt
	a.Calls = r.calls - r.recorded
	r.w.metrics.ObserveRetry(string(r.c.op), v.reason)
	a.Token = r.retryToken()
	if err := detached(ctx, func(ctx context.Context) error { return r.w.store.Retrying(ctx, r.taskID, a) }); err != nil {
		r.logger().Warn("cannot record a 429 ridden out in the handler", "err", err)
	} else {
		r.recorded = r.calls
	}
	r.logger().Debug("429: calling again on the next slot", "retry_after", v.after)
	return true
}

// judge is the verdict on err for this run.
func (r *run) judge(ctx context.Context, err error) verdict {
	return judge(err, attemptState{
		op:           r.c.op,
		retried:      r.retried,
		maxRetry:     r.w.cfg.MaxRetry,
		applied:      r.mayHaveAppliedBefore(),
		shutdown:     ctx.Err() != nil && !errors.Is(ctx.Err(), context.DeadlineExceeded),
		defaultAfter: r.w.cfg.RetryBase,
		calls:        r.priorCalls + r.calls,
		gateClosed:   r.w.gate.admit() != nil,
		probeAfter:   r.w.cfg.ProbeInterval,
	})
}

// act carries out a verdict other than reconcile and returns the handler's
// error for asynq.
func (r *run) act(ctx context.Context, v verdict, err error) error {
	if (v.action == comeBack || v.action == retryLater) && r.canceledMeanwhile(ctx) {
		return r.cancelInsteadOfRetry(ctx, v)
	}
	switch v.action {
	case comeBack:
		if v.reason == reasonRateLimited {
			// WeChat Pay refused the call: slow every worker down a little.
			berr := detached(ctx, func(ctx context.Context) error { return r.w.limiter.Backoff(ctx, string(r.lastOp), v.after) })
			if berr != nil {
				r.logger().Warn("rate limiter backoff failed", "err", berr)
			}
		}
		var cb *comeBackError
		if !errors.As(err, &cb) {
			err = &comeBackError{reason: v.reason, after: v.after, err: err}
		}
		return r.retrying(ctx, v, err)
	case retryLater:
		return r.retrying(ctx, v, err)
	case handBack:
		_ = r.retrying(ctx, v, nil)
		return fmt.Errorf("worker: interrupted: %w", err)
	default: // failNow
		return r.finish(ctx, tasks.StatusFailed, v.attempt, fmt.Errorf("worker: %s: %w: %w", v.reason, err, asynq.SkipRetry))
	}
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
	var rl *RateLimitedError
	if !errors.As(err, &rl) {
		return fmt.Errorf("worker: rate limiter: %w", err)
	}
	// act wraps it as the come-back judge finds it to be.
	return r.act(ctx, judge(err, attemptState{op: op}), err)
}

// call makes one API call for op and reports it.
func (r *run) call(ctx context.Context, op tasks.Op) (*wechatpay.ProductCoupon, error) {
	start := time.Now()
	r.lastOp = op
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
	if !errors.Is(err, wechatpay.ErrNotSent) {
		r.calls++ // attempts counts the calls WeChat Pay saw
	}
	r.w.gate.observe(r.taskID, err)
	d := time.Since(start)
	if err == nil && coupon == nil {
		err = errors.New("wechatpay: empty answer")
	}
	if err != nil {
		outcome, a := classify(err)
		r.w.metrics.ObserveCall(string(op), outcome, a.ErrorCode, d)
		r.logger().Debug("call failed", "call", string(op), "err", err, "duration", d)
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

// retrying records a non-terminal attempt and returns err for asynq (with
// the recording's own error, if any, joined to it).
func (r *run) retrying(ctx context.Context, v verdict, err error) error {
	a := v.attempt
	a.Calls = r.calls - r.recorded
	r.w.metrics.ObserveRetry(string(r.c.op), v.reason)
	a.Token = r.retryToken()
	rerr := detached(ctx, func(ctx context.Context) error { return r.w.store.Retrying(ctx, r.taskID, a) })
	if rerr != nil {
		r.logger().Error("cannot record retry", "err", rerr)
		if err == nil {
			return rerr
		}
		return fmt.Errorf("%w (and %w)", err, rerr)
	}
	r.logger().Info("will retry", "reason", v.reason, "action", v.action.String(), "error_code", a.ErrorCode, "request_id", a.RequestID)
	return err
}

// finish records the terminal outcome (once; a second finish changes
// nothing) and returns ret. If the result cannot be written the task is
// retried instead, so the outcome is never lost.
func (r *run) finish(ctx context.Context, st tasks.Status, a results.Attempt, ret error) error {
	a.Calls = r.calls - r.recorded
	var (
		done    bool
		wake    []string
		release []results.OrderEntry
	)
	if r.ordered() {
		// Released from its coupon's order in the batch step's round trip.
		release = []results.OrderEntry{r.orderEntry()}
	}
	err := detached(ctx, func(ctx context.Context) (err error) {
		done, wake, err = r.w.store.FinishAndRelease(ctx, r.taskID, r.batch, st, a, release)
		return err
	})
	if err != nil {
		r.logger().Error("cannot record outcome; the task will run again", "status", string(st), "err", err)
		return fmt.Errorf("worker: %w", err)
	}
	if done {
		r.w.metrics.ObserveTerminal(string(r.c.op), st)
	}
	r.w.wakeSoon(ctx, wake)
	attrs := []any{"status", string(st), "calls", r.calls}
	if a.ErrorCode != "" {
		attrs = append(attrs, "error_code", a.ErrorCode, "http_status", a.HTTPStatus, "request_id", a.RequestID)
	}
	if st == tasks.StatusSucceeded {
		// Debug: a line per success is a JSON encoding per task at the
		// default level; the result hash and the metrics record it.
		r.logger().Debug("task finished", attrs...)
	} else {
		r.logger().Warn("task finished", attrs...)
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
func (r *run) reconcile(ctx context.Context, orig verdict, origErr error) error {
	fail := func() error {
		return r.act(ctx, verdict{action: failNow, reason: "permanent error", attempt: orig.attempt}, origErr)
	}
	if err := r.wait(ctx, tasks.OpGet); err != nil {
		return err
	}
	got, err := r.call(ctx, tasks.OpGet)
	if err != nil {
		v := r.judge(ctx, err)
		switch v.action {
		case retryLater, comeBack, handBack:
			// Cannot tell yet: try the write again (same out_request_no)
			// later, recording the write's refusal.
			v.attempt = orig.attempt
			return r.act(ctx, v, fmt.Errorf("worker: reconcile %w after: %w", err, origErr))
		}
		r.logger().Warn("reconcile GET failed", "err", err)
		return fail()
	}
	applied := false
	switch r.c.op {
	case tasks.OpDeactivate:
		applied = got.DeactivateRequestNo == r.c.outRequestNo
	case tasks.OpUpdate:
		applied = displayInfoApplied(r.c.update.DisplayInfo, got.DisplayInfo)
	}
	r.logger().Info("reconciled a refused retry", "applied", applied, "error_code", orig.attempt.ErrorCode, "coupon_state", string(got.State))
	if !applied {
		return fail()
	}
	return r.succeed(ctx, got)
}

// displayInfoApplied reports whether got shows every field of sent that
// was sent (a field the line did not name is not compared).
func displayInfoApplied(sent, got *wechatpay.DisplayInfo) bool {
	if sent == nil {
		return true
	}
	_, changed, err := wechatpay.MergeDisplayInfo(&wechatpay.ProductCoupon{DisplayInfo: got}, sent)
	return err == nil && !changed
}

// detached runs f with a context that outlives a cancelled handler context
// (the outcome of a call made is always recorded), bounded by storeTimeout.
func detached(ctx context.Context, f func(context.Context) error) error {
	c, cancel := context.WithTimeout(context.WithoutCancel(ctx), storeTimeout)
	defer cancel()
	return f(c)
}
