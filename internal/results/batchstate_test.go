package results

import (
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/couponq/couponq/internal/autopipe"
	"github.com/couponq/couponq/internal/redistest"
)

// counters are a batch's counters, as its hash says or as a recount of
// its results does.
type counters struct {
	Total, Succeeded, Failed, Canceled      int
	Duplicates, EarlierFailed, Conflicts    int
	Finished, Sealed, CanceledAt, InTaskSet bool
}

// recount reads batch's hash (got) and recounts total, succeeded, failed
// and canceled from the results of taskIDs that name the batch (want;
// the other fields are got's). InTaskSet says the task set is exactly
// those tasks.
func recount(t *testing.T, rdb redis.UniversalClient, batch string, taskIDs ...string) (got, want counters) {
	t.Helper()
	ctx := t.Context()
	m, err := rdb.HGetAll(ctx, BatchKey(batch)).Result()
	if err != nil {
		t.Fatal(err)
	}
	n := func(f string) int { v, _ := strconv.Atoi(m[f]); return v }
	got = counters{Total: n("total"), Succeeded: n("succeeded"), Failed: n("failed"), Canceled: n("canceled"),
		Duplicates: n("duplicates"), EarlierFailed: n("earlier_failed"), Conflicts: n("conflicts"),
		Finished: m["finished_at"] != "", Sealed: m["sealed"] == "1", CanceledAt: m["canceled_at"] != ""}
	members, err := rdb.SMembers(ctx, BatchTasksKey(batch)).Result()
	if err != nil {
		t.Fatal(err)
	}
	inSet := map[string]bool{}
	for _, id := range members {
		inSet[id] = true
	}
	want = got
	want.Total, want.Succeeded, want.Failed, want.Canceled = 0, 0, 0, 0
	mine, allIn := 0, true
	for _, id := range taskIDs {
		r, err := rdb.HMGet(ctx, ResultKey(id), FieldBatch, FieldStatus).Result()
		if err != nil {
			t.Fatal(err)
		}
		if b, _ := r[0].(string); b != batch {
			continue
		}
		mine++
		allIn = allIn && inSet[id]
		want.Total++
		switch st, _ := r[1].(string); Status(st) {
		case StatusSucceeded:
			want.Succeeded++
		case StatusFailed:
			want.Failed++
		case StatusCanceled:
			want.Canceled++
		}
	}
	got.InTaskSet = allIn && len(members) == mine
	want.InTaskSet = true
	return got, want
}

type stateBundle struct {
	mr   *miniredis.Miniredis // nil on a redis-server
	addr string
	rdb  *redis.Client
	s    *Store
}

func setupState(t *testing.T) *stateBundle {
	t.Helper()
	mr := miniredis.RunT(t)
	b := stateOn(t, mr.Addr())
	b.mr = mr
	return b
}

// setupStateRedis is setupState on a redis-server of its own: the scripts
// run on Redis's own Lua, not miniredis's (skipped without redis-server).
func setupStateRedis(t *testing.T) *stateBundle {
	t.Helper()
	return stateOn(t, redistest.Start(t).Addr())
}

func stateOn(t *testing.T, addr string) *stateBundle {
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { _ = rdb.Close() })
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	return &stateBundle{addr: addr, rdb: rdb, s: NewStore(rdb, WithClock(func() time.Time { return now }))}
}

// onBoth runs test on miniredis and on a redis-server.
func onBoth(t *testing.T, test func(t *testing.T, b *stateBundle)) {
	t.Run("miniredis", func(t *testing.T) { test(t, setupState(t)) })
	t.Run("redis-server", func(t *testing.T) { test(t, setupStateRedis(t)) })
}

const testBatch = "b1"

func testID(n string) Identity {
	return Identity{TaskID: "get:120344:" + n, Op: "get", BrandID: "120344", ProductCouponID: "1000000013", OutRequestNo: n, Batch: testBatch}
}

// accept opens the batch and accepts tasks n into it in one call.
func (b *stateBundle) accept(t *testing.T, h Handoff, ns ...string) []string {
	t.Helper()
	if err := b.s.OpenBatch(t.Context(), testBatch); err != nil {
		t.Fatal(err)
	}
	items := make([]AcceptItem, len(ns))
	ids := make([]string, len(ns))
	for i, n := range ns {
		items[i] = AcceptItem{Identity: testID(n), PayloadSHA256: "sha-" + n}
		ids[i] = testID(n).TaskID
	}
	if _, err := b.s.AcceptMany(t.Context(), testBatch, h, items); err != nil {
		t.Fatal(err)
	}
	return ids
}

func (b *stateBundle) check(t *testing.T, ids []string, want counters) {
	t.Helper()
	got, recounted := recount(t, b.rdb, testBatch, ids...)
	if got != recounted {
		t.Errorf("counters %+v differ from the recount of the results %+v", got, recounted)
	}
	if got != want {
		t.Errorf("counters %+v, want %+v", got, want)
	}
}

// resultStep runs only the result step of a Finish: the batch step is
// lost, as when the worker dies between the two.
func (b *stateBundle) resultStep(t *testing.T, taskID string, st Status) {
	t.Helper()
	args := append([]any{b.s.stamp(), b.s.ttlMillis()}, (&Attempt{Calls: 1}).args()...)
	args = append(args, string(st), "", "", "")
	if err := finishScript.Run(t.Context(), b.rdb, []string{ResultKey(taskID)}, args...).Err(); err != nil {
		t.Fatal(err)
	}
}

func TestApplyIdempotent(t *testing.T) {
	t.Parallel()
	b := setupState(t)
	ctx := t.Context()
	h := Handoff{Run: "r", Seq: 1}
	ids := b.accept(t, h, "t1", "t2", "t1")
	before := b.mr.Dump()
	// The same call re-sent: nothing written, the duplicate counted once.
	b.accept(t, h, "t1", "t2", "t1")
	if after := b.mr.Dump(); after != before {
		t.Errorf("re-sent accept wrote:\n%s\nthen\n%s", before, after)
	}
	if err := b.s.SealBatch(ctx, testBatch); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := b.s.Finish(ctx, ids[0], StatusSucceeded, Attempt{Calls: 1}); err != nil {
			t.Fatal(err)
		}
		// The batch step alone, sent again.
		if err := b.s.settleOne(ctx, ids[0], testBatch, "1", string(StatusSucceeded)); err != nil {
			t.Fatal(err)
		}
		if err := b.s.Settle(ctx, ids); err != nil {
			t.Fatal(err)
		}
	}
	b.check(t, ids[:2], counters{Total: 2, Succeeded: 1, Duplicates: 1, Sealed: true, InTaskSet: true})
}

func TestApplyStaleIgnored(t *testing.T) {
	t.Parallel()
	b := setupState(t)
	ctx := t.Context()
	ids := b.accept(t, Handoff{Run: "r"}, "t1", "t2")
	if _, err := b.s.Finish(ctx, ids[0], StatusFailed, Attempt{Calls: 1}); err != nil {
		t.Fatal(err)
	}
	// A late step of the same run saying queued or running (an accept
	// re-sent, a repair that read before the finish): ignored.
	for _, st := range []string{"queued", "running"} {
		if err := b.s.settleOne(ctx, ids[0], testBatch, "1", st); err != nil {
			t.Fatal(err)
		}
	}
	b.check(t, ids, counters{Total: 2, Failed: 1, InTaskSet: true})
	// Retried: run 2 is queued; a late step of run 1 (its finish re-sent)
	// is ignored.
	if _, err := b.s.Requeue(ctx, ids[:1], ""); err != nil {
		t.Fatal(err)
	}
	if err := b.s.settleOne(ctx, ids[0], testBatch, "1", string(StatusFailed)); err != nil {
		t.Fatal(err)
	}
	b.check(t, ids, counters{Total: 2, InTaskSet: true})
}

func TestApplyRetryMovesCounters(t *testing.T) {
	t.Parallel()
	b := setupState(t)
	ctx := t.Context()
	ids := b.accept(t, Handoff{Run: "r"}, "t1", "t2")
	if err := b.s.SealBatch(ctx, testBatch); err != nil {
		t.Fatal(err)
	}
	if _, err := b.s.CancelBatch(ctx, testBatch); err != nil {
		t.Fatal(err)
	}
	if _, err := b.s.Finish(ctx, ids[0], StatusFailed, Attempt{Calls: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.s.CancelUnstarted(ctx, ids[1:]); err != nil {
		t.Fatal(err)
	}
	b.check(t, ids, counters{Total: 2, Failed: 1, Canceled: 1, Sealed: true, Finished: true, CanceledAt: true, InTaskSet: true})
	out, err := b.s.Requeue(ctx, ids, "")
	if err != nil || !out[0].Requeued || !out[1].Requeued {
		t.Fatalf("Requeue = %+v, %v", out, err)
	}
	b.check(t, ids, counters{Total: 2, Sealed: true, InTaskSet: true})
	for i, st := range []Status{StatusSucceeded, StatusFailed} {
		if ok, err := b.s.Finish(ctx, ids[i], st, Attempt{Calls: 1}); err != nil || !ok {
			t.Fatalf("Finish = %v, %v", ok, err)
		}
	}
	b.check(t, ids, counters{Total: 2, Succeeded: 1, Failed: 1, Sealed: true, Finished: true, InTaskSet: true})
}

// A worker dies between Finish's result step and its batch step; asynq
// re-delivers the task, and Begin, finding it terminal, applies the step.
func TestApplyCrashHealedByRedelivery(t *testing.T) {
	t.Parallel()
	b := setupState(t)
	ctx := t.Context()
	ids := b.accept(t, Handoff{Run: "r"}, "t1")
	if err := b.s.SealBatch(ctx, testBatch); err != nil {
		t.Fatal(err)
	}
	b.resultStep(t, ids[0], StatusSucceeded)
	if got, _ := recount(t, b.rdb, testBatch, ids...); got.Succeeded != 0 || got.Finished {
		t.Fatalf("the lost step counted: %+v", got)
	}
	st, _, err := b.s.Begin(ctx, testID("t1"))
	if err != nil || st != StatusSucceeded {
		t.Fatalf("Begin = %v, %v", st, err)
	}
	b.check(t, ids, counters{Total: 1, Succeeded: 1, Sealed: true, Finished: true, InTaskSet: true})
}

// Steps lost in every writer (finish, retry, unaccept, an accept whose
// batch step and task set never came) are healed by RepairBatch, and a
// task set that names another batch's task loses it.
func TestRepairBatch(t *testing.T) {
	t.Parallel()
	b := setupState(t)
	ctx := t.Context()
	ids := b.accept(t, Handoff{Run: "r"}, "t1", "t2", "t3", "t4")
	// t5's accept wrote its result, then the producer died.
	t5 := testID("t5")
	if err := acceptScript.Run(ctx, b.rdb, []string{ResultKey(t5.TaskID)}, b.s.stamp(), b.s.ttlMillis(), testBatch, "r2", "r2/1.0/0", "q", "60",
		t5.TaskID, t5.Op, t5.BrandID, t5.ProductCouponID, t5.OutRequestNo, "sha-t5", "{}").Err(); err != nil {
		t.Fatal(err)
	}
	ids = append(ids, t5.TaskID)
	if err := b.s.SealBatch(ctx, testBatch); err != nil {
		t.Fatal(err)
	}
	b.resultStep(t, ids[0], StatusSucceeded) // lost batch step
	if _, err := b.s.Finish(ctx, ids[1], StatusFailed, Attempt{}); err != nil {
		t.Fatal(err)
	}
	// couponq retry of t2 lost its batch step.
	if err := requeueScript.Run(ctx, b.rdb, []string{ResultKey(ids[1])}, b.s.stamp(), b.s.ttlMillis(), "").Err(); err != nil {
		t.Fatal(err)
	}
	// Unaccept of t3 lost its batch step.
	if err := unacceptScript.Run(ctx, b.rdb, []string{ResultKey(ids[2])}).Err(); err != nil {
		t.Fatal(err)
	}
	// The task set names another batch's task.
	other := testID("t9")
	other.Batch = "b2"
	if _, err := b.s.Accept(ctx, other, "sha-t9"); err != nil {
		t.Fatal(err)
	}
	if err := b.rdb.SAdd(ctx, BatchTasksKey(testBatch), other.TaskID).Err(); err != nil {
		t.Fatal(err)
	}
	if got, want := recount(t, b.rdb, testBatch, ids...); got == want {
		t.Fatalf("nothing to repair: %+v", got)
	}
	// Settle of t5 (the adoption sweep's, for changes it finds
	// unconfirmed) counts it; RepairBatch does the rest.
	if err := b.s.Settle(ctx, []string{t5.TaskID}); err != nil {
		t.Fatal(err)
	}
	n, err := b.s.RepairBatch(ctx, testBatch)
	if err != nil || n != 3 {
		t.Errorf("RepairBatch = %d, %v; want 3 tasks changed", n, err)
	}
	b.check(t, append(ids, other.TaskID), counters{Total: 4, Succeeded: 1, Sealed: true, InTaskSet: true})
	if n, err := b.s.RepairBatch(ctx, testBatch); err != nil || n != 0 {
		t.Errorf("RepairBatch again = %d, %v; want nothing changed", n, err)
	}
	// The rest finish: the batch does.
	for _, id := range []string{ids[1], ids[3], ids[4]} {
		if _, err := b.s.Finish(ctx, id, StatusSucceeded, Attempt{}); err != nil {
			t.Fatal(err)
		}
	}
	b.check(t, ids, counters{Total: 4, Succeeded: 4, Sealed: true, Finished: true, InTaskSet: true})
}

// A task whose accept lost its batch step (and never reached the task
// set) is counted by its Finish, and put in the task set.
func TestFinishCountsAnUncountedTask(t *testing.T) {
	t.Parallel()
	b := setupState(t)
	ctx := t.Context()
	if err := b.s.OpenBatch(ctx, testBatch); err != nil {
		t.Fatal(err)
	}
	id := testID("t1")
	if err := acceptScript.Run(ctx, b.rdb, []string{ResultKey(id.TaskID)}, b.s.stamp(), b.s.ttlMillis(), testBatch, "r", "r/1.0/0", "q", "60",
		id.TaskID, id.Op, id.BrandID, id.ProductCouponID, id.OutRequestNo, "sha", "{}").Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := b.s.Finish(ctx, id.TaskID, StatusSucceeded, Attempt{}); err != nil {
		t.Fatal(err)
	}
	if err := b.s.SealBatch(ctx, testBatch); err != nil {
		t.Fatal(err)
	}
	b.check(t, []string{id.TaskID}, counters{Total: 1, Succeeded: 1, Sealed: true, Finished: true, InTaskSet: true})
}

func TestHashTagKeys(t *testing.T) {
	t.Parallel()
	for _, k := range []string{batchCountedKey("01JX"), batchCallsKey("01JX")} {
		if got, want := k[:len("{couponq:batch:01JX}")], "{"+BatchKey("01JX")+"}"; got != want {
			t.Errorf("%s: tag %s, want %s", k, got, want)
		}
	}
	if hashTagSafe("a{b") || hashTagSafe("a}b") || !hashTagSafe("01JX-a.b_c") {
		t.Error("hashTagSafe")
	}
	if _, err := NewStore(nil).RepairBatch(t.Context(), "x{y}"); err == nil {
		t.Error("RepairBatch of a batch ID with braces")
	}
	if err := NewStore(nil).OpenBatch(t.Context(), "x}"); err == nil {
		t.Error("OpenBatch of a batch ID with a brace")
	}
	if _, err := NewStore(nil).AcceptMany(t.Context(), "{x", Handoff{}, nil); err == nil {
		t.Error("AcceptMany into a batch ID with a brace")
	}
}

// A batch an older couponq wrote (counters by increments, no counted
// states) is rebuilt from its results at its first batch step, not
// counted twice: here its second task finishes, after its first did,
// through Finish and through the worker's one-script FinishAndRelease.
func TestLegacyBatchRebuilt(t *testing.T) {
	t.Parallel()
	for _, oneScript := range []bool{false, true} {
		t.Run(map[bool]string{false: "Finish", true: "FinishAndRelease"}[oneScript], func(t *testing.T) {
			onBoth(t, func(t *testing.T, b *stateBundle) { testLegacyBatchRebuilt(t, b, oneScript) })
		})
	}
}

func testLegacyBatchRebuilt(t *testing.T, b *stateBundle, oneScript bool) {
	ctx := t.Context()
	ids := b.accept(t, Handoff{Run: "r"}, "t1", "t2", "t3")
	if err := b.s.SealBatch(ctx, testBatch); err != nil {
		t.Fatal(err)
	}
	if _, err := b.s.Finish(ctx, ids[0], StatusSucceeded, Attempt{}); err != nil {
		t.Fatal(err)
	}
	// As the older couponq left it: the same counters, no counted states.
	b.rdb.Del(ctx, batchCountedKey(testBatch))
	b.check(t, ids, counters{Total: 3, Succeeded: 1, Sealed: true, InTaskSet: true})
	var err error
	if oneScript {
		_, _, err = b.s.FinishAndRelease(ctx, ids[1], testBatch, StatusFailed, Attempt{}, nil)
	} else {
		_, err = b.s.Finish(ctx, ids[1], StatusFailed, Attempt{})
	}
	if err != nil {
		t.Fatal(err)
	}
	b.check(t, ids, counters{Total: 3, Succeeded: 1, Failed: 1, Sealed: true, InTaskSet: true})
	if _, err := b.s.Finish(ctx, ids[2], StatusSucceeded, Attempt{}); err != nil {
		t.Fatal(err)
	}
	b.check(t, ids, counters{Total: 3, Succeeded: 2, Failed: 1, Sealed: true, Finished: true, InTaskSet: true})
	// RepairBatch rebuilds one too.
	b.rdb.Del(ctx, batchCountedKey(testBatch))
	if _, err := b.s.RepairBatch(ctx, testBatch); err != nil {
		t.Fatal(err)
	}
	b.check(t, ids, counters{Total: 3, Succeeded: 2, Failed: 1, Sealed: true, Finished: true, InTaskSet: true})
	if n, _ := b.rdb.HKeys(ctx, batchCountedKey(testBatch)).Result(); len(n) != 3 {
		t.Errorf("counted states after the rebuild: %v", n)
	}
}

// A rebuild in several parts neither finishes the batch early nor loses a
// part.
func TestRebuildInParts(t *testing.T) {
	t.Parallel()
	b := setupState(t)
	ctx := t.Context()
	ns := make([]string, 2*maxApply+10)
	for i := range ns {
		ns[i] = "t" + strconv.Itoa(i)
	}
	ids := b.accept(t, Handoff{Run: "r"}, ns...)
	if err := b.s.SealBatch(ctx, testBatch); err != nil {
		t.Fatal(err)
	}
	if _, err := b.s.CancelUnstarted(ctx, ids[:maxApply+5]); err != nil {
		t.Fatal(err)
	}
	b.mr.Del(batchCountedKey(testBatch))
	b.mr.HSet(BatchKey(testBatch), "total", "1") // whatever the older couponq counted
	if _, err := b.s.RepairBatch(ctx, testBatch); err != nil {
		t.Fatal(err)
	}
	b.check(t, ids, counters{Total: len(ids), Canceled: maxApply + 5, Sealed: true, InTaskSet: true})
}

// A Retrying record sent twice with its token (go-redis re-sends a
// pipeline after a read timeout) adds its calls once; another token, or
// none, adds them again.
func TestRetryingTokenCountsOnce(t *testing.T) {
	b := setupState(t)
	ctx := t.Context()
	id := b.accept(t, Handoff{Run: "r", Seq: 1}, "retry_once")[0]
	attempts := func() string {
		t.Helper()
		v, err := b.rdb.HGet(ctx, ResultKey(id), "attempts").Result()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	for range 2 {
		if err := b.s.Retrying(ctx, id, Attempt{Calls: 2, HTTPStatus: 500, Token: "run/1"}); err != nil {
			t.Fatal(err)
		}
	}
	if got := attempts(); got != "2" {
		t.Fatalf("attempts after one record sent twice = %s, want 2", got)
	}
	if err := b.s.Retrying(ctx, id, Attempt{Calls: 1, HTTPStatus: 500, Token: "run/2"}); err != nil {
		t.Fatal(err)
	}
	if err := b.s.Retrying(ctx, id, Attempt{Calls: 1, HTTPStatus: 500}); err != nil {
		t.Fatal(err)
	}
	if got := attempts(); got != "4" {
		t.Fatalf("attempts after two more records = %s, want 4", got)
	}
}

// FinishAndRelease finishes a write, counts it in its batch and releases
// it from its coupon's order in the batch step's round trip: the next
// write of the coupon is woken and may go.
// TestFinishAndRelease runs FinishAndRelease on its three paths: one
// script with the batch the caller read (a single server), two steps
// when the caller knows no batch, and one script whose result names
// another batch than the caller's, whose step follows as Finish's.
func TestFinishAndRelease(t *testing.T) {
	for _, tc := range []struct{ name, hint string }{
		{"one script", testBatch},
		{"two steps", ""},
		{"another batch than read", "b2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			onBoth(t, func(t *testing.T, b *stateBundle) { testFinishAndRelease(t, b, tc.hint) })
		})
	}
}

func testFinishAndRelease(t *testing.T, b *stateBundle, hint string) {
	ctx := t.Context()
	ids := b.accept(t, Handoff{Run: "r", Seq: 1}, "fr_1", "fr_2")
	entry := func(id string) OrderEntry {
		return OrderEntry{TaskID: id, Op: "update", BrandID: "120344", ProductCouponID: "1000000013"}
	}
	if err := b.s.RegisterOrder(ctx, []OrderEntry{entry(ids[0]), entry(ids[1])}, false); err != nil {
		t.Fatal(err)
	}
	if chk, err := b.s.CheckOrder(ctx, entry(ids[1])); err != nil || chk.Go || chk.Pred != ids[0] {
		t.Fatalf("CheckOrder of the second write before = %+v, %v; want it to wait for the first", chk, err)
	}
	// The task set lost the task (its batch step came back): the finish
	// puts it back.
	if err := b.rdb.SRem(ctx, BatchTasksKey(testBatch), ids[0]).Err(); err != nil {
		t.Fatal(err)
	}
	hook := &ranScripts{ran: map[string]bool{}}
	b.rdb.AddHook(hook)
	done, wake, err := b.s.FinishAndRelease(ctx, ids[0], hint, StatusSucceeded, Attempt{Calls: 1, HTTPStatus: 200}, []OrderEntry{entry(ids[0])})
	if err != nil || !done || !slices.Equal(wake, []string{ids[1]}) {
		t.Fatalf("FinishAndRelease = %v, %v, %v; want true, [%s]", done, wake, err, ids[1])
	}
	if one, two := hook.ran[finishOneScript.Hash()], hook.ran[applyBatchScript.Hash()]; one != (hint != "") || two != (hint != testBatch) {
		t.Errorf("ran the one script: %v, the batch step on its own: %v", one, two)
	}
	if chk, err := b.s.CheckOrder(ctx, entry(ids[1])); err != nil || !chk.Go {
		t.Fatalf("CheckOrder of the second write after = %+v, %v; want go", chk, err)
	}
	b.check(t, ids, counters{Total: 2, Succeeded: 1, InTaskSet: true})
	if st, err := b.rdb.HGet(ctx, ResultKey(ids[0]), "status").Result(); err != nil || st != "succeeded" {
		t.Fatalf("status = %q, %v; want succeeded", st, err)
	}
	// Again (a re-delivery): nothing more is counted, nobody woken.
	done, wake, err = b.s.FinishAndRelease(ctx, ids[0], hint, StatusSucceeded, Attempt{Calls: 1, HTTPStatus: 200}, []OrderEntry{entry(ids[0])})
	if err != nil || done || len(wake) != 0 {
		t.Fatalf("FinishAndRelease again = %v, %v, %v; want false, none", done, wake, err)
	}
	b.check(t, ids, counters{Total: 2, Succeeded: 1, InTaskSet: true})
	// The last one finishes the sealed batch.
	if err := b.s.SealBatch(ctx, testBatch); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.s.FinishAndRelease(ctx, ids[1], hint, StatusFailed, Attempt{Calls: 1, HTTPStatus: 400, ErrorCode: "PARAM_ERROR"}, []OrderEntry{entry(ids[1])}); err != nil {
		t.Fatal(err)
	}
	b.check(t, ids, counters{Total: 2, Succeeded: 1, Failed: 1, Sealed: true, Finished: true, InTaskSet: true})
}

// TestSingleServer tells the clients whose scripts may touch any key.
func TestSingleServer(t *testing.T) {
	mr := miniredis.RunT(t)
	single := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer single.Close()
	wrapped := autopipe.New(single, 1, 8)
	defer wrapped.Close()
	cluster := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{mr.Addr()}})
	defer cluster.Close()
	for _, tc := range []struct {
		name string
		rdb  redis.UniversalClient
		want bool
	}{{"*redis.Client", single, true}, {"autopipe of one", wrapped, true}, {"cluster", cluster, false}} {
		if got := singleServer(tc.rdb); got != tc.want {
			t.Errorf("singleServer(%s) = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestStart: on a single server Start begins a task nothing holds back in
// the round trip of its reads, and only such a task; elsewhere it answers
// nil and leaves the task to Begin.
func TestStart(t *testing.T) { onBoth(t, testStart) }

func testStart(t *testing.T, b *stateBundle) {
	ctx := t.Context()
	ids := b.accept(t, Handoff{Run: "r", Seq: 1}, "st_1", "st_2", "st_3")
	entry := func(id string, op string) *OrderEntry {
		return &OrderEntry{TaskID: id, Op: op, BrandID: "120344", ProductCouponID: "1000000013"}
	}
	id := func(i int) Identity { return testID(ids[i][len("get:120344:"):]) }
	// The first write goes; the second waits for it.
	if err := b.s.RegisterOrder(ctx, []OrderEntry{*entry(ids[0], "update"), *entry(ids[1], "update")}, false); err != nil {
		t.Fatal(err)
	}
	status := func(i int) string {
		t.Helper()
		st, err := b.rdb.HGet(ctx, ResultKey(ids[i]), "status").Result()
		if err != nil {
			t.Fatal(err)
		}
		return st
	}

	s, err := b.s.Start(ctx, id(1), testBatch, entry(ids[1], "update"), []byte(`{"b":1}`))
	if err != nil || s == nil || s.Begun || s.Order.Pred != ids[0] || s.Status != StatusQueued || s.Batch != testBatch {
		t.Fatalf("Start of a write behind another = %+v, %v; want not begun, waiting for %s", s, err, ids[0])
	}
	if st := status(1); st != "queued" {
		t.Errorf("a write held back is %s, want queued", st)
	}
	if req, _ := b.rdb.HGet(ctx, ResultKey(ids[1]), "request").Result(); req != "" {
		t.Errorf("a write held back had its request fixed: %s", req)
	}
	s, err = b.s.Start(ctx, id(0), testBatch, entry(ids[0], "update"), []byte(`{"b":0}`))
	if err != nil || s == nil || !s.Begun || !s.Order.Go || s.Attempts != 0 || s.Status != StatusQueued {
		t.Fatalf("Start of the first write = %+v, %v; want begun", s, err)
	}
	if st := status(0); st != "running" {
		t.Errorf("a write begun is %s, want running", st)
	}
	if req, _ := b.rdb.HGet(ctx, ResultKey(ids[0]), "request").Result(); req != `{"b":0}` || string(s.Request) != req {
		t.Errorf("a write begun has request %s (answered %s), want its body fixed", req, s.Request)
	}
	// Unordered, and a request fixed earlier wins over the one given.
	if err := b.rdb.HSet(ctx, ResultKey(ids[2]), "request", `{"x":1}`).Err(); err != nil {
		t.Fatal(err)
	}
	s, err = b.s.Start(ctx, id(2), testBatch, nil, []byte(`{"b":2}`))
	if err != nil || s == nil || !s.Begun || string(s.Request) != `{"x":1}` {
		t.Fatalf("Start unordered = %+v, %v; want begun with the request", s, err)
	}
	// A terminal task is Begin's to say so.
	if _, err := b.s.Finish(ctx, ids[2], StatusSucceeded, Attempt{Calls: 1}); err != nil {
		t.Fatal(err)
	}
	s, err = b.s.Start(ctx, id(2), testBatch, nil, []byte(`{"b":2}`))
	if err != nil || s == nil || s.Begun || s.Status != StatusSucceeded {
		t.Fatalf("Start of a finished task = %+v, %v; want not begun, succeeded", s, err)
	}
	// A canceled batch's task is not begun.
	if _, err := b.s.CancelBatch(ctx, testBatch); err != nil {
		t.Fatal(err)
	}
	if err := b.rdb.HSet(ctx, ResultKey(ids[1]), "status", "queued").Err(); err != nil {
		t.Fatal(err)
	}
	s, err = b.s.Start(ctx, id(1), testBatch, nil, nil)
	if err != nil || s == nil || s.Begun || !s.Canceled {
		t.Fatalf("Start in a canceled batch = %+v, %v; want not begun, canceled", s, err)
	}
	// No batch header, or a client of many servers: the caller's to do.
	if s, err := b.s.Start(ctx, id(1), "", nil, nil); s != nil || err != nil {
		t.Errorf("Start without a batch = %+v, %v; want nil", s, err)
	}
	ring := redis.NewRing(&redis.RingOptions{Addrs: map[string]string{"one": b.addr}})
	defer ring.Close()
	if s, err := NewStore(ring).Start(ctx, id(1), testBatch, nil, nil); s != nil || err != nil {
		t.Errorf("Start on a ring = %+v, %v; want nil", s, err)
	}
}
