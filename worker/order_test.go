package worker

import (
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/couponq/couponq/internal/results"
	"github.com/couponq/couponq/tasks"
	"github.com/couponq/couponq/wechatpay"
)

const orderCoupon = "1000000013"

func orderEntryOf(op tasks.Op, outNo string) results.OrderEntry {
	return results.OrderEntry{TaskID: taskIDOf(op, outNo), Op: string(op), BrandID: testBrand, ProductCouponID: orderCoupon}
}

func (b *testBundle) register(t *testing.T, es ...results.OrderEntry) {
	t.Helper()
	if err := b.store.RegisterOrder(t.Context(), es, false); err != nil {
		t.Fatal(err)
	}
}

// wantHeldBack checks that err hands the task back for its coupon's order:
// no retry counted, its result still queued.
func (b *testBundle) wantHeldBack(t *testing.T, err error, taskID string) {
	t.Helper()
	var cb *comeBackError
	if !errors.As(err, &cb) || cb.reason != reasonOrdered || IsFailure(err) || cb.RetryAfter() != orderPoll {
		t.Fatalf("%s: %v, want held back for the order", taskID, err)
	}
	if st := b.result(t, taskID)[results.FieldStatus]; st != string(tasks.StatusQueued) {
		t.Errorf("%s held back with status %s, want queued", taskID, st)
	}
}

func TestOrderHoldsBackLaterChanges(t *testing.T) {
	t.Parallel()
	b := setup(t)
	get := &tasks.GetPayload{ProductCouponID: orderCoupon, BrandID: testBrand, OutRequestNo: "ord003"}
	ts := b.enqueue(t, updateReq(orderCoupon, "ord001"), get, deactivateReq(orderCoupon, "ord002"))
	upd, getT, deact := ts[0], ts[1], ts[2]
	b.register(t, orderEntryOf(tasks.OpUpdate, "ord001"), orderEntryOf(tasks.OpGet, "ord003"), orderEntryOf(tasks.OpDeactivate, "ord002"))
	h := b.w.Handler()

	b.wantHeldBack(t, h.ProcessTask(t.Context(), deact), taskIDOf(tasks.OpDeactivate, "ord002"))
	b.wantHeldBack(t, h.ProcessTask(t.Context(), getT), taskIDOf(tasks.OpGet, "ord003"))
	if n := b.api.totalCalls(); n != 0 {
		t.Fatalf("%d API calls while held back", n)
	}
	if got := b.metrics.retries[string(tasks.OpDeactivate)+" "+reasonOrdered]; got != 1 {
		t.Errorf("ordered come-backs of deactivate = %d, want 1", got)
	}
	if err := h.ProcessTask(t.Context(), upd); err != nil {
		t.Fatal(err)
	}
	// The get enqueued before the deactivation runs before it, and the
	// deactivation does not wait for the get.
	if err := h.ProcessTask(t.Context(), deact); err != nil {
		t.Fatal(err)
	}
	if err := h.ProcessTask(t.Context(), getT); err != nil {
		t.Fatal(err)
	}
	var ops []tasks.Op
	for _, c := range b.api.calls {
		ops = append(ops, c.Op)
	}
	// An update reads the coupon first (GET), then writes it.
	if want := []tasks.Op{tasks.OpGet, tasks.OpUpdate, tasks.OpDeactivate, tasks.OpGet}; !equalOps(ops, want) {
		t.Errorf("calls %v, want %v", ops, want)
	}
	for _, k := range results.OrderKeys(testBrand, orderCoupon)[:2] {
		if n := b.rdb.ZCard(t.Context(), k).Val(); n != 0 {
			t.Errorf("%s holds %d changes after all finished", k, n)
		}
	}
}

func equalOps(a, b []tasks.Op) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// What a crash leaves in the order heals: a predecessor whose result is
// terminal (finished, never released) is dropped; one without a result is
// waited for until OrderPhantomGrace, then dropped; a write without a place
// takes the last one.
func TestOrderHeals(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ts := b.enqueue(t, updateReq(orderCoupon, "ord001"), deactivateReq(orderCoupon, "ord002"))
	b.register(t, orderEntryOf(tasks.OpUpdate, "ord000"), orderEntryOf(tasks.OpUpdate, "ord001"), orderEntryOf(tasks.OpDeactivate, "ord002"))
	if _, err := b.store.Finish(t.Context(), taskIDOf(tasks.OpUpdate, "ord001"), tasks.StatusFailed, results.Attempt{ErrorCode: "PARAM_ERROR"}); err != nil {
		t.Fatal(err)
	}
	h := b.w.Handler()
	// ord000 has no result, registered just now: its accept may be on its way.
	b.wantHeldBack(t, h.ProcessTask(t.Context(), ts[1]), taskIDOf(tasks.OpDeactivate, "ord002"))
	old := strconv.FormatInt(time.Now().Add(-results.OrderPhantomGrace-time.Second).UnixMilli(), 10)
	b.rdb.HSet(t.Context(), results.OrderKeys(testBrand, orderCoupon)[2], "at:"+taskIDOf(tasks.OpUpdate, "ord000"), old)
	if err := h.ProcessTask(t.Context(), ts[1]); err != nil {
		t.Fatalf("after the phantom's grace: %v", err)
	}
	if st := b.result(t, taskIDOf(tasks.OpDeactivate, "ord002"))[results.FieldStatus]; st != string(tasks.StatusSucceeded) {
		t.Errorf("deactivation %s", st)
	}

	// Unregistered: an update enqueued by other means goes last.
	more := b.enqueue(t, updateReq("1000000099", "ord100"))
	if err := h.ProcessTask(t.Context(), more[0]); err != nil {
		t.Fatal(err)
	}
}

// A task of a canceled batch never starts; one whose call fails after
// its batch was canceled ends canceled instead of being retried.
func TestCanceledBatch(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ts := b.enqueue(t, updateReq("1000000001", "can001"), updateReq("1000000002", "can002"))
	h := b.w.Handler()
	b.api.failNext(tasks.OpUpdate, "1000000001", apiErr(500, wechatpay.CodeSystemError, "r1"))
	b.api.onCall = func(tasks.Op) {
		if _, err := b.store.CancelBatch(t.Context(), testBatch); err != nil {
			t.Error(err)
		}
	}
	if err := h.ProcessTask(t.Context(), ts[0]); err != nil {
		t.Fatalf("a failed call of a canceled batch: %v, want nil (canceled, not retried)", err)
	}
	b.api.onCall = nil
	if err := h.ProcessTask(t.Context(), ts[1]); err != nil {
		t.Fatal(err)
	}
	// The update in flight when the batch was canceled finishes its
	// read (GET) and its write; the other never calls.
	if n := b.api.totalCalls(); n != 2 {
		t.Errorf("%d calls, want the two of the update in flight when the batch was canceled", n)
	}
	r0 := b.result(t, taskIDOf(tasks.OpUpdate, "can001"))
	r1 := b.result(t, taskIDOf(tasks.OpUpdate, "can002"))
	if r0[results.FieldStatus] != "canceled" || r0[results.FieldAttempts] != "2" || r0[results.FieldHTTPStatus] != "500" || r0[results.FieldErrorCode] != results.CodeCanceled {
		t.Errorf("in-flight task: %v", pick(r0, resultFields...))
	}
	if r1[results.FieldStatus] != "canceled" || r1[results.FieldAttempts] != "0" {
		t.Errorf("unstarted task: %v", pick(r1, resultFields...))
	}
	bt := b.batch(t)
	if bt[results.BatchFieldCanceled] != "2" || bt[results.BatchFieldFinishedAt] == "" {
		t.Errorf("batch %v", bt)
	}
	if got := b.metrics.terminals[string(tasks.OpUpdate)+" canceled"]; got != 2 {
		t.Errorf("canceled terminal observations = %d", got)
	}
}

// A task re-delivered after it finished (its worker crashed between the
// finish and the release) is released without a call.
func TestRedeliveryReleasesTheOrder(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ts := b.enqueue(t, updateReq(orderCoupon, "ord001"), deactivateReq(orderCoupon, "ord002"))
	w1, w2 := orderEntryOf(tasks.OpUpdate, "ord001"), orderEntryOf(tasks.OpDeactivate, "ord002")
	b.register(t, w1, w2)
	if _, err := b.store.Finish(t.Context(), w1.TaskID, tasks.StatusSucceeded, results.Attempt{Calls: 1, HTTPStatus: 200}); err != nil {
		t.Fatal(err)
	}
	if err := b.w.Handler().ProcessTask(t.Context(), ts[0]); err != nil {
		t.Fatal(err)
	}
	if n := b.api.totalCalls(); n != 0 {
		t.Errorf("%d calls for a finished task", n)
	}
	if c, err := b.store.CheckOrder(t.Context(), w2); err != nil || !c.Go {
		t.Errorf("w2 after w1's re-delivery: %+v, %v; want go", c, err)
	}
}
