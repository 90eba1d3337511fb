package worker

import (
	"testing"
	"time"

	"github.com/couponq/couponq/internal/results"
	"github.com/couponq/couponq/tasks"
)

// TestNotBeforeHoldsTheTask: a task taken before its not_before goes back
// to the queue until then, without an API call, without using a retry
// (IsFailure false) and with its result still queued; once the time has
// come it runs.
func TestNotBeforeHoldsTheTask(t *testing.T) {
	t.Parallel()
	b := setup(t)
	later := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	task := b.enqueue(t, &tasks.GetPayload{ProductCouponID: "1000000013", BrandID: testBrand, OutRequestNo: "sched_later_1", NotBefore: later})[0]
	err := b.w.Handler().ProcessTask(t.Context(), task)
	if err == nil || IsFailure(err) {
		t.Fatalf("ProcessTask = %v; want a come-back-later that is not a failure", err)
	}
	if d := (RetryPolicy{Base: time.Second, Cap: time.Second}).Delay(0, err); d < 59*time.Minute || d > time.Hour {
		t.Errorf("retry delay = %v, want the time until not_before", d)
	}
	if n := len(b.api.calls); n != 0 {
		t.Errorf("%d API calls before not_before", n)
	}
	id := taskIDOf(tasks.OpGet, "sched_later_1")
	if st := b.result(t, id)[results.FieldStatus]; st != string(tasks.StatusQueued) {
		t.Errorf("status = %q, want queued", st)
	}

	past := time.Now().Add(-time.Minute).UTC().Format(time.RFC3339)
	task = b.enqueue(t, &tasks.GetPayload{ProductCouponID: "1000000013", BrandID: testBrand, OutRequestNo: "sched_past_1", NotBefore: past})[0]
	if err := b.w.Handler().ProcessTask(t.Context(), task); err != nil {
		t.Fatalf("ProcessTask after not_before: %v", err)
	}
	if st := b.result(t, taskIDOf(tasks.OpGet, "sched_past_1"))[results.FieldStatus]; st != string(tasks.StatusSucceeded) {
		t.Errorf("status = %q, want succeeded", st)
	}
}
