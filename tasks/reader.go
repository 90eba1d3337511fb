package tasks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"time"

	"github.com/couponq/couponq/internal/results"
	"github.com/redis/go-redis/v9"
)

// ErrNotFound is returned for a task or batch with no hash in Redis: never
// enqueued, or expired after the result TTL.
var ErrNotFound = errors.New("not found")

// Result is one task's result hash, typed (its fields: README, "Results in Redis").
type Result struct {
	TaskID          string          `json:"task_id"`
	Op              Op              `json:"op"`
	BrandID         string          `json:"brand_id"`
	ProductCouponID string          `json:"product_coupon_id"`
	OutRequestNo    string          `json:"out_request_no"`
	Batch           string          `json:"batch,omitempty"`
	Status          Status          `json:"status"`
	Attempts        int             `json:"attempts"`
	Runs            int             `json:"runs"` // 1, plus one per Retry
	HTTPStatus      int             `json:"http_status,omitempty"`
	ErrorCode       string          `json:"error_code,omitempty"`
	ErrorMessage    string          `json:"error_message,omitempty"`
	RequestID       string          `json:"request_id,omitempty"`
	Coupon          json.RawMessage `json:"coupon,omitempty"` // the ProductCoupon JSON, on success
	CouponState     string          `json:"coupon_state,omitempty"`
	Request         json.RawMessage `json:"request,omitempty"`   // a write's body, fixed before its first attempt
	Unchanged       bool            `json:"unchanged,omitempty"` // an update not sent: the coupon already matched
	EnqueuedAt      time.Time       `json:"enqueued_at,omitzero"`
	UpdatedAt       time.Time       `json:"updated_at,omitzero"`
	FinishedAt      time.Time       `json:"finished_at,omitzero"`
	PayloadSHA256   string          `json:"payload_sha256,omitempty"`
	// Payload is the task payload the result keeps (see Change); not part
	// of the JSON form.
	Payload []byte `json:"-"`
}

// parseResult types a result hash; malformed numbers and times are an error
// naming the field.
func parseResult(m map[string]string) (*Result, error) {
	r := &Result{
		TaskID:          m[results.FieldTaskID],
		Op:              Op(m[results.FieldOp]),
		BrandID:         m[results.FieldBrandID],
		ProductCouponID: m[results.FieldProductCouponID],
		OutRequestNo:    m[results.FieldOutRequestNo],
		Batch:           m[results.FieldBatch],
		Status:          Status(m[results.FieldStatus]),
		ErrorCode:       m[results.FieldErrorCode],
		ErrorMessage:    m[results.FieldErrorMessage],
		RequestID:       m[results.FieldRequestID],
		CouponState:     m[results.FieldCouponState],
		PayloadSHA256:   m[results.FieldPayloadSHA256],
	}
	if p := m[results.FieldPayload]; p != "" {
		r.Payload = []byte(p)
	}
	if c := m[results.FieldCoupon]; c != "" {
		r.Coupon = json.RawMessage(c)
	}
	if q := m[results.FieldRequest]; q != "" {
		r.Request = json.RawMessage(q)
	}
	r.Unchanged = m[results.FieldUnchanged] == "1"
	var errs []error
	r.Runs = 1
	errs = append(errs, atoi(m, results.FieldAttempts, &r.Attempts), atoi(m, results.FieldHTTPStatus, &r.HTTPStatus),
		atoi(m, results.FieldRuns, &r.Runs),
		parseTime(m, results.FieldEnqueuedAt, &r.EnqueuedAt), parseTime(m, results.FieldUpdatedAt, &r.UpdatedAt),
		parseTime(m, results.FieldFinishedAt, &r.FinishedAt))
	if err := errors.Join(errs...); err != nil {
		return r, fmt.Errorf("couponq: result %s: %w", r.TaskID, err)
	}
	return r, nil
}

func atoi(m map[string]string, field string, dst *int) error {
	v := m[field]
	if v == "" {
		return nil
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return fmt.Errorf("field %s: %w", field, err)
	}
	*dst = n
	return nil
}

func parseTime(m map[string]string, field string, dst *time.Time) error {
	v := m[field]
	if v == "" {
		return nil
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return fmt.Errorf("field %s: %w", field, err)
	}
	*dst = t
	return nil
}

// BatchStatus is one batch's counters and state.
type BatchStatus struct {
	ID         string `json:"batch_id"`
	Total      int    `json:"total"`
	Duplicates int    `json:"duplicates"`
	// EarlierFailed counts the duplicates whose earlier task is failed or
	// canceled: changes of this batch that did not run and will not unless
	// retried.
	EarlierFailed int       `json:"earlier_failed"`
	Conflicts     int       `json:"conflicts"`
	Succeeded     int       `json:"succeeded"`
	Failed        int       `json:"failed"`
	Canceled      int       `json:"canceled"`
	Pending       int       `json:"pending"` // total − succeeded − failed − canceled
	Sealed        bool      `json:"sealed"`  // its producer finished enqueuing
	CreatedAt     time.Time `json:"created_at,omitzero"`
	FinishedAt    time.Time `json:"finished_at,omitzero"`
	// CanceledAt is when Producer.Cancel canceled the batch (zero: not
	// canceled, or retried since).
	CanceledAt time.Time `json:"canceled_at,omitzero"`
}

// OK reports whether nothing of the batch went wrong so far: no task
// failed or was canceled, and no change was a conflict or a duplicate of
// a failed or canceled task. A done batch that is not OK is what
// couponq status --wait exits 1 for.
func (b *BatchStatus) OK() bool {
	return b.Failed == 0 && b.Canceled == 0 && b.Conflicts == 0 && b.EarlierFailed == 0
}

// State is "enqueuing" (its producer is still at work), "running" or
// "done".
func (b *BatchStatus) State() string {
	switch {
	case b.Done():
		return "done"
	case !b.Sealed:
		return "enqueuing"
	}
	return "running"
}

// Done reports whether the batch finished: sealed, and every task it
// enqueued terminal.
func (b *BatchStatus) Done() bool { return !b.FinishedAt.IsZero() }

// Reader reads results and batches for polling. It is safe for concurrent
// use and does not own its Redis client.
type Reader struct {
	rdb redis.UniversalClient
	// stuckAfter is how long Wait sees a sealed batch make no progress
	// before it repairs it.
	stuckAfter time.Duration
}

// NewReader returns a reader over rdb.
func NewReader(rdb redis.UniversalClient) *Reader { return &Reader{rdb: rdb, stuckAfter: time.Minute} }

// Result returns one task's result, or ErrNotFound.
func (r *Reader) Result(ctx context.Context, taskID string) (*Result, error) {
	m, err := r.rdb.HGetAll(ctx, results.ResultKey(taskID)).Result()
	if err != nil {
		return nil, fmt.Errorf("couponq: read result %s: %w", taskID, err)
	}
	if len(m) == 0 {
		return nil, fmt.Errorf("couponq: result %s: %w", taskID, ErrNotFound)
	}
	return parseResult(m)
}

// Batch returns one batch's counters and state, or ErrNotFound.
func (r *Reader) Batch(ctx context.Context, batchID string) (*BatchStatus, error) {
	m, err := r.rdb.HGetAll(ctx, results.BatchKey(batchID)).Result()
	if err != nil {
		return nil, fmt.Errorf("couponq: read batch %s: %w", batchID, err)
	}
	if len(m) == 0 {
		return nil, fmt.Errorf("couponq: batch %s: %w", batchID, ErrNotFound)
	}
	return parseBatch(batchID, m)
}

// parseBatch types a batch hash.
func parseBatch(batchID string, m map[string]string) (*BatchStatus, error) {
	b := &BatchStatus{ID: batchID, Sealed: m[results.BatchFieldSealed] == "1"}
	errs := []error{
		atoi(m, results.BatchFieldTotal, &b.Total), atoi(m, results.BatchFieldDuplicates, &b.Duplicates),
		atoi(m, results.BatchFieldEarlierFailed, &b.EarlierFailed), atoi(m, results.BatchFieldConflicts, &b.Conflicts),
		atoi(m, results.BatchFieldSucceeded, &b.Succeeded), atoi(m, results.BatchFieldFailed, &b.Failed),
		atoi(m, results.BatchFieldCanceled, &b.Canceled),
		parseTime(m, results.BatchFieldCreatedAt, &b.CreatedAt), parseTime(m, results.BatchFieldFinishedAt, &b.FinishedAt),
		parseTime(m, results.BatchFieldCanceledAt, &b.CanceledAt),
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("couponq: batch %s: %w", batchID, err)
	}
	b.Pending = b.Total - b.Succeeded - b.Failed - b.Canceled
	return b, nil
}

// FailedTasks returns up to limit failed tasks of a batch, sorted by task
// ID: none when limit is 0, all of them when limit is negative (as
// couponq status --failed N counts). It scans the batch's task set, reading
// the results a page at a time in one pipeline each; to stream every task
// of a big batch, use ScanTasks.
func (r *Reader) FailedTasks(ctx context.Context, batchID string, limit int) ([]*Result, error) {
	var (
		out    []*Result
		cursor uint64
	)
	if limit == 0 {
		return nil, nil
	}
	for {
		ids, next, err := r.rdb.SScan(ctx, results.BatchTasksKey(batchID), cursor, "", 500).Result()
		if err != nil {
			return nil, fmt.Errorf("couponq: scan batch %s: %w", batchID, err)
		}
		if len(ids) > 0 {
			cmds := make([]*redis.MapStringStringCmd, len(ids))
			_, err := r.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
				for i, id := range ids {
					cmds[i] = p.HGetAll(ctx, results.ResultKey(id))
				}
				return nil
			})
			if err != nil {
				return nil, fmt.Errorf("couponq: read results of batch %s: %w", batchID, err)
			}
			for _, c := range cmds {
				m := c.Val()
				if m[results.FieldStatus] != string(StatusFailed) {
					continue
				}
				res, err := parseResult(m)
				if err != nil {
					return nil, err
				}
				out = append(out, res)
			}
		}
		cursor = next
		if cursor == 0 || (limit > 0 && len(out) >= limit) {
			break
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].TaskID < out[j].TaskID })
	if limit > 0 && len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}

// BatchTaskIDs returns the IDs of every task batch batchID enqueued (its
// task set; duplicates and conflicts are not in it), sorted. A batch that
// does not exist, or enqueued nothing, has none.
func (r *Reader) BatchTaskIDs(ctx context.Context, batchID string) ([]string, error) {
	var (
		out    []string
		cursor uint64
	)
	for {
		ids, next, err := r.rdb.SScan(ctx, results.BatchTasksKey(batchID), cursor, "", 1000).Result()
		if err != nil {
			return nil, fmt.Errorf("couponq: scan batch %s: %w", batchID, err)
		}
		out = append(out, ids...)
		if cursor = next; cursor == 0 {
			break
		}
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// Wait polls batch batchID every interval (at least 10ms) until it is done,
// calling onProgress (may be nil) with each status read, and returns the
// final status. It returns early with ctx's error, or ErrNotFound when the
// batch does not exist.
//
// A sealed batch that makes no progress for a minute is repaired once
// per quiet minute (RepairBatch): a worker that crashed between a task's
// result and its batch's counters would otherwise keep it from finishing
// until the workers' sweep notices.
func (r *Reader) Wait(ctx context.Context, batchID string, every time.Duration, onProgress func(*BatchStatus)) (*BatchStatus, error) {
	every = max(every, 10*time.Millisecond)
	t := time.NewTicker(every)
	defer t.Stop()
	lastDone, since := -1, time.Now()
	for {
		b, err := r.Batch(ctx, batchID)
		if err != nil {
			return nil, err
		}
		if onProgress != nil {
			onProgress(b)
		}
		if b.Done() {
			return b, nil
		}
		if done := b.Succeeded + b.Failed + b.Canceled; done != lastDone || !b.Sealed {
			lastDone, since = done, time.Now()
		} else if r.stuckAfter > 0 && time.Since(since) >= r.stuckAfter {
			// A failed repair is no reason to stop waiting: the next
			// quiet minute tries again, and so does the workers' sweep.
			_ = r.RepairBatch(ctx, batchID)
			since = time.Now()
		}
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		// Checked after the select too: when the tick and the cancel are
		// both ready, select may pick the tick, and the next read would
		// fail on the canceled context and lose the last status.
		if ctx.Err() != nil {
			return b, fmt.Errorf("couponq: waiting for batch %s: %w", batchID, context.Cause(ctx))
		}
	}
}

// RepairBatch recounts batch batchID's counters from its results
// (results.Store.RepairBatch), keeping the batch's TTL as it is. Wait
// calls it for a batch that looks stuck.
func (r *Reader) RepairBatch(ctx context.Context, batchID string) error {
	ttl, err := r.rdb.PTTL(ctx, results.BatchKey(batchID)).Result()
	if err != nil {
		return fmt.Errorf("couponq: repair batch %s: %w", batchID, err)
	}
	if ttl <= 0 {
		return nil // gone, or kept without a TTL: nothing a reader should touch
	}
	_, err = results.NewStore(r.rdb, results.WithResultTTL(ttl)).RepairBatch(ctx, batchID)
	return err
}
