// Package e2e runs the whole pipeline — Producer, real redis-server, asynq
// workers, the fake WeChat Pay — through faults, crashes and restarts, and
// checks that nothing is lost and nothing is applied twice.
package e2e

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/couponq/couponq/internal/redistest"
	"github.com/couponq/couponq/internal/redisurl"
	"github.com/couponq/couponq/internal/testutil"
	"github.com/couponq/couponq/internal/wpenv"
	"github.com/couponq/couponq/tasks"
	"github.com/couponq/couponq/wechatpay"
	"github.com/couponq/couponq/wechatpay/wechatpaytest"
	"github.com/couponq/couponq/worker"
)

const childEnv = "COUPONQ_E2E_WORKER"

// TestMain doubles as a worker process: with COUPONQ_E2E_WORKER=1 the test
// binary runs one worker on the Redis that E2E_REDIS_URL names until
// SIGTERM.
func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" {
		os.Exit(childWorker())
	}
	os.Exit(m.Run())
}

func childWorker() int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	api, err := wpenv.Client(os.Getenv)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	conn, err := redisurl.Parse(os.Getenv("E2E_REDIS_URL"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	// E2E_CONCURRENCY and E2E_RATE (calls/s per endpoint, shared by the
	// workers of one identity) default to 4 and unlimited; E2E_ADOPT_AFTER
	// (the adoption grace period) to the worker's.
	concurrency, rate := 4, 0
	if n, err := strconv.Atoi(os.Getenv("E2E_CONCURRENCY")); err == nil {
		concurrency = n
	}
	if n, err := strconv.Atoi(os.Getenv("E2E_RATE")); err == nil {
		rate = n
	}
	var adoptAfter time.Duration
	if d, err := time.ParseDuration(os.Getenv("E2E_ADOPT_AFTER")); err == nil {
		adoptAfter = d
	}
	w, err := worker.New(worker.Config{
		Redis: conn, Concurrency: concurrency, Rate: rate, MaxRetry: 15, AdoptAfter: adoptAfter,
		RetryBase: 50 * time.Millisecond, RetryCap: time.Second, Identity: api.Identity(), ProbeInterval: 100 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}, api)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	defer w.Close()
	if err := w.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// startWorker runs an in-process worker on the Redis redisURL names until
// the test ends.
func startWorker(t *testing.T, redisURL string, api worker.API, concurrency int) {
	t.Helper()
	startWorkerConfig(t, worker.Config{
		Redis: redisConn(t, redisURL), Concurrency: concurrency, MaxRetry: 15,
		RetryBase: 50 * time.Millisecond, RetryCap: time.Second,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}, api)
}

// startWorkerConfig runs an in-process worker of cfg until the test ends.
func startWorkerConfig(t *testing.T, cfg worker.Config, api worker.API) {
	t.Helper()
	w, err := worker.New(cfg, api)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := w.Run(ctx); err != nil {
			t.Errorf("worker: %v", err)
		}
	}()
	t.Cleanup(func() { cancel(); wg.Wait(); w.Close() })
}

// mixed returns n changes, one coupon each: ~55% updates, ~30% deactivations,
// ~15% gets, and every 20th an update of a coupon that does not exist (404).
func mixed(ids []string, brand, prefix string) (cs []tasks.Change, permanent map[string]bool) {
	permanent = map[string]bool{}
	for i, id := range ids {
		key := fmt.Sprintf("%s%05d", prefix, i)
		switch {
		case i%20 == 19:
			cs = append(cs, tasks.Change{Op: tasks.OpUpdate, ProductCouponID: fmt.Sprintf("77%08d", i), BrandID: brand,
				OutRequestNo: key, DisplayInfo: &wechatpay.DisplayInfo{Name: "不存在的券"}})
			permanent[key] = true
		case i%20 < 11:
			cs = append(cs, tasks.Change{Op: tasks.OpUpdate, ProductCouponID: id, BrandID: brand, OutRequestNo: key,
				DisplayInfo: &wechatpay.DisplayInfo{Name: "周末8折券", OriginalPrice: int64(1000 + i)}})
		case i%20 < 17:
			cs = append(cs, tasks.Change{Op: tasks.OpDeactivate, ProductCouponID: id, BrandID: brand, OutRequestNo: key,
				DeactivateReason: "促销结束"})
		default:
			cs = append(cs, tasks.Change{Op: tasks.OpGet, ProductCouponID: id, BrandID: brand, OutRequestNo: key})
		}
	}
	return cs, permanent
}

func enqueue(t *testing.T, rdb redis.UniversalClient, cs []tasks.Change, batch string) *tasks.BatchReport {
	t.Helper()
	p, err := tasks.NewProducer(rdb)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	var rep *tasks.BatchReport
	// A producer meeting a Redis that is coming back retries the batch:
	// duplicates of what already went in are skipped.
	for attempt := 0; ; attempt++ {
		rep, err = p.EnqueueBatch(t.Context(), tasks.Changes(cs), tasks.BatchOptions{ID: batch})
		if err == nil && rep.Err() == nil {
			return rep
		}
		if attempt == 10 {
			t.Fatalf("enqueue: %v / %v", err, rep.Err())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func wait(t *testing.T, rdb redis.UniversalClient, batch string, d time.Duration) *tasks.BatchStatus {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), d)
	defer cancel()
	r := tasks.NewReader(rdb)
	for {
		st, err := r.Wait(ctx, batch, 100*time.Millisecond, nil)
		if err == nil {
			return st
		}
		if ctx.Err() != nil {
			cur, _ := r.Batch(context.Background(), batch)
			t.Fatalf("batch %s not done in %s: %v (%+v)", batch, d, err, cur)
		}
		time.Sleep(200 * time.Millisecond) // Redis restarting: poll again
	}
}

// verify checks every result of a batch against the fake's effect log:
// all terminal, counters exact, every succeeded write applied exactly once,
// no write applied twice, permanent failures attempted once.
func verify(t *testing.T, rdb redis.UniversalClient, fake *wechatpaytest.Server, batch string, st *tasks.BatchStatus, permanent map[string]bool) (succeeded, failed int) {
	t.Helper()
	ctx := context.Background()
	ids, err := tasks.NewReader(rdb).BatchTaskIDs(ctx, batch)
	if err != nil {
		t.Fatal(err)
	}
	if len(ids) != st.Total {
		t.Errorf("batch set holds %d tasks, total says %d", len(ids), st.Total)
	}
	r := tasks.NewReader(rdb)
	all := make([]*tasks.Result, 0, len(ids))
	// An update of a missing coupon meets its 404 at the GET that reads the
	// coupon first, which carries no out_request_no: its coupon names it.
	permanentCoupon := map[string]string{}
	for _, id := range ids {
		res, err := r.Result(ctx, id)
		if err != nil {
			t.Fatalf("%s: %v", id, err)
		}
		all = append(all, res)
		if permanent[res.OutRequestNo] {
			permanentCoupon[res.ProductCouponID] = res.OutRequestNo
		}
	}
	// A permanent answer ends a task: per key, count the 404s answered and
	// whether anything followed the first (injected faults before it are
	// retried, as they should be).
	answered404, after404 := map[string]int{}, map[string]int{}
	for _, q := range fake.Requests() {
		key := q.OutRequestNo
		if k, ok := permanentCoupon[q.CouponID]; ok {
			key = k
		}
		if key == "" {
			continue
		}
		if answered404[key] > 0 {
			after404[key]++
		}
		if q.Status == 404 {
			answered404[key]++
		}
	}
	// Every attempt of a write sends the body fixed before the first.
	bodies := map[string][]string{}
	for _, q := range fake.Requests() {
		if q.Method != http.MethodGet && q.OutRequestNo != "" {
			bodies[q.OutRequestNo] = append(bodies[q.OutRequestNo], string(q.Body))
		}
	}
	for _, res := range all {
		id := res.TaskID
		for i, b := range bodies[res.OutRequestNo] {
			if res.Op != tasks.OpGet && b != string(res.Request) {
				t.Errorf("%s: attempt %d of %d sent %s, want the stored request %s", id, i+1, len(bodies[res.OutRequestNo]), b, res.Request)
				break
			}
		}
		switch res.Status {
		case tasks.StatusSucceeded:
			succeeded++
		case tasks.StatusFailed:
			failed++
		default:
			t.Errorf("%s not terminal: %s", id, res.Status)
		}
		if res.Op == tasks.OpGet {
			continue
		}
		n := fake.AppliedCount(res.OutRequestNo)
		if n > 1 {
			t.Errorf("%s applied %d times", id, n)
		}
		if res.Status == tasks.StatusSucceeded && n != 1 && !(res.Unchanged && n == 0) {
			t.Errorf("%s succeeded but applied %d times (unchanged %v)", id, n, res.Unchanged)
		}
		if res.Status == tasks.StatusSucceeded && res.Op == tasks.OpDeactivate {
			if c, _ := fake.Coupon(res.ProductCouponID); c.State != wechatpay.StateDeactivated || c.DeactivateRequestNo != res.OutRequestNo {
				t.Errorf("%s succeeded but coupon is %s with deactivate_request_no %q", id, c.State, c.DeactivateRequestNo)
			}
		}
		if permanent[res.OutRequestNo] {
			// A worker SIGKILLed between a 404 and its record leaves a 404
			// nobody recorded (attempts < answers); asynq's re-delivery asks
			// again. Any other request after the first 404 is a bug.
			n404, after := answered404[res.OutRequestNo], after404[res.OutRequestNo]
			unrecorded := n404 - res.Attempts
			if res.Status != tasks.StatusFailed || res.HTTPStatus != 404 || n404 < 1 || after != n404-1 || after > max(unrecorded, 0) {
				t.Errorf("%s (404) = %s http %d, %d answered 404, %d requests after it; want failed at the first 404",
					id, res.Status, res.HTTPStatus, answered404[res.OutRequestNo], after404[res.OutRequestNo])
			}
		}
	}
	if succeeded != st.Succeeded || failed != st.Failed || succeeded+failed != st.Total || !st.Done() {
		t.Errorf("counters %+v; results say %d succeeded, %d failed", st, succeeded, failed)
	}
	for _, e := range fake.Effects() {
		if n := fake.AppliedCount(e.OutRequestNo); n != 1 {
			t.Errorf("effect %s applied %d times", e.OutRequestNo, n)
		}
	}
	return succeeded, failed
}

// doneAtLeast says whether at least n tasks of batch are terminal.
func doneAtLeast(ctx context.Context, r *tasks.Reader, batch string, n int) error {
	st, err := r.Batch(ctx, batch)
	if err != nil {
		return err
	}
	if st.Succeeded+st.Failed < n {
		return fmt.Errorf("%d of %d done, want %d: %+v", st.Succeeded+st.Failed, st.Total, n, st)
	}
	return nil
}

func faultCounts(fake *wechatpaytest.Server) map[string]int {
	m := map[string]int{}
	for _, q := range fake.Requests() {
		if q.Fault != "" {
			m[q.Fault]++
		}
	}
	return m
}

func TestFaultMix1000(t *testing.T) {
	t.Parallel()
	faultMix(t, onSingle(t), inProcess)
}

// workerKind says how a scenario runs its two workers.
type workerKind int

const (
	inProcess workerKind = iota // goroutines of the test
	processes                   // child processes of the test binary
)

// faultMix: 1000 changes through two workers (16 tasks at once each) while
// the fake answers 10% 500s, 10% 429s, drops 5% of connections after
// applying the change and signs 3% of answers wrongly: every task
// terminal, counters exact, nothing applied twice, only the permanent
// failures failed.
func faultMix(t *testing.T, r *topo, workers workerKind) {
	t.Helper()
	fake := wechatpaytest.NewServer(t, wechatpaytest.WithSeed(7), wechatpaytest.WithRepeatAnswer(wechatpaytest.RepeatError))
	fake.SetFaults(wechatpaytest.Faults{Status500: 0.10, Status429: 0.10, DropAfterApply: 0.05, BadSignature: 0.03})
	ids := fake.SeedCoupons(fake.BrandID(), 1000)
	cs, permanent := mixed(ids, fake.BrandID(), "mix")
	switch workers {
	case inProcess:
		api := fake.Client()
		startWorker(t, r.url, api, 16)
		startWorker(t, r.url, api, 16)
	case processes:
		workerProcs(t, r.url, fake, 2, map[string]string{"E2E_CONCURRENCY": "16"})
	}

	start := time.Now()
	rep := enqueue(t, r.rdb, cs, "faultmix")
	if rep.Total != 1000 {
		t.Fatalf("enqueued %d, want 1000", rep.Total)
	}
	st := wait(t, r.rdb, "faultmix", 4*time.Minute)
	ok, failed := verify(t, r.rdb, fake, "faultmix", st, permanent)
	if failed != len(permanent) {
		t.Errorf("%d failed, want exactly the %d permanent ones", failed, len(permanent))
	}
	t.Logf("%s: 1000 changes in %s: %d succeeded, %d failed, %d API requests, faults %v %s",
		r, time.Since(start).Round(time.Millisecond), ok, failed, len(fake.Requests()), faultCounts(fake), r.keysPerMaster(t.Context()))
}

func TestReenqueueIsDuplicates(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	rdb := srv.Client()
	fake := wechatpaytest.NewServer(t)
	ids := fake.SeedCoupons(fake.BrandID(), 60)
	cs, permanent := mixed(ids, fake.BrandID(), "dup")
	startWorker(t, srv.URL(), fake.Client(), 8)
	enqueue(t, rdb, cs, "first")
	st := wait(t, rdb, "first", time.Minute)
	verify(t, rdb, fake, "first", st, permanent)
	calls := len(fake.Requests())

	// Into the same batch: part of it already (SPEC: neither duplicates
	// nor new); into another: duplicates.
	if rep := enqueue(t, rdb, cs, "first"); rep.Total != 0 || rep.Duplicates != 0 || rep.Resumed != len(cs) {
		t.Errorf("re-enqueue into first: total %d, duplicates %d, resumed %d; want 0, 0 and %d", rep.Total, rep.Duplicates, rep.Resumed, len(cs))
	}
	if rep := enqueue(t, rdb, cs, "second"); rep.Total != 0 || rep.Duplicates != len(cs) {
		t.Errorf("re-enqueue into second: total %d, duplicates %d; want 0 and %d", rep.Total, rep.Duplicates, len(cs))
	}
	st2 := wait(t, rdb, "second", 10*time.Second)
	if st2.Total != 0 || st2.Duplicates != len(cs) || !st2.Done() {
		t.Errorf("second batch %+v: want empty, done, all duplicates", st2)
	}
	// Once no task is pending, active, scheduled or retrying, the worker has
	// nothing left that could call the API: only then is the count final.
	// (Active may still hold the first batch's last task for a moment after
	// its result is written.)
	insp := asynq.NewInspector(redisConn(t, srv.URL()))
	defer insp.Close()
	testutil.Eventually(t, 10*time.Second, 20*time.Millisecond, func() error {
		qi, err := insp.GetQueueInfo(tasks.DefaultQueue)
		if err != nil {
			return err
		}
		if qi.Pending+qi.Active+qi.Scheduled+qi.Retry != 0 {
			return fmt.Errorf("queue %+v", qi)
		}
		return nil
	}, "re-enqueue left work in the queue")
	if n := len(fake.Requests()); n != calls {
		t.Errorf("re-enqueue made %d new API calls", n-calls)
	}
}

func TestRedisRestartMidBatch(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t, redistest.WithPersistence())
	rdb := srv.Client()
	fake := wechatpaytest.NewServer(t, wechatpaytest.WithLatency(40*time.Millisecond), wechatpaytest.WithRepeatAnswer(wechatpaytest.RepeatError))
	ids := fake.SeedCoupons(fake.BrandID(), 300)
	cs, permanent := mixed(ids, fake.BrandID(), "rst")
	startWorker(t, srv.URL(), fake.Client(), 4)
	enqueue(t, rdb, cs, "restart")

	r := tasks.NewReader(rdb)
	testutil.Eventually(t, time.Minute, 20*time.Millisecond, func() error {
		return doneAtLeast(t.Context(), r, "restart", 100)
	}, "batch did not reach 100 done")
	srv.Restart()
	// Producers recover too: a second batch right after the restart.
	more := fake.SeedCoupons(fake.BrandID(), 40)
	cs2, perm2 := mixed(more, fake.BrandID(), "after")
	enqueue(t, rdb, cs2, "after-restart")

	st := wait(t, rdb, "restart", 4*time.Minute)
	verify(t, rdb, fake, "restart", st, permanent)
	st2 := wait(t, rdb, "after-restart", 4*time.Minute)
	verify(t, rdb, fake, "after-restart", st2, perm2)
}

func TestWorkerSIGKILL(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	rdb := srv.Client()
	fake := wechatpaytest.NewServer(t, wechatpaytest.WithLatency(100*time.Millisecond), wechatpaytest.WithRepeatAnswer(wechatpaytest.RepeatError))
	ids := fake.SeedCoupons(fake.BrandID(), 200)
	cs, permanent := mixed(ids, fake.BrandID(), "kill")
	dir := t.TempDir()
	env, err := fake.WriteEnv(dir)
	if err != nil {
		t.Fatal(err)
	}
	startChild := func(name string) *exec.Cmd { return childProc(t, srv.URL(), env, name) }
	a := startChild("worker-a")
	enqueue(t, rdb, cs, "sigkill")
	r := tasks.NewReader(rdb)
	testutil.Eventually(t, time.Minute, 10*time.Millisecond, func() error {
		return doneAtLeast(t.Context(), r, "sigkill", len(cs)*3/10)
	}, "worker A made no progress")
	if err := a.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = a.Wait()
	killed := time.Now()
	before, _ := r.Batch(t.Context(), "sigkill")
	startChild("worker-b")
	st := wait(t, rdb, "sigkill", 4*time.Minute)
	verify(t, rdb, fake, "sigkill", st, permanent)
	t.Logf("killed worker A at %d/%d done; worker B finished the batch %s later", before.Succeeded+before.Failed, len(cs), time.Since(killed).Round(time.Second))
}
