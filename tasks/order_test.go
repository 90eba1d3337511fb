package tasks

import (
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/hibiken/asynq"

	"github.com/couponq/couponq/internal/results"
)

func entry(op Op, coupon, n string) results.OrderEntry {
	return results.OrderEntry{TaskID: TaskID(op, "b", n), Op: string(op), BrandID: "b", ProductCouponID: coupon}
}

func mustCheck(t *testing.T, s *results.Store, e results.OrderEntry) results.OrderCheck {
	t.Helper()
	c, err := s.CheckOrder(t.Context(), e)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// The order scripts: a write waits for the writes before it, a get for
// the writes before it only; a release names who may start now; a drop
// needs the place the waiter saw; a re-sent registration keeps the place.
func TestOrderScripts(t *testing.T) {
	t.Parallel()
	b := setup(t)
	s := b.store
	w1, g1, w2, g2, other := entry(OpUpdate, "1", "w1"), entry(OpGet, "1", "g1"), entry(OpDeactivate, "1", "w2"), entry(OpGet, "1", "g2"), entry(OpUpdate, "2", "o")
	if err := s.RegisterOrder(t.Context(), []results.OrderEntry{w1, g1, other, w2, g2}, false); err != nil {
		t.Fatal(err)
	}
	if err := s.RegisterOrder(t.Context(), []results.OrderEntry{w2, w1}, false); err != nil { // re-sent: places kept
		t.Fatal(err)
	}
	for _, e := range []results.OrderEntry{w1, other} {
		if c := mustCheck(t, s, e); !c.Go {
			t.Errorf("%s: %+v, want go", e.TaskID, c)
		}
	}
	for _, e := range []results.OrderEntry{g1, w2, g2} {
		if c := mustCheck(t, s, e); c.Go || c.Pred != w1.TaskID || c.PredSince.IsZero() {
			t.Errorf("%s: %+v, want waiting for %s", e.TaskID, c, w1.TaskID)
		}
	}
	if c := mustCheck(t, s, entry(OpUpdate, "1", "never")); !c.Unregistered {
		t.Errorf("unregistered write: %+v", c)
	}

	// A drop with a stale place does nothing.
	c := mustCheck(t, s, w2)
	if ok, err := s.DropFromOrder(t.Context(), w2, c.Pred, "999"); err != nil || ok {
		t.Fatalf("drop with a wrong place = %v, %v", ok, err)
	}
	wake, err := s.ReleaseOrder(t.Context(), []results.OrderEntry{w1})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{w2.TaskID, g1.TaskID}, wake); diff != "" {
		t.Errorf("woken after w1 (-want +got):\n%s", diff)
	}
	if again, _ := s.ReleaseOrder(t.Context(), []results.OrderEntry{w1}); len(again) != 0 {
		t.Errorf("a second release woke %v", again)
	}
	if c := mustCheck(t, s, g1); !c.Go {
		t.Errorf("g1 after w1: %+v", c)
	}
	if c := mustCheck(t, s, g2); c.Pred != w2.TaskID {
		t.Errorf("g2 after w1: %+v, want waiting for w2", c)
	}
	if wake, _ := s.ReleaseOrder(t.Context(), []results.OrderEntry{g1}); len(wake) != 0 {
		t.Errorf("a get's release woke %v", wake)
	}
	// w1 retried: it goes behind w2 (and g2).
	if err := s.RegisterOrder(t.Context(), []results.OrderEntry{w1}, true); err != nil {
		t.Fatal(err)
	}
	if c := mustCheck(t, s, w1); c.Pred != w2.TaskID {
		t.Errorf("retried w1: %+v, want waiting for w2", c)
	}
	c = mustCheck(t, s, w1)
	if ok, err := s.DropFromOrder(t.Context(), w1, c.Pred, c.PredPlace); err != nil || !ok {
		t.Fatalf("drop = %v, %v", ok, err)
	}
	if wake, _ := s.ReleaseOrder(t.Context(), []results.OrderEntry{w2}); len(wake) != 0 {
		t.Errorf("releasing a dropped write woke %v", wake)
	}
	if c := mustCheck(t, s, w1); !c.Go {
		t.Errorf("w1 alone: %+v", c)
	}
	for _, k := range results.OrderKeys("b", "1") {
		if ttl := b.mr.TTL(k); k != results.OrderKeys("b", "1")[1] && ttl != DefaultResultTTL {
			t.Errorf("%s TTL = %v", k, ttl)
		}
	}
}

// Every order key of a coupon is in one hash slot.
func TestOrderKeysOneSlot(t *testing.T) {
	t.Parallel()
	for _, k := range results.OrderKeys("120344", "1000000013") {
		if want := "{120344:1000000013}"; !containsTag(k, want) {
			t.Errorf("%s lacks the hash tag %s", k, want)
		}
	}
}

func containsTag(k, tag string) bool {
	i := slices.Index([]byte(k), '{')
	return i >= 0 && len(k) >= i+len(tag) && k[i:i+len(tag)] == tag
}

// EnqueueBatch places the changes of a coupon in input order, whichever
// accept group Redis answers first.
func TestEnqueueBatchOrderFollowsInput(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var cs []Change
	for i := range 600 {
		coupon := fmt.Sprint(1000000000 + i%7)
		cs = append(cs, Change{Op: OpDeactivate, ProductCouponID: coupon, BrandID: "120344", OutRequestNo: fmt.Sprintf("ord%04d", i), DeactivateReason: "x"})
	}
	rep, err := b.p.EnqueueBatch(t.Context(), Changes(cs), BatchOptions{ID: "o"})
	if err != nil || rep.Err() != nil || rep.Total != len(cs) {
		t.Fatalf("enqueue: %v %v %+v", err, rep.Err(), rep)
	}
	for k := range 7 {
		coupon := fmt.Sprint(1000000000 + k)
		got, err := b.rdb.ZRange(t.Context(), results.OrderKeys("120344", coupon)[0], 0, -1).Result()
		if err != nil {
			t.Fatal(err)
		}
		var want []string
		for i := k; i < len(cs); i += 7 {
			want = append(want, cs[i].TaskID())
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("coupon %s order (-input +got):\n%s", coupon, diff)
		}
	}
}

// Cancel and Retry move the counters with the results, and the results
// count their runs; Retry enqueues fresh asynq tasks.
func TestCancelThenRetryCounters(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := t.Context()
	cs := []Change{deactivateChange("ctl001"), deactivateChange("ctl002"), deactivateChange("ctl003"), deactivateChange("ctl004")}
	for i := range cs {
		cs[i].ProductCouponID = fmt.Sprint(1000000001 + i)
	}
	if rep, err := b.p.EnqueueBatch(ctx, Changes(cs), BatchOptions{ID: "k"}); err != nil || rep.Err() != nil {
		t.Fatal(err, rep.Err())
	}
	id := func(i int) results.Identity {
		c := cs[i]
		return results.Identity{TaskID: c.TaskID(), Op: string(c.Op), BrandID: c.BrandID, ProductCouponID: c.ProductCouponID, OutRequestNo: c.OutRequestNo}
	}
	// c1 succeeded, c2 failed, c3 running (in a call), c4 queued.
	mustBegin(t, b.store, id(0), StatusRunning)
	mustFinish(t, b.store, cs[0].TaskID(), StatusSucceeded)
	mustBegin(t, b.store, id(1), StatusRunning)
	mustFinish(t, b.store, cs[1].TaskID(), StatusFailed)
	mustBegin(t, b.store, id(2), StatusRunning)

	crep, err := b.p.Cancel(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(&CancelReport{Batch: "k", Canceled: []string{cs[3].TaskID()}, InCall: 1, Done: 2}, crep); diff != "" {
		t.Errorf("cancel (-want +got):\n%s", diff)
	}
	if _, err := b.inspector.GetTaskInfo(DefaultQueue, cs[3].TaskID()); !errors.Is(err, asynq.ErrTaskNotFound) {
		t.Errorf("canceled task still in asynq: %v", err)
	}
	st := b.batch(t, "k")
	if st.Succeeded != 1 || st.Failed != 1 || st.Canceled != 1 || st.Pending != 1 || st.Done() || st.CanceledAt.IsZero() {
		t.Errorf("after cancel: %+v", st)
	}
	// The task in a call finishes; the batch with it.
	mustFinish(t, b.store, cs[2].TaskID(), StatusSucceeded)
	if st := b.batch(t, "k"); !st.Done() {
		t.Errorf("batch not done after its last call: %+v", st)
	}
	if _, err := b.p.Cancel(ctx, "k"); !errors.Is(err, ErrBatchFinished) {
		t.Errorf("cancel of a finished batch: %v", err)
	}

	rrep, err := b.p.Retry(ctx, RetryOptions{Batch: "k"})
	if err != nil {
		t.Fatal(err)
	}
	if rrep.Failed != 1 || rrep.Canceled != 1 || len(rrep.Retried) != 2 || len(rrep.NotEnqueued) != 0 {
		t.Errorf("retry: %+v", rrep)
	}
	st = b.batch(t, "k")
	if st.Succeeded != 2 || st.Failed != 0 || st.Canceled != 0 || st.Pending != 2 || st.Done() || !st.CanceledAt.IsZero() {
		t.Errorf("after retry: %+v", st)
	}
	for _, i := range []int{1, 3} {
		r, err := b.reader.Result(ctx, cs[i].TaskID())
		if err != nil || r.Status != StatusQueued || r.Runs != 2 || !r.FinishedAt.IsZero() {
			t.Errorf("retried %s: %+v, %v", cs[i].TaskID(), r, err)
		}
		info, err := b.inspector.GetTaskInfo(DefaultQueue, cs[i].TaskID())
		if err != nil || info.State != asynq.TaskStatePending || info.Retried != 0 || info.Headers[HeaderBatch] != "k" {
			t.Errorf("asynq task of %s: %+v, %v", cs[i].TaskID(), info, err)
		}
		if c, _ := b.store.CheckOrder(ctx, results.OrderEntry{TaskID: cs[i].TaskID(), Op: "deactivate", BrandID: cs[i].BrandID, ProductCouponID: cs[i].ProductCouponID}); c.Unregistered {
			t.Errorf("retried %s has no place in its coupon's order", cs[i].TaskID())
		}
	}
	if _, err := b.p.Retry(ctx, RetryOptions{Batch: "k"}); !errors.Is(err, ErrNothingToRetry) {
		t.Errorf("second retry: %v", err)
	}
	// Both finish again: counted once more each, the batch done.
	mustBegin(t, b.store, id(1), StatusRunning)
	mustFinish(t, b.store, cs[1].TaskID(), StatusSucceeded)
	mustBegin(t, b.store, id(3), StatusRunning)
	mustFinish(t, b.store, cs[3].TaskID(), StatusFailed)
	st = b.batch(t, "k")
	if st.Succeeded != 3 || st.Failed != 1 || st.Canceled != 0 || !st.Done() {
		t.Errorf("after the second runs: %+v", st)
	}
	if rep, err := b.p.Retry(ctx, RetryOptions{Task: cs[3].TaskID()}); err != nil || len(rep.Retried) != 1 {
		t.Errorf("retry --task: %+v, %v", rep, err)
	}
	if r, _ := b.reader.Result(ctx, cs[3].TaskID()); r.Runs != 3 {
		t.Errorf("runs after a third run = %d", r.Runs)
	}
}

func mustFinish(t *testing.T, s *results.Store, taskID string, st Status) {
	t.Helper()
	if ok, err := s.Finish(t.Context(), taskID, st, results.Attempt{Calls: 1, HTTPStatus: 400, ErrorCode: "PARAM_ERROR"}); err != nil || !ok {
		t.Fatalf("finish %s = %v, %v", taskID, ok, err)
	}
}

// Retry and Cancel name their bad inputs by sentinel errors.
func TestRetryCancelBadInput(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := t.Context()
	c := deactivateChange("bad001")
	if rep, err := b.p.EnqueueBatch(ctx, Changes([]Change{c}), BatchOptions{ID: "g"}); err != nil || rep.Err() != nil {
		t.Fatal(err, rep.Err())
	}
	id := results.Identity{TaskID: c.TaskID(), Op: string(c.Op), BrandID: c.BrandID, ProductCouponID: c.ProductCouponID, OutRequestNo: c.OutRequestNo}
	mustBegin(t, b.store, id, StatusRunning)
	if _, err := b.p.Retry(ctx, RetryOptions{Batch: "g"}); !errors.Is(err, ErrNothingToRetry) {
		t.Errorf("retry of a batch with nothing failed: %v", err)
	}
	mustFinish(t, b.store, c.TaskID(), StatusSucceeded)
	for _, tt := range []struct {
		name string
		err  error
		want error
	}{
		{"retry unknown batch", second(b.p.Retry(ctx, RetryOptions{Batch: "nope"})), ErrNotFound},
		{"retry unknown task", second(b.p.Retry(ctx, RetryOptions{Task: "update:b:nope"})), ErrNotFound},
		{"retry succeeded task", second(b.p.Retry(ctx, RetryOptions{Task: c.TaskID()})), ErrNotRetryable},
		{"retry other code", second(b.p.Retry(ctx, RetryOptions{Batch: "g", Code: "SIGN_ERROR"})), ErrNothingToRetry},
		{"cancel unknown batch", second(b.p.Cancel(ctx, "nope")), ErrNotFound},
		{"cancel finished batch", second(b.p.Cancel(ctx, "g")), ErrBatchFinished},
	} {
		if !errors.Is(tt.err, tt.want) {
			t.Errorf("%s: %v, want %v", tt.name, tt.err, tt.want)
		}
	}
}

func second[T any](_ T, err error) error { return err }

// Wake moves a task waiting in asynq's scheduled or retry set to pending;
// a task not there (another queue, already pending, unknown) is left alone.
func TestWakerRunsWaitingTasks(t *testing.T) {
	t.Parallel()
	b := setup(t)
	client := asynq.NewClientFromRedisClient(b.rdb)
	for _, id := range []string{"w:scheduled", "w:pending"} {
		opts := []asynq.Option{asynq.TaskID(id), asynq.Queue(DefaultQueue)}
		if id == "w:scheduled" {
			opts = append(opts, asynq.ProcessIn(time.Hour))
		}
		if _, err := client.Enqueue(asynq.NewTask(TypeGet, []byte("{}")), opts...); err != nil {
			t.Fatal(err)
		}
	}
	w := NewWaker(b.rdb)
	if active := w.Wake([]string{"other", DefaultQueue}, []string{"w:scheduled", "w:pending", "w:unknown"}); len(active) != 0 {
		t.Errorf("active: %v", active)
	}
	for _, id := range []string{"w:scheduled", "w:pending"} {
		if info, err := b.inspector.GetTaskInfo(DefaultQueue, id); err != nil || info.State != asynq.TaskStatePending {
			t.Errorf("%s: %+v, %v; want pending", id, info, err)
		}
	}
}

// A later batch's write to a coupon is placed after an earlier batch's,
// and a canceled write no longer holds it back.
func TestOrderAcrossBatchesAndCancel(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := t.Context()
	first, second := deactivateChange("acr001"), deactivateChange("acr002")
	for i, c := range []Change{first, second} {
		if rep, err := b.p.EnqueueBatch(ctx, Changes([]Change{c}), BatchOptions{ID: fmt.Sprint("acr", i)}); err != nil || rep.Err() != nil {
			t.Fatal(err, rep.Err())
		}
	}
	e := results.OrderEntry{TaskID: second.TaskID(), Op: string(OpDeactivate), BrandID: second.BrandID, ProductCouponID: second.ProductCouponID}
	if c := mustCheck(t, b.store, e); c.Pred != first.TaskID() {
		t.Fatalf("the second batch's write: %+v, want waiting for %s", c, first.TaskID())
	}
	if rep, err := b.p.Cancel(ctx, "acr0"); err != nil || len(rep.Canceled) != 1 {
		t.Fatalf("cancel: %+v, %v", rep, err)
	}
	if c := mustCheck(t, b.store, e); !c.Go {
		t.Errorf("after the earlier write was canceled: %+v, want go", c)
	}
}
