package worker

import (
	"context"
	"maps"
	"slices"
	"time"
)

// adoptLimit bounds the changes one sweep pass looks at per queue, so a
// pass stays short however many orphans a crash left; the next pass goes on.
const adoptLimit = 1000

// adoptInterval is how often the adoption sweep runs for a grace period:
// a quarter of it, between 250 ms and 15 s.
func adoptInterval(grace time.Duration) time.Duration {
	return min(max(grace/4, 250*time.Millisecond), 15*time.Second)
}

// adoptLoop runs the adoption sweep until ctx ends. Every worker runs it;
// the sweep's Redis lock lets one at a time do the work.
func (w *Worker) adoptLoop(ctx context.Context) {
	t := time.NewTicker(adoptInterval(w.cfg.AdoptAfter))
	defer t.Stop()
	for {
		w.Adopt(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Adopt runs one pass of the adoption sweep (tasks.Adopter.Sweep) over the
// served queues with the configured grace period: it enqueues the changes
// a producer accepted but never handed to asynq, seals batches whose
// producer is gone and repairs batches a crash left behind their results,
// logging each. It returns how many tasks it enqueued.
func (w *Worker) Adopt(ctx context.Context) int {
	queues := slices.Sorted(maps.Keys(w.cfg.Queues))
	rep, err := w.adopter.Sweep(ctx, queues, w.cfg.AdoptAfter, adoptLimit)
	if err != nil && ctx.Err() == nil {
		w.log.Warn("adoption sweep failed", "err", err)
	}
	n := 0
	for q, ids := range rep.Adopted {
		for _, id := range ids {
			w.log.Warn("adopted a task its producer accepted but never enqueued", "task_id", id, "queue", q)
		}
		w.cfg.Metrics.ObserveAdopted(q, len(ids))
		n += len(ids)
	}
	for id, ferr := range rep.Failed {
		w.log.Error("cannot adopt a task its producer never enqueued", "task_id", id, "err", ferr)
	}
	for _, b := range rep.Sealed {
		w.log.Warn("sealed a batch its producer left open", "batch", b, "after", w.cfg.AdoptAfter)
	}
	for b, n := range rep.Repaired {
		w.log.Warn("repaired the counters of a batch a crash left behind its results", "batch", b, "tasks", n)
	}
	w.cfg.Metrics.ObserveAbandoned(len(rep.Sealed))
	return n
}
