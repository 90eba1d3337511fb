package bench

import (
	"context"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/couponq/couponq/internal/redistest"
	"github.com/couponq/couponq/tasks"
	"github.com/couponq/couponq/wechatpay/wechatpaytest"
	"github.com/couponq/couponq/worker"
)

// envInt reads a positive integer from the environment, or returns def.
func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// BenchmarkPipelineVsDirect measures, in one run, the same N signed calls
// (N/3 each of update, deactivate, get; COUPONQ_BENCH_N, default 3000)
// against a wechatpaytest server with no faults, no QPS ceiling and 20 ms
// of latency per answer:
//
//   - direct: made by 32 goroutines calling *wechatpay.Client (the baseline);
//   - pipeline: enqueued with Producer.EnqueueBatch into a real redis-server
//     and applied by one worker.Worker (Rate 0, concurrency
//     COUPONQ_BENCH_CONCURRENCY, default 64) in this process, timed from
//     the start of the enqueue until Reader.Wait reports the batch done.
//
// Run with -benchtime=1x; see bench/pipeline.txt.
func BenchmarkPipelineVsDirect(b *testing.B) {
	srv := redistest.Start(b)
	n := envInt("COUPONQ_BENCH_N", 3000)
	concurrency := envInt("COUPONQ_BENCH_CONCURRENCY", 64)
	const (
		directWorkers = 32
		latency       = 20 * time.Millisecond
	)
	conn, err := tasks.ParseRedisURL(srv.URL())
	if err != nil {
		b.Fatal(err)
	}
	rdb := conn.NewClient()
	defer rdb.Close()

	var directSecs, pipelineSecs float64
	for b.Loop() {
		if err := rdb.FlushAll(context.Background()).Err(); err != nil {
			b.Fatal(err)
		}
		directSecs += runDirect(b, n, directWorkers, latency)
		pipelineSecs += runPipeline(b, conn, n, concurrency, latency)
	}
	direct := float64(n*b.N) / directSecs
	pipeline := float64(n*b.N) / pipelineSecs
	b.ReportMetric(direct, "direct_calls/s")
	b.ReportMetric(pipeline, "pipeline_tasks/s")
	b.ReportMetric(pipeline/direct, "ratio")
	b.ReportMetric(0, "ns/op") // each op is two N-call runs; the rates say it
}

// newFake starts a fake with the given latency and n/3 coupons for each of
// updates and deactivates.
func newFake(b *testing.B, n int, opts ...wechatpaytest.Option) (fake *wechatpaytest.Server, updateIDs, deactivateIDs []string) {
	fake = wechatpaytest.NewServer(b, opts...)
	per := (n + 2) / 3
	return fake, fake.SeedCoupons(fake.BrandID(), per), fake.SeedCoupons(fake.BrandID(), per)
}

// runDirect makes the n calls with workers goroutines and returns the
// seconds taken.
func runDirect(b *testing.B, n, workers int, latency time.Duration) float64 {
	fake, upd, deact := newFake(b, n, wechatpaytest.WithLatency(latency))
	defer fake.Close()
	client := fake.Client()
	defer client.Close()
	ctx := context.Background()

	next := make(chan tasks.Change, workers)
	var (
		wg     sync.WaitGroup
		failed atomic.Int64
	)
	start := time.Now()
	for range workers {
		wg.Go(func() {
			for c := range next {
				if err := call(ctx, client, c); err != nil {
					failed.Add(1)
				}
			}
		})
	}
	for c := range mixedChanges(fake.BrandID(), upd, deact, n) {
		next <- c
	}
	close(next)
	wg.Wait()
	secs := time.Since(start).Seconds()
	if f := failed.Load(); f > 0 {
		b.Fatalf("direct: %d of %d calls failed", f, n)
	}
	return secs
}

// runPipeline runs the n changes through the producer and a worker and
// returns the seconds from the start of the enqueue to the batch done.
func runPipeline(b *testing.B, conn *tasks.RedisConn, n, concurrency int, latency time.Duration) float64 {
	fake, upd, deact := newFake(b, n, wechatpaytest.WithLatency(latency))
	defer fake.Close()
	client := fake.Client()
	defer client.Close()

	w, err := worker.New(worker.Config{Redis: conn, Concurrency: concurrency, Identity: client.Identity()}, client)
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	runCtx, stopWorker := context.WithCancel(ctx)
	runErr := make(chan error, 1)
	go func() { runErr <- w.Run(runCtx) }()
	defer func() {
		stopWorker()
		if err := <-runErr; err != nil && ctx.Err() == nil {
			b.Errorf("worker: %v", err)
		}
	}()

	rdb := conn.NewClient()
	defer rdb.Close()
	p, err := tasks.NewProducer(rdb)
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	reader := tasks.NewReader(rdb)

	start := time.Now()
	rep, err := p.EnqueueBatch(ctx, mixedChanges(fake.BrandID(), upd, deact, n), tasks.BatchOptions{})
	if err != nil || rep.Total != n {
		b.Fatalf("EnqueueBatch: %+v, %v", rep, err)
	}
	st, err := reader.Wait(ctx, rep.BatchID, 10*time.Millisecond, nil)
	secs := time.Since(start).Seconds()
	if err != nil {
		b.Fatalf("Wait: %v", err)
	}
	if st.Succeeded != n {
		b.Fatalf("pipeline: %+v", st)
	}
	return secs
}
