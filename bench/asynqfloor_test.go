package bench

import (
	"context"
	"encoding/json"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/couponq/couponq/internal/redisurl"
	"github.com/couponq/couponq/tasks"
	"github.com/couponq/couponq/worker"
)

// runAsynqAlone makes the n changes' calls through asynq alone: 32
// goroutines calling asynq.Client.Enqueue, one asynq.Server at
// concurrency whose handler decodes the change and calls the fake. It is
// the floor under any worker built on asynq's server: what asynq's own
// dequeue and completion cost per call, with none of couponq's work.
func runAsynqAlone(b *testing.B, conn *redisurl.Conn, n, concurrency int, latency time.Duration) (float64, int) {
	fake, upd, deact := newFake(b, n, fakeOpts(latency)...)
	defer fake.Close()
	client := fake.Client()
	defer client.Close()

	var changes []tasks.Change
	for c := range mixedChanges(fake.BrandID(), upd, deact, n) {
		changes = append(changes, c)
	}
	var done, failed atomic.Int64
	finished := make(chan struct{})
	mux := asynq.NewServeMux()
	mux.HandleFunc("bench:call", func(ctx context.Context, t *asynq.Task) error {
		var c tasks.Change
		if err := json.Unmarshal(t.Payload(), &c); err != nil {
			return asynq.SkipRetry
		}
		if err := call(ctx, client, c); err != nil {
			failed.Add(1)
		}
		if done.Add(1) == int64(n) {
			close(finished)
		}
		return nil
	})
	srvRDB := conn.NewClient()
	defer srvRDB.Close()
	srv := asynq.NewServerFromRedisClient(srvRDB, asynq.Config{
		Concurrency: concurrency, Queues: map[string]int{"bench": 1}, LogLevel: asynq.FatalLevel,
		// As couponq's worker polls an empty queue: asynq's default (1 s)
		// would make asynq alone wait up to a second for the first tasks.
		TaskCheckInterval: worker.DefaultTaskCheckInterval,
	})
	if err := srv.Start(mux); err != nil {
		b.Fatal(err)
	}
	defer srv.Shutdown()
	acRDB := conn.NewClient()
	defer acRDB.Close()
	ac := asynq.NewClientFromRedisClient(acRDB)

	start := time.Now()
	next := make(chan tasks.Change, 32)
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() {
			for c := range next {
				p, _ := json.Marshal(c)
				if _, err := ac.Enqueue(asynq.NewTask("bench:call", p), asynq.Queue("bench"), asynq.TaskID(c.OutRequestNo)); err != nil {
					b.Error(err)
				}
			}
		})
	}
	for _, c := range changes {
		next <- c
	}
	close(next)
	wg.Wait()
	select {
	case <-finished:
	case <-time.After(5 * time.Minute):
		b.Fatalf("asynq alone: %d of %d done", done.Load(), n)
	}
	secs := time.Since(start).Seconds()
	if f := failed.Load(); f > 0 {
		b.Fatalf("asynq alone: %d of %d changes failed", f, n)
	}
	return secs, apiCalls(fake)
}
