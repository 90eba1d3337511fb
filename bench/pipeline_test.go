package bench

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
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
// against a wechatpaytest server with no faults and no QPS ceiling, in two
// sub-benchmarks: "cpu" (no latency: CPU-bound, every cost per task shows)
// and "20ms" (20 ms of latency per answer, as a network adds):
//
//   - direct: made by 32 goroutines calling *wechatpay.Client (the baseline);
//   - asynq alone: the floor under any worker on asynq's server: 32
//     goroutines calling asynq.Client.Enqueue and one asynq.Server of the
//     same concurrency whose handler makes the calls, none of couponq's
//     work (runAsynqAlone);
//   - pipeline: enqueued with Producer.EnqueueBatch into a real redis-server
//     and applied by one worker.Worker (Rate 0, concurrency
//     COUPONQ_BENCH_CONCURRENCY, default 32, logging JSON at info level as
//     `couponq worker` does, to io.Discard) in this process, timed from the
//     start of the enqueue until Reader.Wait reports the batch done.
//
// Both sides use a fresh fake with the same options and seed sizes. Run
// with -benchtime=1x; see bench/pipeline.txt and bench/hot.txt.
func BenchmarkPipelineVsDirect(b *testing.B) {
	for _, c := range []struct {
		name    string
		latency time.Duration
	}{{"cpu", 0}, {"20ms", 20 * time.Millisecond}} {
		b.Run(c.name, func(b *testing.B) { benchPipelineVsDirect(b, c.latency) })
	}
}

func benchPipelineVsDirect(b *testing.B, latency time.Duration) {
	srv := redistest.Start(b)
	n := envInt("COUPONQ_BENCH_N", 3000)
	concurrency := envInt("COUPONQ_BENCH_CONCURRENCY", 32)
	const directWorkers = 32
	conn, err := redisurl.Parse(srv.URL())
	if err != nil {
		b.Fatal(err)
	}
	rdb := conn.NewClient()
	defer rdb.Close()

	var directSecs, pipelineSecs, asynqSecs, directCPU, pipelineCPU, pipelineRedisCPU, asynqCPU, pipelineReads, asynqReads, asynqRedisCPU float64
	var directCalls, pipelineCalls, asynqCalls int
	for b.Loop() {
		if err := rdb.FlushAll(context.Background()).Err(); err != nil {
			b.Fatal(err)
		}
		cpu := cpuNow(b, rdb)
		secs, calls := runDirect(b, n, directWorkers, latency)
		directSecs += secs
		directCalls += calls
		mid := cpuNow(b, rdb)
		midRedis, midReads := redisCPU(b, rdb), redisReads(b, rdb)
		secs, calls = runPipeline(b, conn, n, concurrency, latency)
		pipelineSecs += secs
		pipelineCalls += calls
		directCPU += mid - cpu
		pipelineCPU += cpuNow(b, rdb) - mid
		pipelineRedisCPU += redisCPU(b, rdb) - midRedis
		pipelineReads += redisReads(b, rdb) - midReads

		if err := rdb.FlushAll(context.Background()).Err(); err != nil {
			b.Fatal(err)
		}
		before, beforeReads, beforeRedis := cpuNow(b, rdb), redisReads(b, rdb), redisCPU(b, rdb)
		secs, calls = runAsynqAlone(b, conn, n, concurrency, latency)
		asynqSecs += secs
		asynqCalls += calls
		asynqCPU += cpuNow(b, rdb) - before
		asynqReads += redisReads(b, rdb) - beforeReads
		asynqRedisCPU += redisCPU(b, rdb) - beforeRedis
	}
	if directCalls != pipelineCalls || directCalls != asynqCalls {
		b.Fatalf("direct made %d API calls, the pipeline %d, asynq alone %d: not the same work", directCalls, pipelineCalls, asynqCalls)
	}
	// Per API call (an update is a GET and a PATCH on both sides).
	direct := float64(directCalls) / directSecs
	pipeline := float64(pipelineCalls) / pipelineSecs
	b.ReportMetric(direct, "direct_calls/s")
	b.ReportMetric(pipeline, "pipeline_calls/s")
	b.ReportMetric(pipeline/direct, "ratio")
	// CPU (this process, which holds the fake too, + redis-server) per
	// API call: on 2 cores this bounds both rates.
	b.ReportMetric(directCPU/float64(directCalls)*1e6, "direct_cpu_µs/call")
	b.ReportMetric(pipelineCPU/float64(pipelineCalls)*1e6, "pipeline_cpu_µs/call")
	b.ReportMetric(pipelineRedisCPU/float64(pipelineCalls)*1e6, "pipeline_redis_cpu_µs/call")
	// The rate ratio of a CPU-bound host, steadier than the rates when
	// other work shares the cores.
	b.ReportMetric((directCPU/float64(directCalls))/(pipelineCPU/float64(pipelineCalls)), "cpu_ratio")
	// asynq alone against direct: what the queue itself costs, the bound
	// of any worker on asynq's server (see bench/hot.txt).
	asynqRate := float64(asynqCalls) / asynqSecs
	b.ReportMetric(asynqRate/direct, "asynq_ratio")
	b.ReportMetric(pipeline/asynqRate, "pipeline/asynq")
	b.ReportMetric(asynqCPU/float64(asynqCalls)*1e6, "asynq_cpu_µs/call")
	b.ReportMetric(asynqRedisCPU/float64(asynqCalls)*1e6, "asynq_redis_cpu_µs/call")
	// Socket reads redis-server made per task (INFO total_reads_processed):
	// the round trips, steady where the host's speed is not.
	b.ReportMetric(pipelineReads/float64(n*b.N), "pipeline_redis_reads/task")
	b.ReportMetric(asynqReads/float64(n*b.N), "asynq_redis_reads/task")
	b.ReportMetric(0, "ns/op") // each op is three N-call runs; the rates say it
}

// cpuNow is the CPU time used so far by this process and by redis-server,
// in seconds.
func cpuNow(b *testing.B, rdb redis.UniversalClient) float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano()+ru.Stime.Nano()).Seconds() + redisCPU(b, rdb)
}

// redisReads is the number of socket reads redis-server made so far.
func redisReads(b *testing.B, rdb redis.UniversalClient) float64 {
	return infoFloat(redisInfo(b, rdb, "stats"), "total_reads_processed")
}

// redisCPU is the CPU time redis-server used so far, in seconds.
func redisCPU(b *testing.B, rdb redis.UniversalClient) float64 {
	info := redisInfo(b, rdb, "cpu")
	return infoFloat(info, "used_cpu_sys") + infoFloat(info, "used_cpu_user")
}

// redisInfo is one section of rdb's INFO answer.
func redisInfo(b *testing.B, rdb redis.UniversalClient, section string) string {
	info, err := rdb.Info(context.Background(), section).Result()
	if err != nil {
		b.Fatal(err)
	}
	return info
}

// newFake starts a fake with the given latency and n/3 coupons for each of
// updates and deactivates.
func newFake(b *testing.B, n int, opts ...wechatpaytest.Option) (fake *wechatpaytest.Server, updateIDs, deactivateIDs []string) {
	fake = wechatpaytest.NewServer(b, opts...)
	per := (n + 2) / 3
	return fake, fake.SeedCoupons(fake.BrandID(), per), fake.SeedCoupons(fake.BrandID(), per)
}

// startProfile, when COUPONQ_BENCH_PROFILE names a directory, profiles
// the pipeline side alone (CPU, and every allocation's bytes) into
// cpu.pprof and allocs.pprof there; stop writes them. The fake shares the
// process: its share of the profile is under wechatpaytest.
func startProfile(b *testing.B) (stop func()) {
	dir := os.Getenv("COUPONQ_BENCH_PROFILE")
	if dir == "" {
		return func() {}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	cpu, err := os.Create(filepath.Join(dir, "cpu.pprof"))
	if err != nil {
		b.Fatal(err)
	}
	runtime.MemProfileRate = 4096
	runtime.GC()
	if err := pprof.StartCPUProfile(cpu); err != nil {
		b.Fatal(err)
	}
	return func() {
		pprof.StopCPUProfile()
		cpu.Close()
		f, err := os.Create(filepath.Join(dir, "allocs.pprof"))
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		if err := pprof.Lookup("allocs").WriteTo(f, 0); err != nil {
			b.Fatal(err)
		}
	}
}

// fakeOpts are the fake's options of both sides: latency, if any.
func fakeOpts(latency time.Duration) []wechatpaytest.Option {
	if latency <= 0 {
		return nil
	}
	return []wechatpaytest.Option{wechatpaytest.WithLatency(latency)}
}

// runDirect makes the n changes' calls with workers goroutines and
// returns the seconds taken and the API calls made.
func runDirect(b *testing.B, n, workers int, latency time.Duration) (float64, int) {
	fake, upd, deact := newFake(b, n, fakeOpts(latency)...)
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
					if failed.Add(1) == 1 {
						b.Logf("direct: first failure: %v", err)
					}
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
		b.Fatalf("direct: %d of %d changes failed", f, n)
	}
	return secs, apiCalls(fake)
}

// runPipeline runs the n changes through the producer and a worker and
// returns the seconds from the start of the enqueue to the batch done, and
// the API calls made.
func runPipeline(b *testing.B, conn *redisurl.Conn, n, concurrency int, latency time.Duration) (float64, int) {
	fake, upd, deact := newFake(b, n, fakeOpts(latency)...)
	defer fake.Close()
	client := fake.Client()
	defer client.Close()

	// As `couponq worker` logs when its output is not a terminal.
	logger := slog.New(slog.NewJSONHandler(io.Discard, nil))
	w, err := worker.New(worker.Config{Redis: conn, Concurrency: concurrency, Identity: client.Identity(), Logger: logger}, client)
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

	// Timed from a serving worker, as with a worker deployed before the
	// batch: its start (Redis checks, the credentials probe) is not a cost
	// per call.
	for ready := time.NewTicker(5 * time.Millisecond); w.Ready(ctx) != nil; {
		select {
		case <-ctx.Done():
			b.Fatalf("worker not ready: %v", w.Ready(ctx))
		case <-ready.C:
		}
	}
	stopProfile := startProfile(b)
	start := time.Now()
	rep, err := p.EnqueueBatch(ctx, mixedChanges(fake.BrandID(), upd, deact, n), tasks.BatchOptions{})
	if err != nil || rep.Total != n {
		b.Fatalf("EnqueueBatch: %+v, %v", rep, err)
	}
	st, err := reader.Wait(ctx, rep.BatchID, 10*time.Millisecond, nil)
	secs := time.Since(start).Seconds()
	stopProfile()
	if err != nil {
		b.Fatalf("Wait: %v", err)
	}
	if st.Succeeded != n {
		b.Fatalf("pipeline: %+v", st)
	}
	return secs, apiCalls(fake)
}
