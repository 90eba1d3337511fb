package tasks_test

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
	"github.com/couponq/couponq/internal/results"
	"github.com/couponq/couponq/tasks"
	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
)

// BenchmarkBatchEnqueue enqueues the same 100 000 changes (COUPONQ_BENCH_N
// overrides) twice per iteration into an emptied local redis-server: once
// with a plain asynq.Client.EnqueueContext loop run by 32 goroutines (the
// baseline: same payload encoding, task IDs and options), once with
// Producer.EnqueueBatch at its default concurrency of 32, which also writes
// each result hash and the batch record. It reports both rates and their
// ratio (target ≥ 0.8). Run with -benchtime=1x; see bench/enqueue.txt.
func BenchmarkBatchEnqueue(b *testing.B) {
	srv := redistest.Start(b)
	n := 100_000
	if v, err := strconv.Atoi(os.Getenv("COUPONQ_BENCH_N")); err == nil && v > 0 {
		n = v
	}
	const workers = 32
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr(), PoolSize: 2 * workers})
	defer rdb.Close()
	ctx := context.Background()
	flush := func() {
		if err := rdb.FlushAll(ctx).Err(); err != nil {
			b.Fatal(err)
		}
	}

	var plainSecs, producerSecs, plainCPU, producerCPU float64
	for b.Loop() {
		flush()
		start, cpu := time.Now(), cpuNow(b, rdb)
		plainLoop(b, rdb, n, workers)
		plainSecs += time.Since(start).Seconds()
		plainCPU += cpuNow(b, rdb) - cpu

		flush()
		p, err := tasks.NewProducer(rdb, tasks.WithConcurrency(workers))
		if err != nil {
			b.Fatal(err)
		}
		start, cpu = time.Now(), cpuNow(b, rdb)
		rep, err := p.EnqueueBatch(ctx, generated(n), tasks.BatchOptions{})
		producerSecs += time.Since(start).Seconds()
		producerCPU += cpuNow(b, rdb) - cpu
		_ = p.Close()
		if err != nil || rep.Total != n {
			b.Fatalf("EnqueueBatch: %+v, %v", rep, err)
		}
	}
	plain := float64(n*b.N) / plainSecs
	producer := float64(n*b.N) / producerSecs
	b.ReportMetric(plain, "asynq_tasks/s")
	b.ReportMetric(producer, "producer_tasks/s")
	b.ReportMetric(producer/plain, "ratio")
	// CPU time (this process + redis-server) per task: steadier than the
	// rates on a shared machine.
	b.ReportMetric(plainCPU/float64(n*b.N)*1e6, "asynq_cpu_µs/task")
	b.ReportMetric(producerCPU/float64(n*b.N)*1e6, "producer_cpu_µs/task")
	b.ReportMetric(0, "ns/op") // each op is two 100k-task runs; the rates say it
}

// cpuNow is the CPU time used so far by this process and by redis-server,
// in seconds.
func cpuNow(b *testing.B, rdb *redis.Client) float64 {
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

// plainLoop is the baseline: n tasks built from the same changes, enqueued
// by workers goroutines with asynq.Client.EnqueueContext.
func plainLoop(b *testing.B, rdb redis.UniversalClient, n, workers int) {
	client := asynq.NewClientFromRedisClient(rdb)
	next := make(chan tasks.Change, workers)
	var (
		wg     sync.WaitGroup
		failed atomic.Int64
	)
	for range workers {
		wg.Go(func() {
			for c := range next {
				task, err := c.Task()
				if err == nil {
					_, err = client.EnqueueContext(context.Background(), task, asynq.Queue(tasks.DefaultQueue),
						asynq.MaxRetry(results.MaxRetry), asynq.Timeout(tasks.DefaultTaskTimeout))
				}
				if err != nil {
					failed.Add(1)
				}
			}
		})
	}
	for c := range generated(n) {
		next <- c
	}
	close(next)
	wg.Wait()
	if f := failed.Load(); f != 0 {
		b.Fatalf("plain loop: %d enqueues failed", f)
	}
}
