package tasks

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/couponq/couponq/internal/autopipe"
	"github.com/couponq/couponq/internal/results"
	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
)

// Producer defaults.
const (
	// DefaultQueue is the asynq queue tasks go to, and the queue couponq's
	// worker serves, unless configured otherwise.
	DefaultQueue = "couponq"
	// DefaultEnqueueConcurrency is how many changes of a batch are being
	// enqueued at once (WithConcurrency).
	DefaultEnqueueConcurrency = 32
	// DefaultTaskTimeout is asynq's per-attempt timeout of each task
	// (WithTaskTimeout).
	DefaultTaskTimeout = 2 * time.Minute
	// acceptGroupSize is how many changes EnqueueBatch accepts in one
	// script call.
	acceptGroupSize = 64
	// acceptWorkers is how many groups may be being accepted at once.
	acceptWorkers = 4
	// defaultMaxFailures is how many changes of a batch may fail to enqueue
	// before EnqueueBatch gives up (ErrTooManyFailures).
	defaultMaxFailures = 100
	// defaultSettleTimeout bounds the end of a batch: retrying what Redis
	// did not confirm, verifying and sealing. It outlasts a Redis stall of
	// several go-redis read timeouts.
	defaultSettleTimeout = 30 * time.Second
	// heartbeatInterval is how often a producer marks its batch open
	// (OpenBatchesKey); the workers' grace period must be well above it.
	heartbeatInterval = 500 * time.Millisecond
)

// Errors of the producer. Test with errors.Is.
var (
	// ErrConflict: a task with the same ID and another payload exists. The
	// error is a *ConflictError.
	ErrConflict = errors.New("task ID already used with another payload")
	// ErrTooManyFailures: EnqueueBatch stopped after BatchOptions.MaxFailures
	// changes failed to enqueue.
	ErrTooManyFailures = errors.New("too many changes failed to enqueue")
	// ErrNotEnqueued: a change could not be confirmed in asynq (Redis did
	// not answer). Its result may exist, queued: a rerun of the batch, or
	// the workers after their grace period, enqueue it.
	ErrNotEnqueued = errors.New("not enqueued")
)

// ConflictError is a change whose task ID is taken, in asynq or by a result
// hash, by a task with another payload. Nothing was written for it.
type ConflictError struct {
	TaskID string
	Where  string // "result" (a result hash) or "queue" (a task in asynq)
}

func (e *ConflictError) Error() string { return "couponq: task " + e.TaskID + ": " + e.reason() }

func (e *ConflictError) reason() string {
	return fmt.Sprintf("%v (found in the %s); reuse an out_request_no only for the identical change", ErrConflict, e.Where)
}

// Is makes errors.Is(err, ErrConflict) true.
func (e *ConflictError) Is(target error) bool { return target == ErrConflict }

// ChangeError is one change of a batch that could not be enqueued: invalid,
// or refused by Redis.
type ChangeError struct {
	Index  int    // 0-based position in the batch's input; -1 when not known
	TaskID string // "" when the change was too invalid to name one
	Err    error
}

// Error reads "change #N (task ID): reason", the reason without the
// "couponq: " its error starts with, nor the task ID again.
func (e *ChangeError) Error() string {
	reason := strings.TrimPrefix(e.Err.Error(), "couponq: ")
	var ce *ConflictError
	if errors.As(e.Err, &ce) && ce.TaskID == e.TaskID {
		reason = ce.reason()
	}
	if e.TaskID == "" {
		return fmt.Sprintf("change #%d: %s", e.Index+1, reason)
	}
	reason = strings.TrimPrefix(reason, "task "+e.TaskID+": ")
	if e.Index < 0 { // found by the verification, its line unknown
		return fmt.Sprintf("task %s: %s", e.TaskID, reason)
	}
	return fmt.Sprintf("change #%d (task %s): %s", e.Index+1, e.TaskID, reason)
}

// Unwrap returns the reason.
func (e *ChangeError) Unwrap() error { return e.Err }

// Producer enqueues coupon changes: it records each accepted change's
// result hash (status queued) and then enqueues its asynq task. It is safe
// for concurrent use.
type Producer struct {
	rdb         redis.UniversalClient
	pc          *autopipe.Client
	enq         enqueuer
	writer      *asynqWriter // a batch's asynq tasks, a group a round trip
	store       *results.Store
	batchStore  *results.Store // over rdb directly: groups are pipelined enough
	queue       string
	concurrency int
	timeout     time.Duration
	// settleTimeout bounds the end of a batch (retries, verify, seal).
	settleTimeout time.Duration
	ttl           time.Duration
	now           func() time.Time
	log           *slog.Logger
}

// ProducerOption configures a Producer. Each one validates its value.
type ProducerOption func(*Producer) error

// WithQueue sets the asynq queue tasks go to (default "couponq").
func WithQueue(q string) ProducerOption {
	return func(p *Producer) error {
		if strings.TrimSpace(q) == "" {
			return errors.New("queue: must not be blank")
		}
		if strings.ContainsAny(q, "{}") {
			return fmt.Errorf("queue %q: must not contain { or } (they break asynq's Redis Cluster hash tag)", q)
		}
		p.queue = q
		return nil
	}
}

// WithResultTTL sets how long result and batch keys live (default
// 168h).
func WithResultTTL(d time.Duration) ProducerOption {
	return func(p *Producer) error {
		if d < time.Second {
			return fmt.Errorf("result TTL: must be at least 1s, got %v", d)
		}
		p.ttl = d
		return nil
	}
}

// WithConcurrency sets how many changes of a batch are enqueued at once
// (default 32).
func WithConcurrency(n int) ProducerOption {
	return func(p *Producer) error {
		if n < 1 || n > 4096 {
			return fmt.Errorf("concurrency: must be 1–4096, got %d", n)
		}
		p.concurrency = n
		return nil
	}
}

// WithLogger sets the logger (default: discard).
func WithLogger(l *slog.Logger) ProducerOption {
	return func(p *Producer) error {
		if l == nil {
			return errors.New("logger: must not be nil")
		}
		p.log = l
		return nil
	}
}

// WithTaskTimeout sets asynq's per-attempt timeout of each task (default 2m).
func WithTaskTimeout(d time.Duration) ProducerOption {
	return func(p *Producer) error {
		if d <= 0 {
			return fmt.Errorf("task timeout: must be positive, got %v", d)
		}
		p.timeout = d
		return nil
	}
}

// withClock injects the clock of enqueued_at and batch timestamps
// (tests).
func withClock(now func() time.Time) ProducerOption {
	return func(p *Producer) error {
		if now == nil {
			return errors.New("clock: must not be nil")
		}
		p.now = now
		return nil
	}
}

// withSettleTimeout bounds the end of a batch (tests).
func withSettleTimeout(d time.Duration) ProducerOption {
	return func(p *Producer) error {
		p.settleTimeout = d
		return nil
	}
}

// NewProducer returns a producer over rdb. It does not take ownership of
// rdb: Close leaves it open.
func NewProducer(rdb redis.UniversalClient, opts ...ProducerOption) (*Producer, error) {
	if rdb == nil {
		return nil, errors.New("couponq: NewProducer: nil Redis client")
	}
	p := &Producer{
		rdb:           rdb,
		queue:         DefaultQueue,
		concurrency:   DefaultEnqueueConcurrency,
		timeout:       DefaultTaskTimeout,
		settleTimeout: defaultSettleTimeout,
		ttl:           DefaultResultTTL,
		now:           time.Now,
		log:           slog.New(slog.DiscardHandler),
	}
	for _, o := range opts {
		if err := o(p); err != nil {
			return nil, fmt.Errorf("couponq: producer option %w", err)
		}
	}
	p.pc = autopipe.New(rdb, 2, 256)
	p.writer = &asynqWriter{rdb: rdb, now: time.Now}
	p.enq = enqueuer{client: asynq.NewClientFromRedisClient(p.pc), inspector: asynq.NewInspectorFromRedisClient(rdb)}
	p.store = results.NewStore(p.pc, results.WithResultTTL(p.ttl), results.WithClock(p.now))
	p.batchStore = results.NewStore(rdb, results.WithResultTTL(p.ttl), results.WithClock(p.now))
	return p, nil
}

// Queue returns the asynq queue the producer enqueues to.
func (p *Producer) Queue() string { return p.queue }

// Close stops the producer's background goroutines. The Redis client stays
// open.
func (p *Producer) Close() error { return p.pc.Close() }

// EnqueueResult is the outcome of one accepted or duplicate change.
type EnqueueResult struct {
	TaskID string
	// Duplicate reports that the change was enqueued before with the same
	// payload: it was skipped and no new task exists.
	Duplicate bool
	// Resumed reports that an earlier run of the same batch accepted the
	// change: it stays part of the batch, counted once, and its task
	// exists (enqueued now if that run never did).
	Resumed bool
	// EarlierFailed reports a Duplicate whose earlier task is failed or
	// canceled: the change did not run and will not unless that task is
	// retried (couponq retry). EarlierBatch names that task's batch ("" for
	// none).
	EarlierFailed bool
	EarlierBatch  string
	Change        Change // as enqueued (a get has its out_request_no now)
}

// Enqueue validates c, records its result hash (status queued) and
// enqueues its task. A change already enqueued with the same payload gives
// Duplicate set and no new task; with another payload, a
// *ConflictError. A get without out_request_no is given a fresh one.
func (p *Producer) Enqueue(ctx context.Context, c Change) (*EnqueueResult, error) {
	return p.enqueue(ctx, c, "")
}

// prepared is a valid change ready to be accepted.
type prepared struct {
	c       Change
	id      results.Identity
	payload []byte
	sha     string
}

// prepare names a get that has none, validates and encodes c.
func prepare(c Change, batch string) (*prepared, error) {
	if c.Op == OpGet && c.OutRequestNo == "" {
		c.OutRequestNo = newGetOutRequestNo()
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	payload, err := c.Payload()
	if err != nil {
		return nil, err
	}
	id := results.Identity{TaskID: c.TaskID(), Op: string(c.Op), BrandID: c.BrandID, ProductCouponID: c.ProductCouponID, OutRequestNo: c.OutRequestNo, Batch: batch}
	return &prepared{c: c, id: id, payload: payload, sha: PayloadSHA256(payload)}, nil
}

// enqueue enqueues one change into batch. ctx only decides whether the
// change starts: once its result may be written, the enqueue runs to its
// end (bounded by the Redis client's timeouts), so cancelling leaves no
// accepted change without its task.
func (p *Producer) enqueue(ctx context.Context, c Change, batch string) (*EnqueueResult, error) {
	pr, err := prepare(c, batch)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	ctx = context.WithoutCancel(ctx)
	h := p.handoff(newRunID(), 0)
	item := []results.AcceptItem{{Identity: pr.id, PayloadSHA256: pr.sha, Payload: pr.payload}}
	// Registered first: killed after the accept, the change is adopted;
	// and its place in its coupon's order is taken before it can run.
	if err := p.store.Register(ctx, p.queue, []string{pr.id.TaskID}); err != nil {
		return nil, err
	}
	if err := registerOrder(ctx, p.store, []results.OrderEntry{pr.orderEntry()}, false, 2*time.Second); err != nil {
		return nil, &unconfirmedError{err: err}
	}
	var res *EnqueueResult
	for attempt := 0; ; attempt++ {
		outs, aerr := p.store.AcceptMany(ctx, batch, h, item)
		if aerr == nil {
			res, err = p.afterAccept(ctx, pr, outs[0], h.Run)
		} else {
			err = &unconfirmedError{err: aerr}
		}
		var ue *unconfirmedError
		if !errors.As(err, &ue) || attempt == 2 {
			break
		}
		// Both steps are idempotent: try again, a little later.
		time.Sleep(time.Duration(attempt+1) * 500 * time.Millisecond)
	}
	if err != nil {
		return nil, err
	}
	if cerr := p.store.Confirm(ctx, p.queue, []string{pr.id.TaskID}); cerr != nil {
		p.log.Debug("couponq: could not drop a confirmed task from the registry; the workers will", "task_id", pr.id.TaskID, "err", cerr)
	}
	return res, nil
}

// record is the asynq task record of an accepted change, as handedTask
// and enqueueOwn would enqueue it through asynq.Client.
func (p *Producer) record(pr *prepared, run string) *asynqRecord {
	h := map[string]string{HeaderRun: run}
	if pr.id.Batch != "" {
		h[HeaderBatch] = pr.id.Batch
	}
	nb, _ := ParseNotBefore(pr.c.NotBefore) // the payload's not_before (validated)
	return &asynqRecord{taskType: pr.c.Op.TaskType(), payload: pr.payload, headers: h, taskID: pr.id.TaskID,
		queue: p.queue, timeout: p.timeout, processAt: nb}
}

// handoff is how this producer's run enqueues the tasks of accept call seq.
func (p *Producer) handoff(run string, seq int) results.Handoff {
	return results.Handoff{Run: run, Seq: seq, Queue: p.queue, Timeout: p.timeout}
}

// unconfirmedError is a change whose hand-off to asynq is not known to
// have happened: Redis did not answer, so its result may or may not
// exist, and its task may or may not. Trying again is safe.
type unconfirmedError struct{ err error }

func (e *unconfirmedError) Error() string {
	return fmt.Sprintf("couponq: %v: %v", ErrNotEnqueued, e.err)
}

func (e *unconfirmedError) Unwrap() []error { return []error{ErrNotEnqueued, e.err} }

// afterAccept settles an accepted change: a duplicate or conflict is
// reported; an accepted or resumed one gets its asynq task, or is undone if
// asynq holds its ID for another task. An *unconfirmedError means asynq
// did not answer: the change stays accepted (never undone on a guess: a
// re-sent enqueue may still create the task) and may be tried again.
func (p *Producer) afterAccept(ctx context.Context, pr *prepared, out results.AcceptOutcome, run string) (*EnqueueResult, error) {
	c, id, taskID := pr.c, pr.id, pr.id.TaskID
	res := &EnqueueResult{TaskID: taskID, Change: c}
	switch out.Kind() {
	case results.Duplicate:
		res.Duplicate = true
		return res, nil
	case results.EarlierFailed:
		res.Duplicate, res.EarlierFailed, res.EarlierBatch = true, true, out.EarlierBatch()
		return res, nil
	case results.Conflict:
		return nil, &ConflictError{TaskID: taskID, Where: "result"}
	case results.Underway:
		res.Resumed = true
		return res, nil
	case results.Accepted, results.Resumed:
		res.Resumed = out == results.Resumed
	default:
		return nil, fmt.Errorf("couponq: accept %s: unknown outcome %q", taskID, out)
	}

	task := handedTask(c.Op.TaskType(), pr.payload, taskID, id.Batch, run)
	got, err := p.enq.enqueueOwn(ctx, task, taskID, p.queue, p.timeout)
	if err != nil {
		return nil, &unconfirmedError{err: err}
	}
	if got == enqueuedOwn {
		return res, nil
	}
	// asynq holds the ID for another task: one enqueued by other means, or
	// whose result expired. Ours can never be enqueued, so the result goes.
	dup := got == foreignSame
	undone, uerr := p.store.Unaccept(ctx, id, dup)
	switch {
	case uerr != nil:
		return nil, &unconfirmedError{err: uerr}
	case !undone:
		// A worker took the existing task and runs it under this
		// result: it is enqueued, and counted in this batch.
		return res, nil
	case dup:
		res.Duplicate, res.Resumed = true, false
		return res, nil
	}
	return nil, &ConflictError{TaskID: taskID, Where: "queue"}
}
