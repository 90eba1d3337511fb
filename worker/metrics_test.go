package worker

import (
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/couponq/couponq/tasks"
	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestMetricsObserve(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewPedanticRegistry()
	m := NewMetrics(reg)

	m.ObserveCall("update", OutcomeSuccess, "", 120*time.Millisecond)
	m.ObserveCall("update", OutcomeSuccess, "", 80*time.Millisecond)
	m.ObserveCall("update", OutcomeAPIError, "RATELIMIT_EXCEEDED", 10*time.Millisecond)
	m.ObserveCall("get", OutcomeNetworkError, "", 30*time.Second)
	m.ObserveRetry("update", "rate_limited")
	m.ObserveRetry("update", "rate_limited")
	m.ObserveLimiterWait("update", 50*time.Millisecond)
	m.ObserveTerminal("update", tasks.StatusSucceeded)
	m.ObserveTerminal("deactivate", tasks.StatusFailed)

	tests := []struct {
		name string
		c    prometheus.Collector
		want float64
	}{
		{"update success", m.calls.WithLabelValues("update", OutcomeSuccess, ""), 2},
		{"update 429", m.calls.WithLabelValues("update", OutcomeAPIError, "RATELIMIT_EXCEEDED"), 1},
		{"get network", m.calls.WithLabelValues("get", OutcomeNetworkError, ""), 1},
		{"retries", m.retries.WithLabelValues("update", "rate_limited"), 2},
		{"succeeded", m.terminal.WithLabelValues("update", "succeeded"), 1},
		{"failed", m.terminal.WithLabelValues("deactivate", "failed"), 1},
	}
	for _, tt := range tests {
		if got := testutil.ToFloat64(tt.c); got != tt.want {
			t.Errorf("%s = %v, want %v", tt.name, got, tt.want)
		}
	}

	counts := map[string]int{
		"couponq_api_calls_total":           3,
		"couponq_api_call_duration_seconds": 3,
		"couponq_task_retries_total":        1,
		"couponq_rate_limiter_wait_seconds": 1,
		"couponq_tasks_terminal_total":      2,
	}
	for name, want := range counts {
		if got, err := testutil.GatherAndCount(reg, name); err != nil || got != want {
			t.Errorf("%s: %d series (%v), want %d", name, got, err, want)
		}
	}

	const wantHist = `
# HELP couponq_rate_limiter_wait_seconds Time spent waiting for a rate-limiter slot before an API call, by op.
# TYPE couponq_rate_limiter_wait_seconds histogram
couponq_rate_limiter_wait_seconds_bucket{op="update",le="0.001"} 0
couponq_rate_limiter_wait_seconds_bucket{op="update",le="0.005"} 0
couponq_rate_limiter_wait_seconds_bucket{op="update",le="0.01"} 0
couponq_rate_limiter_wait_seconds_bucket{op="update",le="0.025"} 0
couponq_rate_limiter_wait_seconds_bucket{op="update",le="0.05"} 1
couponq_rate_limiter_wait_seconds_bucket{op="update",le="0.1"} 1
couponq_rate_limiter_wait_seconds_bucket{op="update",le="0.25"} 1
couponq_rate_limiter_wait_seconds_bucket{op="update",le="0.5"} 1
couponq_rate_limiter_wait_seconds_bucket{op="update",le="1"} 1
couponq_rate_limiter_wait_seconds_bucket{op="update",le="2.5"} 1
couponq_rate_limiter_wait_seconds_bucket{op="update",le="5"} 1
couponq_rate_limiter_wait_seconds_bucket{op="update",le="10"} 1
couponq_rate_limiter_wait_seconds_bucket{op="update",le="+Inf"} 1
couponq_rate_limiter_wait_seconds_sum{op="update"} 0.05
couponq_rate_limiter_wait_seconds_count{op="update"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(wantHist), "couponq_rate_limiter_wait_seconds"); err != nil {
		t.Error(err)
	}
	if probs, err := testutil.GatherAndLint(reg); err != nil || len(probs) > 0 {
		t.Errorf("lint: %v %v", probs, err)
	}
}

func TestMetricsRegisterTwiceSharesCollectors(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	a, b := NewMetrics(reg), NewMetrics(reg)
	a.ObserveRetry("get", "server_error")
	b.ObserveRetry("get", "server_error")
	if got := testutil.ToFloat64(a.retries.WithLabelValues("get", "server_error")); got != 2 {
		t.Errorf("retries = %v, want 2 (shared)", got)
	}
	NewMetrics(nil).ObserveRetry("get", "x") // unregistered, still usable
}

func TestMetricsNilIsNoop(t *testing.T) {
	t.Parallel()
	var m *Metrics
	m.ObserveCall("update", OutcomeSuccess, "", time.Second)
	m.ObserveRetry("update", "x")
	m.ObserveLimiterWait("update", time.Second)
	m.ObserveTerminal("update", tasks.StatusSucceeded)
}

func TestQueueCollector(t *testing.T) {
	t.Parallel()
	mr := miniredis.RunT(t)
	opt := asynq.RedisClientOpt{Addr: mr.Addr()}
	client := asynq.NewClient(opt)
	t.Cleanup(func() { _ = client.Close() })
	insp := asynq.NewInspector(opt)
	t.Cleanup(func() { _ = insp.Close() })

	for i := range 3 {
		if _, err := client.Enqueue(asynq.NewTask("coupon:get", []byte(`{}`)), asynq.Queue("couponq"), asynq.TaskID("t"+string(rune('a'+i)))); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := client.Enqueue(asynq.NewTask("coupon:get", []byte(`{}`)), asynq.Queue("couponq"), asynq.ProcessIn(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if _, err := client.Enqueue(asynq.NewTask("coupon:get", nil), asynq.Queue("other")); err != nil {
		t.Fatal(err)
	}
	if err := insp.PauseQueue("other"); err != nil {
		t.Fatal(err)
	}

	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(NewQueueCollector(insp))

	const want = `
# HELP asynq_queue_paused 1 while a queue is paused.
# TYPE asynq_queue_paused gauge
asynq_queue_paused{queue="couponq"} 0
asynq_queue_paused{queue="other"} 1
# HELP asynq_queue_size Number of tasks in a queue, by state.
# TYPE asynq_queue_size gauge
asynq_queue_size{queue="couponq",state="active"} 0
asynq_queue_size{queue="couponq",state="aggregating"} 0
asynq_queue_size{queue="couponq",state="archived"} 0
asynq_queue_size{queue="couponq",state="completed"} 0
asynq_queue_size{queue="couponq",state="pending"} 3
asynq_queue_size{queue="couponq",state="retry"} 0
asynq_queue_size{queue="couponq",state="scheduled"} 1
asynq_queue_size{queue="other",state="active"} 0
asynq_queue_size{queue="other",state="aggregating"} 0
asynq_queue_size{queue="other",state="archived"} 0
asynq_queue_size{queue="other",state="completed"} 0
asynq_queue_size{queue="other",state="pending"} 1
asynq_queue_size{queue="other",state="retry"} 0
asynq_queue_size{queue="other",state="scheduled"} 0
# HELP asynq_tasks_processed_total Tasks processed (succeeded or failed) by a queue since it was created.
# TYPE asynq_tasks_processed_total counter
asynq_tasks_processed_total{queue="couponq"} 0
asynq_tasks_processed_total{queue="other"} 0
# HELP asynq_tasks_failed_total Tasks whose processing failed, by queue, since it was created.
# TYPE asynq_tasks_failed_total counter
asynq_tasks_failed_total{queue="couponq"} 0
asynq_tasks_failed_total{queue="other"} 0
# HELP asynq_up 1 when the queue state could be read from Redis at this scrape.
# TYPE asynq_up gauge
asynq_up 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want),
		"asynq_queue_paused", "asynq_queue_size", "asynq_tasks_processed_total", "asynq_tasks_failed_total", "asynq_up"); err != nil {
		t.Error(err)
	}
	for _, name := range []string{"asynq_queue_latency_seconds", "asynq_queue_memory_usage_approx_bytes"} {
		if n, err := testutil.GatherAndCount(reg, name); err != nil || n != 2 {
			t.Errorf("%s: %d series (%v), want 2", name, n, err)
		}
	}
	if probs, err := testutil.GatherAndLint(reg); err != nil || len(probs) > 0 {
		t.Errorf("lint: %v %v", probs, err)
	}

	mr.Close()
	const down = `
# HELP asynq_up 1 when the queue state could be read from Redis at this scrape.
# TYPE asynq_up gauge
asynq_up 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(down), "asynq_up"); err != nil {
		t.Errorf("Redis down: %v", err)
	}
}
