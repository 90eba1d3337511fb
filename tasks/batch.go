package tasks

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"sync"
	"sync/atomic"
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
	// OnOpen, when set, is called with the batch ID as soon as the batch
	// exists in Redis, before any change is enqueued (couponq enqueue names
	// the batch then, so an interrupted run can be completed).
	OnOpen func(batchID string)
	// MaxFailures stops the batch after this many changes failed to
	// enqueue (invalid, or refused by Redis); 0 means 100,
	// a negative value never stops. Conflicts do not count.
	MaxFailures int
	// AllOrNothing validates every change before enqueuing any, as couponq
	// enqueue does with a file: if any change is invalid (or two give one
	// task ID different payloads), nothing is enqueued, no batch is
	// created, and the error is an *InvalidBatchError listing each
	// (errors.Is ErrInvalidBatch). The input is read whole first and held
	// in memory until enqueued.
	AllOrNothing bool
}

// BatchProgress is a batch's progress so far, as its BatchReport says it.
type BatchProgress struct {
	BatchID    string
	Read       int // changes taken from the input
	Settled    int // changes enqueued, kept, skipped or refused
	Enqueued   int
	Resumed    int
	Duplicates int
	// EarlierFailed is of Duplicates: see BatchReport.EarlierFailed.
	EarlierFailed int
	Conflicts     int
	Failed        int // failures, and changes dropped because the batch stopped
}

// BatchReport is what EnqueueBatch did.
type BatchReport struct {
	BatchID string
	Read    int // changes taken from the input
	Total   int // tasks enqueued by this call
	// Resumed counts the changes an earlier run of the same batch had
	// accepted: they stay part of the batch, counted there once, and their
	// task is enqueued now if that run never did (it was interrupted).
	Resumed    int
	Duplicates int // changes skipped as already enqueued elsewhere
	// EarlierFailed counts the duplicates whose earlier task is failed or
	// canceled (of Duplicates): they did not run and will not unless
	// retried; EarlierFailedBatches counts them by the batch of that task
	// ("" for a task of no batch), for couponq retry --batch.
	EarlierFailed        int
	EarlierFailedBatches map[string]int
	Conflicts            []error
	// Failed lists the changes not enqueued: invalid, or not confirmed in
	// asynq (errors.Is ErrNotEnqueued; a rerun of the batch, or the
	// workers after their grace period, enqueue those Redis did accept).
	Failed []error
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
	return BatchProgress{BatchID: r.BatchID, Read: r.Read, Enqueued: r.Total, Resumed: r.Resumed, Duplicates: r.Duplicates,
		EarlierFailed: r.EarlierFailed, Conflicts: len(r.Conflicts), Failed: failed, Settled: r.Total + r.Resumed + r.Duplicates + len(r.Conflicts) + failed}
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
// Enqueuing into a batch an earlier run already enqueued into completes
// it: changes that run accepted are Resumed (not counted again), and their
// tasks are enqueued if that run was interrupted before it did.
//
// Redis timing out does not lose or double a change: every step is
// idempotent, steps Redis did not confirm are tried again at the end, and
// before sealing, every task of this run still queued is checked to exist
// in asynq (enqueued from its result if not). What still cannot be
// confirmed is in BatchReport.Failed (ErrNotEnqueued).
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
	if opts.AllOrNothing {
		all, err := validateAll(changes)
		if err != nil {
			return nil, err
		}
		changes = Changes(all)
	}
	if err := p.store.OpenBatch(ctx, id); err != nil {
		return nil, err
	}
	p.log.Debug("couponq: batch opened", "batch", id)
	if opts.OnOpen != nil {
		opts.OnOpen(id)
	}

	b := p.newBatchRun(ctx, id, opts)
	defer b.cancel(nil)
	stopBeat := b.heartbeat()
	stop := b.run(changes)

	// Redis may have answered nothing for a while: the end is given time
	// to ride out a stall, however the batch stopped.
	endCtx, cancelEnd := context.WithTimeout(context.WithoutCancel(ctx), p.settleTimeout)
	defer cancelEnd()
	b.retryUnsure(endCtx)
	b.verify(endCtx)
	stopBeat()
	sealCtx, cancelSeal := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancelSeal()
	if err := p.store.SealBatch(sealCtx, id); err != nil {
		// The batch stays open: the workers seal it once its producer is
		// no longer seen.
		stop = errors.Join(stop, err)
	}
	b.mu.Lock()
	b.reportProgress()
	b.mu.Unlock()
	rep := b.rep
	p.log.Info("couponq: batch enqueued", "batch", id, "read", rep.Read, "total", rep.Total, "resumed", rep.Resumed,
		"duplicates", rep.Duplicates, "conflicts", len(rep.Conflicts), "failed", len(rep.Failed))
	return rep, stop
}

// batchRun is one EnqueueBatch call. Its stages, each a function below:
//
//	readInput → collect (prepare, group) → acceptGroup (AcceptMany)
//	          → enqueueJob (asynq) → settle (the report)
//
// then retryUnsure and verify. An accepted change is always enqueued (or
// undone, or reported not confirmed), whatever ctx does.
type batchRun struct {
	p       *Producer
	id      string
	runID   string          // this run's ID, in each result and task header
	ctx     context.Context // cancelled when the batch stops early
	cancel  context.CancelCauseFunc
	maxFail int
	onProg  func(BatchProgress)
	seq     atomic.Int64 // accept calls made

	mu      sync.Mutex // guards the fields below, and serializes onProg
	rep     *BatchReport
	dropped int             // changes not enqueued because the batch stopped
	unsure  []*group        // groups with changes not confirmed yet
	handed  []string        // task IDs confirmed in asynq (or past queued)
	settled []string        // task IDs needing nothing more: dropped from the registry
	resumed map[string]bool // the handed ones an earlier run accepted
	pending map[int]*group
}

// group is one accept call's changes. It is re-sent as it was (same seq,
// same items in the same order) so Redis recognises the call.
type group struct {
	seq      int
	jobs     []job
	accepted bool          // AcceptMany answered
	unsure   map[int]error // job position → why it is not confirmed
}

// job is one prepared change on its way through the stages.
type job struct {
	index int
	pr    *prepared
	out   results.AcceptOutcome
	g     *group
	pos   int
}

func (p *Producer) newBatchRun(ctx context.Context, id string, opts BatchOptions) *batchRun {
	b := &batchRun{p: p, id: id, runID: newRunID(), maxFail: opts.MaxFailures, onProg: opts.OnProgress, rep: &BatchReport{BatchID: id}}
	if b.maxFail == 0 {
		b.maxFail = defaultMaxFailures
	}
	b.ctx, b.cancel = context.WithCancelCause(ctx)
	return b
}

// heartbeat keeps the batch listed as open with its producer seen, until
// stop: the workers seal a batch whose producer is no longer seen.
func (b *batchRun) heartbeat() (stop func()) {
	ctx, cancel := context.WithCancel(context.WithoutCancel(b.ctx))
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(heartbeatInterval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if err := b.p.store.MarkOpen(ctx, b.id); err != nil && ctx.Err() == nil {
					b.p.log.Debug("couponq: batch heartbeat failed", "batch", b.id, "err", err)
				}
			}
		}
	}()
	return func() { cancel(); <-done }
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
		} else if err := b.registerOrder(group); err != nil {
			for _, j := range group {
				b.settle(j.index, &EnqueueResult{TaskID: j.pr.id.TaskID, Change: j.pr.c}, &unconfirmedError{err: err})
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

// registerOrder gives a group's changes their places in their coupons'
// order before they are accepted. collect calls it for each group in
// input order, so the places follow the input whichever group is accepted
// first.
func (b *batchRun) registerOrder(group []job) error {
	entries := make([]results.OrderEntry, len(group))
	for i, j := range group {
		entries[i] = j.pr.orderEntry()
	}
	return registerOrder(context.WithoutCancel(b.ctx), b.p.batchStore, entries, false, b.p.settleTimeout)
}

// acceptGroup registers a group's changes as unconfirmed and records their
// result hashes (AcceptMany: the results' scripts pipelined, then the
// batch's step), then hands the group's asynq tasks over. If Redis does
// not answer, the group waits for retryUnsure.
func (b *batchRun) acceptGroup(jobs []job, out chan<- job) {
	g := &group{seq: int(b.seq.Add(1)), jobs: jobs}
	for i := range g.jobs {
		g.jobs[i].g, g.jobs[i].pos = g, i
	}
	ctx := context.WithoutCancel(b.ctx)
	if err := b.accept(ctx, g); err != nil {
		b.markUnsure(g, -1, &unconfirmedError{err: err})
		return
	}
	// The group's accepted changes get their asynq tasks in one round
	// trip (asynqwrite.go); what that does not settle (a task ID asynq
	// holds already, Redis not answering, a duplicate or conflict) goes
	// the way of one change at a time.
	var (
		recs []*asynqRecord
		pos  []int
	)
	for i, j := range g.jobs {
		if k := j.out.Kind(); k == results.Accepted || k == results.Resumed {
			recs = append(recs, b.p.record(j.pr, b.runID))
			pos = append(pos, i)
		}
	}
	created, _ := b.p.writer.writeMany(ctx, recs)
	handed := make([]bool, len(g.jobs))
	for k, i := range pos {
		if created[k] {
			handed[i] = true
			j := g.jobs[i]
			b.settle(j.index, &EnqueueResult{TaskID: j.pr.id.TaskID, Change: j.pr.c, Resumed: j.out.Kind() == results.Resumed}, nil)
		}
	}
	for i, j := range g.jobs {
		if !handed[i] {
			out <- j
		}
	}
}

// accept is one try at a group's accept call (idempotent).
func (b *batchRun) accept(ctx context.Context, g *group) error {
	ids := make([]string, len(g.jobs))
	items := make([]results.AcceptItem, len(g.jobs))
	for i, j := range g.jobs {
		ids[i] = j.pr.id.TaskID
		items[i] = results.AcceptItem{Identity: j.pr.id, PayloadSHA256: j.pr.sha, Payload: j.pr.payload}
	}
	// Registered first: killed after the accept, the changes are adopted.
	if err := b.p.batchStore.Register(ctx, b.p.queue, ids); err != nil {
		return err
	}
	outs, err := b.p.batchStore.AcceptMany(ctx, b.id, b.p.handoff(b.runID, g.seq), items)
	if err != nil {
		return err
	}
	for i := range g.jobs {
		g.jobs[i].out = outs[i]
	}
	g.accepted = true
	return nil
}

// enqueueJob settles an accepted change: its asynq task, or its undoing.
func (b *batchRun) enqueueJob(j job) {
	res, err := b.p.afterAccept(context.WithoutCancel(b.ctx), j.pr, j.out, b.runID)
	var ue *unconfirmedError
	if errors.As(err, &ue) {
		b.markUnsure(j.g, j.pos, err)
		return
	}
	if err != nil && res == nil {
		res = &EnqueueResult{TaskID: j.pr.id.TaskID, Change: j.pr.c}
	}
	b.settle(j.index, res, err)
}

// markUnsure puts a change (pos ≥ 0) or a whole group (pos < 0) aside for
// retryUnsure. The unsure count toward MaxFailures: a Redis that answers
// nothing stops the batch.
func (b *batchRun) markUnsure(g *group, pos int, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.pending == nil {
		b.pending = map[int]*group{}
	}
	if g.unsure == nil {
		g.unsure = map[int]error{}
	}
	if _, ok := b.pending[g.seq]; !ok {
		b.pending[g.seq] = g
		b.unsure = append(b.unsure, g)
	}
	if pos < 0 {
		for i := range g.jobs {
			g.unsure[i] = err
		}
	} else {
		g.unsure[pos] = err
	}
	b.checkFailures()
}

// unsureCount is the number of changes not confirmed yet; b.mu is held.
func (b *batchRun) unsureCount() int {
	n := 0
	for _, g := range b.unsure {
		n += len(g.unsure)
	}
	return n
}

// checkFailures stops the batch once too many changes failed or are not
// confirmed; b.mu is held.
func (b *batchRun) checkFailures() {
	if n := len(b.rep.Failed) + b.unsureCount(); b.maxFail > 0 && n >= b.maxFail && b.ctx.Err() == nil {
		b.cancel(fmt.Errorf("couponq: batch %s: %w (%d)", b.id, ErrTooManyFailures, n))
	}
}

// retryUnsure tries the changes Redis did not confirm again, with
// backoff, until each is settled or ctx ends: the group's accept call is
// re-sent as it was (Redis answers what it answered the first time), and
// the enqueue of each accepted change again (asynq holding our own task
// is success). What is still unsure at the end is reported failed,
// ErrNotEnqueued.
func (b *batchRun) retryUnsure(ctx context.Context) {
	wait := 250 * time.Millisecond
	for {
		b.mu.Lock()
		groups := b.unsure
		b.unsure, b.pending = nil, nil
		b.mu.Unlock()
		if len(groups) == 0 {
			return
		}
		if ctx.Err() != nil {
			for _, g := range groups {
				for pos, err := range g.unsure {
					j := g.jobs[pos]
					b.settle(j.index, &EnqueueResult{TaskID: j.pr.id.TaskID, Change: j.pr.c}, err)
				}
			}
			return
		}
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
		wait = min(2*wait, 4*time.Second)
		for _, g := range groups {
			b.retryGroup(ctx, g)
		}
	}
}

func (b *batchRun) retryGroup(ctx context.Context, g *group) {
	todo := g.unsure
	g.unsure = nil
	// An attempt cut short by the deadline says less than the one before.
	cause := func(pos int, err error) error {
		if ctx.Err() != nil && todo[pos] != nil {
			return todo[pos]
		}
		return err
	}
	if !g.accepted {
		if err := b.accept(ctx, g); err != nil {
			for pos := range todo {
				b.markUnsure(g, pos, cause(pos, &unconfirmedError{err: err}))
			}
			return
		}
	}
	for pos := range todo {
		j := g.jobs[pos]
		res, err := b.p.afterAccept(ctx, j.pr, j.out, b.runID)
		var ue *unconfirmedError
		if errors.As(err, &ue) {
			b.markUnsure(g, pos, cause(pos, err))
			continue
		}
		if err != nil && res == nil {
			res = &EnqueueResult{TaskID: j.pr.id.TaskID, Change: j.pr.c}
		}
		b.settle(j.index, res, err)
	}
}

// verify checks, before the batch is sealed, that every task this run
// handed to asynq is there (or past queued), and enqueues any missing one
// from its result; then it drops the settled changes from the registry.
// It trusts no earlier answer: a task lost however is found here. A task
// it cannot enqueue moves from the enqueued to the failed.
func (b *batchRun) verify(ctx context.Context) {
	b.mu.Lock()
	handed, settled := b.handed, b.settled
	b.mu.Unlock()
	fix, err := b.p.enq.ensure(ctx, b.p.batchStore, b.p.queue, handed)
	if err != nil {
		b.p.log.Warn("couponq: could not verify the batch's tasks in asynq; the workers will", "batch", b.id, "err", err)
		return
	}
	if len(fix.enqueued) > 0 {
		b.p.log.Warn("couponq: tasks missing from asynq were enqueued again", "batch", b.id, "count", len(fix.enqueued))
	}
	for id, ferr := range fix.unusable {
		fix.failed[id] = ferr
	}
	if len(fix.failed) > 0 || len(fix.undone) > 0 {
		b.mu.Lock()
		uncount := func(id string) {
			if b.resumed[id] {
				b.rep.Resumed--
			} else {
				b.rep.Total--
			}
		}
		for id, ferr := range fix.failed {
			uncount(id)
			b.rep.Failed = append(b.rep.Failed, &ChangeError{Index: -1, TaskID: id, Err: &unconfirmedError{err: ferr}})
		}
		for _, id := range fix.undone {
			uncount(id)
			b.rep.Failed = append(b.rep.Failed, &ChangeError{Index: -1, TaskID: id, Err: fmt.Errorf("couponq: task %s: asynq holds its ID for another task", id)})
		}
		b.mu.Unlock()
	}
	ok := make([]string, 0, len(handed)+len(settled))
	ok = append(ok, settled...)
	for _, id := range handed {
		if _, failed := fix.failed[id]; !failed {
			ok = append(ok, id)
		}
	}
	if err := b.p.batchStore.Confirm(ctx, b.p.queue, ok); err != nil {
		b.p.log.Debug("couponq: could not drop confirmed tasks from the registry; the workers will", "batch", b.id, "err", err)
	}
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
		if res.EarlierFailed {
			rep.EarlierFailed++
			if rep.EarlierFailedBatches == nil {
				rep.EarlierFailedBatches = map[string]int{}
			}
			rep.EarlierFailedBatches[res.EarlierBatch]++
		}
		b.settled = append(b.settled, res.TaskID)
	case err == nil && res.Resumed:
		rep.Resumed++
		b.handed = append(b.handed, res.TaskID)
		if b.resumed == nil {
			b.resumed = map[string]bool{}
		}
		b.resumed[res.TaskID] = true
	case err == nil:
		rep.Total++
		b.handed = append(b.handed, res.TaskID)
	case errors.As(err, &ce):
		rep.Conflicts = append(rep.Conflicts, &ChangeError{Index: index, TaskID: ce.TaskID, Err: err})
		b.settled = append(b.settled, ce.TaskID)
	case errors.Is(err, ErrNotEnqueued):
		// Accepted perhaps: always listed, even when the batch stopped.
		rep.Failed = append(rep.Failed, &ChangeError{Index: index, TaskID: res.TaskID, Err: err})
	case b.ctx.Err() != nil:
		// Stopping: the change was not enqueued; the cause is reported once.
		b.dropped++
	default:
		taskID := ""
		if res != nil {
			taskID = res.TaskID
		}
		rep.Failed = append(rep.Failed, &ChangeError{Index: index, TaskID: taskID, Err: err})
		b.checkFailures()
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
