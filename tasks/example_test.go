package tasks_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"strings"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/couponq/couponq/internal/results"
	"github.com/couponq/couponq/tasks"
	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
)

// A producer enqueues a change file as one batch and waits for it. The
// worker here is a stand-in that records each task through the results.Store as
// couponq's worker does (Begin, then Finish), without calling WeChat Pay.
func Example_enqueueAndWait() {
	ctx := context.Background()
	mr, err := miniredis.Run()
	if err != nil {
		log.Fatal(err)
	}
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()

	stop := startStandInWorker(rdb)
	defer stop()

	file := `{"op":"update","product_coupon_id":"1000000013","brand_id":"120344","out_request_no":"34657_20250101_123456","display_info":{"name":"全场满100立打8折","original_price":10000}}
{"op":"deactivate","product_coupon_id":"1000000014","brand_id":"120344","out_request_no":"34657_20250101_123457","deactivate_reason":"批次信息有误,重新创建"}
{"op":"get","product_coupon_id":"1000000013","brand_id":"120344"}
`
	p, err := tasks.NewProducer(rdb)
	if err != nil {
		log.Fatal(err)
	}
	defer p.Close()
	// All or nothing, as couponq enqueue: a file with a bad line enqueues
	// nothing, and the error names every bad line.
	bad := file + `{"op":"deactivate","product_coupon_id":"1000000015","brand_id":"120344","out_request_no":"34657_20250101_123458"}` + "\n"
	_, err = p.EnqueueBatch(ctx, tasks.NewChangeReader(strings.NewReader(bad), tasks.FormatJSONL).All(),
		tasks.BatchOptions{ID: "nightly-0101", AllOrNothing: true})
	fmt.Println(errors.Is(err, tasks.ErrInvalidBatch), err)

	changes := tasks.NewChangeReader(strings.NewReader(file), tasks.FormatJSONL)
	rep, err := p.EnqueueBatch(ctx, changes.All(), tasks.BatchOptions{ID: "nightly-0101", AllOrNothing: true})
	if err != nil {
		log.Fatal(err)
	}
	if err := rep.Err(); err != nil || rep.EarlierFailed > 0 {
		log.Fatalf("conflicts or failures: %v; %d duplicates of failed tasks", err, rep.EarlierFailed)
	}
	fmt.Printf("batch %s: %d enqueued, %d duplicates\n", rep.BatchID, rep.Total, rep.Duplicates)

	r := tasks.NewReader(rdb)
	st, err := r.Wait(ctx, rep.BatchID, 10*time.Millisecond, nil)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("done: %d succeeded, %d failed, ok %v\n", st.Succeeded, st.Failed, st.OK())

	res, err := r.Result(ctx, "deactivate:120344:34657_20250101_123457")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(res.Status, res.CouponState, string(res.Coupon))

	// The same file again is all duplicates (the get names itself anew).
	changes = tasks.NewChangeReader(strings.NewReader(file), tasks.FormatJSONL)
	rep, err = p.EnqueueBatch(ctx, changes.All(), tasks.BatchOptions{ID: "nightly-0101-again", AllOrNothing: true})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("again: %d enqueued, %d duplicates\n", rep.Total, rep.Duplicates)
	// Output:
	// true couponq: nothing was enqueued: 1 invalid change(s): line 4: wechatpay: invalid deactivate_reason: required
	// batch nightly-0101: 3 enqueued, 0 duplicates
	// done: 3 succeeded, 0 failed, ok true
	// succeeded DEACTIVATED {"product_coupon_id":"1000000014","state":"DEACTIVATED"}
	// again: 1 enqueued, 2 duplicates
}

// startStandInWorker runs an asynq server whose handler marks each task
// running and then succeeded, with a made-up coupon.
func startStandInWorker(rdb redis.UniversalClient) (stop func()) {
	store := results.NewStore(rdb)
	srv := asynq.NewServerFromRedisClient(rdb, asynq.Config{
		Queues:            map[string]int{tasks.DefaultQueue: 1},
		Concurrency:       4,
		TaskCheckInterval: 10 * time.Millisecond,
		LogLevel:          asynq.FatalLevel,
	})
	handler := asynq.HandlerFunc(func(ctx context.Context, t *asynq.Task) error {
		p, err := tasks.DecodePayload(t.Type(), t.Payload())
		if err != nil {
			return fmt.Errorf("%w: %w", err, asynq.SkipRetry)
		}
		c := p.Change()
		id := results.Identity{TaskID: c.TaskID(), Op: string(c.Op), BrandID: c.BrandID, ProductCouponID: c.ProductCouponID, OutRequestNo: c.OutRequestNo}
		if st, _, err := store.Begin(ctx, id); err != nil || st.Terminal() {
			return err
		}
		state := "EFFECTIVE"
		if c.Op == tasks.OpDeactivate {
			state = "DEACTIVATED"
		}
		coupon := fmt.Sprintf(`{"product_coupon_id":%q,"state":%q}`, c.ProductCouponID, state)
		_, err = store.Finish(ctx, id.TaskID, tasks.StatusSucceeded, results.Attempt{Calls: 1, HTTPStatus: 200, Coupon: []byte(coupon), CouponState: state})
		return err
	})
	if err := srv.Start(handler); err != nil {
		log.Fatal(err)
	}
	return srv.Shutdown
}
