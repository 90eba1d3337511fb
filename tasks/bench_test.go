package tasks_test

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

	var plainSecs, producerSecs float64
	for b.Loop() {
		flush()
		start := time.Now()
		plainLoop(b, rdb, n, workers)
		plainSecs += time.Since(start).Seconds()

		flush()
		p, err := tasks.NewProducer(rdb, tasks.WithConcurrency(workers))
		if err != nil {
			b.Fatal(err)
		}
		start = time.Now()
		rep, err := p.EnqueueBatch(ctx, generated(n), tasks.BatchOptions{})
		producerSecs += time.Since(start).Seconds()
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
	b.ReportMetric(0, "ns/op") // each op is two 100k-task runs; the rates say it
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
						asynq.MaxRetry(tasks.DefaultMaxRetry), asynq.Timeout(tasks.DefaultTaskTimeout))
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
