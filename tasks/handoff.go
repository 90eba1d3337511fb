package tasks

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/couponq/couponq/internal/results"
)

// The hand-off of an accepted change to asynq, and its repair.
//
// A change is accepted (its result hash written, status queued) before its
// asynq task is enqueued, so that no task can finish uncounted. Between the
// two steps the producer may be killed, or Redis may stall so that neither
// side knows whether a command ran. So every step is idempotent, and what
// the producer cannot confirm, someone repairs: the producer itself before
// sealing the batch, a rerun of the batch, or, after a grace period, the
// workers' Adopter. The result hash keeps what it takes to enqueue the task
// again (payload, queue, timeout, batch and run).

// Task headers couponq sets on every task it enqueues: which batch and
// which producer run it belongs to. A producer meeting its own task ID in
// asynq (its own re-sent enqueue, an earlier run of its batch, or a
// worker's adoption) tells it from another task by them.
const (
	HeaderBatch = "couponq-batch"
	HeaderRun   = "couponq-run"
)

// asynqTaskKey is the hash asynq v0.26 keeps a task in, from its enqueue
// until it is deleted (base.TaskKey). Checking its existence in a pipeline
// is how thousands of tasks are verified in a few round trips;
// TestAsynqTaskKey pins the format to the asynq in go.mod.
func asynqTaskKey(queue, taskID string) string { return "asynq:{" + queue + "}:t:" + taskID }

// newRunID names one producer run.
func newRunID() string { return newULID() }

// handedTask is the asynq task of an accepted change, scheduled for its
// not_before if it has one.
func handedTask(taskType string, payload []byte, taskID, batch, run string) *asynq.Task {
	h := map[string]string{HeaderRun: run}
	if batch != "" {
		h[HeaderBatch] = batch
	}
	opts := []asynq.Option{asynq.TaskID(taskID)}
	if nb := payloadNotBefore(payload); !nb.IsZero() {
		// Scheduled: asynq holds it until then (the worker checks again).
		opts = append(opts, asynq.ProcessAt(nb))
	}
	return asynq.NewTaskWithHeaders(taskType, payload, h, opts...)
}

// enqueueOutcome is what enqueueOwn found.
type enqueueOutcome int

const (
	enqueuedOwn  enqueueOutcome = iota // the task is in asynq: enqueued now, or found there as ours
	foreignSame                        // asynq holds another task with the same type and payload
	foreignOther                       // asynq holds a task with another type or payload
)

// enqueuer enqueues handed tasks and recognises its own in asynq.
type enqueuer struct {
	client    *asynq.Client
	inspector *asynq.Inspector
}

// enqueueOwn enqueues the task of an accepted change. asynq holding the
// task ID for a task of the same type and payload and of the same batch (or
// run, for a change without batch) is success: it is this change's task.
// An error means the outcome is unknown: the task may or may not exist.
func (e *enqueuer) enqueueOwn(ctx context.Context, t *asynq.Task, taskID, queue string, timeout time.Duration) (enqueueOutcome, error) {
	for attempt := 1; ; attempt++ {
		_, err := e.client.EnqueueContext(ctx, t, asynq.Queue(queue), asynq.MaxRetry(results.MaxRetry), asynq.Timeout(timeout))
		if err == nil {
			return enqueuedOwn, nil
		}
		if !errors.Is(err, asynq.ErrTaskIDConflict) {
			return 0, fmt.Errorf("enqueue %s: %w", taskID, err)
		}
		info, ierr := e.inspector.GetTaskInfo(queue, taskID)
		if errors.Is(ierr, asynq.ErrTaskNotFound) && attempt < 3 {
			continue // it completed and was deleted meanwhile: enqueue again
		}
		if ierr != nil {
			return 0, fmt.Errorf("enqueue %s: %w; inspecting the existing task: %w", taskID, err, ierr)
		}
		if info.Type != t.Type() || !bytes.Equal(info.Payload, t.Payload()) {
			return foreignOther, nil
		}
		h := t.Headers()
		if b := h[HeaderBatch]; (b != "" && info.Headers[HeaderBatch] == b) || info.Headers[HeaderRun] == h[HeaderRun] {
			return enqueuedOwn, nil
		}
		return foreignSame, nil
	}
}

// repair is what ensure found and did.
type repair struct {
	enqueued []string         // queued without a task: enqueued now
	settled  []string         // nothing (more) to do: task exists, result past queued, or gone
	undone   []string         // asynq holds another task under the ID: the result was undone
	failed   map[string]error // could not be enqueued (now; trying again may help)
	// unusable: the result keeps nothing to enqueue from (written by an
	// older couponq); trying again would not help.
	unusable map[string]error
}

// ensure makes sure that every task of ids whose result is still queued
// has its asynq task, enqueuing the missing ones from the payload, queue
// and timeout their result keeps. It is what the producer runs before
// sealing a batch and what the Adopter runs on orphans. Three pipelined
// reads a chunk: status and queue, the asynq task's existence, and the
// whole hand-off of the (rare) missing ones only. A caller that knows the
// queue the tasks were enqueued in names it: the tasks found there (all,
// as a rule) are settled by one read each.
func (e *enqueuer) ensure(ctx context.Context, store *results.Store, queue string, ids []string) (*repair, error) {
	rep := &repair{failed: map[string]error{}, unusable: map[string]error{}}
	rdb := store.Redis()
	for len(ids) > 0 {
		chunk := ids[:min(len(ids), 500)]
		ids = ids[len(chunk):]
		if queue != "" {
			there := make([]*redis.IntCmd, len(chunk))
			if _, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
				for i, id := range chunk {
					there[i] = p.Exists(ctx, asynqTaskKey(queue, id))
				}
				return nil
			}); err != nil {
				return rep, fmt.Errorf("couponq: look up %d tasks in asynq: %w", len(chunk), err)
			}
			rest := chunk[:0:0]
			for i, id := range chunk {
				if there[i].Val() == 1 {
					rep.settled = append(rep.settled, id)
				} else {
					rest = append(rest, id)
				}
			}
			if chunk = rest; len(chunk) == 0 {
				continue
			}
		}
		heads := make([]*redis.SliceCmd, len(chunk))
		if _, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, id := range chunk {
				heads[i] = p.HMGet(ctx, results.ResultKey(id), results.FieldStatus, results.FieldQueue)
			}
			return nil
		}); err != nil {
			return rep, fmt.Errorf("couponq: read %d results: %w", len(chunk), err)
		}
		var queued []string
		exists := map[string]*redis.IntCmd{}
		if _, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, id := range chunk {
				v := heads[i].Val()
				if st, _ := v[0].(string); st != string(results.StatusQueued) {
					rep.settled = append(rep.settled, id)
					continue
				}
				q, _ := v[1].(string)
				queued = append(queued, id)
				exists[id] = p.Exists(ctx, asynqTaskKey(q, id))
			}
			return nil
		}); err != nil {
			return rep, fmt.Errorf("couponq: look up %d tasks in asynq: %w", len(queued), err)
		}
		var missing []string
		for _, id := range queued {
			if exists[id].Val() == 1 {
				rep.settled = append(rep.settled, id)
			} else {
				missing = append(missing, id)
			}
		}
		if len(missing) == 0 {
			continue
		}
		// Read after the existence check: a task that ran to its end and
		// was deleted in between shows a status past queued now.
		hs, err := store.Handoffs(ctx, missing)
		if err != nil {
			return rep, err
		}
		for _, h := range hs {
			if h.Status != results.StatusQueued {
				rep.settled = append(rep.settled, h.TaskID)
				continue
			}
			e.reenqueue(ctx, store, h, rep)
		}
	}
	return rep, nil
}

// reenqueue enqueues the task of a queued result that has none.
func (e *enqueuer) reenqueue(ctx context.Context, store *results.Store, h results.Handed, rep *repair) {
	taskType := Op(h.Op).TaskType()
	if len(h.Payload) == 0 || taskType == "" || h.Queue == "" {
		rep.unusable[h.TaskID] = errors.New("its result keeps no payload to enqueue it from (written by an older couponq)")
		return
	}
	timeout := h.Timeout
	if timeout <= 0 {
		timeout = DefaultTaskTimeout
	}
	out, err := e.enqueueOwn(ctx, handedTask(taskType, h.Payload, h.TaskID, h.Batch, h.Run), h.TaskID, h.Queue, timeout)
	switch {
	case err != nil:
		rep.failed[h.TaskID] = err
	case out == enqueuedOwn:
		rep.enqueued = append(rep.enqueued, h.TaskID)
	default:
		id := results.Identity{TaskID: h.TaskID, Batch: h.Batch}
		if undone, uerr := store.Unaccept(ctx, id, out == foreignSame); uerr != nil {
			rep.failed[h.TaskID] = uerr
		} else if undone {
			rep.undone = append(rep.undone, h.TaskID)
		} else {
			rep.settled = append(rep.settled, h.TaskID) // a worker runs it now
		}
	}
}

// Adopter finds the changes whose producer accepted them but never
// confirmed their asynq task (it was killed, or lost Redis, in between)
// and, once they are older than a grace period, enqueues those still
// queued without a task; it also seals the batches whose producer stopped
// being seen. A worker runs its Sweep periodically. It is safe for
// concurrent use, and several workers may sweep: a Redis lock lets one at
// a time do it.
type Adopter struct {
	enqueuer
	store *results.Store
	now   func() time.Time
}

// NewAdopter returns an Adopter over rdb; resultTTL (0: the default) is
// the TTL the batches it seals keep. It does not take ownership of rdb.
func NewAdopter(rdb redis.UniversalClient, resultTTL time.Duration) *Adopter {
	return &Adopter{
		enqueuer: enqueuer{client: asynq.NewClientFromRedisClient(rdb), inspector: asynq.NewInspectorFromRedisClient(rdb)},
		store:    results.NewStore(rdb, results.WithResultTTL(resultTTL)),
		now:      time.Now,
	}
}

// AdoptReport is what one Sweep did.
type AdoptReport struct {
	Locked  bool                // false: another worker holds the sweep lock; nothing was done
	Checked int                 // unconfirmed tasks looked at
	Adopted map[string][]string // queue → task IDs enqueued
	Sealed  []string            // batches sealed for their producer
	Failed  map[string]error    // task ID → why it could not be enqueued
	// Repaired maps each batch the sweep repaired (results.RepairBatch:
	// abandoned batches before they are sealed, and batches that made no
	// progress between two looks) to the tasks whose counts it corrected.
	Repaired map[string]int
}

// adoptLockTTL bounds how long a crashed sweeper blocks the others.
const adoptLockTTL = 30 * time.Second

// releaseLock deletes the lock only if it is still ours.
var releaseLock = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`)

// Sweep takes the sweep lock and, for each queue, enqueues up to limit
// changes registered more than grace ago whose result is still queued and
// which have no asynq task; it drops from the registry what needs nothing
// more, and seals batches whose producer was last seen more than grace
// ago. Without the lock (another worker sweeps) it does nothing.
func (a *Adopter) Sweep(ctx context.Context, queues []string, grace time.Duration, limit int) (*AdoptReport, error) {
	rep := &AdoptReport{Adopted: map[string][]string{}, Failed: map[string]error{}, Repaired: map[string]int{}}
	rdb := a.store.Redis()
	token := lockToken()
	ok, err := rdb.SetNX(ctx, results.AdoptLockKey, token, adoptLockTTL).Result()
	if err != nil {
		return rep, fmt.Errorf("couponq: adoption lock: %w", err)
	}
	if !ok {
		return rep, nil
	}
	rep.Locked = true
	defer func() {
		// Released even when ctx ended: the next sweeper need not wait.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = releaseLock.Run(rctx, rdb, []string{results.AdoptLockKey}, token).Err()
	}()

	cutoff := a.now().Add(-grace)
	var errs []error
	for _, q := range queues {
		ids, err := a.store.Unconfirmed(ctx, q, cutoff, limit)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		rep.Checked += len(ids)
		// Their batches count them as their results say: a producer
		// killed between an accept's two steps left them uncounted.
		if err := a.store.Settle(ctx, ids); err != nil {
			errs = append(errs, err)
		}
		r, err := a.ensure(ctx, a.store, "", ids)
		if err != nil {
			errs = append(errs, err)
		}
		rep.Adopted[q] = r.enqueued
		for id, ferr := range r.failed {
			rep.Failed[id] = ferr
		}
		for id, ferr := range r.unusable {
			rep.Failed[id] = ferr
		}
		// Dropped from the registry: everything but what failed, which
		// the next sweep tries again (what cannot be adopted at all is
		// reported once and dropped).
		done := append(append(append([]string{}, r.enqueued...), r.settled...), r.undone...)
		for id := range r.unusable {
			done = append(done, id)
		}
		if err := a.store.Confirm(ctx, q, done); err != nil {
			errs = append(errs, err)
		}
	}
	batches, err := a.store.AbandonedBatches(ctx, cutoff, limit)
	if err != nil {
		errs = append(errs, err)
	}
	for _, b := range batches {
		// Recounted before it is sealed: a step its producer's crash lost
		// would keep it from finishing, or finish it early.
		n, err := a.store.RepairBatch(ctx, b)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if n > 0 {
			rep.Repaired[b] = n
		}
		if err := a.store.SealBatch(ctx, b); err != nil {
			errs = append(errs, err)
			continue
		}
		rep.Sealed = append(rep.Sealed, b)
	}
	if err := a.repairStuck(ctx, limit, rep); err != nil {
		errs = append(errs, err)
	}
	return rep, errors.Join(errs...)
}

// repairEvery is how often the sweep looks at the unfinished batches for
// stuck ones.
const repairEvery = 5 * time.Minute

// repairStuck, at most once per repairEvery (across workers), looks at up
// to limit of the newest batches: a sealed, unfinished one whose count of
// terminal tasks has not moved since the last look is repaired (a worker
// crashed between a task's result step and its batch step, and nothing
// has applied it since). Progress is kept in results.RepairSeenKey.
func (a *Adopter) repairStuck(ctx context.Context, limit int, rep *AdoptReport) error {
	rdb := a.store.Redis()
	ok, err := rdb.SetNX(ctx, results.RepairPassKey, "1", repairEvery).Result()
	if err != nil || !ok {
		return err
	}
	ids, err := rdb.ZRevRange(ctx, results.BatchesKey, 0, int64(limit)-1).Result()
	if err != nil || len(ids) == 0 {
		return err
	}
	pipe := rdb.Pipeline()
	cmds := make([]*redis.SliceCmd, len(ids))
	for i, b := range ids {
		cmds[i] = pipe.HMGet(ctx, results.BatchKey(b), results.BatchFieldSealed, results.BatchFieldFinishedAt,
			results.BatchFieldSucceeded, results.BatchFieldFailed, results.BatchFieldCanceled)
	}
	seenCmd := pipe.HGetAll(ctx, results.RepairSeenKey)
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("couponq: look for stuck batches: %w", err)
	}
	seen := seenCmd.Val()
	next := map[string]any{}
	var errs []error
	for i, b := range ids {
		v := cmds[i].Val()
		str := func(j int) string { s, _ := v[j].(string); return s }
		if str(0) != "1" || str(1) != "" {
			continue // open (its producer or the sweep seals it) or finished
		}
		done := 0
		for j := 2; j < 5; j++ {
			n, _ := strconv.Atoi(str(j))
			done += n
		}
		key := strconv.Itoa(done)
		if seen[b] == key {
			n, err := a.store.RepairBatch(ctx, b)
			if err != nil {
				errs = append(errs, err)
			} else if n > 0 {
				rep.Repaired[b] = n
			}
		}
		next[b] = key
	}
	// The look replaces the last one: finished and expired batches drop out.
	pipe = rdb.TxPipeline()
	pipe.Del(ctx, results.RepairSeenKey)
	if len(next) > 0 {
		pipe.HSet(ctx, results.RepairSeenKey, next)
		pipe.Expire(ctx, results.RepairSeenKey, 4*repairEvery)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		errs = append(errs, fmt.Errorf("couponq: look for stuck batches: %w", err))
	}
	return errors.Join(errs...)
}

func lockToken() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
