package tasks

import (
	"context"
	"errors"
	"fmt"
	"sort"

	"github.com/redis/go-redis/v9"

	"github.com/couponq/couponq/internal/results"
)

// Steering a batch after it was enqueued: Retry runs failed and canceled
// tasks again, Cancel stops a batch's tasks that have not started.

// Errors of Retry and Cancel. Test with errors.Is; ErrNotFound (reader.go)
// names an unknown batch or task.
var (
	// ErrNothingToRetry: the batch has no failed or canceled task (with
	// the error code asked for).
	ErrNothingToRetry = errors.New("nothing to retry")
	// ErrNotRetryable: the task is neither failed nor canceled.
	ErrNotRetryable = errors.New("only a failed or canceled task can be retried")
	// ErrBatchFinished: every task of the batch is terminal already.
	ErrBatchFinished = errors.New("batch already finished")
)

// RetryOptions says what Retry runs again: the failed and canceled tasks
// of Batch, or the one task Task.
type RetryOptions struct {
	Batch string
	Task  string
	// Code, when set, retries only the tasks whose error_code is Code
	// (e.g. SIGN_ERROR, or CANCELED for the canceled ones).
	Code string
}

// RetryReport is what Retry did.
type RetryReport struct {
	// Batch is the batch of the tasks retried ("" for a task without one).
	Batch string
	// Retried lists the tasks queued again, sorted; Failed and Canceled
	// count what they were.
	Retried          []string
	Failed, Canceled int
	// NotEnqueued lists tasks queued again whose asynq task could not be
	// confirmed (Redis did not answer): the workers enqueue them after
	// their adoption grace period.
	NotEnqueued map[string]error
}

// retryChunk bounds the tasks handled in one round of Retry or Cancel.
const retryChunk = 500

// resultFields are the fields Retry and Cancel read of each task.
var resultFields = []string{results.FieldStatus, results.FieldOp, results.FieldBrandID,
	results.FieldProductCouponID, results.FieldQueue, results.FieldBatch, results.FieldErrorCode}

// taskHead is what Retry and Cancel read of one task's result.
type taskHead struct {
	id, op, brand, coupon, queue, batch, code string
	status                                    Status
}

func (h taskHead) orderEntry() results.OrderEntry {
	return results.OrderEntry{TaskID: h.id, Op: h.op, BrandID: h.brand, ProductCouponID: h.coupon}
}

// readHeads reads resultFields of each task in one round trip; a task
// without a result has status "".
func readHeads(ctx context.Context, rdb redis.UniversalClient, ids []string) ([]taskHead, error) {
	cmds := make([]*redis.SliceCmd, len(ids))
	if _, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, id := range ids {
			cmds[i] = p.HMGet(ctx, results.ResultKey(id), resultFields...)
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("couponq: read %d results: %w", len(ids), err)
	}
	out := make([]taskHead, len(ids))
	for i, c := range cmds {
		v := c.Val()
		str := func(j int) string { s, _ := v[j].(string); return s }
		out[i] = taskHead{id: ids[i], status: Status(str(0)), op: str(1), brand: str(2), coupon: str(3),
			queue: str(4), batch: str(5), code: str(6)}
	}
	return out, nil
}

// scanBatch calls fn with the results of batchID's tasks, up to
// retryChunk at a time.
func scanBatch(ctx context.Context, rdb redis.UniversalClient, batchID string, fn func([]taskHead) error) error {
	var cursor uint64
	for {
		ids, next, err := rdb.SScan(ctx, results.BatchTasksKey(batchID), cursor, "", retryChunk).Result()
		if err != nil {
			return fmt.Errorf("couponq: scan batch %s: %w", batchID, err)
		}
		if len(ids) > 0 {
			heads, err := readHeads(ctx, rdb, ids)
			if err != nil {
				return err
			}
			if err := fn(heads); err != nil {
				return err
			}
		}
		if cursor = next; cursor == 0 {
			return nil
		}
	}
}

// Retry runs failed and canceled tasks again (couponq retry): each keeps
// its task ID, out_request_no and payload, goes back to queued with its
// runs incremented, and its batch's counters move with it (the batch is
// unfinished, and no longer canceled). A retried write goes behind every
// change enqueued to its coupon so far. The asynq task of a failed task
// (archived) is replaced by a fresh one, so the retry has its whole retry
// budget and asynqmon shows it pending.
//
// An unknown batch or task is ErrNotFound; a batch with nothing to retry,
// ErrNothingToRetry; a task that is not failed or canceled,
// ErrNotRetryable. Retry is safe to run again: what is queued already is
// left alone.
func (p *Producer) Retry(ctx context.Context, opts RetryOptions) (*RetryReport, error) {
	rdb := p.rdb
	rep := &RetryReport{Batch: opts.Batch, NotEnqueued: map[string]error{}}
	switch {
	case (opts.Batch == "") == (opts.Task == ""):
		return nil, errors.New("couponq: retry: give exactly one of a batch or a task")
	case opts.Task != "":
		heads, err := readHeads(ctx, rdb, []string{opts.Task})
		if err != nil {
			return nil, err
		}
		h := heads[0]
		rep.Batch = h.batch
		switch {
		case h.status == "":
			return nil, fmt.Errorf("couponq: task %s: %w (never enqueued, or expired)", opts.Task, ErrNotFound)
		case h.status != StatusFailed && h.status != StatusCanceled:
			return nil, fmt.Errorf("couponq: task %s is %s: %w", opts.Task, h.status, ErrNotRetryable)
		case opts.Code != "" && h.code != opts.Code:
			return nil, fmt.Errorf("couponq: task %s failed with %q, not %s: %w", opts.Task, h.code, opts.Code, ErrNothingToRetry)
		}
		if err := p.retryHeads(ctx, heads, opts.Code, rep); err != nil {
			return rep, err
		}
	default:
		st, err := NewReader(rdb).Batch(ctx, opts.Batch)
		if err != nil {
			return nil, err
		}
		err = scanBatch(ctx, rdb, opts.Batch, func(heads []taskHead) error {
			var todo []taskHead
			for _, h := range heads {
				if (h.status == StatusFailed || h.status == StatusCanceled) && (opts.Code == "" || h.code == opts.Code) {
					todo = append(todo, h)
				}
			}
			return p.retryHeads(ctx, todo, opts.Code, rep)
		})
		if err != nil {
			return rep, err
		}
		if len(rep.Retried) == 0 {
			what := "failed or canceled tasks"
			if opts.Code != "" {
				what = fmt.Sprintf("failed or canceled tasks with error_code %s", opts.Code)
			}
			return rep, fmt.Errorf("couponq: batch %s has no %s (%d succeeded, %d failed, %d canceled, %d pending): %w",
				opts.Batch, what, st.Succeeded, st.Failed, st.Canceled, st.Pending, ErrNothingToRetry)
		}
	}
	sort.Strings(rep.Retried)
	return rep, nil
}

// retryHeads retries the given failed or canceled tasks: listed as
// unconfirmed (so that the workers enqueue what this call cannot), placed
// at the end of their coupons' order, queued again, their old asynq tasks
// deleted and new ones enqueued from their results.
func (p *Producer) retryHeads(ctx context.Context, heads []taskHead, code string, rep *RetryReport) error {
	if len(heads) == 0 {
		return nil
	}
	byQueue := map[string][]string{}
	entries := make([]results.OrderEntry, len(heads))
	ids := make([]string, len(heads))
	for i, h := range heads {
		byQueue[h.queue] = append(byQueue[h.queue], h.id)
		entries[i] = h.orderEntry()
		ids[i] = h.id
	}
	for q, qids := range byQueue {
		if q == "" {
			continue // written by an older couponq: nothing to enqueue it from
		}
		if err := p.batchStore.Register(ctx, q, qids); err != nil {
			return err
		}
	}
	if err := registerOrder(ctx, p.batchStore, entries, true, p.settleTimeout); err != nil {
		return err
	}
	// The archived (or leftover) asynq task goes first, so that the
	// workers' archive sweep never finds it beside a queued result: a fresh
	// one, enqueued below, starts the retry with the whole retry budget. An
	// active one (a worker is refusing it as canceled this instant) stays;
	// ensure and the adopter see to it.
	for _, h := range heads {
		if h.queue != "" {
			_ = p.enq.inspector.DeleteTask(h.queue, h.id)
		}
	}
	outs, err := p.batchStore.Requeue(ctx, ids, code)
	if err != nil {
		return err
	}
	var requeued []string
	for _, o := range outs {
		if !o.Requeued {
			continue
		}
		requeued = append(requeued, o.TaskID)
		switch o.From {
		case StatusFailed:
			rep.Failed++
		case StatusCanceled:
			rep.Canceled++
		}
	}
	rep.Retried = append(rep.Retried, requeued...)
	fix, err := p.enq.ensure(ctx, p.batchStore, "", requeued)
	if err != nil {
		for _, id := range requeued {
			rep.NotEnqueued[id] = err
		}
		return nil
	}
	for id, ferr := range fix.failed {
		rep.NotEnqueued[id] = ferr
	}
	for id, ferr := range fix.unusable {
		rep.NotEnqueued[id] = ferr
	}
	return nil
}

// CancelReport is what Cancel did.
type CancelReport struct {
	Batch string
	// Canceled lists the tasks that will not start (now canceled), sorted.
	Canceled []string
	// InCall counts the tasks a worker is running: they finish (a call
	// that fails ends the task canceled instead of being retried).
	InCall int
	// Done counts the tasks that were terminal already.
	Done int
}

// Cancel cancels batch batchID (couponq cancel): its tasks that have not
// started never start and end canceled, counted in the batch; tasks a
// worker is running finish; tasks accepted or re-delivered later are
// canceled by the worker that takes them. Canceled tasks leave their
// coupons' order at once, so later writes to those coupons go ahead. The
// batch finishes once the tasks in a call are done (at once if none).
//
// An unknown batch is ErrNotFound; a finished one, ErrBatchFinished.
// Cancel is safe to run again.
func (p *Producer) Cancel(ctx context.Context, batchID string) (*CancelReport, error) {
	st, err := p.batchStore.CancelBatch(ctx, batchID)
	if err != nil {
		return nil, err
	}
	switch st {
	case results.BatchMissing:
		return nil, fmt.Errorf("couponq: batch %s: %w (never enqueued, or expired)", batchID, ErrNotFound)
	case results.BatchFinished:
		return nil, fmt.Errorf("couponq: cancel %s: %w: nothing to cancel", batchID, ErrBatchFinished)
	}
	rep := &CancelReport{Batch: batchID}
	waker := &Waker{insp: p.enq.inspector}
	err = scanBatch(ctx, p.rdb, batchID, func(heads []taskHead) error {
		var todo []taskHead
		for _, h := range heads {
			if h.status.Terminal() || h.status == "" {
				rep.Done++
				continue
			}
			todo = append(todo, h)
		}
		if len(todo) == 0 {
			return nil
		}
		ids := make([]string, len(todo))
		for i, h := range todo {
			ids[i] = h.id
		}
		outs, err := p.batchStore.CancelUnstarted(ctx, ids)
		if err != nil {
			return err
		}
		var released []results.OrderEntry
		queues := map[string]bool{}
		for i, n := range outs {
			h := todo[i]
			switch n {
			case results.CancelDone:
				rep.Canceled = append(rep.Canceled, h.id)
				released = append(released, h.orderEntry())
				if h.queue != "" {
					queues[h.queue] = true
					_ = p.enq.inspector.DeleteTask(h.queue, h.id) // pending, scheduled or retry: gone
				}
			case results.CancelInCall:
				rep.InCall++
			default:
				rep.Done++
			}
		}
		wake, err := p.batchStore.ReleaseOrder(ctx, released)
		if err != nil {
			return err // the waiters find the canceled results and go on
		}
		qs := make([]string, 0, len(queues))
		for q := range queues {
			qs = append(qs, q)
		}
		waker.Wake(qs, wake)
		return nil
	})
	sort.Strings(rep.Canceled)
	return rep, err
}
