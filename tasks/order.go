package tasks

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/couponq/couponq/internal/results"
)

// Per-coupon order (SPEC "Order and updates"). The producer gives every
// change its place in its coupon's order before accepting it, in the order
// of its input (EnqueueBatch registers each group as it forms it, on the
// one goroutine that reads the input), so that a write of line 10 cannot
// start before a write of line 3 to the same coupon, whichever accept call
// answers first. Workers start a write only once every write placed before
// it is terminal, and a get once the writes before it are (see package
// worker); a terminal change is released and the next one woken. The keys
// and scripts are in internal/results (OrderKeys).

// orderEntry is a prepared change's entry in its coupon's order.
func (pr *prepared) orderEntry() results.OrderEntry {
	return results.OrderEntry{TaskID: pr.id.TaskID, Op: pr.id.Op, BrandID: pr.id.BrandID, ProductCouponID: pr.id.ProductCouponID}
}

// registerOrder registers entries in their coupons' order, trying again
// while Redis does not answer, for up to patience (each try is
// idempotent).
func registerOrder(ctx context.Context, store *results.Store, entries []results.OrderEntry, toEnd bool, patience time.Duration) error {
	deadline := time.Now().Add(patience)
	wait := 100 * time.Millisecond
	for {
		err := store.RegisterOrder(ctx, entries, toEnd)
		if err == nil || ctx.Err() != nil || time.Now().Add(wait).After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
		wait = min(2*wait, 2*time.Second)
	}
}

// Waker moves tasks waiting for their coupon's order (asynq's scheduled
// or retry set, where the worker put them to come back) to pending, so
// that a chain of writes to one coupon does not wait on polling delays.
// Waking is an optimisation: a task nobody wakes comes back on its own.
type Waker struct {
	insp *asynq.Inspector
}

// NewWaker returns a Waker over rdb. It does not take ownership of rdb.
func NewWaker(rdb redis.UniversalClient) *Waker {
	return &Waker{insp: asynq.NewInspectorFromRedisClient(rdb)}
}

// Wake runs each task of ids now if it waits in one of queues. It returns
// those a worker holds at this moment (asynq's active set): a worker that
// found the coupon busy a moment ago is handing the task back, and it may
// be woken again shortly.
func (w *Waker) Wake(queues []string, ids []string) (active []string) {
	for _, id := range ids {
		for _, q := range queues {
			err := w.insp.RunTask(q, id)
			if errors.Is(err, asynq.ErrTaskNotFound) || errors.Is(err, asynq.ErrQueueNotFound) {
				continue // not in this queue
			}
			if err != nil && strings.Contains(err.Error(), "already running") {
				active = append(active, id)
			}
			break // woken, already pending, or Redis did not answer: nothing more to do
		}
	}
	return active
}

// WakeSoon wakes ids, and wakes again those found active after a short
// pause, a few times (run it on a goroutine of its own: it takes up to
// about two seconds). ctx ends it early.
func (w *Waker) WakeSoon(ctx context.Context, queues []string, ids []string) {
	for _, pause := range []time.Duration{50 * time.Millisecond, 200 * time.Millisecond, 500 * time.Millisecond, time.Second} {
		if ids = w.Wake(queues, ids); len(ids) == 0 {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(pause):
		}
	}
}
