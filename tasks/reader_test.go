package tasks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"testing"
	"time"

	"github.com/couponq/couponq/internal/results"
	"github.com/google/go-cmp/cmp"
)

func TestReaderResult(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := t.Context()
	if _, err := b.reader.Result(ctx, "get:b:nothing"); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing result: %v", err)
	}
	if _, err := b.reader.Batch(ctx, "nothing"); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing batch: %v", err)
	}
	c := deactivateChange("abcdefg")
	if _, err := b.p.EnqueueBatch(ctx, Changes([]Change{c}), BatchOptions{ID: "r"}); err != nil {
		t.Fatal(err)
	}
	coupon := `{"product_coupon_id":"1000000013","state":"DEACTIVATED"}`
	id := results.Identity{TaskID: c.TaskID(), Op: string(c.Op), BrandID: c.BrandID, ProductCouponID: c.ProductCouponID, OutRequestNo: c.OutRequestNo}
	if _, _, err := b.store.Begin(ctx, id); err != nil {
		t.Fatal(err)
	}
	if err := b.store.Retrying(ctx, id.TaskID, results.Attempt{Calls: 1, HTTPStatus: 500, ErrorCode: "SYSTEM_ERROR", ErrorMessage: "busy", RequestID: "r1"}); err != nil {
		t.Fatal(err)
	}
	// The first body fixed is the one kept: a later run reads it back.
	body := `{"brand_id":"120344","out_request_no":"abcdefg","deactivate_reason":"x"}`
	if got, err := b.store.FixRequest(ctx, id.TaskID, []byte(body)); err != nil || string(got) != body {
		t.Fatalf("FixRequest = %s, %v", got, err)
	}
	if got, err := b.store.FixRequest(ctx, id.TaskID, []byte(`{"other":1}`)); err != nil || string(got) != body {
		t.Fatalf("second FixRequest = %s, %v; want the first body", got, err)
	}
	if err := b.store.MarkUnchanged(ctx, id.TaskID); err != nil {
		t.Fatal(err)
	}
	if _, err := b.store.Finish(ctx, id.TaskID, StatusSucceeded, results.Attempt{Calls: 1, HTTPStatus: 200, RequestID: "r2", Coupon: []byte(coupon), CouponState: "DEACTIVATED"}); err != nil {
		t.Fatal(err)
	}
	got, err := b.reader.Result(ctx, id.TaskID)
	if err != nil {
		t.Fatal(err)
	}
	payload, _ := c.Payload()
	want := &Result{
		TaskID: id.TaskID, Op: OpDeactivate, BrandID: "120344", ProductCouponID: "1000000013", OutRequestNo: "abcdefg", Batch: "r",
		Status: StatusSucceeded, Attempts: 2, Runs: 1, HTTPStatus: 200, RequestID: "r2", Coupon: json.RawMessage(coupon), CouponState: "DEACTIVATED",
		Request: json.RawMessage(body), Unchanged: true,
		EnqueuedAt: testNow, UpdatedAt: testNow, FinishedAt: testNow, PayloadSHA256: PayloadSHA256(payload), Payload: payload,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("result (-want +got):\n%s", diff)
	}
	if _, err := json.Marshal(got); err != nil {
		t.Errorf("result does not marshal: %v", err)
	}
	b.mr.HSet(results.ResultKey(id.TaskID), results.FieldAttempts, "many")
	if _, err := b.reader.Result(ctx, id.TaskID); err == nil {
		t.Error("a malformed attempts field was accepted")
	}
}

func TestReaderFailedTasks(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := t.Context()
	cs := mixed(1200) // more than one SSCAN page
	if _, err := b.p.EnqueueBatch(ctx, Changes(cs), BatchOptions{ID: "f"}); err != nil {
		t.Fatal(err)
	}
	var wantIDs []string
	for i, c := range cs {
		st := StatusSucceeded
		if i%100 == 7 {
			st = StatusFailed
			wantIDs = append(wantIDs, c.TaskID())
		}
		finish(t, b.store, c, st)
	}
	sort.Strings(wantIDs)
	got, err := b.reader.FailedTasks(ctx, "f", -1)
	if err != nil {
		t.Fatal(err)
	}
	var gotIDs []string
	for _, r := range got {
		gotIDs = append(gotIDs, r.TaskID)
		if r.Status != StatusFailed || r.ErrorCode != "PARAM_ERROR" || r.HTTPStatus != 400 {
			t.Errorf("failed task = %+v", r)
		}
	}
	if diff := cmp.Diff(wantIDs, gotIDs); diff != "" {
		t.Errorf("failed tasks (-want +got):\n%s", diff)
	}
	if got, _ := b.reader.FailedTasks(ctx, "f", 5); len(got) != 5 {
		t.Errorf("limit 5 gave %d", len(got))
	}
	if got, err := b.reader.FailedTasks(ctx, "f", 0); err != nil || len(got) != 0 {
		t.Errorf("limit 0 gave %d, %v; want none (as status --failed 0)", len(got), err)
	}
	if got, err := b.reader.FailedTasks(ctx, "none", -1); err != nil || len(got) != 0 {
		t.Errorf("unknown batch: %v, %v", got, err)
	}
	s := b.batch(t, "f")
	if s.Total != 1200 || s.Failed != 12 || s.Succeeded != 1188 || !s.Done() {
		t.Errorf("batch = %+v", s)
	}
}

func TestReaderWait(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := t.Context()
	cs := mixed(3)
	if _, err := b.p.EnqueueBatch(ctx, Changes(cs), BatchOptions{ID: "w"}); err != nil {
		t.Fatal(err)
	}
	// Each progress call finishes one more task, so the test decides on
	// what Wait saw, not on timing.
	var seen []string
	st, err := b.reader.Wait(ctx, "w", time.Millisecond, func(s *BatchStatus) {
		seen = append(seen, fmt.Sprintf("%d/%d done=%v", s.Succeeded+s.Failed, s.Total, s.Done()))
		if n := s.Succeeded + s.Failed; n < len(cs) {
			finish(t, b.store, cs[n], StatusSucceeded)
		}
	})
	if err != nil || !st.Done() || st.Succeeded != 3 {
		t.Fatalf("Wait = %+v, %v", st, err)
	}
	if diff := cmp.Diff([]string{"0/3 done=false", "1/3 done=false", "2/3 done=false", "3/3 done=true"}, seen); diff != "" {
		t.Errorf("progress (-want +got):\n%s", diff)
	}

	if _, err := b.reader.Wait(ctx, "nothing", time.Millisecond, nil); !errors.Is(err, ErrNotFound) {
		t.Errorf("Wait on a missing batch: %v", err)
	}
	if _, err := b.p.EnqueueBatch(ctx, Changes([]Change{deactivateChange("never_1")}), BatchOptions{ID: "never"}); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	polls := 0
	st, err = b.reader.Wait(cctx, "never", time.Millisecond, func(*BatchStatus) {
		if polls++; polls == 2 {
			cancel()
		}
	})
	if !errors.Is(err, context.Canceled) || st == nil || st.Done() {
		t.Errorf("Wait after cancel = %+v, %v", st, err)
	}
}

// Wait repairs a sealed batch that makes no progress: here a task's
// result says succeeded and its batch step was lost, so the batch would
// never finish on its own.
func TestReaderWaitRepairsStuckBatch(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	c := getChange("stuck_1")
	if _, err := b.p.EnqueueBatch(ctx, Changes([]Change{c}), BatchOptions{ID: "stuck"}); err != nil {
		t.Fatal(err)
	}
	b.mr.HSet(results.ResultKey(c.TaskID()), results.FieldStatus, string(StatusSucceeded))
	r := NewReader(b.rdb)
	r.stuckAfter = 20 * time.Millisecond
	st, err := r.Wait(ctx, "stuck", 10*time.Millisecond, nil)
	if err != nil || !st.Done() || st.Succeeded != 1 || st.Total != 1 {
		t.Fatalf("Wait = %+v, %v", st, err)
	}
	if ttl := b.mr.TTL(results.BatchKey("stuck")); ttl != DefaultResultTTL {
		t.Errorf("batch TTL after the repair = %v", ttl)
	}
}
