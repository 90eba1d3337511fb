package worker

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"strconv"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/couponq/couponq/internal/redistest"
	"github.com/couponq/couponq/internal/redisurl"
	"github.com/couponq/couponq/internal/results"
	"github.com/couponq/couponq/internal/testutil"
	"github.com/couponq/couponq/tasks"
	"github.com/couponq/couponq/wechatpay"
)

func TestSweepArchived(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := t.Context()
	client := asynq.NewClient(asynq.RedisClientOpt{Addr: b.mr.Addr()})
	defer client.Close()
	insp := asynq.NewInspector(asynq.RedisClientOpt{Addr: b.mr.Addr()})
	defer insp.Close()

	reqs := []*wechatpay.UpdateProductCouponRequest{updateReq("1000000013", "sweep_000001"), updateReq("1000000014", "sweep_000002")}
	tsk := b.enqueue(t, reqs[0], reqs[1])
	ids := []string{taskIDOf(tasks.OpUpdate, "sweep_000001"), taskIDOf(tasks.OpUpdate, "sweep_000002")}
	for i, task := range tsk {
		if _, err := client.Enqueue(task, asynq.TaskID(ids[i]), asynq.Queue(DefaultQueue)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := client.Enqueue(asynq.NewTask("other:type", nil), asynq.TaskID("foreign"), asynq.Queue(DefaultQueue)); err != nil {
		t.Fatal(err)
	}
	// The second task finished before it was archived: it stays as it is.
	if _, err := b.store.Finish(ctx, ids[1], tasks.StatusSucceeded, results.Attempt{Calls: 1, HTTPStatus: 200}); err != nil {
		t.Fatal(err)
	}
	if err := b.store.Retrying(ctx, ids[0], results.Attempt{Calls: 1, ErrorCode: CodeNetworkError}); err != nil {
		t.Fatal(err)
	}
	for _, id := range append(ids, "foreign") {
		if err := insp.ArchiveTask(DefaultQueue, id); err != nil {
			t.Fatalf("archive %s: %v", id, err)
		}
	}
	n, err := b.w.SweepArchived(ctx)
	if err != nil || n != 1 {
		t.Fatalf("SweepArchived = %d, %v; want 1", n, err)
	}
	res := b.result(t, ids[0])
	if res["status"] != "failed" || res["error_code"] != CodeArchived || res["attempts"] != "1" {
		t.Errorf("swept result = %v", res)
	}
	if got := b.result(t, ids[1])["status"]; got != "succeeded" {
		t.Errorf("finished task changed to %s", got)
	}
	bt := b.batch(t)
	if bt["succeeded"] != "1" || bt["failed"] != "1" || bt["finished_at"] == "" {
		t.Errorf("batch = %v", bt)
	}
	if n, err := b.w.SweepArchived(ctx); err != nil || n != 0 {
		t.Errorf("second sweep = %d, %v; want 0", n, err)
	}
	// A queue nobody enqueued into is no error.
	b.w.cfg.Queues = map[string]int{"empty": 1}
	if _, err := b.w.SweepArchived(ctx); err != nil {
		t.Errorf("sweep of an unknown queue: %v", err)
	}
}

// TestRunEndToEnd runs the whole queue on a real redis-server: 50 tasks
// enqueued with asynq, a Worker serving them with a stub API that answers
// 10% of first calls with 500, every result terminal and counters exact.
func TestRunEndToEnd(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	rdb := srv.Client()
	ctx := t.Context()
	store := results.NewStore(rdb)
	api := newStubAPI()
	metrics := newFakeMetrics()
	conn, err := redisurl.Parse(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	w, err := New(Config{Redis: conn, Concurrency: 8, MaxRetry: 5, RetryBase: 10 * time.Millisecond, RetryCap: 50 * time.Millisecond,
		ShutdownTimeout: 2 * time.Second, Logger: slog.New(slog.DiscardHandler)}, api)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	w.metrics = metrics

	const n, batch = 50, "e2e-batch"
	if err := store.OpenBatch(ctx, batch); err != nil {
		t.Fatal(err)
	}
	client := asynq.NewClientFromRedisClient(rdb)
	ids := make([]string, n)
	for i := range n {
		coupon := fmt.Sprintf("10000%05d", i)
		var (
			typ  string
			body []byte
			id   results.Identity
		)
		if i%2 == 0 {
			r := updateReq(coupon, fmt.Sprintf("e2e_upd_%04d", i))
			typ, id = tasks.TypeUpdate, results.Identity{Op: string(tasks.OpUpdate), OutRequestNo: r.OutRequestNo}
			body, _ = json.Marshal(r)
		} else {
			r := deactivateReq(coupon, fmt.Sprintf("e2e_dea_%04d", i))
			typ, id = tasks.TypeDeactivate, results.Identity{Op: string(tasks.OpDeactivate), OutRequestNo: r.OutRequestNo}
			body, _ = json.Marshal(r)
		}
		id.BrandID, id.ProductCouponID, id.Batch = testBrand, coupon, batch
		id.TaskID = tasks.TaskID(tasks.Op(id.Op), testBrand, id.OutRequestNo)
		ids[i] = id.TaskID
		if i%10 == 0 {
			api.failNext(tasks.Op(id.Op), coupon, apiErr(500, wechatpay.CodeSystemError, ""))
		}
		sum := sha256.Sum256(body)
		if out, err := store.Accept(ctx, id, hex.EncodeToString(sum[:])); err != nil || out != results.Accepted {
			t.Fatalf("accept: %v %v", out, err)
		}
		if _, err := client.EnqueueContext(ctx, asynq.NewTask(typ, body), asynq.TaskID(id.TaskID), asynq.Queue(DefaultQueue), asynq.MaxRetry(25)); err != nil {
			t.Fatal(err)
		}
	}
	if err := store.SealBatch(ctx, batch); err != nil {
		t.Fatal(err)
	}

	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- w.Run(runCtx) }()
	defer func() {
		stop()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Error("Run did not return after its context ended")
		}
	}()

	bt := pollBatch(t, rdb, batch, 30*time.Second)
	if bt["total"] != strconv.Itoa(n) || bt["succeeded"] != strconv.Itoa(n) || bt["failed"] != "0" {
		t.Errorf("batch = %v, want %d succeeded", bt, n)
	}
	for i, id := range ids {
		res, err := rdb.HGetAll(ctx, results.ResultKey(id)).Result()
		if err != nil {
			t.Fatal(err)
		}
		attempts := 1
		if i%10 == 0 {
			attempts++ // a scripted 500
		}
		if i%2 == 0 {
			attempts++ // an update reads the coupon first
		}
		wantAttempts := strconv.Itoa(attempts)
		if res["status"] != "succeeded" || res["attempts"] != wantAttempts || res["coupon"] == "" {
			t.Errorf("%s: status %s attempts %s (want %s)", id, res["status"], res["attempts"], wantAttempts)
		}
	}
	if got, want := api.totalCalls(), n+n/10+n/2; got != want {
		t.Errorf("API calls = %d, want %d (one a task, %d scripted 500s, %d reads before updates)", got, want, n/10, n/2)
	}
	if err := w.Ready(ctx); err != nil {
		t.Errorf("Ready while running: %v", err)
	}
}

func pollBatch(t *testing.T, rdb redis.UniversalClient, batch string, within time.Duration) map[string]string {
	t.Helper()
	var m map[string]string
	testutil.Eventually(t, within, 50*time.Millisecond, func() error {
		var err error
		if m, err = rdb.HGetAll(t.Context(), results.BatchKey(batch)).Result(); err != nil {
			return err
		}
		if m[results.BatchFieldFinishedAt] == "" {
			return fmt.Errorf("batch hash %v", m)
		}
		return nil
	}, "batch %s not finished", batch)
	return m
}
