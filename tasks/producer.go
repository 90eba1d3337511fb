package tasks

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

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
)

// Errors of the producer. Test with errors.Is.
var (
	// ErrConflict: a task with the same ID and another payload exists. The
	// error is a *ConflictError.
	ErrConflict = errors.New("task ID already used with another payload")
	// ErrTooManyFailures: EnqueueBatch stopped after BatchOptions.MaxFailures
	// changes failed to enqueue.
	ErrTooManyFailures = errors.New("too many changes failed to enqueue")
)

// ConflictError is a change whose task ID is taken, in asynq or by a result
// hash, by a task with another payload. Nothing was written for it.
type ConflictError struct {
	TaskID string
	Where  string // "result" (a result hash) or "queue" (a task in asynq)
}

func (e *ConflictError) Error() string {
	return fmt.Sprintf("couponq: task %s: %v (found in the %s); reuse an out_request_no only for the identical change", e.TaskID, ErrConflict, e.Where)
}

// Is makes errors.Is(err, ErrConflict) true.
func (e *ConflictError) Is(target error) bool { return target == ErrConflict }

// ChangeError is one change of a batch that could not be enqueued: invalid,
// or refused by Redis.
type ChangeError struct {
	Index  int    // 0-based position in the batch's input
	TaskID string // "" when the change was too invalid to name one
	Err    error
}

func (e *ChangeError) Error() string {
	if e.TaskID == "" {
		return fmt.Sprintf("change #%d: %v", e.Index+1, e.Err)
	}
	return fmt.Sprintf("change #%d (task %s): %v", e.Index+1, e.TaskID, e.Err)
}

// Unwrap returns the reason.
func (e *ChangeError) Unwrap() error { return e.Err }

// Producer enqueues coupon changes: it records each accepted change's
// result hash (status queued) and then enqueues its asynq task. It is safe
// for concurrent use.
type Producer struct {
	rdb         redis.UniversalClient
	pc          *pipelinedClient
	client      *asynq.Client
	inspector   *asynq.Inspector
	store       *results.Store
	batchStore  *results.Store // over rdb directly: groups are pipelined enough
	queue       string
	concurrency int
	timeout     time.Duration
	ttl         time.Duration
	now         func() time.Time
	log         *slog.Logger
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

// NewProducer returns a producer over rdb. It does not take ownership of
// rdb: Close leaves it open.
func NewProducer(rdb redis.UniversalClient, opts ...ProducerOption) (*Producer, error) {
	if rdb == nil {
		return nil, errors.New("couponq: NewProducer: nil Redis client")
	}
	p := &Producer{
		rdb:         rdb,
		queue:       DefaultQueue,
		concurrency: DefaultEnqueueConcurrency,
		timeout:     DefaultTaskTimeout,
		ttl:         DefaultResultTTL,
		now:         time.Now,
		log:         slog.New(slog.DiscardHandler),
	}
	for _, o := range opts {
		if err := o(p); err != nil {
			return nil, fmt.Errorf("couponq: producer option %w", err)
		}
	}
	p.pc = newPipelinedClient(rdb, 2, 256)
	p.client = asynq.NewClientFromRedisClient(p.pc)
	p.inspector = asynq.NewInspectorFromRedisClient(rdb)
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
	Change    Change // as enqueued (a get has its out_request_no now)
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
	out, err := p.store.Accept(context.WithoutCancel(ctx), pr.id, pr.sha)
	if err != nil {
		return nil, err
	}
	return p.afterAccept(context.WithoutCancel(ctx), pr, out)
}

// afterAccept settles an accepted change: a duplicate or conflict is
// reported, an accepted one gets its asynq task (or is undone).
func (p *Producer) afterAccept(ctx context.Context, pr *prepared, out results.AcceptOutcome) (*EnqueueResult, error) {
	c, id, payload, taskID := pr.c, pr.id, pr.payload, pr.id.TaskID
	res := &EnqueueResult{TaskID: taskID, Change: c}
	switch out {
	case results.Duplicate:
		res.Duplicate = true
		return res, nil
	case results.Conflict:
		return nil, &ConflictError{TaskID: taskID, Where: "result"}
	}

	var err error
	task := asynq.NewTask(c.Op.TaskType(), payload, asynq.TaskID(taskID))
	for attempt := 1; ; attempt++ {
		_, err = p.client.EnqueueContext(ctx, task, asynq.Queue(p.queue), asynq.MaxRetry(results.MaxRetry), asynq.Timeout(p.timeout))
		if err == nil {
			return res, nil
		}
		if !errors.Is(err, asynq.ErrTaskIDConflict) {
			break
		}
		// asynq holds the ID but no result hash did: a task enqueued by
		// other means, or whose result expired. Compare payloads.
		info, ierr := p.inspector.GetTaskInfo(p.queue, taskID)
		if errors.Is(ierr, asynq.ErrTaskNotFound) && attempt < 3 {
			continue // it completed and was deleted meanwhile: enqueue again
		}
		if ierr != nil {
			err = fmt.Errorf("couponq: enqueue %s: %w; inspecting the existing task: %w", taskID, err, ierr)
			break
		}
		dup := info.Type == task.Type() && bytes.Equal(info.Payload, payload)
		undone, uerr := p.store.Unaccept(ctx, id, dup)
		switch {
		case uerr != nil:
			p.log.Warn("couponq: could not undo a refused task's result; its batch may count it", "task_id", taskID, "err", uerr)
		case !undone:
			// A worker took the existing task and runs it under this
			// result: it is enqueued, and counted in this batch.
			return res, nil
		}
		if dup {
			res.Duplicate = true
			return res, nil
		}
		return nil, &ConflictError{TaskID: taskID, Where: "queue"}
	}
	if _, uerr := p.store.Unaccept(ctx, id, false); uerr != nil {
		p.log.Warn("couponq: could not undo a failed task's result; its batch may never finish", "task_id", taskID, "err", uerr)
		err = errors.Join(err, uerr)
	}
	return nil, fmt.Errorf("couponq: enqueue %s: %w", taskID, err)
}
