package worker

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/couponq/couponq/internal/results"
	"github.com/couponq/couponq/tasks"
)

// A change its producer accepted and registered but never enqueued (it was
// killed) is enqueued by Adopt once older than AdoptAfter, logged and
// counted; the producer's open batch is sealed.
func TestAdoptEnqueuesOrphansAndSealsTheirBatch(t *testing.T) {
	t.Parallel()
	var logs bytes.Buffer
	reg := prometheus.NewRegistry()
	b := setup(t, func(c *Config) {
		c.AdoptAfter = MinAdoptAfter
		c.Logger = slog.New(slog.NewTextHandler(&logs, nil))
		c.Metrics = NewMetrics(reg)
	})
	ctx := t.Context()
	past := results.NewStore(b.rdb, results.WithClock(func() time.Time { return time.Now().Add(-time.Hour) }))
	id := results.Identity{TaskID: tasks.TaskID(tasks.OpGet, testBrand, "orphan01"), Op: string(tasks.OpGet), BrandID: testBrand,
		ProductCouponID: "1000000013", OutRequestNo: "orphan01", Batch: testBatch}
	payload := []byte(`{"product_coupon_id":"1000000013","brand_id":"120344","out_request_no":"orphan01"}`)
	if err := past.OpenBatch(ctx, testBatch); err != nil {
		t.Fatal(err)
	}
	if err := past.Register(ctx, tasks.DefaultQueue, []string{id.TaskID}); err != nil {
		t.Fatal(err)
	}
	h := results.Handoff{Run: "dead", Seq: 1, Queue: tasks.DefaultQueue, Timeout: time.Minute}
	if _, err := past.AcceptMany(ctx, testBatch, h, []results.AcceptItem{{Identity: id, PayloadSHA256: "s", Payload: payload}}); err != nil {
		t.Fatal(err)
	}

	if n := b.w.Adopt(ctx); n != 1 {
		t.Fatalf("Adopt = %d, want 1\n%s", n, logs.String())
	}
	if !b.mr.Exists("asynq:{" + tasks.DefaultQueue + "}:t:" + id.TaskID) {
		t.Error("the orphan has no asynq task")
	}
	if got := testutil.ToFloat64(b.w.cfg.Metrics.adopted.WithLabelValues(tasks.DefaultQueue)); got != 1 {
		t.Errorf("couponq_tasks_adopted_total = %v", got)
	}
	if got := testutil.ToFloat64(b.w.cfg.Metrics.abandoned); got != 1 {
		t.Errorf("couponq_batches_abandoned_total = %v", got)
	}
	for _, want := range []string{"adopted a task its producer accepted but never enqueued", id.TaskID, "sealed a batch its producer left open"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, logs.String())
		}
	}
	if st := b.batch(t); st[results.BatchFieldSealed] != "1" {
		t.Errorf("batch = %v", st)
	}
	if n := b.w.Adopt(ctx); n != 0 {
		t.Errorf("second Adopt = %d, want 0", n)
	}
}

func TestAdoptInterval(t *testing.T) {
	t.Parallel()
	for grace, want := range map[time.Duration]time.Duration{
		MinAdoptAfter: 500 * time.Millisecond, time.Minute: 15 * time.Second, time.Hour: 15 * time.Second, 0: 250 * time.Millisecond,
	} {
		if got := adoptInterval(grace); got != want {
			t.Errorf("adoptInterval(%v) = %v, want %v", grace, got, want)
		}
	}
}
