package results

import (
	"context"
	"fmt"
	"strings"

	"github.com/redis/go-redis/v9"
)

// The writes of couponq retry and couponq cancel. Like Finish, a status
// change and its batch counter move in one script, so the counters always
// equal what the results say.

// requeueScript starts another run of a failed or canceled task: status
// queued again, runs incremented, its batch's counter of the old status
// decremented and the batch unfinished (and no longer canceled). Returns
// "queued:" and the old status when it did, else the status it left alone
// ("" for no result), or "other_code:" and the status when ARGV[4] names
// another error_code.
//
// KEYS[1] -> couponq:result:<task_id>
// ARGV[1] -> now, ARGV[2] -> TTL in milliseconds
// ARGV[3] -> the batch key prefix "couponq:batch:"
// ARGV[4] -> error_code the task must have ("" = any)
//
// The batch key is ARGV[3] followed by the result's batch field, as in
// finishScript: the two move together.
var requeueScript = redis.NewScript(`
local st = redis.call('HGET', KEYS[1], 'status')
if st ~= 'failed' and st ~= 'canceled' then return st or '' end
if ARGV[4] ~= '' and redis.call('HGET', KEYS[1], 'error_code') ~= ARGV[4] then return 'other_code:' .. st end
local runs = tonumber(redis.call('HGET', KEYS[1], 'runs') or '1') + 1
redis.call('HSET', KEYS[1], 'status', 'queued', 'runs', runs, 'updated_at', ARGV[1])
redis.call('HDEL', KEYS[1], 'finished_at')
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local batch = redis.call('HGET', KEYS[1], 'batch')
if batch and batch ~= '' then
  local bk = ARGV[3] .. batch
  if redis.call('EXISTS', bk) == 1 then
    redis.call('HINCRBY', bk, st, -1)
    redis.call('HDEL', bk, 'finished_at', 'canceled_at')
    redis.call('PEXPIRE', bk, ARGV[2])
  end
end
return 'queued:' .. st
`)

// RequeueOutcome is what Requeue did with one task.
type RequeueOutcome struct {
	TaskID string
	// Requeued: the task is queued again (From says what it was).
	Requeued bool
	// From is the status the task had: failed or canceled when requeued;
	// otherwise the status that kept it ("" for no result).
	From Status
	// OtherCode: failed or canceled, but with another error_code than
	// the one asked for.
	OtherCode bool
}

// Requeue starts another run of each failed or canceled task of taskIDs
// whose error_code is code ("" = any): queued again with its runs
// incremented, and its batch's counters moved with it, in one script per
// task (pipelined). It does not enqueue the asynq task: the caller does.
func (s *Store) Requeue(ctx context.Context, taskIDs []string, code string) ([]RequeueOutcome, error) {
	calls := make([]scriptCall, len(taskIDs))
	for i, id := range taskIDs {
		calls[i] = scriptCall{keys: []string{ResultKey(id)}, args: []any{s.stamp(), s.ttlMillis(), batchKeyPrefix, code}}
	}
	cmds, err := runPipelined(ctx, s.rdb, requeueScript, calls)
	if err != nil {
		return nil, fmt.Errorf("couponq: retry %d tasks: %w", len(taskIDs), err)
	}
	out := make([]RequeueOutcome, len(taskIDs))
	for i, c := range cmds {
		r, _ := c.Text()
		o := RequeueOutcome{TaskID: taskIDs[i], From: Status(r)}
		if what, from, ok := strings.Cut(r, ":"); ok {
			o.Requeued, o.OtherCode, o.From = what == "queued", what == "other_code", Status(from)
		}
		out[i] = o
	}
	return out, nil
}

// cancelBatchScript marks a batch canceled unless it finished. Returns
// "canceled", "finished" or "missing".
//
// KEYS[1] -> couponq:batch:<batch_id>
// ARGV[1] -> now, ARGV[2] -> TTL in milliseconds
var cancelBatchScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then return 'missing' end
if redis.call('HEXISTS', KEYS[1], 'finished_at') == 1 then return 'finished' end
redis.call('HSETNX', KEYS[1], 'canceled', '0')
redis.call('HSETNX', KEYS[1], 'canceled_at', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 'canceled'
`)

// Batch states CancelBatch reports.
const (
	BatchCanceled = "canceled"
	BatchFinished = "finished"
	BatchMissing  = "missing"
)

// CancelBatch marks batch batchID canceled, so that workers start none of
// its tasks, unless it is finished (BatchFinished) or does not exist
// (BatchMissing). It is idempotent.
func (s *Store) CancelBatch(ctx context.Context, batchID string) (string, error) {
	r, err := cancelBatchScript.Run(ctx, s.rdb, []string{BatchKey(batchID)}, s.stamp(), s.ttlMillis()).Text()
	if err != nil {
		return "", fmt.Errorf("couponq: cancel batch %s: %w", batchID, err)
	}
	return r, nil
}

// Cancel outcomes.
const (
	CancelDone     = 1  // canceled now, and counted in its batch
	CancelTerminal = 0  // already terminal: nothing changed
	CancelInCall   = -1 // unstarted asked, and a worker runs it: it finishes
)

// cancelAttempt is what a cancel records: its code and why.
func cancelAttempt(calls int) Attempt {
	return Attempt{Calls: calls, ErrorCode: CodeCanceled, ErrorMessage: "its batch was canceled (couponq cancel)"}
}

// CancelUnstarted cancels each task of taskIDs that is queued or retrying
// (no worker is in a call for it), counting it in its batch, in one
// script per task (pipelined). out[i] is CancelDone, CancelTerminal or
// CancelInCall.
func (s *Store) CancelUnstarted(ctx context.Context, taskIDs []string) ([]int, error) {
	calls := make([]scriptCall, len(taskIDs))
	a := cancelAttempt(0)
	for i, id := range taskIDs {
		args := append([]any{s.stamp(), s.ttlMillis()}, a.args()...)
		args = append(args, string(StatusCanceled), "", "", batchKeyPrefix, "unstarted")
		calls[i] = scriptCall{keys: []string{ResultKey(id)}, args: args}
	}
	cmds, err := runPipelined(ctx, s.rdb, finishScript, calls)
	if err != nil {
		return nil, fmt.Errorf("couponq: cancel %d tasks: %w", len(taskIDs), err)
	}
	out := make([]int, len(cmds))
	for i, c := range cmds {
		n, _ := c.Int()
		out[i] = n
	}
	return out, nil
}

// CancelTask cancels one task whatever its non-terminal status: the worker
// that was to start it (or to retry it) found its batch canceled. calls
// are the API calls of this run not recorded yet. It reports whether it
// canceled the task (false: already terminal).
func (s *Store) CancelTask(ctx context.Context, taskID string, calls int) (bool, error) {
	n, err := s.finish(ctx, taskID, StatusCanceled, cancelAttempt(calls), "")
	return n == CancelDone, err
}

// BatchCanceled reports whether batch batchID is canceled ("" = none: no).
func (s *Store) BatchCanceled(ctx context.Context, batchID string) (bool, error) {
	if batchID == "" {
		return false, nil
	}
	n, err := s.rdb.HExists(ctx, BatchKey(batchID), BatchFieldCanceledAt).Result()
	if err != nil {
		return false, fmt.Errorf("couponq: read batch %s: %w", batchID, err)
	}
	return n, nil
}
