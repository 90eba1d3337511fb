// Package bench holds couponq's end-to-end benchmarks: the whole pipeline
// against direct signed calls (BenchmarkPipelineVsDirect) and the shared
// rate limiter's share of WeChat Pay's quota with three worker processes
// (BenchmarkQuota), and the hot path of issue 14: couponq enqueue as a
// command against a plain asynq loop (BenchmarkEnqueueCommand) and the
// peak memory of enqueue and of the worker (BenchmarkEnqueueMemory,
// BenchmarkWorkerRSS). They run only with -bench; plain `go test ./bench/`
// runs no benchmark. BenchmarkClusterQueues measures asynq's queues on one
// redis-server and on a Redis Cluster. Figures and commands are in
// bench/hot.txt, bench/profile.txt, bench/pipeline.txt, bench/ratelimit.txt
// and bench/cluster.txt.
package bench

import (
	"context"
	"fmt"
	"iter"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/couponq/couponq/internal/redisurl"
	"github.com/couponq/couponq/internal/wpenv"
	"github.com/couponq/couponq/tasks"
	"github.com/couponq/couponq/wechatpay"
	"github.com/couponq/couponq/wechatpay/wechatpaytest"
	"github.com/couponq/couponq/worker"
)

// workerEnv set to "1" makes the test binary run a worker process instead
// of the tests (see runWorkerProcess).
const workerEnv = "COUPONQ_BENCH_WORKER"

// parentEnv holds the pid of the benchmark process that started a worker
// process; the worker stops when its parent is gone.
const parentEnv = "COUPONQ_BENCH_PARENT"

func TestMain(m *testing.M) {
	if os.Getenv(workerEnv) == "1" {
		if err := runWorkerProcess(); err != nil {
			fmt.Fprintln(os.Stderr, "bench worker:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	code := m.Run()
	removeBinary()
	printQuotaReport(os.Stdout)
	os.Exit(code)
}

// runWorkerProcess runs one worker.Worker until SIGTERM or SIGINT, configured
// from the environment: COUPONQ_BENCH_REDIS (a redis:// URL),
// COUPONQ_BENCH_RATE, COUPONQ_BENCH_CONCURRENCY and the WECHATPAY_* variables
// written by wechatpaytest.Server.WriteEnv (partner mode, public-key mode).
// With COUPONQ_BENCH_PARENT set to a pid, it also stops (as on SIGTERM)
// once that process is no longer its parent, so that a benchmark killed
// before its cleanup (a -timeout panic, SIGKILL) leaves no worker behind.
func runWorkerProcess() error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if parent, err := strconv.Atoi(os.Getenv(parentEnv)); err == nil {
		go func() {
			t := time.NewTicker(500 * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
					if os.Getppid() != parent {
						fmt.Fprintln(os.Stderr, "bench worker: parent process gone; stopping")
						stop()
						return
					}
				}
			}
		}()
	}

	conn, err := redisurl.Parse(os.Getenv("COUPONQ_BENCH_REDIS"))
	if err != nil {
		return err
	}
	rate, err := strconv.Atoi(os.Getenv("COUPONQ_BENCH_RATE"))
	if err != nil {
		return fmt.Errorf("COUPONQ_BENCH_RATE: %w", err)
	}
	concurrency, err := strconv.Atoi(os.Getenv("COUPONQ_BENCH_CONCURRENCY"))
	if err != nil {
		return fmt.Errorf("COUPONQ_BENCH_CONCURRENCY: %w", err)
	}
	client, err := wpenv.Client(os.Getenv)
	if err != nil {
		return err
	}
	defer client.Close()

	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	w, err := worker.New(worker.Config{
		Redis:       conn,
		Concurrency: concurrency,
		Rate:        rate,
		Identity:    client.Identity(),
		Logger:      logger,
	}, client)
	if err != nil {
		return err
	}
	defer w.Close()
	return w.Run(ctx)
}

// mixedChanges yields n changes cycling update, deactivate, get: updates
// and gets on updateIDs (a get half the coupons away from the update just
// before it), deactivates on deactivateIDs (each used once, so every
// deactivate succeeds). Every change has its own out_request_no.
func mixedChanges(brandID string, updateIDs, deactivateIDs []string, n int) iter.Seq2[tasks.Change, error] {
	return func(yield func(tasks.Change, error) bool) {
		for i := range n {
			k := i / 3
			var c tasks.Change
			switch i % 3 {
			case 0:
				c = tasks.Change{Op: tasks.OpUpdate, ProductCouponID: updateIDs[k%len(updateIDs)], BrandID: brandID,
					OutRequestNo: fmt.Sprintf("bench_u_%06d", i),
					DisplayInfo:  &wechatpay.DisplayInfo{Name: fmt.Sprintf("满100减%d", k%50+1), OriginalPrice: 10000}}
			case 1:
				c = tasks.Change{Op: tasks.OpDeactivate, ProductCouponID: deactivateIDs[k%len(deactivateIDs)], BrandID: brandID,
					OutRequestNo: fmt.Sprintf("bench_d_%06d", i), DeactivateReason: "批次信息有误"}
			default:
				// Half the coupons away from the update just before it: a
				// get waits for the writes enqueued before it to its coupon
				// (SPEC "Order"), and these measure the calls, not that wait.
				c = tasks.Change{Op: tasks.OpGet, ProductCouponID: updateIDs[(k+len(updateIDs)/2)%len(updateIDs)], BrandID: brandID,
					OutRequestNo: fmt.Sprintf("bench_g_%06d", i)}
			}
			if !yield(c, nil) {
				return
			}
		}
	}
}

// call makes c's signed API calls directly, as the worker makes them: an
// update reads the coupon first (GET), merges the line's display_info into
// it and PATCHes the merged body (skipped when nothing would change), as
// SPEC's "Updates are partial" requires of couponq.
func call(ctx context.Context, api worker.API, c tasks.Change) error {
	var err error
	switch c.Op {
	case tasks.OpUpdate:
		req := &wechatpay.UpdateProductCouponRequest{
			ProductCouponID: c.ProductCouponID, BrandID: c.BrandID, OutRequestNo: c.OutRequestNo, DisplayInfo: c.DisplayInfo}
		got, gerr := api.GetProductCoupon(ctx, &wechatpay.GetProductCouponRequest{ProductCouponID: c.ProductCouponID, BrandID: c.BrandID})
		if gerr != nil {
			return gerr
		}
		merged, changed, merr := wechatpay.MergeDisplayInfo(got, c.DisplayInfo)
		if merr != nil || !changed {
			return merr
		}
		if req.Body, err = api.EncodeUpdate(req, merged); err != nil {
			return err
		}
		_, err = api.UpdateProductCoupon(ctx, req)
	case tasks.OpDeactivate:
		_, err = api.DeactivateProductCoupon(ctx, &wechatpay.DeactivateProductCouponRequest{
			ProductCouponID: c.ProductCouponID, BrandID: c.BrandID, OutRequestNo: c.OutRequestNo, DeactivateReason: c.DeactivateReason})
	default:
		_, err = api.GetProductCoupon(ctx, &wechatpay.GetProductCouponRequest{ProductCouponID: c.ProductCouponID, BrandID: c.BrandID})
	}
	return err
}

// apiCalls is the number of calls the fake admitted, all endpoints.
func apiCalls(fake *wechatpaytest.Server) int {
	n := 0
	for _, st := range fake.Stats() {
		n += st.Admitted
	}
	return n
}
