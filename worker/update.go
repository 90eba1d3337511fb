package worker

import (
	"context"
	"fmt"

	"github.com/couponq/couponq/internal/results"
	"github.com/couponq/couponq/tasks"
	"github.com/couponq/couponq/wechatpay"
	"github.com/hibiken/asynq"
)

// CodeMergeFailed is the error_code of an update whose coupon's
// display_info could not be merged with the change (WeChat Pay answered a
// display_info that is not a JSON object).
const CodeMergeFailed = "MERGE_FAILED"

// storedRequest is the body an earlier run fixed, nil if none: as admit
// read it with the task's start state, or read now.
func (r *run) storedRequest(ctx context.Context) ([]byte, error) {
	if r.requestRead {
		return r.request, nil
	}
	return r.w.store.Request(ctx, r.taskID)
}

// prepareUpdate fixes the body of an update before its first PATCH, as
// SPEC's "Updates are partial" says: the line names only the fields it
// changes, WeChat Pay documents name and both images as required and does
// not say whether PATCH merges or replaces, so the worker reads the coupon
// (GET, on the GET endpoint's quota), merges the line into its
// display_info and stores the body in the result. A body stored by an
// earlier run (a retry, a re-delivery after a crash) is read back instead,
// so every attempt of one out_request_no sends the same bytes. An update
// that would change nothing is not sent: it succeeds, marked unchanged.
//
// done reports that the run is over; err is then the handler's answer.
func (r *run) prepareUpdate(ctx context.Context) (done bool, err error) {
	body, err := r.storedRequest(ctx)
	if err != nil {
		return true, fmt.Errorf("worker: %w", err)
	}
	if body == nil {
		got, done, err := r.readForUpdate(ctx)
		if done {
			return true, err
		}
		merged, changed, err := wechatpay.MergeDisplayInfo(got, r.c.update.DisplayInfo)
		if err != nil {
			a := results.Attempt{HTTPStatus: 200, ErrorCode: CodeMergeFailed, ErrorMessage: clip(err.Error())}
			return true, r.finish(ctx, tasks.StatusFailed, a, fmt.Errorf("worker: %w: %w", err, asynq.SkipRetry))
		}
		if !changed {
			if err := detached(ctx, func(ctx context.Context) error { return r.w.store.MarkUnchanged(ctx, r.taskID) }); err != nil {
				return true, fmt.Errorf("worker: %w", err)
			}
			r.logger().Info("update not sent: the coupon already matches it")
			return true, r.succeed(ctx, got)
		}
		enc, err := r.w.api.EncodeUpdate(r.c.update, merged)
		if err != nil {
			a := results.Attempt{ErrorCode: CodeInvalidPayload, ErrorMessage: clip(err.Error())}
			return true, r.finish(ctx, tasks.StatusFailed, a, fmt.Errorf("worker: encoding the update: %w: %w", err, asynq.SkipRetry))
		}
		// The first run to store a body wins; a concurrent one sends it too.
		err = detached(ctx, func(ctx context.Context) (err error) {
			body, err = r.w.store.FixRequest(ctx, r.taskID, enc)
			return err
		})
		if err != nil {
			return true, fmt.Errorf("worker: %w", err)
		}
	}
	req := *r.c.update
	req.Body = body
	r.c.update = &req
	return false, nil
}

// prepareDeactivate fixes a deactivation's body before its first attempt
// and stores it in the result, as every write's is (SPEC: request), so a
// retry or a re-delivery sends the stored bytes.
func (r *run) prepareDeactivate(ctx context.Context) (done bool, err error) {
	body, err := r.storedRequest(ctx)
	if err != nil {
		return true, fmt.Errorf("worker: %w", err)
	}
	if body == nil {
		enc, err := r.w.api.EncodeDeactivate(r.c.deactivate)
		if err != nil {
			a := results.Attempt{ErrorCode: CodeInvalidPayload, ErrorMessage: clip(err.Error())}
			return true, r.finish(ctx, tasks.StatusFailed, a, fmt.Errorf("worker: encoding the deactivation: %w: %w", err, asynq.SkipRetry))
		}
		err = detached(ctx, func(ctx context.Context) (err error) {
			body, err = r.w.store.FixRequest(ctx, r.taskID, enc)
			return err
		})
		if err != nil {
			return true, fmt.Errorf("worker: %w", err)
		}
	}
	req := *r.c.deactivate
	req.Body = body
	r.c.deactivate = &req
	return false, nil
}

// readForUpdate GETs the coupon an update is about to change, riding out
// 429s as execute does. done reports that the run is over (the GET failed
// and its verdict was carried out); err is then the handler's answer.
func (r *run) readForUpdate(ctx context.Context) (coupon *wechatpay.ProductCoupon, done bool, err error) {
	for stays := 0; ; stays++ {
		if err := r.wait(ctx, tasks.OpGet); err != nil {
			return nil, true, err
		}
		got, err := r.call(ctx, tasks.OpGet)
		if err == nil {
			return got, false, nil
		}
		v := r.judge(ctx, err)
		if v.action == reconcile {
			// Nothing of this update was sent yet: a refused GET is final.
			v.action, v.reason = failNow, "permanent error"
		}
		if stays < maxStays && r.stay(ctx, v) {
			continue
		}
		return nil, true, r.act(ctx, v, fmt.Errorf("worker: reading the coupon to update: %w", err))
	}
}
