package worker

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/couponq/couponq/internal/results"
	"github.com/couponq/couponq/tasks"
)

// Before a task starts: its batch may be canceled (it ends canceled, never
// started), and its coupon's order may hold it back (SPEC "Order and
// updates": a write waits until every write enqueued before it to the
// same coupon is terminal, a get until the writes before it are). A task
// held back goes back to asynq without counting a retry and without
// touching its result (still queued); the worker takes other work
// meanwhile. When a change becomes terminal it is released from the
// order, and the changes that may start now are woken (asynq RunTask)
// rather than left to their polling delay.

// reasonOrdered labels the come-back of a task held back by its coupon's
// order (Metrics.ObserveRetry).
const reasonOrdered = "ordered"

// orderPoll is how long a held-back task stays away unless woken first:
// the backstop for a wake that did not happen (a crash, a race with the
// hand-back).
const orderPoll = 2 * time.Second

// orderHops bounds the stale predecessors one start drops before coming
// back.
const orderHops = 8

// identity is the task's identity, as Store.Begin writes it.
func (r *run) identity() results.Identity {
	return results.Identity{TaskID: r.taskID, Op: string(r.c.op), BrandID: r.c.brandID,
		ProductCouponID: r.c.productCouponID, OutRequestNo: r.c.outRequestNo}
}

// orderEntry is the task's entry in its coupon's order.
func (r *run) orderEntry() results.OrderEntry {
	return results.OrderEntry{TaskID: r.taskID, Op: string(r.c.op), BrandID: r.c.brandID, ProductCouponID: r.c.productCouponID}
}

// ordered reports whether the task takes part in a coupon's order (a task
// whose payload did not decode does not: it fails at once).
func (r *run) ordered() bool {
	return r.c.op != "" && r.c.brandID != "" && r.c.productCouponID != ""
}

// admit runs before Store.Begin. It reads the task's status and its
// batch's cancel mark in one round trip; a task of a canceled batch is
// canceled here, and a task its coupon's order holds back comes back
// later. done means the handler returns err now; otherwise the task
// starts. r.batch is set. begun: on a single server, where nothing held
// the task back, the same round trip began it (Store.Start), and
// r.priorCalls is set; otherwise the caller calls Store.Begin.
func (r *run) admit(ctx context.Context, t *asynq.Task, decodable bool) (done, begun bool, err error) {
	ordered := decodable && r.ordered()
	headerBatch := t.Headers()[tasks.HeaderBatch]
	var entry *results.OrderEntry
	if ordered {
		e := r.orderEntry()
		entry = &e
	}
	var (
		st       results.Status
		canceled bool
		turn     func() (results.OrderCheck, error)
	)
	// A deactivation's body is known now: fixed in the same round trip.
	var fix []byte
	if decodable && r.c.op == tasks.OpDeactivate {
		fix, _ = r.w.api.EncodeDeactivate(r.c.deactivate) // an error fails the task in prepareDeactivate
	}
	s, err := r.w.store.Start(ctx, r.identity(), headerBatch, entry, fix)
	if err != nil {
		return true, false, fmt.Errorf("worker: %w", err)
	}
	if s != nil {
		r.batch, r.request, r.requestRead = s.Batch, s.Request, true
		if s.Begun {
			r.priorCalls = s.Attempts
			return false, true, nil
		}
		st, canceled = s.Status, s.Canceled
		turn = func() (results.OrderCheck, error) { return s.Order, s.OrderErr }
	} else if st, canceled, turn, err = r.startState(ctx, headerBatch, ordered); err != nil {
		return true, false, fmt.Errorf("worker: %w", err)
	}
	done, err = r.hold(ctx, st, canceled, ordered, turn)
	return done, false, err
}

// hold decides, from the start state, whether the task starts: a terminal
// one goes on to Begin (which says so; the order is released there), a
// task of a canceled batch is canceled, and one its coupon's order holds
// back comes back later (done).
func (r *run) hold(ctx context.Context, st results.Status, canceled, ordered bool, turn func() (results.OrderCheck, error)) (done bool, err error) {
	if st.Terminal() {
		return false, nil // Begin says so; the order is released there
	}
	if canceled {
		return true, r.cancel(ctx, "its batch is canceled: not started")
	}
	if !ordered {
		return false, nil
	}
	return r.awaitTurn(ctx, turn)
}

// startState reads the task's status and batch, whether that batch is
// canceled and (when ordered) its first order check, in one round trip
// (two when the task carries no batch header).
func (r *run) startState(ctx context.Context, headerBatch string, ordered bool) (results.Status, bool, func() (results.OrderCheck, error), error) {
	var res *redis.SliceCmd
	var canc *redis.BoolCmd
	var turn func() (results.OrderCheck, error)
	_, err := r.w.store.Redis().Pipelined(ctx, func(p redis.Pipeliner) error {
		// The stored body (of an earlier run) comes along: prepareUpdate
		// and prepareDeactivate need no round trip of their own for it.
		res = p.HMGet(ctx, results.ResultKey(r.taskID), results.FieldStatus, results.FieldBatch, results.FieldRequest)
		if headerBatch != "" {
			canc = p.HExists(ctx, results.BatchKey(headerBatch), results.BatchFieldCanceledAt)
		}
		if ordered {
			turn = r.w.store.CheckOrderIn(ctx, p, r.orderEntry())
		}
		return nil
	})
	if err != nil && (res.Err() != nil || (canc != nil && canc.Err() != nil)) {
		return "", false, nil, fmt.Errorf("couponq: read the start state of %s: %w", r.taskID, err)
	}
	v := res.Val()
	st, _ := v[0].(string)
	r.batch, _ = v[1].(string)
	if body, _ := v[2].(string); body != "" {
		r.request = []byte(body)
	}
	r.requestRead = true
	if canc != nil {
		return results.Status(st), canc.Val(), turn, nil
	}
	canceled, err := r.w.store.BatchCanceled(ctx, r.batch)
	return results.Status(st), canceled, turn, err
}

// awaitTurn holds the task back while a write enqueued before it to its
// coupon is not terminal. A predecessor whose result is terminal, or
// missing for longer than results.OrderPhantomGrace, is dropped from the
// order (what a crash between a finish and its release, or a registered
// change whose accept never came, leaves behind). A write found without a
// place (its producer died before registering it, or it was enqueued by
// other means) takes the last one.
func (r *run) awaitTurn(ctx context.Context, first func() (results.OrderCheck, error)) (done bool, err error) {
	store, e := r.w.store, r.orderEntry()
	check := first
	pred := ""
	for range orderHops {
		chk, err := check()
		check = func() (results.OrderCheck, error) { return store.CheckOrder(ctx, e) }
		if err != nil {
			return true, fmt.Errorf("worker: %w", err)
		}
		switch {
		case chk.Go:
			return false, nil
		case chk.Unregistered && r.c.op == tasks.OpGet:
			return false, nil // it waits for nothing it could name
		case chk.Unregistered:
			if err := store.RegisterOrder(ctx, []results.OrderEntry{e}, false); err != nil {
				return true, fmt.Errorf("worker: %w", err)
			}
			r.logger().Warn("write had no place in its coupon's order; it takes the last one")
			continue
		}
		pred = chk.Pred
		sts, err := store.Statuses(ctx, []string{pred})
		if err != nil {
			return true, fmt.Errorf("worker: %w", err)
		}
		st := sts[0]
		phantom := st == "" && (chk.PredSince.IsZero() || time.Since(chk.PredSince) > results.OrderPhantomGrace)
		if !st.Terminal() && !phantom {
			break
		}
		if _, err := store.DropFromOrder(ctx, e, pred, chk.PredPlace); err != nil {
			return true, fmt.Errorf("worker: %w", err)
		}
		r.logger().Info("dropped a change left in its coupon's order", "earlier_task_id", pred, "earlier_status", string(st))
	}
	r.w.metrics.ObserveRetry(string(r.c.op), reasonOrdered)
	r.logger().Debug("waiting for an earlier write to the coupon", "earlier_task_id", pred, "product_coupon_id", r.c.productCouponID)
	return true, &comeBackError{reason: reasonOrdered, after: orderPoll,
		err: fmt.Errorf("worker: coupon %s has an earlier write not finished: %s", r.c.productCouponID, pred)}
}

// released removes the terminal task from its coupon's order and wakes
// the changes that may start now. A failure is logged: the waiters find
// the terminal result and drop it themselves.
func (r *run) released(ctx context.Context) {
	if !r.ordered() {
		return
	}
	r.w.release(ctx, []results.OrderEntry{r.orderEntry()}, r.logger())
}

// release removes terminal changes from their coupons' order and wakes,
// on a goroutine of its own, the changes that may start now.
func (w *Worker) release(ctx context.Context, entries []results.OrderEntry, log *slog.Logger) {
	var wake []string
	err := detached(ctx, func(ctx context.Context) (err error) {
		wake, err = w.store.ReleaseOrder(ctx, entries)
		return err
	})
	if err != nil {
		log.Warn("cannot release a finished change from its coupon's order; the next one will", "err", err)
		return
	}
	w.wakeSoon(ctx, wake)
}

// wakeSoon wakes, on a goroutine of its own, the changes a release says
// may start now.
func (w *Worker) wakeSoon(ctx context.Context, wake []string) {
	if len(wake) == 0 {
		return
	}
	queues := slices.Sorted(maps.Keys(w.cfg.Queues))
	go w.waker.WakeSoon(context.WithoutCancel(ctx), queues, wake)
}

// cancel ends the task canceled (its batch was canceled), records why,
// and releases it from its coupon's order. The calls of this run not yet
// recorded are added to its attempts.
func (r *run) cancel(ctx context.Context, why string) error {
	var done bool
	err := detached(ctx, func(ctx context.Context) (err error) {
		done, err = r.w.store.CancelTask(ctx, r.taskID, r.calls-r.recorded)
		return err
	})
	if err != nil {
		r.logger().Error("cannot record the cancel; the task will come again", "err", err)
		return fmt.Errorf("worker: %w", err)
	}
	r.recorded = r.calls
	if done {
		r.w.metrics.ObserveTerminal(string(r.c.op), tasks.StatusCanceled)
		r.logger().Info("task canceled", "reason", why, "batch", r.batch)
	}
	r.released(ctx)
	return nil
}

// canceledMeanwhile reports whether the task's batch was canceled while it
// ran: the task is not retried then, it ends canceled. A Redis error
// reads as not canceled (the next run checks again).
func (r *run) canceledMeanwhile(ctx context.Context) bool {
	var canceled bool
	err := detached(ctx, func(ctx context.Context) (err error) {
		canceled, err = r.w.store.BatchCanceled(ctx, r.batch)
		return err
	})
	return err == nil && canceled
}

// cancelInsteadOfRetry records the failed attempt and ends the task
// canceled: its batch was canceled during the call.
func (r *run) cancelInsteadOfRetry(ctx context.Context, v verdict) error {
	a := v.attempt
	a.Calls = r.calls - r.recorded
	a.Token = r.retryToken()
	if err := detached(ctx, func(ctx context.Context) error { return r.w.store.Retrying(ctx, r.taskID, a) }); err != nil {
		return fmt.Errorf("worker: %w", err)
	}
	r.recorded = r.calls
	return r.cancel(ctx, "its batch was canceled during the call: not retried")
}
