package tasks

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/redis/go-redis/v9"

	"github.com/couponq/couponq/internal/results"
)

// asynqTaskKey spells the key asynq v0.26 keeps a task in.
func TestAsynqTaskKey(t *testing.T) {
	t.Parallel()
	b := setup(t)
	c := getChange("keyed_1")
	if _, err := b.p.Enqueue(t.Context(), c); err != nil {
		t.Fatal(err)
	}
	if !b.mr.Exists(asynqTaskKey(DefaultQueue, c.TaskID())) {
		t.Errorf("no key %s; asynq's keys: %v", asynqTaskKey(DefaultQueue, c.TaskID()), b.mr.Keys())
	}
}

// resend runs every script twice, as go-redis does when a read times out
// after Redis ran the command: the caller sees the second reply only.
type resend struct{}

func (resend) DialHook(next redis.DialHook) redis.DialHook { return next }

func isScript(c redis.Cmder) bool {
	n := strings.ToLower(c.Name())
	return n == "evalsha" || n == "eval"
}

func (resend) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, c redis.Cmder) error {
		if isScript(c) {
			_ = next(ctx, c)
		}
		return next(ctx, c)
	}
}

func (resend) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		for _, c := range cmds {
			if isScript(c) {
				_ = next(ctx, cmds)
				break
			}
		}
		return next(ctx, cmds)
	}
}

// Every script the producer sends (its accepts, asynq's enqueues) running
// twice loses nothing, doubles nothing and invents no duplicate.
func TestEnqueueBatchSurvivesResentCommands(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.rdb.AddHook(resend{})
	ctx := t.Context()
	cs := mixed(300)
	rep, err := b.p.EnqueueBatch(ctx, Changes(cs), BatchOptions{ID: "r"})
	if err != nil || rep.Err() != nil {
		t.Fatalf("EnqueueBatch: %v / %v", err, rep.Err())
	}
	if diff := cmp.Diff(&BatchReport{BatchID: "r", Read: 300, Total: 300}, rep); diff != "" {
		t.Errorf("report (-want +got):\n%s", diff)
	}
	if s := b.batch(t, "r"); s.Total != 300 || s.Duplicates != 0 || b.members(t, "r") != 300 || !s.Sealed {
		t.Errorf("batch = %+v, %d members", s, b.members(t, "r"))
	}
	for _, c := range cs {
		r, err := b.reader.Result(ctx, c.TaskID())
		if err != nil || r.Status != StatusQueued || r.Batch != "r" {
			t.Fatalf("result of %s = %+v, %v", c.TaskID(), r, err)
		}
		if !b.mr.Exists(asynqTaskKey(DefaultQueue, c.TaskID())) {
			t.Fatalf("%s has no asynq task", c.TaskID())
		}
	}
	if q, _ := b.inspector.GetQueueInfo(DefaultQueue); q.Pending != 300 {
		t.Errorf("asynq pending = %d, want 300", q.Pending)
	}
	if n := len(b.mr.Keys()); b.mr.Exists(results.UnconfirmedKey(DefaultQueue)) || b.mr.Exists(results.OpenBatchesKey) {
		t.Errorf("registry left behind (%d keys)", n)
	}

	// A single Enqueue too.
	res, err := b.p.Enqueue(ctx, updateChange("single_1"))
	if err != nil || res.Duplicate {
		t.Errorf("Enqueue = %+v, %v", res, err)
	}
}

// The accept script's outcomes, and its idempotence: the same call again
// answers the same and writes nothing.
func TestStoreAcceptManyIdempotent(t *testing.T) {
	t.Parallel()
	b := setup(t)
	s, ctx := b.store, t.Context()
	item := func(n string) results.AcceptItem {
		return results.AcceptItem{Identity: results.Identity{TaskID: "get:b:" + n, Op: string(OpGet), BrandID: "b", ProductCouponID: "1", OutRequestNo: n},
			PayloadSHA256: "sha-" + n, Payload: []byte(`{"n":"` + n + `"}`)}
	}
	h := results.Handoff{Run: "run1", Seq: 1, Queue: "q", Timeout: time.Minute}
	if err := s.OpenBatch(ctx, "x"); err != nil {
		t.Fatal(err)
	}
	// t0 belongs to another batch.
	if out, err := s.AcceptMany(ctx, "y", results.Handoff{Run: "other"}, []results.AcceptItem{item("t0")}); err != nil || out[0] != results.Accepted {
		t.Fatal(out, err)
	}
	first := []results.AcceptItem{item("t1"), item("t2"), item("t1"), item("t0")}
	want := []results.AcceptOutcome{results.Accepted, results.Accepted, results.Duplicate, results.Duplicate}
	out, err := s.AcceptMany(ctx, "x", h, first)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, out); diff != "" {
		t.Errorf("first call (-want +got):\n%s", diff)
	}
	before := b.mr.Dump()
	// The same call again: same answer, nothing written.
	out, err = s.AcceptMany(ctx, "x", h, first)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, out); diff != "" {
		t.Errorf("call re-sent (-want +got):\n%s", diff)
	}
	if after := b.mr.Dump(); after != before {
		t.Errorf("re-sent call wrote:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	// A later call of the same run: a repeated line is a duplicate.
	h2 := h
	h2.Seq = 2
	if out, err := s.AcceptMany(ctx, "x", h2, []results.AcceptItem{item("t2"), item("t3")}); err != nil ||
		!cmp.Equal(out, []results.AcceptOutcome{results.Duplicate, results.Accepted}) {
		t.Errorf("later call of the run = %v, %v", out, err)
	}
	// Another run of the batch: its changes resume, queued or underway.
	mustBegin(t, s, item("t2").Identity, StatusRunning)
	if out, err := s.AcceptMany(ctx, "x", results.Handoff{Run: "run2", Queue: "q"}, []results.AcceptItem{item("t1"), item("t2"), item("t4")}); err != nil ||
		!cmp.Equal(out, []results.AcceptOutcome{results.Resumed, results.Underway, results.Accepted}) {
		t.Errorf("rerun = %v, %v", out, err)
	}
	if st := b.batch(t, "x"); st.Total != 4 || st.Duplicates != 3 || b.members(t, "x") != 4 {
		t.Errorf("batch = %+v, %d members", st, b.members(t, "x"))
	}
	hs, err := s.Handoffs(ctx, []string{"get:b:t1", "get:b:nope"})
	if err != nil {
		t.Fatal(err)
	}
	wantH := []results.Handed{
		{TaskID: "get:b:t1", Status: StatusQueued, Op: "get", Batch: "x", Run: "run1", Queue: "q", Timeout: time.Minute, Payload: []byte(`{"n":"t1"}`)},
		{TaskID: "get:b:nope"},
	}
	if diff := cmp.Diff(wantH, hs); diff != "" {
		t.Errorf("Handoffs (-want +got):\n%s", diff)
	}
}

// A change its producer accepted but never enqueued is adopted after the
// grace period, as its batch's own task; its abandoned batch is sealed.
func TestAdopterSweep(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := t.Context()
	c, done := deactivateChange("orphan_1"), updateChange("enqueued_1")
	pr, err := prepare(c, "ab")
	if err != nil {
		t.Fatal(err)
	}
	// A producer that died between accept and enqueue (testNow is long ago).
	if err := b.store.OpenBatch(ctx, "ab"); err != nil {
		t.Fatal(err)
	}
	if err := b.store.Register(ctx, DefaultQueue, []string{pr.id.TaskID}); err != nil {
		t.Fatal(err)
	}
	h := b.p.handoff("deadrun", 1)
	if _, err := b.store.AcceptMany(ctx, "ab", h, []results.AcceptItem{{Identity: pr.id, PayloadSHA256: pr.sha, Payload: pr.payload}}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.p.Enqueue(ctx, done); err != nil {
		t.Fatal(err)
	}
	// As if its producer died before dropping it from the registry.
	if err := b.store.Register(ctx, DefaultQueue, []string{done.TaskID()}); err != nil {
		t.Fatal(err)
	}

	a := NewAdopter(b.rdb, 0)
	// Another worker holds the lock: nothing happens.
	b.mr.Set(results.AdoptLockKey, "someone")
	if rep, err := a.Sweep(ctx, []string{DefaultQueue}, time.Minute, 10); err != nil || rep.Locked || len(rep.Adopted[DefaultQueue]) != 0 {
		t.Fatalf("locked sweep = %+v, %v", rep, err)
	}
	b.mr.Del(results.AdoptLockKey)
	// Within the grace period: nothing either.
	if rep, err := a.Sweep(ctx, []string{DefaultQueue}, 100*365*24*time.Hour, 10); err != nil || rep.Checked != 0 || len(rep.Sealed) != 0 {
		t.Fatalf("sweep within the grace period = %+v, %v", rep, err)
	}

	rep, err := a.Sweep(ctx, []string{DefaultQueue}, time.Minute, 10)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Locked || rep.Checked != 2 || !cmp.Equal(rep.Adopted[DefaultQueue], []string{pr.id.TaskID}) || !cmp.Equal(rep.Sealed, []string{"ab"}) || len(rep.Failed) != 0 {
		t.Errorf("sweep = %+v", rep)
	}
	info, err := b.inspector.GetTaskInfo(DefaultQueue, pr.id.TaskID)
	if err != nil || info.Type != TypeDeactivate || string(info.Payload) != string(pr.payload) ||
		info.Headers[HeaderBatch] != "ab" || info.Headers[HeaderRun] != "deadrun" || info.Timeout != DefaultTaskTimeout || info.MaxRetry != results.MaxRetry {
		t.Errorf("adopted task = %+v, %v", info, err)
	}
	if b.mr.Exists(results.UnconfirmedKey(DefaultQueue)) || b.mr.Exists(results.AdoptLockKey) {
		t.Errorf("registry or lock left: %v", b.mr.Keys())
	}
	if s := b.batch(t, "ab"); !s.Sealed || s.Total != 1 {
		t.Errorf("batch = %+v", s)
	}
	// The dead producer's rerun meets the adopted task as its own.
	rep2, err := b.p.EnqueueBatch(ctx, Changes([]Change{c}), BatchOptions{ID: "ab"})
	if err != nil || rep2.Err() != nil || rep2.Resumed != 1 || rep2.Total != 0 {
		t.Errorf("rerun = %+v, %v", rep2, err)
	}
	if r, _ := b.reader.Result(ctx, pr.id.TaskID); r == nil || r.Status != StatusQueued || r.Batch != "ab" {
		t.Errorf("result after the rerun = %+v", r)
	}
}

// The sweep repairs a batch whose counters a crash left behind its
// results: an abandoned one before it seals it, and a sealed one that
// made no progress between two looks.
func TestAdopterRepairsBatches(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := t.Context()
	a := NewAdopter(b.rdb, 0)
	// finishLost finishes a task's result as a worker killed before its
	// batch step would: the result says succeeded, the batch does not.
	finishLost := func(taskID string) {
		t.Helper()
		b.mr.HSet(results.ResultKey(taskID), results.FieldStatus, string(StatusSucceeded))
	}
	for _, batch := range []string{"abandoned", "stuck"} {
		c := getChange(batch + "_1")
		rep, err := b.p.EnqueueBatch(ctx, Changes([]Change{c}), BatchOptions{ID: batch})
		if err != nil || rep.Total != 1 {
			t.Fatalf("enqueue %s = %+v, %v", batch, rep, err)
		}
		finishLost(c.TaskID())
	}
	// "abandoned" is open again, its producer long gone (testNow is long ago).
	if err := b.store.MarkOpen(ctx, "abandoned"); err != nil {
		t.Fatal(err)
	}
	b.mr.HSet(results.BatchKey("abandoned"), results.BatchFieldSealed, "0")

	rep, err := a.Sweep(ctx, []string{DefaultQueue}, time.Minute, 10)
	if err != nil {
		t.Fatal(err)
	}
	if !cmp.Equal(rep.Sealed, []string{"abandoned"}) || !cmp.Equal(rep.Repaired, map[string]int{"abandoned": 1}) {
		t.Errorf("first sweep = %+v", rep)
	}
	if s := b.batch(t, "abandoned"); !s.Done() || s.Succeeded != 1 {
		t.Errorf("abandoned batch after the sweep = %+v", s)
	}
	if s := b.batch(t, "stuck"); s.Done() {
		t.Errorf("stuck batch done after one look: %+v", s)
	}
	// The next look, repairEvery later, finds no progress: repaired.
	b.mr.FastForward(repairEvery)
	rep, err = a.Sweep(ctx, []string{DefaultQueue}, time.Minute, 10)
	if err != nil {
		t.Fatal(err)
	}
	if !cmp.Equal(rep.Repaired, map[string]int{"stuck": 1}) {
		t.Errorf("second sweep = %+v", rep)
	}
	if s := b.batch(t, "stuck"); !s.Done() || s.Succeeded != 1 {
		t.Errorf("stuck batch after the second look = %+v", s)
	}
}
