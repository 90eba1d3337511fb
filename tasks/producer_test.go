package tasks

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/couponq/couponq/internal/autopipe"
	"github.com/couponq/couponq/internal/results"
	"github.com/couponq/couponq/internal/testutil"
	"github.com/couponq/couponq/wechatpay"
	"github.com/google/go-cmp/cmp"
	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
)

var testNow = time.Date(2025, 1, 2, 3, 4, 5, 678_000_000, time.UTC)

type testBundle struct {
	mr        *miniredis.Miniredis
	rdb       *redis.Client
	p         *Producer
	store     *results.Store
	reader    *Reader
	inspector *asynq.Inspector
}

func setup(t *testing.T, opts ...ProducerOption) *testBundle {
	t.Helper()
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	now := func() time.Time { return testNow }
	p, err := NewProducer(rdb, append([]ProducerOption{withClock(now)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return &testBundle{mr: mr, rdb: rdb, p: p, store: results.NewStore(rdb, results.WithClock(now)), reader: NewReader(rdb),
		inspector: asynq.NewInspectorFromRedisClient(rdb)}
}

func (b *testBundle) batch(t *testing.T, id string) *BatchStatus {
	t.Helper()
	s, err := b.reader.Batch(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (b *testBundle) members(t *testing.T, id string) int {
	t.Helper()
	return int(b.rdb.SCard(t.Context(), results.BatchTasksKey(id)).Val())
}

func mixed(n int) []Change {
	cs := make([]Change, 0, n)
	for i := range n {
		orn := fmt.Sprintf("orn_%06d", i)
		switch i % 3 {
		case 0:
			cs = append(cs, updateChange(orn))
		case 1:
			cs = append(cs, deactivateChange(orn))
		default:
			cs = append(cs, getChange(orn))
		}
	}
	return cs
}

func TestEnqueueBatchDuplicates(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := t.Context()
	cs := append(mixed(30), getChange("")) // a get without out_request_no is never a duplicate

	rep, err := b.p.EnqueueBatch(ctx, Changes(cs), BatchOptions{ID: "b1"})
	if err != nil || rep.Err() != nil {
		t.Fatalf("EnqueueBatch: %v %v", err, rep.Err())
	}
	if diff := cmp.Diff(&BatchReport{BatchID: "b1", Read: 31, Total: 31}, rep); diff != "" {
		t.Errorf("first report (-want +got):\n%s", diff)
	}
	for _, c := range cs[:30] {
		r, err := b.reader.Result(ctx, c.TaskID())
		if err != nil || r.Status != StatusQueued || r.Batch != "b1" || !r.EnqueuedAt.Equal(testNow) {
			t.Fatalf("result of %s = %+v, %v", c.TaskID(), r, err)
		}
		info, err := b.inspector.GetTaskInfo(DefaultQueue, c.TaskID())
		if err != nil || info.MaxRetry != results.MaxRetry || info.Timeout != DefaultTaskTimeout {
			t.Fatalf("asynq task %s = %+v, %v", c.TaskID(), info, err)
		}
	}

	// The same batch again: every change with an out_request_no is part
	// of it already (resumed, counted once), neither new nor a duplicate.
	rep, err = b.p.EnqueueBatch(ctx, Changes(cs), BatchOptions{ID: "b1"})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(&BatchReport{BatchID: "b1", Read: 31, Total: 1, Resumed: 30}, rep); diff != "" {
		t.Errorf("second report (-want +got):\n%s", diff)
	}
	got := b.batch(t, "b1")
	if got.Total != 32 || got.Duplicates != 0 || got.Pending != 32 || !got.Sealed || got.Done() || b.members(t, "b1") != 32 {
		t.Errorf("batch after re-enqueue = %+v, %d members", got, b.members(t, "b1"))
	}
	q, _ := b.inspector.GetQueueInfo(DefaultQueue)
	if q.Pending != 32 {
		t.Errorf("asynq pending = %d, want 32", q.Pending)
	}

	// Into a new batch: nothing enqueued, so it is finished at once.
	rep, err = b.p.EnqueueBatch(ctx, Changes(cs[:30]), BatchOptions{ID: "b2"})
	if err != nil || rep.Total != 0 || rep.Duplicates != 30 {
		t.Fatalf("third report = %+v, %v", rep, err)
	}
	if got := b.batch(t, "b2"); got.Total != 0 || got.Duplicates != 30 || !got.Done() || !got.FinishedAt.Equal(testNow) {
		t.Errorf("batch b2 = %+v", got)
	}
}

func TestEnqueueConflict(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := t.Context()
	orig := deactivateChange("abcdefg")
	if _, err := b.p.Enqueue(ctx, orig); err != nil {
		t.Fatal(err)
	}
	dropCalls := func() {
		for _, k := range b.mr.Keys() {
			if strings.HasPrefix(k, "{"+results.BatchKey("c")+"}:") { // batch c's own keys
				b.mr.Del(k)
			}
		}
	}
	dropCalls()
	before := b.mr.Dump()

	other := orig
	other.DeactivateReason = "another reason"
	rep, err := b.p.EnqueueBatch(ctx, Changes([]Change{other}), BatchOptions{ID: "c"})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Total != 0 || rep.Duplicates != 0 || len(rep.Conflicts) != 1 || len(rep.Failed) != 0 {
		t.Fatalf("report = %+v", rep)
	}
	cerr := rep.Conflicts[0]
	var ce *ConflictError
	if !errors.Is(cerr, ErrConflict) || !errors.As(cerr, &ce) || ce.TaskID != "deactivate:120344:abcdefg" ||
		!strings.Contains(cerr.Error(), "deactivate:120344:abcdefg") {
		t.Errorf("conflict = %v", cerr)
	}
	if !errors.Is(rep.Err(), ErrConflict) {
		t.Errorf("report Err = %v", rep.Err())
	}
	// Nothing written: only the new batch's keys (its hash, its listing,
	// and its record of the call's events) differ.
	b.mr.Del(results.BatchKey("c"))
	b.mr.Del(results.BatchesKey)
	dropCalls()
	if after := b.mr.Dump(); after != before {
		t.Errorf("conflict wrote to Redis:\nbefore:\n%s\nafter:\n%s", before, after)
	}

	if _, err := b.p.Enqueue(ctx, other); !errors.As(err, &ce) || ce.Where != "result" {
		t.Errorf("Enqueue of a conflicting change: %v", err)
	}
}

// Detection holds after asynq dropped the task: the result hash decides.
func TestDuplicateAfterAsynqDroppedTheTask(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := t.Context()
	c := updateChange("abcdefg")
	if _, err := b.p.Enqueue(ctx, c); err != nil {
		t.Fatal(err)
	}
	if err := b.inspector.DeleteTask(DefaultQueue, c.TaskID()); err != nil {
		t.Fatal(err)
	}
	res, err := b.p.Enqueue(ctx, c)
	if err != nil || !res.Duplicate {
		t.Fatalf("re-enqueue = %+v, %v; want a duplicate", res, err)
	}
	if _, err := b.inspector.GetTaskInfo(DefaultQueue, c.TaskID()); !errors.Is(err, asynq.ErrTaskNotFound) {
		t.Errorf("a duplicate was enqueued again: %v", err)
	}
	c.DisplayInfo = &wechatpay.DisplayInfo{Name: "another"}
	if _, err := b.p.Enqueue(ctx, c); !errors.Is(err, ErrConflict) {
		t.Errorf("changed payload: %v, want a conflict", err)
	}
}

// asynq holds the task ID but no result hash exists (enqueued by other
// means, or its result expired): the asynq payload decides.
func TestDuplicateFromAsynqOnly(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		change    func(Change) Change
		duplicate bool
	}{
		{"same payload", func(c Change) Change { return c }, true},
		{"other payload", func(c Change) Change { c.ProductCouponID = "999"; return c }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			ctx := t.Context()
			c := deactivateChange("abcdefg")
			task, err := c.Task(asynq.Queue(DefaultQueue))
			if err != nil {
				t.Fatal(err)
			}
			client := asynq.NewClientFromRedisClient(b.rdb)
			if _, err := client.EnqueueContext(ctx, task); err != nil {
				t.Fatal(err)
			}
			rep, err := b.p.EnqueueBatch(ctx, Changes([]Change{tt.change(c)}), BatchOptions{ID: "q"})
			if err != nil {
				t.Fatal(err)
			}
			want := &BatchStatus{ID: "q", Sealed: true, CreatedAt: testNow, FinishedAt: testNow}
			if tt.duplicate {
				want.Duplicates = 1
				if rep.Duplicates != 1 || rep.Total != 0 || rep.Err() != nil {
					t.Errorf("report = %+v", rep)
				}
			} else {
				want.Conflicts = 1
				var ce *ConflictError
				if len(rep.Conflicts) != 1 || !errors.As(rep.Conflicts[0], &ce) || ce.Where != "queue" || ce.TaskID != c.TaskID() {
					t.Errorf("report = %+v", rep)
				}
			}
			if diff := cmp.Diff(want, b.batch(t, "q")); diff != "" {
				t.Errorf("batch (-want +got):\n%s", diff)
			}
			if b.mr.Exists(results.ResultKey(c.TaskID())) || b.members(t, "q") != 0 {
				t.Errorf("the refused change left its result or batch membership behind")
			}
		})
	}
}

// The batch hash exists, counting a task, before that task can be picked
// up; the batch finishes only once sealed and every task is terminal.
func TestBatchRecordBeforeFirstFinish(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := t.Context()
	first, second := updateChange("first_1"), getChange("second_2")
	var checks []string
	fail := func(format string, args ...any) { checks = append(checks, fmt.Sprintf(format, args...)) }

	changes := func(yield func(Change, error) bool) {
		if s, err := b.reader.Batch(ctx, "w"); err != nil || s.Total != 0 || s.Sealed {
			fail("before the first change: batch %+v, %v", s, err)
		}
		if !yield(first, nil) {
			return
		}
		// Wait (bounded) for the first task to be in asynq, then be its worker.
		if err := pollEnqueued(ctx, b, first.TaskID()); err != nil {
			fail("first task never enqueued: %v", err)
			return
		}
		if s, err := b.reader.Batch(ctx, "w"); err != nil || s.Total != 1 || b.members(t, "w") != 1 {
			fail("when the first task is in asynq: batch %+v, %v", s, err)
		}
		finish(t, b.store, first, StatusSucceeded)
		if s := b.batch(t, "w"); s.Succeeded != 1 || s.Done() {
			fail("first task done, batch unsealed: %+v, want not done", s)
		}
		yield(second, nil)
	}
	if _, err := b.p.EnqueueBatch(ctx, changes, BatchOptions{ID: "w"}); err != nil {
		t.Fatal(err)
	}
	for _, c := range checks {
		t.Error(c)
	}
	if s := b.batch(t, "w"); s.Total != 2 || s.Pending != 1 || !s.Sealed || s.Done() {
		t.Errorf("sealed with a task pending: %+v", s)
	}
	finish(t, b.store, second, StatusFailed)
	if s := b.batch(t, "w"); s.Succeeded != 1 || s.Failed != 1 || s.Pending != 0 || !s.Done() {
		t.Errorf("every task terminal: %+v, want done", s)
	}
}

// finish is a worker's run of a task: Begin, then Finish.
func finish(t *testing.T, s *results.Store, c Change, st Status) {
	t.Helper()
	id := results.Identity{TaskID: c.TaskID(), Op: string(c.Op), BrandID: c.BrandID, ProductCouponID: c.ProductCouponID, OutRequestNo: c.OutRequestNo}
	if got, _, err := s.Begin(t.Context(), id); err != nil || got != StatusRunning {
		t.Fatalf("Begin %s = %s, %v", id.TaskID, got, err)
	}
	a := results.Attempt{Calls: 1, HTTPStatus: 200}
	if st == StatusFailed {
		a = results.Attempt{Calls: 1, HTTPStatus: 400, ErrorCode: "PARAM_ERROR", ErrorMessage: "bad"}
	}
	if ok, err := s.Finish(t.Context(), id.TaskID, st, a); err != nil || !ok {
		t.Fatalf("Finish %s = %v, %v", id.TaskID, ok, err)
	}
}

func TestEnqueueBatchStops(t *testing.T) {
	t.Parallel()
	boom := errors.New("disk on fire")
	invalid := Change{Op: OpUpdate}
	tests := []struct {
		name       string
		changes    iter.Seq2[Change, error]
		opts       BatchOptions
		cancel     bool
		wantErr    error
		wantTotal  int
		wantFailed int
	}{
		{
			name: "input error stops and seals",
			changes: func(yield func(Change, error) bool) {
				_ = yield(getChange("abcdefg"), nil) && yield(Change{}, boom) && yield(getChange("never_1"), nil)
			},
			wantErr: boom, wantTotal: 1,
		},
		{
			name:      "invalid changes are listed and the batch goes on",
			changes:   Changes([]Change{invalid, getChange("abcdefg"), invalid}),
			wantTotal: 1, wantFailed: 2,
		},
		{
			name:    "too many failures",
			changes: Changes([]Change{invalid, invalid, invalid, invalid, invalid}),
			opts:    BatchOptions{MaxFailures: 2},
			wantErr: ErrTooManyFailures, wantFailed: 2,
		},
		{
			name: "cancelled",
			changes: func(yield func(Change, error) bool) {
				_ = yield(getChange("abcdefg"), nil) && yield(cancelChange, nil) && yield(getChange("never_1"), nil)
			},
			cancel:  true,
			wantErr: context.Canceled, wantTotal: 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, WithConcurrency(1))
			ctx := t.Context()
			changes := tt.changes
			if tt.cancel {
				c, cancel := context.WithCancel(ctx)
				ctx = c
				changes = func(yield func(Change, error) bool) {
					for ch, err := range tt.changes {
						if ch == cancelChange {
							waitEnqueued(t, b, "get:120344:abcdefg")
							cancel()
						}
						if !yield(ch, err) {
							return
						}
					}
				}
			}
			tt.opts.ID = "s"
			rep, err := b.p.EnqueueBatch(ctx, changes, tt.opts)
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil) != (err == nil) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if rep.Total != tt.wantTotal || len(rep.Failed) < tt.wantFailed || len(rep.Failed) > tt.wantFailed+1 {
				t.Errorf("report = %+v", rep)
			}
			for _, f := range rep.Failed {
				var ce *ChangeError
				var ve *wechatpay.ValidationError
				if !errors.As(f, &ce) || !errors.As(f, &ve) {
					t.Errorf("failure %v: want a *ChangeError wrapping a *wechatpay.ValidationError", f)
				}
			}
			if s := b.batch(t, "s"); !s.Sealed || s.Total != tt.wantTotal {
				t.Errorf("batch = %+v, want sealed with total %d", s, tt.wantTotal)
			}
		})
	}
}

var cancelChange = getChange("cancel_now")

// pollEnqueued waits (bounded) until asynq holds task taskID. It only
// returns an error: the changes iterators that call it must not stop the
// test themselves.
func pollEnqueued(ctx context.Context, b *testBundle, taskID string) error {
	return testutil.Poll(ctx, 10*time.Second, time.Millisecond, func() error {
		_, err := b.inspector.GetTaskInfo(DefaultQueue, taskID)
		return err
	})
}

// waitEnqueued is pollEnqueued reporting, without stopping, a task never
// enqueued.
func waitEnqueued(t *testing.T, b *testBundle, taskID string) {
	if err := pollEnqueued(t.Context(), b, taskID); err != nil {
		t.Errorf("task %s never enqueued: %v", taskID, err)
	}
}

// failEnqueue makes asynq's enqueue script fail, as a Redis refusing
// writes would, leaving the producer's own scripts alone.
type failEnqueue struct{}

func (failEnqueue) DialHook(next redis.DialHook) redis.DialHook { return next }
func (failEnqueue) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return next
}
func (failEnqueue) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		var keep []redis.Cmder
		for _, c := range cmds {
			if strings.Contains(fmt.Sprint(c.Args()), "asynq:{couponq}:pending") {
				c.SetErr(errors.New("OOM command not allowed"))
			} else {
				keep = append(keep, c)
			}
		}
		if len(keep) == 0 {
			return nil
		}
		return next(ctx, keep)
	}
}

// An enqueue Redis refuses is never undone on a guess (a re-sent enqueue
// may yet create the task): the change stays accepted and registered for
// the workers to adopt, and is reported not enqueued.
func TestEnqueueErrorKeepsAcceptForAdoption(t *testing.T) {
	t.Parallel()
	b := setup(t, withSettleTimeout(300*time.Millisecond))
	b.rdb.AddHook(failEnqueue{})
	ctx := t.Context()
	rep, err := b.p.EnqueueBatch(ctx, Changes(mixed(3)), BatchOptions{ID: "e"})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Total != 0 || len(rep.Failed) != 3 {
		t.Fatalf("report = %+v", rep)
	}
	var ce *ChangeError
	if !errors.As(rep.Failed[0], &ce) || ce.TaskID == "" || !strings.Contains(ce.Error(), "OOM") || !errors.Is(ce, ErrNotEnqueued) {
		t.Errorf("failure = %v", rep.Failed[0])
	}
	if strings.Contains(ce.Error(), "couponq: ") {
		t.Errorf("failure stutters: %v", ce)
	}
	if s := b.batch(t, "e"); s.Total != 3 || s.Done() || b.members(t, "e") != 3 {
		t.Errorf("batch = %+v", s)
	}
	for _, c := range mixed(3) {
		if r, err := b.reader.Result(ctx, c.TaskID()); err != nil || r.Status != StatusQueued {
			t.Errorf("result of %s = %+v, %v; want it kept queued", c.TaskID(), r, err)
		}
		if _, err := b.mr.ZScore(results.UnconfirmedKey(DefaultQueue), c.TaskID()); err != nil {
			t.Errorf("%s not registered for adoption: %v", c.TaskID(), err)
		}
	}
}

func TestEnqueueBatchProgress(t *testing.T) {
	t.Parallel()
	b := setup(t)
	cs := append(mixed(20), Change{Op: "bogus"})
	if _, err := b.p.EnqueueBatch(t.Context(), Changes(cs[:5]), BatchOptions{ID: "p"}); err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		calls []BatchProgress
	)
	rep, err := b.p.EnqueueBatch(t.Context(), Changes(cs), BatchOptions{ID: "p", OnProgress: func(p BatchProgress) {
		if !mu.TryLock() {
			t.Error("OnProgress called concurrently")
			return
		}
		defer mu.Unlock()
		calls = append(calls, p)
	}})
	if err != nil {
		t.Fatal(err)
	}
	if len(calls) != 22 {
		t.Errorf("OnProgress called %d times, want once per change and once at the end", len(calls))
	}
	want := BatchProgress{BatchID: "p", Read: 21, Settled: 21, Enqueued: 15, Resumed: 5, Failed: 1}
	if diff := cmp.Diff(want, calls[len(calls)-1]); diff != "" {
		t.Errorf("last progress (-want +got):\n%s", diff)
	}
	if rep.Total != 15 || rep.Resumed != 5 || len(rep.Failed) != 1 {
		t.Errorf("report = %+v", rep)
	}
}

func TestEnqueueGetWithoutOutRequestNo(t *testing.T) {
	t.Parallel()
	b := setup(t)
	res, err := b.p.Enqueue(t.Context(), getChange(""))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(res.Change.OutRequestNo, "get") || res.TaskID != "get:120344:"+res.Change.OutRequestNo || res.Duplicate {
		t.Errorf("result = %+v", res)
	}
	r, err := b.reader.Result(t.Context(), res.TaskID)
	if err != nil || r.OutRequestNo != res.Change.OutRequestNo || r.Batch != "" {
		t.Errorf("result hash = %+v, %v", r, err)
	}
}

func TestProducerOptions(t *testing.T) {
	t.Parallel()
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	t.Cleanup(func() { _ = rdb.Close() })
	tests := []struct {
		name string
		opt  ProducerOption
		msg  string
	}{
		{"blank queue", WithQueue(" "), "queue: must not be blank"},
		{"braced queue", WithQueue("a{b}"), "must not contain {"},
		{"short TTL", WithResultTTL(time.Millisecond), "result TTL"},
		{"zero concurrency", WithConcurrency(0), "concurrency: must be 1–4096, got 0"},
		{"nil logger", WithLogger(nil), "logger"},
		{"zero timeout", WithTaskTimeout(0), "task timeout"},
		{"nil clock", withClock(nil), "clock"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if _, err := NewProducer(rdb, tt.opt); err == nil || !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("err = %v, want it to contain %q", err, tt.msg)
			}
		})
	}
	if _, err := NewProducer(nil); err == nil {
		t.Error("NewProducer(nil) succeeded")
	}
}

func TestProducerQueueAndRetryOptions(t *testing.T) {
	t.Parallel()
	b := setup(t, WithQueue("coupons_low"), WithTaskTimeout(time.Minute), WithResultTTL(time.Hour))
	c := deactivateChange("abcdefg")
	if _, err := b.p.Enqueue(t.Context(), c); err != nil {
		t.Fatal(err)
	}
	info, err := b.inspector.GetTaskInfo("coupons_low", c.TaskID())
	if err != nil || info.MaxRetry != results.MaxRetry || info.Timeout != time.Minute {
		t.Errorf("task = %+v, %v", info, err)
	}
	if ttl := b.mr.TTL(results.ResultKey(c.TaskID())); ttl != time.Hour {
		t.Errorf("result TTL = %v", ttl)
	}
}

func TestEnqueueBatchBadID(t *testing.T) {
	t.Parallel()
	b := setup(t)
	for _, id := range []string{"a:b", strings.Repeat("x", 129), "a b", "{a}", "a}b{"} {
		if _, err := b.p.EnqueueBatch(t.Context(), Changes(nil), BatchOptions{ID: id}); err == nil {
			t.Errorf("batch ID %q accepted", id)
		}
	}
	rep, err := b.p.EnqueueBatch(t.Context(), Changes(nil), BatchOptions{})
	if err != nil || ValidateBatchID(rep.BatchID) != nil || len(rep.BatchID) != 26 {
		t.Errorf("generated batch ID %q, %v", rep.BatchID, err)
	}
}

func TestProducerClosed(t *testing.T) {
	t.Parallel()
	b := setup(t)
	_ = b.p.Close()
	if _, err := b.p.Enqueue(t.Context(), getChange("")); !errors.Is(err, autopipe.ErrClosed) {
		t.Errorf("Enqueue after Close: %v", err)
	}
}
