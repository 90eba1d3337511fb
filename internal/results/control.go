package results

import (
	"context"
	"fmt"
	"strings"
)

// The writes of couponq retry and couponq cancel. Like Finish, each is a
// result step and a batch step (see batchstate.go), so the counters
// always equal what the results say.

// requeueScript is the result step of Requeue: it starts another run of a
// failed or canceled task: status queued again, runs incremented. Returns
// {what, batch, runs, status}: what is "queued:" and the old status when it
// did, else the status it left alone ("" for no result), or "other_code:"
// and the status when ARGV[3] names another error_code; status is the
// task's status now.
//
// KEYS[1] -> couponq:result:<task_id>
// ARGV[1] -> now, ARGV[2] -> TTL in milliseconds
// ARGV[3] -> error_code the task must have ("" = any)
var requeueScript = newScript("Requeue", `
local cur = redis.call('HMGET', KEYS[1], 'status', 'batch', 'runs', 'error_code')
local st, batch, runs = cur[1], cur[2] or '', cur[3] or '1'
if st ~= 'failed' and st ~= 'canceled' then return {st or '', batch, runs, st or ''} end
if ARGV[3] ~= '' and cur[4] ~= ARGV[3] then return {'other_code:' .. st, batch, runs, st} end
runs = tostring(tonumber(runs) + 1)
redis.call('HSET', KEYS[1], 'status', 'queued', 'runs', runs, 'updated_at', ARGV[1])
redis.call('HDEL', KEYS[1], 'finished_at')
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {'queued:' .. st, batch, runs, 'queued'}
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
// incremented (one result step per task, pipelined), then its batch's
// counters moved with it (one batch step per batch, pipelined): the old
// status no longer counted, the batch unfinished and no longer canceled.
// The batch step applies every task's state, requeued or not, so running
// couponq retry again heals a batch whose step a crash lost. It does not
// enqueue the asynq task: the caller does.
func (s *Store) Requeue(ctx context.Context, taskIDs []string, code string) ([]RequeueOutcome, error) {
	calls := make([]scriptCall, len(taskIDs))
	for i, id := range taskIDs {
		calls[i] = scriptCall{keys: []string{ResultKey(id)}, args: []any{s.stamp(), s.ttlMillis(), code}}
	}
	cmds, err := runPipelined(ctx, s.rdb, requeueScript, calls)
	if err != nil {
		return nil, fmt.Errorf("couponq: retry %d tasks: %w", len(taskIDs), err)
	}
	out := make([]RequeueOutcome, len(taskIDs))
	batches, states := make([]string, len(taskIDs)), make([]taskState, len(taskIDs))
	for i, c := range cmds {
		res, err := c.StringSlice()
		if err != nil || len(res) != 4 {
			return nil, fmt.Errorf("couponq: retry %s: answer %v: %w", taskIDs[i], c.Val(), err)
		}
		r := res[0]
		o := RequeueOutcome{TaskID: taskIDs[i], From: Status(r)}
		if what, from, ok := strings.Cut(r, ":"); ok {
			o.Requeued, o.OtherCode, o.From = what == "queued", what == "other_code", Status(from)
		}
		out[i] = o
		if res[3] != "" {
			batches[i], states[i] = res[1], taskState{taskID: taskIDs[i], runs: runsOf(res[2]), status: res[3]}
		}
	}
	if _, err := s.applyBatches(ctx, stateApplies(batches, states)); err != nil {
		return nil, fmt.Errorf("couponq: retry %d tasks: count in their batches: %w", len(taskIDs), err)
	}
	return out, nil
}

// cancelBatchScript marks a batch canceled unless it finished. Returns
// "canceled", "finished" or "missing".
//
// KEYS[1..3] -> couponq:batch:<batch_id> and its own keys (batchScriptKeys)
// ARGV[1] -> now, ARGV[2] -> TTL in milliseconds
var cancelBatchScript = newScript("CancelBatch", `
if redis.call('EXISTS', KEYS[1]) == 0 then return 'missing' end
if redis.call('HEXISTS', KEYS[1], 'finished_at') == 1 then return 'finished' end
redis.call('HSETNX', KEYS[1], 'canceled', '0')
redis.call('HSETNX', KEYS[1], 'canceled_at', ARGV[1])
for k = 1, 3 do
  if redis.call('EXISTS', KEYS[k]) == 1 then redis.call('PEXPIRE', KEYS[k], ARGV[2]) end
end
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
	r, err := cancelBatchScript.Run(ctx, s.rdb, batchScriptKeys(batchID), s.stamp(), s.ttlMillis()).Text()
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
// (no worker is in a call for it), counting it in its batch: the result
// steps pipelined, then the batch steps. out[i] is CancelDone,
// CancelTerminal or CancelInCall.
func (s *Store) CancelUnstarted(ctx context.Context, taskIDs []string) ([]int, error) {
	if len(taskIDs) == 0 {
		return nil, nil
	}
	out, _, err := s.finish(ctx, taskIDs, StatusCanceled, cancelAttempt(0), "unstarted", nil)
	return out, err
}

// CancelTask cancels one task whatever its non-terminal status: the worker
// that was to start it (or to retry it) found its batch canceled. calls
// are the API calls of this run not recorded yet. It reports whether it
// canceled the task (false: already terminal).
func (s *Store) CancelTask(ctx context.Context, taskID string, calls int) (bool, error) {
	n, _, err := s.finish(ctx, []string{taskID}, StatusCanceled, cancelAttempt(calls), "", nil)
	if err != nil {
		return false, err
	}
	return n[0] == CancelDone, nil
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
