package worker

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/couponq/couponq/internal/results"
	"github.com/couponq/couponq/tasks"
)

// failBatchStep is a go-redis hook that fails, n times, the pipelines that
// carry a batch step (a command on a key of a batch's own, in the batch's
// slot). Before: the worker dies, as it were, between a task's result step
// and its batch step. After (lost): Redis ran the pipeline, its answer is
// lost.
type failBatchStep struct {
	n    atomic.Int32
	lost bool
}

func (h *failBatchStep) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *failBatchStep) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }

func (h *failBatchStep) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		for _, c := range cmds {
			for _, a := range c.Args() {
				if s, ok := a.(string); !ok || !strings.HasPrefix(s, "{"+results.BatchKey(testBatch)+"}") {
					continue
				}
				if h.lost {
					// What Redis refused (NOSCRIPT, before go-redis loads
					// the script) stands: only a run is lost.
					if err := next(ctx, cmds); err != nil {
						return err
					}
				}
				if h.n.Add(-1) >= 0 {
					err := errors.New("connection lost")
					for _, c := range cmds {
						c.SetErr(err)
					}
					return err
				}
				if h.lost {
					return nil
				}
			}
		}
		return next(ctx, cmds)
	}
}

// A worker that loses the batch step of a finish returns an error (asynq
// runs the task again); the re-delivery finds the result terminal, calls
// no API, and applies the batch step before it acknowledges: the batch
// counts the task once and finishes. On a single server the result step,
// the batch step and the release are one script (FinishAndRelease): what
// can be lost there is its answer. Through a client of many servers
// (here a ring of one; a cluster alike) the steps are two pipelines, and
// the second can be lost alone.
func TestRedeliveryAppliesLostBatchStep(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		ring bool // the worker's store on a ring: the two-step path
	}{{"one script, answer lost", false}, {"two steps, batch step lost", true}} {
		t.Run(tc.name, func(t *testing.T) {
			b := setup(t)
			task := b.enqueue(t, deactivateReq("1000000013", "deact_lost_01"))[0]
			h := &failBatchStep{lost: !tc.ring}
			h.n.Store(1)
			if tc.ring {
				ring := redis.NewRing(&redis.RingOptions{Addrs: map[string]string{"one": b.mr.Addr()}})
				t.Cleanup(func() { ring.Close() })
				ring.AddHook(h)
				b.w.store = results.NewStore(ring, results.WithResultTTL(b.w.cfg.ResultTTL))
			} else {
				b.w.rdb.AddHook(h)
			}
			if err := b.w.Handler().ProcessTask(t.Context(), task); err == nil {
				t.Fatal("the batch step failed, yet the task was acknowledged")
			}
			id := taskIDOf(tasks.OpDeactivate, "deact_lost_01")
			if st := b.result(t, id)[results.FieldStatus]; st != string(tasks.StatusSucceeded) {
				t.Fatalf("result = %s", st)
			}
			if tc.ring {
				if bt := b.batch(t); bt["succeeded"] != "0" || bt["finished_at"] != "" {
					t.Fatalf("the lost step counted: %v", bt)
				}
			}
			calls := b.api.totalCalls()
			if err := b.w.Handler().ProcessTask(withRetry(t.Context(), 1, 25), task); err != nil {
				t.Fatalf("re-delivery: %v", err)
			}
			if got := b.api.totalCalls(); got != calls {
				t.Errorf("re-delivery called the API: %d calls, were %d", got, calls)
			}
			if bt := b.batch(t); bt["succeeded"] != "1" || bt["total"] != "1" || bt["finished_at"] == "" {
				t.Errorf("batch after the re-delivery = %v", bt)
			}
		})
	}
}
