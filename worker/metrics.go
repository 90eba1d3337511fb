package worker

import (
	"errors"
	"time"

	"github.com/couponq/couponq/tasks"
	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
)

// Call outcomes, the outcome label of ObserveCall.
const (
	OutcomeSuccess      = "success"
	OutcomeAPIError     = "api_error"
	OutcomeNetworkError = "network_error"
	OutcomeVerifyError  = "verify_error"
)

// Metrics holds the worker's Prometheus metrics. A nil *Metrics is valid:
// every method does nothing.
type Metrics struct {
	calls        *prometheus.CounterVec
	callDuration *prometheus.HistogramVec
	retries      *prometheus.CounterVec
	limiterWait  *prometheus.HistogramVec
	terminal     *prometheus.CounterVec
	slots        *prometheus.CounterVec
	backoffs     *prometheus.CounterVec
	emptySlots   *prometheus.CounterVec
	quotaShare   *prometheus.GaugeVec
	adopted      *prometheus.CounterVec
	abandoned    prometheus.Counter
}

// NewMetrics creates the worker's metrics and registers them with reg
// (nothing is registered when reg is nil):
//
//   - couponq_api_calls_total{op,outcome,code}: WeChat Pay calls; code is the
//     WeChat Pay error code, or "" on success;
//   - couponq_api_call_duration_seconds{op,outcome}: their latency;
//   - couponq_task_retries_total{op,reason}: tasks handed back for a retry;
//   - couponq_rate_limiter_wait_seconds{op}: time spent waiting for a slot;
//   - couponq_tasks_terminal_total{op,status}: tasks that ended, by status;
//   - couponq_rate_limiter_slots_total{op}: call slots this process booked;
//   - couponq_rate_limiter_backoffs_total{op}: 429s reported to the limiter;
//   - couponq_rate_limiter_empty_slots_total{op}: slots left empty for them;
//   - couponq_rate_limiter_quota_share{op}: calls booked by all processes in
//     the second up to this process's latest slot, over the rate;
//   - couponq_tasks_adopted_total{queue}: tasks this process enqueued for a
//     producer that accepted them but never did;
//   - couponq_batches_abandoned_total: open batches this process sealed
//     because their producer was no longer seen.
//
// The limiter ones need a Limiter built WithLimiterMetrics.
//
// Registering twice with the same registry reuses the metrics already there.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "couponq_api_calls_total",
			Help: "WeChat Pay API calls by op, outcome (success, api_error, network_error, verify_error) and error code.",
		}, []string{"op", "outcome", "code"}),
		callDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "couponq_api_call_duration_seconds",
			Help:    "Latency of WeChat Pay API calls by op and outcome.",
			Buckets: []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30},
		}, []string{"op", "outcome"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "couponq_task_retries_total",
			Help: "Tasks handed back to the queue for a retry, by op and reason.",
		}, []string{"op", "reason"}),
		limiterWait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "couponq_rate_limiter_wait_seconds",
			Help:    "Time spent waiting for a rate-limiter slot before an API call, by op.",
			Buckets: []float64{0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10},
		}, []string{"op"}),
		terminal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "couponq_tasks_terminal_total",
			Help: "Tasks that reached a terminal status (succeeded, failed), by op.",
		}, []string{"op", "status"}),
		slots: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "couponq_rate_limiter_slots_total",
			Help: "Call slots booked in the shared rate limiter by this process, by op.",
		}, []string{"op"}),
		backoffs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "couponq_rate_limiter_backoffs_total",
			Help: "429 answers reported to the shared rate limiter by this process, by op.",
		}, []string{"op"}),
		emptySlots: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "couponq_rate_limiter_empty_slots_total",
			Help: "Slots this process left empty in the shared rate limiter (for 429s, or given up by a call that woke late), by op.",
		}, []string{"op"}),
		quotaShare: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "couponq_rate_limiter_quota_share",
			Help: "Calls booked by all workers in the second up to this process's latest slot, over the rate, by op.",
		}, []string{"op"}),
		adopted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "couponq_tasks_adopted_total",
			Help: "Tasks enqueued by this process because their producer accepted them but never handed them to asynq, by queue.",
		}, []string{"queue"}),
		abandoned: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "couponq_batches_abandoned_total",
			Help: "Open batches sealed by this process because their producer was no longer seen.",
		}),
	}
	if reg != nil {
		m.calls = register(reg, m.calls)
		m.callDuration = register(reg, m.callDuration)
		m.retries = register(reg, m.retries)
		m.limiterWait = register(reg, m.limiterWait)
		m.terminal = register(reg, m.terminal)
		m.slots = register(reg, m.slots)
		m.backoffs = register(reg, m.backoffs)
		m.emptySlots = register(reg, m.emptySlots)
		m.quotaShare = register(reg, m.quotaShare)
		m.adopted = register(reg, m.adopted)
		m.abandoned = register(reg, m.abandoned)
	}
	return m
}

// register registers c with reg, or returns the equal collector registered
// before. Other registration errors are programming errors and panic.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	err := reg.Register(c)
	if err == nil {
		return c
	}
	var already prometheus.AlreadyRegisteredError
	if errors.As(err, &already) {
		if existing, ok := already.ExistingCollector.(C); ok {
			return existing
		}
	}
	panic(err)
}

// ObserveCall records one WeChat Pay API call of op that ended with outcome
// (OutcomeSuccess, OutcomeAPIError, OutcomeNetworkError, OutcomeVerifyError)
// and error code (WeChat Pay's code, "" when there is none) after d.
func (m *Metrics) ObserveCall(op, outcome, code string, d time.Duration) {
	if m == nil {
		return
	}
	m.calls.WithLabelValues(op, outcome, code).Inc()
	m.callDuration.WithLabelValues(op, outcome).Observe(d.Seconds())
}

// ObserveRetry records a task of op handed back to the queue for reason
// (e.g. "rate_limited", "server_error", "network_error").
func (m *Metrics) ObserveRetry(op, reason string) {
	if m == nil {
		return
	}
	m.retries.WithLabelValues(op, reason).Inc()
}

// ObserveLimiterWait records time spent in Limiter.Wait before a call of op.
func (m *Metrics) ObserveLimiterWait(op string, d time.Duration) {
	if m == nil {
		return
	}
	m.limiterWait.WithLabelValues(op).Observe(d.Seconds())
}

// ObserveTerminal records a task of op that reached status.
func (m *Metrics) ObserveTerminal(op string, status tasks.Status) {
	if m == nil {
		return
	}
	m.terminal.WithLabelValues(op, string(status)).Inc()
}

// ObserveAdopted records n tasks of queue adopted by the sweep.
func (m *Metrics) ObserveAdopted(queue string, n int) {
	if m == nil || n == 0 {
		return
	}
	m.adopted.WithLabelValues(queue).Add(float64(n))
}

// ObserveAbandoned records n batches sealed for their vanished producer.
func (m *Metrics) ObserveAbandoned(n int) {
	if m == nil || n == 0 {
		return
	}
	m.abandoned.Add(float64(n))
}

// observeSlot records a call slot of op booked with share of the quota in
// use in the window ending at it.
func (m *Metrics) observeSlot(op string, share float64) {
	if m == nil {
		return
	}
	m.slots.WithLabelValues(op).Inc()
	m.quotaShare.WithLabelValues(op).Set(share)
}

// observeBackoff records a 429 on op that booked empty slots.
func (m *Metrics) observeBackoff(op string, empty int) {
	if m == nil {
		return
	}
	m.backoffs.WithLabelValues(op).Inc()
	m.emptySlots.WithLabelValues(op).Add(float64(empty))
}

// observeRebook counts a slot given up by a call that woke too late for it.
func (m *Metrics) observeRebook(op string) {
	if m == nil {
		return
	}
	m.emptySlots.WithLabelValues(op).Inc()
}

// queueStates are the asynq task states reported by asynq_queue_size.
var queueStates = []struct {
	name  string
	count func(*asynq.QueueInfo) int
}{
	{"pending", func(q *asynq.QueueInfo) int { return q.Pending }},
	{"active", func(q *asynq.QueueInfo) int { return q.Active }},
	{"scheduled", func(q *asynq.QueueInfo) int { return q.Scheduled }},
	{"retry", func(q *asynq.QueueInfo) int { return q.Retry }},
	{"archived", func(q *asynq.QueueInfo) int { return q.Archived }},
	{"completed", func(q *asynq.QueueInfo) int { return q.Completed }},
	{"aggregating", func(q *asynq.QueueInfo) int { return q.Aggregating }},
}

type queueCollector struct {
	insp                                    *asynq.Inspector
	size, latency, memory, processed, fails *prometheus.Desc
	paused, up                              *prometheus.Desc
}

// NewQueueCollector returns a collector of asynq's queue state, read through
// insp at every scrape:
//
//   - asynq_queue_size{queue,state}: tasks by state (pending, active,
//     scheduled, retry, archived, completed, aggregating);
//   - asynq_queue_latency_seconds{queue}: age of the oldest pending task;
//   - asynq_queue_memory_usage_approx_bytes{queue}: sampled memory usage;
//   - asynq_tasks_processed_total{queue}, asynq_tasks_failed_total{queue}:
//     cumulative counts since the queue was created;
//   - asynq_queue_paused{queue}: 1 while the queue is paused;
//   - asynq_up: 1 when Redis answered this scrape, 0 otherwise.
//
// It plays the part of asynq's x/metrics collector, whose module exists only
// at pseudo-versions and pins another client_golang.
func NewQueueCollector(insp *asynq.Inspector) prometheus.Collector {
	q := []string{"queue"}
	return &queueCollector{
		insp:      insp,
		size:      prometheus.NewDesc("asynq_queue_size", "Number of tasks in a queue, by state.", []string{"queue", "state"}, nil),
		latency:   prometheus.NewDesc("asynq_queue_latency_seconds", "Age of the oldest pending task of a queue.", q, nil),
		memory:    prometheus.NewDesc("asynq_queue_memory_usage_approx_bytes", "Approximate memory a queue and its tasks use in Redis (sampled).", q, nil),
		processed: prometheus.NewDesc("asynq_tasks_processed_total", "Tasks processed (succeeded or failed) by a queue since it was created.", q, nil),
		fails:     prometheus.NewDesc("asynq_tasks_failed_total", "Tasks whose processing failed, by queue, since it was created.", q, nil),
		paused:    prometheus.NewDesc("asynq_queue_paused", "1 while a queue is paused.", q, nil),
		up:        prometheus.NewDesc("asynq_up", "1 when the queue state could be read from Redis at this scrape.", nil, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *queueCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.size, c.latency, c.memory, c.processed, c.fails, c.paused, c.up} {
		ch <- d
	}
}

// Collect implements prometheus.Collector. A Redis error is reported as
// asynq_up 0 rather than failing the whole scrape, so the worker's own
// metrics stay visible while Redis is down.
func (c *queueCollector) Collect(ch chan<- prometheus.Metric) {
	queues, err := c.insp.Queues()
	if err != nil {
		ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, 0)
		return
	}
	up := 1.0
	for _, name := range queues {
		info, err := c.insp.GetQueueInfo(name)
		if err != nil {
			up = 0
			continue
		}
		for _, s := range queueStates {
			ch <- prometheus.MustNewConstMetric(c.size, prometheus.GaugeValue, float64(s.count(info)), name, s.name)
		}
		ch <- prometheus.MustNewConstMetric(c.latency, prometheus.GaugeValue, info.Latency.Seconds(), name)
		ch <- prometheus.MustNewConstMetric(c.memory, prometheus.GaugeValue, float64(info.MemoryUsage), name)
		ch <- prometheus.MustNewConstMetric(c.processed, prometheus.CounterValue, float64(info.ProcessedTotal), name)
		ch <- prometheus.MustNewConstMetric(c.fails, prometheus.CounterValue, float64(info.FailedTotal), name)
		paused := 0.0
		if info.Paused {
			paused = 1
		}
		ch <- prometheus.MustNewConstMetric(c.paused, prometheus.GaugeValue, paused, name)
	}
	ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, up)
}
