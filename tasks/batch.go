package tasks

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"sync"
	"time"

	"github.com/couponq/couponq/internal/results"
)

// BatchOptions configures EnqueueBatch.
type BatchOptions struct {
	// ID names the batch; empty: a new ULID. 1–128 characters of
	// [0-9A-Za-z_.-]. Enqueuing into an existing batch adds to it.
	ID string
	// OnProgress, when set, is called after each change is settled and once
	// at the end; never concurrently.
	OnProgress func(BatchProgress)
	// MaxFailures stops the batch after this many changes failed to
	// enqueue (invalid, or refused by Redis); 0 means 100,
	// a negative value never stops. Conflicts do not count.
	MaxFailures int
}

// BatchProgress is a batch's progress so far, as its BatchReport says it.
type BatchProgress struct {
	BatchID    string
	Read       int // changes taken from the input
	Settled    int // changes enqueued, skipped or refused
	Enqueued   int
	Duplicates int
	Conflicts  int
	Failed     int // failures, and changes dropped because the batch stopped
}

// BatchReport is what EnqueueBatch did.
type BatchReport struct {
	BatchID    string
	Read       int // changes taken from the input
	Total      int // tasks enqueued by this call
	Duplicates int // changes skipped as already enqueued
	Conflicts  []error
	Failed     []error
}

// Err joins the conflicts and failures, nil if there were none.
func (r *BatchReport) Err() error {
	return errors.Join(append(r.Conflicts[:len(r.Conflicts):len(r.Conflicts)], r.Failed...)...)
}

// progress derives a BatchProgress from the report so far and the number
// of changes dropped because the batch stopped (not in the report: the
// cause is reported once).
func (r *BatchReport) progress(dropped int) BatchProgress {
	failed := len(r.Failed) + dropped
	return BatchProgress{BatchID: r.BatchID, Read: r.Read, Enqueued: r.Total, Duplicates: r.Duplicates,
		Conflicts: len(r.Conflicts), Failed: failed, Settled: r.Total + r.Duplicates + len(r.Conflicts) + failed}
}

// EnqueueBatch enqueues changes as batch opts.ID, reading the input as it
// goes (it never holds it): changes are validated, accepted in groups (one
// script call per group) and enqueued into asynq by up to the producer's
// concurrency of goroutines. The input is iterated on a goroutine of its
// own; it is not used after EnqueueBatch returns.
//
// The batch hash is opened before the first change is accepted, and every
// accepted change counts in it before its task exists, so no task can
// finish uncounted. It is sealed at the end, also when the batch stops
// early, so it finishes once the tasks it did enqueue are done (at once if
// none). Duplicates are counted and skipped; conflicts and failures are
// listed in the report (see BatchReport.Err) and do not stop the batch.
//
// The returned error is non-nil when the batch stopped early: the input
// yielded an error, ctx ended, more than MaxFailures changes failed, or
// Redis refused to open or seal the batch. A change already accepted when
// ctx ends is still enqueued (or undone). The report is returned whenever
// the batch was opened.
func (p *Producer) EnqueueBatch(ctx context.Context, changes iter.Seq2[Change, error], opts BatchOptions) (*BatchReport, error) {
	id := opts.ID
	if id == "" {
		id = newBatchID()
	}
	if err := ValidateBatchID(id); err != nil {
		return nil, err
	}
	if err := p.store.OpenBatch(ctx, id); err != nil {
		return nil, err
	}
	p.log.Debug("couponq: batch opened", "batch", id)

	b := p.newBatchRun(ctx, id, opts)
	defer b.cancel(nil)
	stop := b.run(changes)

	sealCtx, cancelSeal := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancelSeal()
	if err := p.store.SealBatch(sealCtx, id); err != nil {
		stop = errors.Join(stop, err)
	}
	b.mu.Lock()
	b.reportProgress()
	b.mu.Unlock()
	rep := b.rep
	p.log.Info("couponq: batch enqueued", "batch", id, "read", rep.Read, "total", rep.Total,
		"duplicates", rep.Duplicates, "conflicts", len(rep.Conflicts), "failed", len(rep.Failed))
	return rep, stop
}

// batchRun is one EnqueueBatch call. Its stages, each a function below:
//
//	readInput → collect (prepare, group) → acceptGroup (AcceptMany)
//	          → enqueueJob (asynq) → settle (the report)
//
// An accepted change is always enqueued (or undone), whatever ctx does.
type batchRun struct {
	p       *Producer
	id      string
	ctx     context.Context // cancelled when the batch stops early
	cancel  context.CancelCauseFunc
	maxFail int
	onProg  func(BatchProgress)

	mu      sync.Mutex // guards rep and dropped, and serializes onProg
	rep     *BatchReport
	dropped int // changes not enqueued because the batch stopped
}

// job is one prepared change on its way through the stages.
type job struct {
	index int
	pr    *prepared
	out   results.AcceptOutcome
}

func (p *Producer) newBatchRun(ctx context.Context, id string, opts BatchOptions) *batchRun {
	b := &batchRun{p: p, id: id, maxFail: opts.MaxFailures, onProg: opts.OnProgress, rep: &BatchReport{BatchID: id}}
	if b.maxFail == 0 {
		b.maxFail = defaultMaxFailures
	}
	b.ctx, b.cancel = context.WithCancelCause(ctx)
	return b
}

// run drives the stages to their end and returns why the batch stopped
// early, nil if it did not.
func (b *batchRun) run(changes iter.Seq2[Change, error]) error {
	groups := make(chan []job, acceptWorkers)
	jobs := make(chan job, b.p.concurrency)
	accepted := fanOut(acceptWorkers, groups, func(g []job) { b.acceptGroup(g, jobs) })
	enqueued := fanOut(b.p.concurrency, jobs, b.enqueueJob)
	feed, stopInput := readInput(changes)

	stop := b.collect(feed, groups)
	close(groups)
	accepted()
	close(jobs)
	enqueued()
	stopInput() // the input is not used after EnqueueBatch returns

	if ctx := b.ctx; stop == nil && ctx.Err() != nil {
		stop = context.Cause(ctx)
		if errors.Is(stop, context.Canceled) || errors.Is(stop, context.DeadlineExceeded) {
			stop = fmt.Errorf("couponq: batch %s stopped after %d changes: %w", b.id, b.rep.Read, stop)
		}
	}
	return stop
}

// fanOut runs fn on every value of in with n goroutines; the returned wait
// blocks until in is closed and drained.
func fanOut[T any](n int, in <-chan T, fn func(T)) (wait func()) {
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			for v := range in {
				fn(v)
			}
		})
	}
	return wg.Wait
}

// inputItem is one value of EnqueueBatch's input.
type inputItem struct {
	c   Change
	err error
}

// readInput iterates changes on a goroutine of its own, so collect can tell
// a fast input (accept in big groups) from a slow one (accept what it has
// at once). It stops at the first error. stop ends the iteration early and
// waits for it.
func readInput(changes iter.Seq2[Change, error]) (feed <-chan inputItem, stop func()) {
	ch, quit, done := make(chan inputItem, acceptGroupSize), make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		defer close(ch)
		for c, err := range changes {
			select {
			case ch <- inputItem{c, err}:
			case <-quit:
				return
			}
			if err != nil {
				return
			}
		}
	}()
	return ch, func() { close(quit); <-done }
}

// collect prepares each change of feed and hands them to groups, up to
// acceptGroupSize at a time: a group goes when full or when no change is
// waiting. It returns the input's error, if any.
func (b *batchRun) collect(feed <-chan inputItem, groups chan<- []job) error {
	group := make([]job, 0, acceptGroupSize)
	flush := func() {
		if len(group) == 0 {
			return
		}
		if err := b.ctx.Err(); err != nil {
			for _, j := range group {
				b.settle(j.index, nil, err)
			}
		} else {
			groups <- group
		}
		group = make([]job, 0, acceptGroupSize)
	}
	defer flush()
	for read := 0; ; {
		var it inputItem
		select {
		case got, ok := <-feed:
			if !ok {
				return nil
			}
			it = got
		case <-b.ctx.Done():
			return nil
		}
		if it.err != nil {
			return fmt.Errorf("couponq: batch %s: reading change #%d: %w", b.id, read+1, it.err)
		}
		index := read
		read++
		b.mu.Lock()
		b.rep.Read = read
		b.mu.Unlock()
		if pr, err := prepare(it.c, b.id); err != nil {
			var res *EnqueueResult
			if it.c.OutRequestNo != "" {
				res = &EnqueueResult{TaskID: it.c.TaskID(), Change: it.c}
			}
			b.settle(index, res, err)
		} else {
			group = append(group, job{index: index, pr: pr})
		}
		if len(group) == acceptGroupSize || len(feed) == 0 {
			flush()
		}
	}
}

// acceptGroup records a group's result hashes in one script call and
// passes each change on to be enqueued.
func (b *batchRun) acceptGroup(group []job, jobs chan<- job) {
	items := make([]results.AcceptItem, len(group))
	for i, j := range group {
		items[i] = results.AcceptItem{Identity: j.pr.id, PayloadSHA256: j.pr.sha}
	}
	outs, err := b.p.batchStore.AcceptMany(context.WithoutCancel(b.ctx), b.id, items)
	for i, j := range group {
		if err != nil {
			b.settle(j.index, &EnqueueResult{TaskID: j.pr.id.TaskID, Change: j.pr.c}, err)
			continue
		}
		j.out = outs[i]
		jobs <- j
	}
}

// enqueueJob settles an accepted change: its asynq task, or its undoing.
func (b *batchRun) enqueueJob(j job) {
	res, err := b.p.afterAccept(context.WithoutCancel(b.ctx), j.pr, j.out)
	if err != nil && res == nil {
		res = &EnqueueResult{TaskID: j.pr.id.TaskID, Change: j.pr.c}
	}
	b.settle(j.index, res, err)
}

// settle records what became of change #index in the report, stops the
// batch after too many failures, and reports progress.
func (b *batchRun) settle(index int, res *EnqueueResult, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	rep := b.rep
	var ce *ConflictError
	switch {
	case err == nil && res.Duplicate:
		rep.Duplicates++
	case err == nil:
		rep.Total++
	case errors.As(err, &ce):
		rep.Conflicts = append(rep.Conflicts, &ChangeError{Index: index, TaskID: ce.TaskID, Err: err})
	case b.ctx.Err() != nil:
		// Stopping: the change was not enqueued; the cause is reported once.
		b.dropped++
	default:
		taskID := ""
		if res != nil {
			taskID = res.TaskID
		}
		rep.Failed = append(rep.Failed, &ChangeError{Index: index, TaskID: taskID, Err: err})
		if b.maxFail > 0 && len(rep.Failed) >= b.maxFail {
			b.cancel(fmt.Errorf("couponq: batch %s: %w (%d)", b.id, ErrTooManyFailures, len(rep.Failed)))
		}
	}
	b.reportProgress()
}

// reportProgress calls OnProgress; b.mu is held.
func (b *batchRun) reportProgress() {
	if b.onProg != nil {
		b.onProg(b.rep.progress(b.dropped))
	}
}

// Changes adapts a slice to EnqueueBatch's input.
func Changes(cs []Change) iter.Seq2[Change, error] {
	return func(yield func(Change, error) bool) {
		for _, c := range cs {
			if !yield(c, nil) {
				return
			}
		}
	}
}
