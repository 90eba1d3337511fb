package bench

import (
	"context"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/couponq/couponq/internal/redistest"
	"github.com/couponq/couponq/internal/redisurl"
	"github.com/couponq/couponq/tasks"
	"github.com/couponq/couponq/wechatpay/wechatpaytest"
	"github.com/couponq/couponq/worker"
	"github.com/redis/go-redis/v9"
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
	conn, err := redisurl.Parse(srv.URL())
	if err != nil {
		b.Fatal(err)
	}
	rdb := conn.NewClient()
	defer rdb.Close()

	var directSecs, pipelineSecs, directCPU, pipelineCPU float64
	for b.Loop() {
		if err := rdb.FlushAll(context.Background()).Err(); err != nil {
			b.Fatal(err)
		}
		cpu := cpuNow(b, rdb)
		directSecs += runDirect(b, n, directWorkers, latency)
		mid := cpuNow(b, rdb)
		pipelineSecs += runPipeline(b, conn, n, concurrency, latency)
		directCPU += mid - cpu
		pipelineCPU += cpuNow(b, rdb) - mid
	}
	direct := float64(n*b.N) / directSecs
	pipeline := float64(n*b.N) / pipelineSecs
	b.ReportMetric(direct, "direct_calls/s")
	b.ReportMetric(pipeline, "pipeline_tasks/s")
	b.ReportMetric(pipeline/direct, "ratio")
	// CPU (this process, which holds the fake too, + redis-server) per
	// call: on 2 cores this, not the latency, bounds both rates.
	b.ReportMetric(directCPU/float64(n*b.N)*1e6, "direct_cpu_µs/call")
	b.ReportMetric(pipelineCPU/float64(n*b.N)*1e6, "pipeline_cpu_µs/task")
	b.ReportMetric(0, "ns/op") // each op is two N-call runs; the rates say it
}

// cpuNow is the CPU time used so far by this process and by redis-server,
// in seconds.
func cpuNow(b *testing.B, rdb redis.UniversalClient) float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	total := time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
	info, err := rdb.Info(context.Background(), "cpu").Result()
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(info, "\r\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && (k == "used_cpu_sys" || k == "used_cpu_user") {
			f, _ := strconv.ParseFloat(v, 64)
			total += f
		}
	}
	return total
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
func runPipeline(b *testing.B, conn *redisurl.Conn, n, concurrency int, latency time.Duration) float64 {
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
