package tasks_test

import (
	"fmt"
	"iter"
	"testing"

	"github.com/couponq/couponq/internal/redistest"
	"github.com/couponq/couponq/internal/results"
	"github.com/couponq/couponq/tasks"
	"github.com/couponq/couponq/wechatpay"
	"github.com/hibiken/asynq"
)

// generated streams n mixed changes without holding them.
func generated(n int) iter.Seq2[tasks.Change, error] {
	return func(yield func(tasks.Change, error) bool) {
		for i := range n {
			c := tasks.Change{ProductCouponID: fmt.Sprintf("%d", 1000000000+i%500), BrandID: "120344", OutRequestNo: fmt.Sprintf("bulk_%07d", i)}
			switch i % 3 {
			case 0:
				c.Op, c.DisplayInfo = tasks.OpUpdate, &wechatpay.DisplayInfo{Name: fmt.Sprintf("满100减%d", i%50+1), OriginalPrice: int64(10000 + i)}
			case 1:
				c.Op, c.DeactivateReason = tasks.OpDeactivate, "批次信息有误,重新创建"
			default:
				c.Op = tasks.OpGet
			}
			if !yield(c, nil) {
				return
			}
		}
	}
}

func TestIntegrationEnqueue10k(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("integration test: -short")
	}
	srv := redistest.Start(t)
	rdb := srv.Client()
	ctx := t.Context()
	p, err := tasks.NewProducer(rdb)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	const n = 10_000
	last := tasks.BatchProgress{}
	rep, err := p.EnqueueBatch(ctx, generated(n), tasks.BatchOptions{ID: "bulk", OnProgress: func(bp tasks.BatchProgress) { last = bp }})
	if err != nil || rep.Err() != nil {
		t.Fatalf("EnqueueBatch: %v / %v", err, rep.Err())
	}
	if rep.Read != n || rep.Total != n || rep.Duplicates != 0 || last.Settled != n || last.Enqueued != n {
		t.Fatalf("report = %+v, last progress %+v", rep, last)
	}
	r := tasks.NewReader(rdb)
	st, err := r.Batch(ctx, "bulk")
	if err != nil || st.Total != n || st.Pending != n || !st.Sealed || st.Done() {
		t.Fatalf("batch = %+v, %v", st, err)
	}
	if ids, err := r.BatchTaskIDs(ctx, "bulk"); err != nil || len(ids) != n {
		t.Errorf("task set has %d members (%v)", len(ids), err)
	}
	q, err := asynq.NewInspectorFromRedisClient(rdb).GetQueueInfo(tasks.DefaultQueue)
	if err != nil || q.Pending != n {
		t.Fatalf("asynq queue = %+v, %v", q, err)
	}
	if keys := rdb.Keys(ctx, results.ResultKey("*")).Val(); len(keys) != n {
		t.Errorf("%d result hashes", len(keys))
	}

	// The same batch again: every change is part of it already.
	rep, err = p.EnqueueBatch(ctx, generated(n), tasks.BatchOptions{ID: "bulk"})
	if err != nil || rep.Total != 0 || rep.Resumed != n || rep.Duplicates != 0 || rep.Err() != nil {
		t.Fatalf("re-enqueue = %+v, %v", rep, err)
	}
	st, _ = r.Batch(ctx, "bulk")
	q, _ = asynq.NewInspectorFromRedisClient(rdb).GetQueueInfo(tasks.DefaultQueue)
	if st.Total != n || st.Duplicates != 0 || q.Pending != n {
		t.Errorf("after re-enqueue: batch %+v, %d pending", st, q.Pending)
	}
}
